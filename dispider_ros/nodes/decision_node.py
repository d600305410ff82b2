"""decision_node: queries x perception features -> Trigger messages (when to respond)."""
from __future__ import annotations

import math
import time
import uuid
from typing import Any, Dict, List, Optional

from std_msgs.msg import String

from dispider_ros import compose
from dispider_ros.core.decision import DecisionCore
from dispider_ros.core.types import TriggerEvent
from dispider_ros.msg import FrameFeature, Query, Response, Trigger
from dispider_ros.nodes.ask_server import AskServer
from dispider_ros.nodes.base import RELIABLE, RELIABLE_INPUT, DispiderNode, run
from dispider_ros.nodes.convert import (feature_from_msg, header, query_from_msg, to_sec,
                                        trigger_to_msg)

WAIT_POLL_SEC = 0.05  # how often waiting "now" questions are checked against now_wait_sec


class DecisionNode(DispiderNode):
    """Holds the active queries; publishes a Trigger whenever a policy fires."""

    NODE = "decision_node"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.core: Optional[DecisionCore] = None
        self.encoder = None
        self.trigger_pub = None
        self.rejection_pub = None
        self.cancel_pub = None
        self.inputs: List = []
        self.latest_stamp = 0.0
        self._waiting: Dict[str, float] = {}  # "now" query id -> wall deadline (now_wait_sec)
        self._wait_timer = None
        # The `ask` action exists in every state, so a goal to an inactive node is refused
        # with a reason rather than left unanswered.
        self.ask = AskServer(self, self.control_group)

    def configure_core(self, settings: Dict[str, Any]) -> None:
        self.encoder = compose.load_vision_encoder(settings, self.NODE)
        # Assigned query ids and trigger ids name this node and this configure, so they never
        # collide across robots, namespaces or restarts ("/robot1/decision_node-3fa2c1-q1").
        id_prefix = f"{self.get_fully_qualified_name()}-{uuid.uuid4().hex[:6]}"
        self.core = compose.decision_stage(settings, self.encoder, id_prefix=id_prefix)
        self.trigger_pub = self.create_lifecycle_publisher(Trigger, "trigger", RELIABLE)
        self.rejection_pub = self.create_lifecycle_publisher(Response, "response", RELIABLE)
        # Canceled queries (topic or action) for the reaction node, which stops their answers.
        self.cancel_pub = self.create_lifecycle_publisher(Query, "query_cancel", RELIABLE)
        self.ask.configure(settings["answer_timeout_sec"])

    def activate_io(self) -> None:
        group = self.control_group
        self.inputs = [
            self.create_subscription(FrameFeature, "features", self._on_feature, RELIABLE,
                                     callback_group=self.input_group),
            self.create_subscription(Query, "query", self._on_query, RELIABLE_INPUT,
                                     callback_group=group),
            self.create_subscription(String, "query_text", self._on_query_text, RELIABLE_INPUT,
                                     callback_group=group),
        ]
        self.ask.activate()
        self._wait_timer = self.create_timer(WAIT_POLL_SEC, self._release_waiting, callback_group=group)

    def deactivate_io(self) -> None:
        for subscription in self.inputs:
            self.destroy_subscription(subscription)
        self.inputs = []
        if self._wait_timer is not None:
            self.destroy_timer(self._wait_timer)
            self._wait_timer = None
        self.ask.deactivate(f"{self.get_fully_qualified_name()} deactivated")

    def cleanup_core(self) -> None:
        self.deactivate_io()
        for name in ("trigger_pub", "rejection_pub", "cancel_pub"):
            publisher = getattr(self, name)
            if publisher is not None:
                self.destroy_lifecycle_publisher(publisher)
                setattr(self, name, None)
        self.core = None
        if self.encoder is not None:
            self.encoder.close()
            self.encoder = None

    def check_live(self, updates: Dict[str, Any]) -> None:
        compose.decision_config({**self.settings, **updates})

    def apply_live(self, updates: Dict[str, Any]) -> None:
        self.core.set_config(**{k: v for k, v in updates.items() if k in compose.DECISION_FIELDS})
        if "answer_timeout_sec" in updates:
            self.ask.configure(updates["answer_timeout_sec"])

    # -- inputs --------------------------------------------------------------------------
    def _on_feature(self, msg: FrameFeature) -> None:
        core = self.core
        if core is None:
            return
        try:
            feature = feature_from_msg(msg)
            triggers = core.on_feature(feature)
        except (ValueError, TypeError) as error:
            self.health.fault("feature", f"{msg.camera_id}: {error}")
            return
        self.latest_stamp = feature.stamp  # "now" for queries sent with a zero stamp
        self.ask.camera_time(feature.camera_id, feature.stamp)  # revision windows close
        self._publish(triggers)

    def _on_query(self, msg: Query) -> None:
        core = self.core
        if core is None:
            return
        if msg.cancel:
            if not self.cancel_query(msg.query_id, "canceled on `query`"):
                self.health.fault("cancel_unknown", f"cancel: no active query {msg.query_id!r}")
            return
        assigned = "" if msg.query_id else core.new_query_id()
        stamp = to_sec(msg.header.stamp)
        try:
            spec = query_from_msg(msg, assigned)
            stamped = spec.stamp > 0
            if not stamped:
                spec.stamp = self.latest_stamp  # zero stamp = "now" in camera time
            # The rate limit runs on the node clock (sim time during replay). Features come on
            # another callback group, so ones older than a stamped question may still be queued:
            # it waits for the frame at its stamp (catch_up) rather than answer from an old one.
            query, triggers = core.add_query(spec, self.get_clock().now().nanoseconds * 1e-9,
                                             catch_up=stamped)
        except (ValueError, TypeError) as error:
            query_id = msg.query_id or assigned
            kind = getattr(error, "reason", "invalid")
            self.health.fault(f"query_{kind}", f"query {query_id!r} rejected: {error}")
            self._reject(query_id, stamp, str(error))
            return
        self.get_logger().info(f"query {query.query_id!r} mode={query.mode}: {query.spec.text!r}")
        if core.waiting(query.query_id):
            self._waiting[query.query_id] = time.monotonic() + self.settings["now_wait_sec"]
        self._publish(triggers)

    def _release_waiting(self) -> None:
        """Answer "now" questions whose frame did not come within now_wait_sec from the newest
        frame (the camera stopped); forget those that fired or ended."""
        core = self.core
        if core is None or not self._waiting:
            return
        now = time.monotonic()
        for query_id, deadline in list(self._waiting.items()):
            if not core.waiting(query_id):
                self._waiting.pop(query_id, None)
            elif now >= deadline:
                self._waiting.pop(query_id, None)
                self.get_logger().warning(f"query {query_id!r}: no frame at its stamp within "
                                          f"{self.settings['now_wait_sec']} s; answered from the newest")
                self._publish(core.release_waiting(query_id))

    def _on_query_text(self, msg: String) -> None:
        self._on_query(Query(text=msg.data))

    def _reject(self, query_id: str, stamp: float, reason: str) -> None:
        self.rejection_pub.publish(Response(
            header=header(stamp if math.isfinite(stamp) else 0.0), query_id=query_id,
            final=True, ttft_sec=math.nan, error_code=Response.QUERY_REJECTED,
            error=f"query rejected: {reason}", history_span_sec=math.nan))

    def cancel_query(self, query_id: str, reason: str) -> bool:
        """End a query in the core (False when it was not active there) and, either way,
        tell the reaction node on `query_cancel`: it stops the query's running answer and ends
        its waiting triggers (CANCELED). A `now` query leaves the core when it fires, while
        its answer may still be generating."""
        core = self.core
        active = core is not None and core.cancel(query_id)
        if active:
            self.get_logger().info(f"query {query_id!r} cancelled: {reason}")
        publisher = self.cancel_pub
        if publisher is not None:
            publisher.publish(Query(header=header(self.latest_stamp), query_id=query_id, cancel=True))
        return active

    def _publish(self, triggers: List[TriggerEvent]) -> None:
        for event in triggers:
            message = trigger_to_msg(event)
            self.ask.on_trigger(message)  # before publishing: an ask goal waits on it from now
            self.trigger_pub.publish(message)
        self.ask.update()  # queries that this feature expired or completed end their goals

    publish_triggers = _publish

    def destroy_node(self):
        self.ask.destroy()  # rclpy does not destroy a node's action servers with it
        super().destroy_node()

    def status_values(self) -> Dict[str, Any]:
        values: Dict[str, Any] = {"model": self.resolved.get("model", "")}
        core = self.core
        if core is not None:
            values.update(core.stats())
        values.update(self.ask.stats())
        return values


def main(args=None):
    run(DecisionNode, args)


if __name__ == "__main__":
    main()
