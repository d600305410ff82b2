"""perception_node alone (same arguments as dispider.launch.py)."""
from dispider_ros.nodes.launch_support import describe


def generate_launch_description():
    return describe(["perception_node"])
