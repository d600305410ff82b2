"""Everything but the ROS side imports with rclpy (and every ROS module) unavailable.

The ROS side: the node adapters (`nodes`), the action client (`client`) and the runnable
`examples`, besides the generated messages."""
import pkgutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROS_SIDE = ("dispider_ros.nodes", "dispider_ros.msg", "dispider_ros.action", "dispider_ros.client",
            "dispider_ros.examples")

BLOCKER = r"""
import importlib.abc, sys
BLOCKED = ("rclpy", "rosidl_runtime_py", "std_msgs", "sensor_msgs", "builtin_interfaces",
           "launch", "launch_ros", "cv_bridge", "dispider_ros.msg", "dispider_ros.nodes")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{name} blocked for this test")
sys.meta_path.insert(0, Block())
import importlib
for module in sys.argv[1:]:
    importlib.import_module(module)
print(len(sys.argv) - 1)
"""


def _ros_free_modules():
    names = []
    for info in pkgutil.walk_packages([str(REPO / "dispider_ros")], prefix="dispider_ros."):
        if info.name.startswith(ROS_SIDE):
            continue
        if info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return names


def test_core_models_and_eval_import_without_ros():
    modules = _ros_free_modules()
    assert "dispider_ros.core.types" in modules
    out = subprocess.run([sys.executable, "-c", BLOCKER, *modules], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.strip()) == len(modules)


def test_no_rclpy_import_outside_the_ros_side():
    offenders = []
    for path in (REPO / "dispider_ros").rglob("*.py"):
        relative = path.relative_to(REPO / "dispider_ros")
        if {"nodes", "examples"} & set(relative.parts) or relative == Path("client.py"):
            continue
        for line in path.read_text().splitlines():
            if line.strip().startswith(("import rclpy", "from rclpy")):
                offenders.append(str(path))
    assert not offenders
