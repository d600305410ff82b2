"""Stopping an executor that spins on a thread of its own, before anything is destroyed."""
from __future__ import annotations

import logging
import threading

LOG = logging.getLogger(__name__)


def stop_spinning(executor, thread: threading.Thread, timeout: float = 10.0) -> bool:
    """Shut `executor` down and join the thread spinning it; True once that thread ended.

    Destroy nodes, action clients and contexts only after this returned True: destroying
    them under a thread still inside rclpy's wait can leave that thread looping in C with
    the GIL held (seen: a test process hung for minutes), and a spin thread left inside rcl
    at interpreter exit aborts the process.
    """
    executor.shutdown(timeout_sec=timeout)
    thread.join(timeout)
    if thread.is_alive():
        LOG.warning("spin thread %s did not stop within %.1f s; its node is left alone",
                    thread.name, timeout)
        return False
    return True
