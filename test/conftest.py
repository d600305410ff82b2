"""Test session set-up shared by every test folder.

Isolation: each run gets its own ROS_DOMAIN_ID (unless one is set), localhost-only
discovery, its own ROS_HOME, and no model hub. Tiny models are cached under build/ so a
second run does not rebuild them.
"""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 90))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DISPIDER_CACHE", str(REPO / "build" / "test-cache"))
os.environ.setdefault("ROS_HOME", str(REPO / "build" / "test-ros-home"))
# The installed package is found through the ament index of the interpreter's prefix.
_prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
if sys.prefix not in _prefixes and (Path(sys.prefix) / "share" / "ament_index").is_dir():
    os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join([sys.prefix] + _prefixes)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; tests needing it skip with a reason where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent on this machine")
    return SHARED_DATA


def shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"{path} is absent on this machine")
    return path


def pytest_sessionfinish(session, exitstatus):
    """A run in which nothing passed is a failure, never a silent green."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and exitstatus == 0 and not reporter.stats.get("passed"):
        session.exitstatus = 1
