"""Helpers for tests that run real nodes over DDS in separate processes."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest


def require_ros():
    """Import rclpy and the built messages, or skip with the reason."""
    try:
        import rclpy  # noqa: F401
        from dispider_ros.msg import Query  # noqa: F401
    except ImportError as error:
        pytest.skip(f"rclpy or the built dispider_ros messages are not importable: {error}")


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             spin: Optional[Callable[[float], None]] = None, poll: float = 0.02) -> None:
    """Wait until condition() holds, spinning a node meanwhile if given; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        if spin is not None:
            spin(poll)
        else:
            time.sleep(poll)


def start_process(args: list, log_path: Path, env: Optional[dict] = None) -> subprocess.Popen:
    """Start a child in its own process group, stdout+stderr to log_path."""
    log = open(log_path, "wb")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGINT the process group (like Ctrl-C), then SIGKILL if it hangs; return the exit code."""
    from dispider_ros.processes import stop_group

    return stop_group(process, timeout)


def python() -> str:
    return sys.executable
