"""Health on /diagnostics and throttled, counted warnings for bad input."""
from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Dict

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue


class Health:
    """Counts faults by kind, warns at most once per `throttle_sec` per kind, publishes status."""

    def __init__(self, node, hardware_id: Callable[[], str], values: Callable[[], Dict],
                 throttle_sec: float = 5.0):
        self.node = node
        self.faults: Counter = Counter()
        self.hardware_id = hardware_id
        self.values = values
        self.throttle_sec = throttle_sec
        self._last_warned: Dict[str, float] = {}
        self.publisher = node.create_publisher(DiagnosticArray, "/diagnostics", 10)

    def fault(self, kind: str, message: str) -> None:
        """Count a fault of `kind` and log it (throttled per kind); never raises."""
        self.faults[kind] += 1
        now = time.monotonic()
        if now - self._last_warned.get(kind, -1e9) >= self.throttle_sec:
            self._last_warned[kind] = now
            self.node.get_logger().warning(f"[{kind}] {message} (seen {self.faults[kind]}x)")

    def publish(self) -> None:
        state = self.node.lifecycle_state_label()
        now = self.node.get_clock().now().nanoseconds * 1e-9
        values = {"lifecycle_state": state, "node_time_sec": f"{now:.3f}", **self.values()}
        values.update({f"fault.{kind}": count for kind, count in sorted(self.faults.items())})
        status = DiagnosticStatus(
            name=f"dispider_ros: {self.node.get_fully_qualified_name()}",
            hardware_id=self.hardware_id(),
            level=DiagnosticStatus.OK if state == "active" else DiagnosticStatus.WARN,
            message=state if not self.faults else f"{state}, {sum(self.faults.values())} faults",
            values=[KeyValue(key=k, value=_fmt(v)) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.node.get_clock().now().to_msg()
        self.publisher.publish(array)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
