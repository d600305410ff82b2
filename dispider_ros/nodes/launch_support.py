"""Launch-file building blocks (launch/launch_ros are imported lazily: not on PyPI)."""
from __future__ import annotations

from typing import List

NODES = ("perception_node", "decision_node", "reaction_node")


def common_arguments() -> List:
    from launch.actions import DeclareLaunchArgument
    from launch.substitutions import PathJoinSubstitution
    from launch_ros.substitutions import FindPackageShare

    default_params = PathJoinSubstitution([FindPackageShare("dispider_ros"), "config", "dispider.yaml"])
    return [
        DeclareLaunchArgument("image", default_value="image",
                              description="camera sensor_msgs/Image topic fed to perception and reaction"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace for every node and relative topic"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="parameter YAML (one key per node)"),
        DeclareLaunchArgument("preset", default_value="tiny",
                              description="model preset: tiny | qwen2vl_2b | qwen25vl_3b (config/presets)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="follow /clock (rosbag replay)"),
        DeclareLaunchArgument("log_level", default_value="info", description="ROS log level"),
        DeclareLaunchArgument("enclave", default_value="",
                              description="SROS2 enclave for the nodes: sets ROS_SECURITY_ENCLAVE_OVERRIDE "
                                          "(empty = leave the environment unchanged)"),
    ] + [
        DeclareLaunchArgument(f"{name.split('_')[0]}_device", default_value="",
                              description=f"torch device of {name} (cpu, cuda:0 ...); empty = preset")
        for name in NODES
    ]


def lifecycle_node(name: str):
    """One of the three nodes, parameterised by the common launch arguments."""
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import LifecycleNode
    from launch_ros.parameter_descriptions import ParameterValue

    device = LaunchConfiguration(f"{name.split('_')[0]}_device")
    return LifecycleNode(
        package="dispider_ros", executable=name, name=name,
        namespace=LaunchConfiguration("namespace"), output="screen",
        parameters=[LaunchConfiguration("params_file"), {
            "preset": LaunchConfiguration("preset"),
            "device": ParameterValue(device, value_type=str),
            "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
        }],
        remappings=[("image", LaunchConfiguration("image"))],
        ros_arguments=["--log-level", LaunchConfiguration("log_level")])


def enclave_override():
    """SROS2: ROS_SECURITY_* from the caller's environment pass through unchanged; a
    non-empty enclave argument selects the nodes' enclave (compared as a string, not eval'd)."""
    from launch.actions import SetEnvironmentVariable
    from launch.conditions import IfCondition
    from launch.substitutions import LaunchConfiguration

    try:  # Iron and later
        from launch.substitutions import NotEqualsSubstitution

        condition = IfCondition(NotEqualsSubstitution(LaunchConfiguration("enclave"), ""))
    except ImportError:  # Humble
        from launch.conditions import LaunchConfigurationNotEquals

        condition = LaunchConfigurationNotEquals("enclave", "")
    return SetEnvironmentVariable("ROS_SECURITY_ENCLAVE_OVERRIDE",
                                  LaunchConfiguration("enclave"), condition=condition)


def describe(names=NODES):
    from launch import LaunchDescription

    return LaunchDescription(common_arguments() + [enclave_override()]
                             + [lifecycle_node(name) for name in names])



def single_process():
    from launch import LaunchDescription
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node
    from launch_ros.parameter_descriptions import ParameterValue

    return LaunchDescription(common_arguments() + [enclave_override(), Node(
        # No `name=`: launch_ros turns it into `-r __node:=...`, which renames every node in
        # the process (three nodes called dispider_graph, per-node YAML keys never match).
        package="dispider_ros", executable="dispider_graph",
        namespace=LaunchConfiguration("namespace"), output="screen",
        parameters=[LaunchConfiguration("params_file"), {
            "preset": LaunchConfiguration("preset"),
            "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
        }],
        remappings=[("image", LaunchConfiguration("image"))],
        ros_arguments=["--log-level", LaunchConfiguration("log_level")])])
