"""All three nodes in one process on a MultiThreadedExecutor (small machines)."""
from dispider_ros.nodes.launch_support import single_process


def generate_launch_description():
    return single_process()
