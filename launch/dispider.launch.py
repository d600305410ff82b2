"""The whole graph: perception, decision and reaction as three lifecycle node processes.

    ros2 launch dispider_ros dispider.launch.py image:=/camera/color/image_raw preset:=qwen2vl_2b

With autostart (config/dispider.yaml) each node configures and activates itself.
"""
from dispider_ros.nodes.launch_support import describe


def generate_launch_description():
    return describe()
