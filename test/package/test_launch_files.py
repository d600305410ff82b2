"""Launch files: valid Python everywhere; parsed into real launch descriptions with launch_ros."""
import ast
import importlib.util
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[2] / "launch"
FILES = sorted(LAUNCH.glob("*.launch.py"))
EXPECTED_ARGS = {"image", "namespace", "params_file", "preset", "use_sim_time", "log_level",
                 "enclave", "perception_device", "decision_device", "reaction_device"}


def test_every_launch_file_defines_generate_launch_description():
    assert {p.name for p in FILES} >= {"dispider.launch.py", "perception.launch.py",
                                       "decision.launch.py", "reaction.launch.py",
                                       "dispider_single_process.launch.py"}
    for path in FILES:
        tree = ast.parse(path.read_text(), str(path))
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "generate_launch_description" in names, path.name


def _description(path):
    pytest.importorskip("launch_ros", reason="launch_ros is not on PyPI: run by hand with the "
                        "official ROS 2 CLI (README, 'Checking the launch files')")
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_launch_file_parses_with_launch_ros(path):
    description = _description(path)
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument
    assert isinstance(description, LaunchDescription)
    declared = {a.name for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert EXPECTED_ARGS <= declared
    for action in description.entities:
        if isinstance(action, DeclareLaunchArgument):
            assert action.description and action.description != "no description given", action.name


def test_single_process_launch_does_not_rename_its_nodes():
    """`Node(name=...)` adds `-r __node:=<name>`, which would rename all three nodes of the
    process and stop the per-node YAML keys (/**/perception_node ...) from matching."""
    description = _description(LAUNCH / "dispider_single_process.launch.py")
    from launch.substitutions import LocalSubstitution
    from launch_ros.actions import Node

    nodes = [a for a in description.entities if isinstance(a, Node)]
    assert len(nodes) == 1
    expressions = [s.expression for part in nodes[0].cmd for s in part
                   if isinstance(s, LocalSubstitution)]
    assert "ros_specific_arguments['name']" not in expressions


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
@pytest.mark.parametrize("enclave, expected", [("", False), ("/foo", True), ("/a'b", True)])
def test_enclave_argument_sets_the_override_only_when_given(path, enclave, expected):
    description = _description(path)
    from launch import LaunchContext
    from launch.actions import SetEnvironmentVariable
    from launch.utilities import perform_substitutions

    context = LaunchContext()
    context.launch_configurations["enclave"] = enclave
    actions = [a for a in description.entities if isinstance(a, SetEnvironmentVariable)
               and perform_substitutions(context, a.name) == "ROS_SECURITY_ENCLAVE_OVERRIDE"]
    assert len(actions) == 1, "every launch file must honour its enclave argument"
    assert actions[0].condition.evaluate(context) is expected
