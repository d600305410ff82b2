"""Lifecycle plumbing shared by the three nodes: parameters, health, transitions, main()."""
from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

import rclpy
import torch
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy

from dispider_ros import settings as node_settings
from dispider_ros.core import schema
from dispider_ros.nodes.diagnostics import Health
from dispider_ros.nodes.params import declare, split_changes, values

# Queries, triggers and responses must not be lost: reliable, a little history.
RELIABLE = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=50,
                      reliability=QoSReliabilityPolicy.RELIABLE,
                      durability=QoSDurabilityPolicy.VOLATILE)
# Query and trigger inputs: a storm must reach the core, which sheds load with an answer per
# item (rate limit, bounded reaction queue); a 50-deep reader history silently overwrote
# triggers whenever the executor stalled for a quarter of a second under a burst.
RELIABLE_INPUT = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1000,
                            reliability=QoSReliabilityPolicy.RELIABLE,
                            durability=QoSDurabilityPolicy.VOLATILE)
# Cameras: depth 1, reliability matched to the publishers (nodes/camera_input.py).
# Nodes sharing a process (dispider_graph) configure one at a time: transformers' lazy
# imports are not thread-safe, and parallel loads would only compete for memory bandwidth.
_CONFIGURE_LOCK = threading.Lock()


class DispiderNode(LifecycleNode):
    """Base: declares the schema's parameters of NODE, validates changes, publishes health,
    optional autostart.

    Subclasses implement configure_core / activate_io / deactivate_io / cleanup_core,
    check_live(updates) (raise ValueError to reject) and apply_live(updates).
    """

    NODE = ""  # the node's name in core/schema.py

    def __init__(self, **kwargs):
        super().__init__(self.NODE, **kwargs)
        self.PARAMS = list(schema.params(self.NODE))
        self.MODEL_PARAM = schema.MODEL_PARAM[self.NODE]
        self._from_preset: List[str] = []  # parameters the preset filled in at configure
        declare(self, self.PARAMS)
        self.state_label = "unconfigured"
        self.settings: Dict[str, Any] = {}
        self.resolved: Dict[str, Any] = {}  # preset-resolved model/device/dtype
        self.lock = threading.RLock()  # guards the core between executor threads
        self.input_group = MutuallyExclusiveCallbackGroup()  # camera callbacks
        self.control_group = ReentrantCallbackGroup()  # queries, triggers, timers
        self.health = Health(self, lambda: str(self.resolved.get("device", "")), self.status_values)
        self._pending: Dict[str, Any] = {}
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        self._diagnostics_timer = self._health_timer(self.get_parameter("diagnostics_period_sec").value)
        if self.get_parameter("autostart").value:
            self._autostart_timer = self.create_timer(0.0, self._autostart)
        else:  # otherwise a lone executable would sit silent
            name = self.get_fully_qualified_name()
            self.get_logger().info(
                f"unconfigured, waiting to be configured: `ros2 lifecycle set {name} configure` "
                f"then `activate` (or start with `--ros-args -p autostart:=true`)")

    # -- subclass hooks ------------------------------------------------------------------
    def configure_core(self, settings: Dict[str, Any]) -> None:
        raise NotImplementedError

    def activate_io(self) -> None:
        raise NotImplementedError

    def deactivate_io(self) -> None:
        raise NotImplementedError

    def cleanup_core(self) -> None:
        raise NotImplementedError

    def check_live(self, updates: Dict[str, Any]) -> None:
        """Raise ValueError naming the bad value if updates cannot be applied."""

    def apply_live(self, updates: Dict[str, Any]) -> None:
        """Apply validated live updates to the core."""

    def status_values(self) -> Dict[str, Any]:
        return {}

    # -- helpers -------------------------------------------------------------------------
    def lifecycle_state_label(self) -> str:
        return self.state_label

    def _show_resolved(self) -> None:
        """Let `ros2 param get` read the model, device and dtype actually in use."""
        shown = {self.MODEL_PARAM: "model", "device": "device", "dtype": "dtype"}
        self._from_preset = [name for name in shown if not self.settings[name]]
        self.set_parameters([Parameter(name, value=self.resolved[shown[name]])
                             for name in self._from_preset])

    def _hide_resolved(self) -> None:
        """Back to empty (= follow the preset) for what the preset filled in."""
        names, self._from_preset = getattr(self, "_from_preset", []), []
        if names:
            self.set_parameters([Parameter(name, value="") for name in names])

    # -- lifecycle -----------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            with _CONFIGURE_LOCK, self.lock:
                self.settings = values(self, self.PARAMS)
                self.resolved = node_settings.resolve_models(self.NODE, self.settings)
                if self.settings["torch_threads"]:
                    torch.set_num_threads(self.settings["torch_threads"])
                if self.settings.get("trust_remote_code"):  # on /rosout too, not only stderr
                    self.get_logger().warning(
                        f"trust_remote_code is ON: code shipped with {self.resolved['model']} "
                        "will run in this process; turn it off unless you trust that checkpoint")
                self.configure_core(self.settings)
        except Exception as error:  # any load failure: stay unconfigured, say why
            self.get_logger().error(f"configure failed: {type(error).__name__}: {error}")
            self.health.faults["configure_failed"] += 1  # on /diagnostics; logged just above
            self._safe_cleanup()
            return TransitionCallbackReturn.FAILURE
        self._show_resolved()
        self.state_label = "inactive"
        self.get_logger().info(
            f"configured: model={self.resolved['model']} device={self.resolved['device']} "
            f"dtype={self.resolved['dtype']}")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.activate_io()
        except Exception as error:
            self.get_logger().error(f"activate failed: {type(error).__name__}: {error}")
            return TransitionCallbackReturn.FAILURE
        self.state_label = "active"
        self.get_logger().info("activated")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.deactivate_io()
        self.state_label = "inactive"
        self.get_logger().info("deactivated")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._safe_cleanup()
        self.state_label = "unconfigured"
        self._hide_resolved()
        self.get_logger().info("cleaned up (models released)")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        self.state_label = "finalized"
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}: releasing resources")
        self.release()
        self.state_label = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        """Stop I/O and free models, whatever the state; safe to call twice."""
        try:
            self.deactivate_io()
        except Exception as error:  # shutting down: report, continue freeing
            self.get_logger().warning(f"deactivate during release: {error}")
        self._safe_cleanup()

    def _safe_cleanup(self) -> None:
        try:
            with self.lock:
                self.cleanup_core()
        except Exception as error:
            self.get_logger().warning(f"cleanup: {type(error).__name__}: {error}")

    def _health_timer(self, period: float):
        # Steady time, not the node's clock: a paused bag or a stalled /clock (sim time) must
        # not silence health; the node's own time is one of the values it reports.
        return self.create_timer(period, self.health.publish, callback_group=self.control_group,
                                 clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        self.destroy_timer(self._autostart_timer)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    # -- parameters ----------------------------------------------------------------------
    def _on_set_parameters(self, changes) -> SetParametersResult:
        try:
            updates, static = split_changes(self.PARAMS, changes)
        except ValueError as error:
            return SetParametersResult(successful=False, reason=str(error))
        if static and self.state_label not in ("unconfigured", "finalized"):
            return SetParametersResult(successful=False, reason=(
                f"{', '.join(static)} can only change while unconfigured (now "
                f"{self.state_label}): deactivate and clean up the node, set it, configure again"))
        live = {k: v for k, v in updates.items() if k not in static}
        if live and self.state_label in ("inactive", "active"):
            try:
                self.check_live(live)
            except (ValueError, TypeError) as error:
                return SetParametersResult(successful=False, reason=str(error))
            self._pending = live
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, changes) -> None:
        for change in changes:  # the health timer follows its parameter in every state
            if change.name == "diagnostics_period_sec":
                self._diagnostics_timer.cancel()
                self.destroy_timer(self._diagnostics_timer)
                self._diagnostics_timer = self._health_timer(change.value)
        pending, self._pending = self._pending, {}
        if not pending:
            return
        with self.lock:
            self.settings.update(pending)
            self.apply_live(pending)
        self.get_logger().info(f"applied {pending}")


def spin(nodes: List, num_threads: int = 4) -> None:
    """Spin nodes on one MultiThreadedExecutor until Ctrl-C, then free them; exit cleanly."""
    executor = MultiThreadedExecutor(num_threads=num_threads)
    for node in nodes:
        executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except _rclpy.RCLError:
        # Ctrl-C shuts the context down from the signal handler: a spin already past its
        # shutdown check then fails to build its wait set. That is the same clean stop.
        if executor.context.ok():
            raise
    finally:
        for node in nodes:
            if hasattr(node, "release"):
                node.release()
        executor.shutdown(timeout_sec=1.0)
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()


def run(node_class, args: Optional[list] = None) -> None:
    """Entry point of a single-node executable."""
    rclpy.init(args=args)
    spin([node_class()])
