"""Launch files: the graph is declared in each file, and what launch_ros makes of it.

Without launch_ros (CI: it is not on PyPI) the files are read as Python syntax trees: the
node actions, executables, remaps, parameter sources and arguments. Where launch_ros exists
they are loaded and evaluated into the real command lines. The single-process file's
node-prefixed device parameters are checked against the running `dispider_graph` either way.
"""
import ast
import importlib.util
import re
import uuid
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[2] / "launch"
DEVICES = LAUNCH / "single_process_devices.yaml"  # the single process's per-node keys
SHORT = {"perception_node": "perception", "decision_node": "decision",
         "reaction_node": "reaction"}
THREE = tuple(SHORT)
COMMON_ARGS = {"namespace", "params_file", "preset", "use_sim_time", "log_level", "enclave"}
ALL_ARGS = COMMON_ARGS | {"image"} | {f"{s}_device" for s in SHORT.values()}
# file -> (action class, the nodes it starts, the arguments it declares)
EXPECTED = {
    "dispider.launch.py": ("LifecycleNode", THREE, ALL_ARGS),
    "perception.launch.py": ("LifecycleNode", ("perception_node",),
                             COMMON_ARGS | {"image", "perception_device"}),
    "decision.launch.py": ("LifecycleNode", ("decision_node",),
                           COMMON_ARGS | {"decision_device"}),
    "reaction.launch.py": ("LifecycleNode", ("reaction_node",),
                           COMMON_ARGS | {"reaction_device"}),
    "dispider_single_process.launch.py": ("Node", THREE, ALL_ARGS),
}
NAMES = sorted(EXPECTED)


def test_the_launch_folder_holds_exactly_the_expected_files():
    assert sorted(p.name for p in LAUNCH.glob("*.launch.py")) == NAMES


# ---- read without launch_ros: the syntax tree --------------------------------------------

class LaunchFile:
    """One launch file's syntax tree, with the launch configurations each expression reaches
    (directly or through a local variable of generate_launch_description)."""

    def __init__(self, name: str):
        self.tree = ast.parse((LAUNCH / name).read_text(), name)
        function = next(n for n in self.tree.body if isinstance(n, ast.FunctionDef)
                        and n.name == "generate_launch_description")
        self.variables = {target.id: node.value for node in ast.walk(function)
                          if isinstance(node, ast.Assign) for target in node.targets
                          if isinstance(target, ast.Name)}

    def calls(self, name: str, within=None):
        return [n for n in ast.walk(within or self.tree) if isinstance(n, ast.Call)
                and getattr(n.func, "id", getattr(n.func, "attr", None)) == name]

    def configurations(self, node) -> set:
        """Names of the LaunchConfiguration(...) that `node` evaluates."""
        found = set()
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id in self.variables:
                found |= self.configurations(self.variables[sub.id])
            elif isinstance(sub, ast.Call) and getattr(sub.func, "id", None) == \
                    "LaunchConfiguration":
                found.add(_string(sub.args[0]))
        return found

    def declared(self) -> dict:
        return {_string(c.args[0]): c for c in self.calls("DeclareLaunchArgument")}

    def nodes(self, kind: str) -> list:
        return self.calls(kind)

    def template_variables(self) -> set:
        """`$(var name)` in the files this one hands to ParameterFile(..., allow_substs=True)"""
        found = set()
        for call in self.calls("ParameterFile"):
            assert _keyword(call, "allow_substs").value is True
            path = LAUNCH / _string(call.args[0].args[0].elts[-1])
            found |= set(re.findall(r"\$\(var (\w+)\)", path.read_text()))
        return found


def _string(node):
    assert isinstance(node, ast.Constant) and isinstance(node.value, str), ast.dump(node)
    return node.value


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _remaps(launch: LaunchFile, call: ast.Call) -> dict:
    """{from: the launch configurations the `to` side reads}"""
    rules = _keyword(call, "remappings")
    if rules is None:
        return {}
    return {_string(rule.elts[0]): launch.configurations(rule.elts[1]) for rule in rules.elts}


