"""Stopping child processes started in their own session (nodes, players): like Ctrl-C."""
from __future__ import annotations

import os
import signal
import subprocess
from typing import Iterable, Optional


def stop_group(process: subprocess.Popen, timeout: float = 15.0) -> Optional[int]:
    """SIGINT the process group (rclpy shuts down cleanly), SIGKILL it if it hangs for
    `timeout` seconds; return the exit code."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)
        except ProcessLookupError:  # gone between poll() and killpg()
            pass
    return process.poll()


def stop_groups(processes: Iterable[subprocess.Popen], timeout: float = 15.0) -> None:
    """SIGINT every group first (they stop in parallel), then wait for each as stop_group."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    for process in processes:
        stop_group(process, timeout)
