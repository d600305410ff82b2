"""All three nodes in one process (`dispider_graph`, a MultiThreadedExecutor): small machines.

The same graph, parameter file and arguments as dispider.launch.py, in one Python process
with one copy of torch. The process hosts perception_node, decision_node and reaction_node,
so the camera remap names its node (`perception_node:image:=...`) and each node's device
goes under its own key (single_process_devices.yaml beside this file); the rest applies to
all three.

    ros2 launch dispider_ros dispider_single_process.launch.py perception_device:=cpu \
        reaction_device:=cuda:0
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterFile, ParameterValue
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
            "image", default_value="image",
            description="camera sensor_msgs/Image topic, remapped into perception_node"),
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
            "perception_device", default_value="",
            description="torch device of perception_node (cpu, cuda:0 ...); empty = preset"),
        DeclareLaunchArgument(
            "decision_device", default_value="",
            description="torch device of decision_node (cpu, cuda:0 ...); empty = preset"),
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

        # perception_node    in: image (the camera)    out: features, sampled_image
        # decision_node      in: features, query, query_text    out: trigger
        # reaction_node      in: trigger, sampled_image    out: response, response_stream,
        #                                                       response_text
        Node(
            # No `name=`: launch_ros turns it into `-r __node:=...`, which renames every node
            # of the process (three nodes called dispider_graph, the YAML keys never match).
            package="dispider_ros", executable="dispider_graph",
            namespace=namespace, output="screen", ros_arguments=log_level,
            remappings=[("perception_node:image", LaunchConfiguration("image"))],
            parameters=[
                params_file,
                {"preset": preset, "use_sim_time": use_sim_time},
                # device: perception_device, decision_device, reaction_device, each under its
                # node's /**/<node> key (one process, three nodes)
                ParameterFile(PathJoinSubstitution([
                    FindPackageShare("dispider_ros"), "launch", "single_process_devices.yaml"]),
                    allow_substs=True),
            ]),
    ])
