"""decision_node: queries x perception features -> Trigger messages (when to respond)."""
from __future__ import annotations

import itertools
import math
from typing import Any, Dict, List, Optional

from std_msgs.msg import String

from dispider_ros.core.decision import DecisionConfig, DecisionCore
from dispider_ros.core.types import TriggerEvent
from dispider_ros.models.activation import ActivationHead
from dispider_ros.models.vision import VisionEncoder, VisionEncoderConfig
from dispider_ros.msg import FrameFeature, Query, Response, Trigger
from dispider_ros.nodes.base import RELIABLE, RELIABLE_INPUT, DispiderNode, run
from dispider_ros.nodes.convert import (feature_from_msg, header, query_from_msg, to_sec,
                                        trigger_to_msg)
from dispider_ros.nodes.params import Param, common_params

LIVE = ("trigger_threshold", "hysteresis", "cooldown_sec", "smoothing", "max_query_chars",
        "max_queries_per_sec")
PARAMS = common_params("vision_model", "SigLIP/CLIP checkpoint whose text tower scores "
                       "match queries (use perception's)") + [
    Param("activation_checkpoint", "", "folder of a trained activation head (enables mode "
          "'activation'); empty = none", static=True),
    Param("trigger_threshold", 0.5, "score at which match/activation queries fire", 0.0, 1.0),
    Param("hysteresis", 0.1, "a fired query re-arms after its score falls below threshold "
          "minus this", 0.0, 1.0),
    Param("cooldown_sec", 5.0, "camera seconds after a trigger before the same query may "
          "fire again", 0.0, 3600.0),
    Param("smoothing", 0.5, "EMA weight of the past score (0 = no smoothing)", 0.0, 0.99),
    Param("max_query_chars", 2000, "longer queries are rejected", 1, 100000),
    Param("max_queries_per_sec", 5.0, "query rate limit (camera time)", 0.01, 1000.0),
]


class DecisionNode(DispiderNode):
    """Holds the active queries; publishes a Trigger whenever a policy fires."""

    PARAMS = PARAMS
    MODEL_PARAM = "vision_model"

    def __init__(self, **kwargs):
        super().__init__("decision_node", **kwargs)
        self.core: Optional[DecisionCore] = None
        self.encoder: Optional[VisionEncoder] = None
        self.trigger_pub = None
        self.rejection_pub = None
        self.inputs: List = []
        self.latest_stamp = 0.0
        self._ids = itertools.count(1)

    def _config(self, settings: Dict[str, Any]) -> DecisionConfig:
        return DecisionConfig(**{key: settings[key] for key in LIVE})

    def configure_core(self, settings: Dict[str, Any]) -> None:
        config = self._config(settings)
        self.encoder = VisionEncoder(VisionEncoderConfig(
            model=self.resolved["model"], device=self.resolved["device"],
            dtype=self.resolved["dtype"], local_files_only=settings["local_files_only"],
            trust_remote_code=settings["trust_remote_code"]))
        head = None
        if settings["activation_checkpoint"]:
            head = ActivationHead.from_pretrained(settings["activation_checkpoint"],
                                                  device=self.resolved["device"])
        self.core = DecisionCore(config, text_encoder=self.encoder.encode_texts,
                                 match_calibration=self.encoder.match_calibration(),
                                 activation_head=head)
        self.trigger_pub = self.create_lifecycle_publisher(Trigger, "trigger", RELIABLE)
        self.rejection_pub = self.create_lifecycle_publisher(Response, "response", RELIABLE)

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

    def deactivate_io(self) -> None:
        for subscription in self.inputs:
            self.destroy_subscription(subscription)
        self.inputs = []

    def cleanup_core(self) -> None:
        self.deactivate_io()
        for name in ("trigger_pub", "rejection_pub"):
            publisher = getattr(self, name)
            if publisher is not None:
                self.destroy_lifecycle_publisher(publisher)
                setattr(self, name, None)
        self.core = None
        if self.encoder is not None:
            self.encoder.close()
            self.encoder = None

    def check_live(self, updates: Dict[str, Any]) -> None:
        self._config({**self.settings, **updates})

    def apply_live(self, updates: Dict[str, Any]) -> None:
        self.core.set_config(**{k: v for k, v in updates.items() if k in LIVE})

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
        self._publish(triggers)

    def _on_query(self, msg: Query) -> None:
        core = self.core
        if core is None:
            return
        if msg.cancel:
            if not core.cancel(msg.query_id):
                self.health.fault("cancel_unknown", f"cancel: no active query {msg.query_id!r}")
            else:
                self.get_logger().info(f"query {msg.query_id!r} cancelled")
            return
        assigned = f"{self.get_name()}-q{next(self._ids)}"
        stamp = to_sec(msg.header.stamp)
        try:
            spec = query_from_msg(msg, assigned)
            if spec.stamp <= 0:
                spec.stamp = self.latest_stamp  # zero stamp = "now" in camera time
            # The rate limit runs on the node clock (sim time during replay).
            query, triggers = core.add_query(spec, self.get_clock().now().nanoseconds * 1e-9)
        except (ValueError, TypeError) as error:
            query_id = msg.query_id or assigned
            kind = getattr(error, "reason", "invalid")
            self.health.fault(f"query_{kind}", f"query {query_id!r} rejected: {error}")
            self._reject(query_id, stamp, str(error))
            return
        self.get_logger().info(f"query {query.query_id!r} mode={query.mode}: {query.spec.text!r}")
        self._publish(triggers)

    def _on_query_text(self, msg: String) -> None:
        self._on_query(Query(text=msg.data))

    def _reject(self, query_id: str, stamp: float, reason: str) -> None:
        self.rejection_pub.publish(Response(
            header=header(stamp if math.isfinite(stamp) else 0.0), query_id=query_id,
            final=True, error=f"query rejected: {reason}"))

    def _publish(self, triggers: List[TriggerEvent]) -> None:
        for event in triggers:
            self.trigger_pub.publish(trigger_to_msg(event))

    def status_values(self) -> Dict[str, Any]:
        values: Dict[str, Any] = {"model": self.resolved.get("model", "")}
        core = self.core
        if core is not None:
            values.update(core.stats())
        return values


def main(args=None):
    run(DecisionNode, args)


if __name__ == "__main__":
    main()