@pytest.mark.parametrize("name", NAMES)
def test_declared_arguments_are_described_and_all_used(name):
    launch = LaunchFile(name)
    declared = launch.declared()
    assert set(declared) == EXPECTED[name][2]
    for argument, call in declared.items():
        description = _keyword(call, "description")
        assert description is not None and _string(description).strip(), argument
    used = launch.configurations(launch.tree) | launch.template_variables()
    assert used == set(declared), "declared but never used, or used but never declared"


@pytest.mark.parametrize("name", NAMES)
def test_the_graph_is_in_the_file_not_behind_an_import(name):
    launch = LaunchFile(name)
    modules = {n.module for n in ast.walk(launch.tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(launch.tree) if isinstance(n, ast.Import)
                for a in n.names}
    assert all(m.split(".")[0] in {"launch", "launch_ros"} for m in modules), modules


@pytest.mark.parametrize("name", NAMES)
def test_the_one_parameter_file_comes_first_and_is_overridable(name):
    launch = LaunchFile(name)
    default = _keyword(launch.declared()["params_file"], "default_value")
    assert default.func.id == "PathJoinSubstitution"
    share, *parts = default.args[0].elts
    assert share.func.id == "FindPackageShare" and _string(share.args[0]) == "dispider_ros"
    assert [_string(p) for p in parts] == ["config", "dispider.yaml"]
    kind, _, _ = EXPECTED[name]
    for call in launch.nodes(kind):
        first = _keyword(call, "parameters").elts[0]
        # first, so the launch arguments given after it override the file's values
        assert launch.configurations(first) == {"params_file"}


@pytest.mark.parametrize("name", [n for n in NAMES if EXPECTED[n][0] == "LifecycleNode"])
def test_lifecycle_nodes_their_executables_remaps_and_parameters(name):
    launch = LaunchFile(name)
    _, expected_nodes, _ = EXPECTED[name]
    calls = launch.nodes("LifecycleNode")
    assert not launch.nodes("Node")
    assert [_string(_keyword(c, "executable")) for c in calls] == list(expected_nodes)
    for call in calls:
        node = _string(_keyword(call, "executable"))
        assert _string(_keyword(call, "package")) == "dispider_ros"
        assert _string(_keyword(call, "name")) == node
        assert launch.configurations(_keyword(call, "namespace")) == {"namespace"}
        assert launch.configurations(_keyword(call, "ros_arguments")) == {"log_level"}
        # The camera goes into perception only: reaction gets perception's sampled frames.
        assert _remaps(launch, call) == ({"image": {"image"}} if node == "perception_node"
                                         else {})
        parameters = _keyword(call, "parameters")
        overrides = [p for p in parameters.elts if isinstance(p, ast.Dict)]
        assert len(overrides) == 1
        keys = {_string(k): launch.configurations(v) for k, v in
                zip(overrides[0].keys, overrides[0].values)}
        assert keys == {"preset": {"preset"}, "use_sim_time": {"use_sim_time"},
                        "device": {f"{SHORT[node]}_device"}}


def test_single_process_node_its_camera_remap_and_per_node_devices():
    launch = LaunchFile("dispider_single_process.launch.py")
    assert not launch.nodes("LifecycleNode")
    (call,) = launch.nodes("Node")
    assert _string(_keyword(call, "package")) == "dispider_ros"
    assert _string(_keyword(call, "executable")) == "dispider_graph"
    # `name=` would become `-r __node:=...` and rename all three nodes of the process, so
    # their /**/<node> YAML keys would never match.
    assert _keyword(call, "name") is None
    assert launch.configurations(_keyword(call, "namespace")) == {"namespace"}
    assert launch.configurations(_keyword(call, "ros_arguments")) == {"log_level"}
    assert _remaps(launch, call) == {"perception_node:image": {"image"}}
    parameters = _keyword(call, "parameters")
    common = [p for p in parameters.elts if isinstance(p, ast.Dict)]
    assert len(common) == 1 and {_string(k) for k in common[0].keys} == {"preset",
                                                                           "use_sim_time"}
    assert launch.template_variables() == {f"{SHORT[node]}_device" for node in THREE}
    assert _devices_file({"perception_device": "cuda:1", "decision_device": "",
                          "reaction_device": "0"}) == {
        "/**/perception_node": {"ros__parameters": {"device": "cuda:1"}},
        "/**/decision_node": {"ros__parameters": {"device": ""}},
        "/**/reaction_node": {"ros__parameters": {"device": "0"}}}


def _devices_file(arguments: dict) -> dict:
    """single_process_devices.yaml as launch_ros fills it in: `$(var name)` -> the argument"""
    import yaml

    text = re.sub(r"\$\(var (\w+)\)", lambda m: arguments[m.group(1)], DEVICES.read_text())
    return yaml.safe_load(text)


@pytest.mark.parametrize("name", NAMES)
def test_the_enclave_is_an_environment_override_compared_as_a_string(name):
    launch = LaunchFile(name)
    (call,) = [c for c in launch.calls("SetEnvironmentVariable")
               if _string(c.args[0]) == "ROS_SECURITY_ENCLAVE_OVERRIDE"]
    assert launch.configurations(call.args[1]) == {"enclave"}
    assert _keyword(call, "condition") is not None
    assert not launch.calls("PythonExpression")


# ---- the single process really hands each node its own device ----------------------------

def _devices_reach_each_node(arguments: list, namespace: str, tmp_path: Path, expected: dict):
    """Start dispider_graph with `arguments` and autostart off (no models) and read each
    node's device back over DDS."""
    from graph_tools import Client
    from ros_tools import start_process, stop_process
    from dispider_ros.paths import executable

    # last, so it wins over the shipped parameter file's autostart: true
    args = [str(executable("dispider_graph")), *arguments, "--ros-args", "-p", "autostart:=false"]
    process = start_process(args, tmp_path / "dispider_graph.log")
    client = Client(namespace)
    try:
        for node, device in expected.items():
            assert client.get_params(node, ["device"]) == [device], node
    finally:
        client.close()
        code = stop_process(process)
    assert code == 0, (tmp_path / "dispider_graph.log").read_text()[-3000:]


def test_single_process_device_parameters_reach_each_node(tmp_path):
    """The filled-in single_process_devices.yaml gives each of the three nodes of one process
    its own device, in a namespace (where rcl's `-p perception_node:device:=...` would not)."""
    import yaml
    from ros_tools import require_ros

    require_ros()
    values = {"perception_device": "cuda:1", "decision_device": "cpu", "reaction_device": "0"}
    devices = tmp_path / "devices.yaml"
    devices.write_text(yaml.safe_dump(_devices_file(values)))
    namespace = f"/launch_{uuid.uuid4().hex[:6]}"
    _devices_reach_each_node(["--ros-args", "-r", f"__ns:={namespace}",
                              "--params-file", str(devices)], namespace, tmp_path,
                             {node: values[f"{SHORT[node]}_device"] for node in THREE})


# ---- with launch_ros: loaded and evaluated -------------------------------------------------

def _description(name):
    pytest.importorskip("launch_ros", reason="launch_ros is not on PyPI: the files are checked "
                        "as syntax trees above; load them with the official ROS 2 CLI (README, "
                        "'Trying the launch files with the official ROS 2 CLI')")
    path = LAUNCH / name
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def _evaluate(description, arguments: dict):
    """The launch context after the declarations, and each node's final command line, the way
    `ros2 launch` builds them (without starting anything)."""
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument
    from launch_ros.actions import Node

    context = LaunchContext()
    context.launch_configurations.update(arguments)
    commands = []
    for action in description.entities:
        if isinstance(action, DeclareLaunchArgument):
            action.execute(context)
        elif isinstance(action, Node):
            action._perform_substitutions(context)
            ros_specific = {}
            if action.is_node_name_fully_specified():
                ros_specific["name"] = f"__node:={action.node_name.split('/')[-1]}"
            if action.expanded_node_namespace:
                ros_specific["ns"] = f"__ns:={action.expanded_node_namespace}"
            context.extend_locals({"ros_specific_arguments": ros_specific})
            action.prepare(context)
            commands.append(action.process_details["cmd"])
    return context, commands


def _options(command: list, flag: str) -> list:
    return [command[i + 1] for i, word in enumerate(command[:-1]) if word == flag]


@pytest.mark.parametrize("name", NAMES)
def test_launch_ros_loads_the_file_with_every_argument_described(name):
    description = _description(name)
    from launch.actions import DeclareLaunchArgument

    declared = {a.name: a for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert set(declared) == EXPECTED[name][2]
    assert all(a.description and a.description != "no description given"
               for a in declared.values())


@pytest.mark.parametrize("name", NAMES)
def test_launch_ros_evaluates_the_commands(name):
    import yaml
    from dispider_ros.paths import share_dir

    arguments = {"image": "/camera/color/image_raw", "namespace": "robot",
                 "preset": "qwen2vl_2b", "use_sim_time": "true", "log_level": "debug",
                 "perception_device": "cuda:1", "decision_device": "cpu",
                 "reaction_device": "cuda:0"}
    _, commands = _evaluate(_description(name), arguments)
    kind, nodes, _ = EXPECTED[name]
    executables = list(nodes) if kind == "LifecycleNode" else ["dispider_graph"]
    assert [Path(c[0]).name for c in commands] == executables
    for command, executable in zip(commands, executables):
        assert Path(command[0]).parent.name == "dispider_ros"  # lib/dispider_ros/<exe>
        rules = _options(command, "-r")
        assert "__ns:=/robot" in rules
        assert _options(command, "--log-level") == ["debug"]
        files = _options(command, "--params-file")
        assert files[0] == str(share_dir() / "config" / "dispider.yaml")
        overrides = yaml.safe_load(Path(files[1]).read_text())
        if kind == "LifecycleNode":
            assert f"__node:={executable}" in rules
            assert overrides == {f"/robot/{executable}": {"ros__parameters": {
                "preset": "qwen2vl_2b", "use_sim_time": True,
                "device": arguments[f"{SHORT[executable]}_device"]}}}
            camera = ["image:=/camera/color/image_raw"] if executable == "perception_node" else []
            assert [r for r in rules if not r.startswith("__")] == camera
        else:
            assert not any(r.startswith("__node:=") for r in rules)  # keeps its node names
            assert overrides == {"/**": {"ros__parameters": {"preset": "qwen2vl_2b",
                                                             "use_sim_time": True}}}
            assert [r for r in rules if not r.startswith("__")] == [
                "perception_node:image:=/camera/color/image_raw"]
            assert yaml.safe_load(Path(files[2]).read_text()) == _devices_file(arguments)


def test_launch_ros_single_process_command_gives_each_node_its_device(tmp_path):
    """The evaluated command line of dispider_single_process.launch.py, run for real."""
    from ros_tools import require_ros

    require_ros()
    arguments = {"perception_device": "cuda:1", "decision_device": "cpu",
                 "reaction_device": "0", "namespace": f"/launch_{uuid.uuid4().hex[:6]}"}
    _, (command,) = _evaluate(_description("dispider_single_process.launch.py"), arguments)
    _devices_reach_each_node(command[1:], arguments["namespace"], tmp_path,
                             {node: arguments[f"{SHORT[node]}_device"] for node in THREE})


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("enclave, expected", [("", False), ("/foo", True), ("/a'b", True)])
def test_enclave_argument_sets_the_override_only_when_given(name, enclave, expected):
    description = _description(name)
    from launch.actions import SetEnvironmentVariable
    from launch.utilities import perform_substitutions

    context, _ = _evaluate(description, {"enclave": enclave})
    actions = [a for a in description.entities if isinstance(a, SetEnvironmentVariable)
               and perform_substitutions(context, a.name) == "ROS_SECURITY_ENCLAVE_OVERRIDE"]
    assert len(actions) == 1, "every launch file must honour its enclave argument"
    assert actions[0].condition.evaluate(context) is expected
