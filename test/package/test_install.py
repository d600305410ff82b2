"""The installed package is where ROS tools look for it (ament index, lib/, share/)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXECUTABLES = {"perception_node", "decision_node", "reaction_node"}


def _prefix() -> Path:
    try:
        from ament_index_python.packages import get_package_prefix
    except ImportError as error:
        pytest.skip(f"ament_index_python is not importable: {error}")
    return Path(get_package_prefix("dispider_ros"))


def test_ament_index_knows_the_package():
    prefix = _prefix()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "dispider_ros").is_file()
    assert (prefix / "share" / "dispider_ros" / "package.xml").is_file()


def test_launch_and_config_files_are_installed():
    from ament_index_python.packages import get_package_share_directory

    share = Path(get_package_share_directory("dispider_ros"))

    def files(root):  # pip byte-compiles installed .py files: ignore its __pycache__
        return sorted(p.relative_to(root) for p in root.rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts)
    for folder in ("launch", "config"):
        assert files(REPO / folder) and files(REPO / folder) == files(share / folder), folder


def test_executables_are_under_lib_and_runnable():
    lib = _prefix() / "lib" / "dispider_ros"
    found = {p.name for p in lib.iterdir() if p.is_file() and os.access(p, os.X_OK)}
    assert EXECUTABLES <= found


def test_msg_import_works_outside_the_source_tree(tmp_path):
    code = "from dispider_ros.msg import Query, Trigger, Response, FrameFeature; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_msg_import_works_from_the_repository_root():
    # The source folder shadows the installed package here; __init__ extends its path.
    code = "import dispider_ros, dispider_ros.msg as m; print(m.Query.__name__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "Query", out.stderr
