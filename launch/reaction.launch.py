"""reaction_node alone, declared as in dispider.launch.py, with the arguments it uses.

    ros2 launch dispider_ros reaction.launch.py --show-args
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    params_file = LaunchConfiguration("params_file")
    namespace = LaunchConfiguration("namespace")
    preset = LaunchConfiguration("preset")
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    log_level = ["--log-level", LaunchConfiguration("log_level")]
    try:  # the enclave is compared as a string, never evaluated (Iron and later)
        from launch.substitutions import NotEqualsSubstitution
        enclave_given = IfCondition(NotEqualsSubstitution(LaunchConfiguration("enclave"), ""))
    except ImportError:  # Humble
        from launch.conditions import LaunchConfigurationNotEquals
        enclave_given = LaunchConfigurationNotEquals("enclave", "")

    return LaunchDescription([
        DeclareLaunchArgument(
            "namespace", default_value="", description="namespace of every node and topic"),
        DeclareLaunchArgument(
            "params_file", description="parameter YAML, a key per node",
            default_value=PathJoinSubstitution(
                [FindPackageShare("dispider_ros"), "config", "dispider.yaml"])),
        DeclareLaunchArgument(
            "preset", default_value="tiny",
            description="model preset: tiny | qwen2vl_2b | qwen25vl_3b (config/presets)"),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", description="follow /clock (rosbag replay)"),
        DeclareLaunchArgument(
            "log_level", default_value="info",
            description="ROS log level: debug | info | warn | error | fatal"),
        DeclareLaunchArgument(
            "enclave", default_value="",
            description="SROS2 enclave of the nodes, set as ROS_SECURITY_ENCLAVE_OVERRIDE "
                        "(empty: the caller's ROS_SECURITY_* pass through unchanged)"),
        DeclareLaunchArgument(
            "reaction_device", default_value="",
            description="torch device of reaction_node (cpu, cuda:0 ...); empty = preset"),
        SetEnvironmentVariable("ROS_SECURITY_ENCLAVE_OVERRIDE", LaunchConfiguration("enclave"),
                               condition=enclave_given),
        # Large camera frames over DDS: the shipped Fast DDS profile (16 MiB shared-memory
        # segment) unless the caller's environment names one. Export it for the camera driver
        # too: the segment that matters is the writer's (README, "Large camera images over DDS").
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", EnvironmentVariable(
            "FASTDDS_DEFAULT_PROFILES_FILE", default_value=PathJoinSubstitution(
                [FindPackageShare("dispider_ros"), "config", "fastdds_large_images.xml"]))),

        # in: trigger, sampled_image    out: response, response_stream, response_text
        LifecycleNode(
            package="dispider_ros", executable="reaction_node", name="reaction_node",
            namespace=namespace, output="screen", ros_arguments=log_level,
            parameters=[params_file, {
                "preset": preset, "use_sim_time": use_sim_time,
                "device": ParameterValue(LaunchConfiguration("reaction_device"), value_type=str),
            }]),
    ])
