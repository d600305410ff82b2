"""Decision policies: when does a query deserve a response for this frame?

One interface, `Policy.observe(query, feature) -> Optional[float]`: the score that fired,
or None. Per-camera state lives in `query.state[camera_id]`, so one policy object serves
every query. Match and activation share a trigger-storm guard: `cooldown_sec` of camera
time between two triggers of one query on one camera. Boundary (narration) has its own,
`boundary_cooldown_sec`, and loses no scene change inside it (BoundaryPolicy).
Match and activation also share a gate: the score is smoothed with an EMA
(`smoothing` = weight of the past), fires when it reaches the threshold, and must fall
below `threshold - hysteresis` before it can fire again. (Which mode an "auto" question
gets is a rule on its text: query_text.infer_mode.)
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from dispider_ros.core import schema
from dispider_ros.core.protocols import ActivationScorer
from dispider_ros.core.queries import ActiveQuery
from dispider_ros.core.types import FrameFeature

LOG = logging.getLogger(__name__)


@dataclass
class PolicyConfig:
    """Args:
        trigger_threshold: score in (0, 1] a smoothed score must reach to fire.
        hysteresis: in [0, 1): the score must drop below threshold - hysteresis to re-arm.
        cooldown_sec: camera seconds between triggers of one query on one camera, >= 0.
        smoothing: EMA weight of the past score in [0, 1) (0 = no smoothing).
        boundary_cooldown_sec: camera seconds between two boundary triggers of one query on
            one camera, >= 0 (BoundaryPolicy).
    """

    trigger_threshold: float = schema.default("decision_node", "trigger_threshold")
    hysteresis: float = schema.default("decision_node", "hysteresis")
    cooldown_sec: float = schema.default("decision_node", "cooldown_sec")
    smoothing: float = schema.default("decision_node", "smoothing")
    boundary_cooldown_sec: float = schema.default("decision_node", "boundary_cooldown_sec")

    def __post_init__(self):
        for name in ("trigger_threshold", "hysteresis", "cooldown_sec", "smoothing",
                     "boundary_cooldown_sec"):
            setattr(self, name, schema.check("decision_node", name, getattr(self, name)))


class Policy:
    """Base: subclasses implement observe(); state per (query, camera) in query.state."""

    name = ""
    needs_text_embedding = False

    def __init__(self, config: Optional[PolicyConfig] = None):
        self.config = config or PolicyConfig()

    def observe(self, query: "ActiveQuery", feature: FrameFeature) -> Optional[float]:
        """Return the score that fired for this feature, or None to stay silent.

        Args:
            query: the active query (its state[camera_id] is this policy's memory).
            feature: perception output for one sampled frame of a watched camera.
        """
        raise NotImplementedError

    @staticmethod
    def state(query: "ActiveQuery", camera_id: str) -> dict:
        return query.state.setdefault(camera_id, {})

    def _cooled_down(self, state: dict, stamp: float) -> bool:
        return stamp - state.get("last_fire", -math.inf) >= self.config.cooldown_sec

    def _gate(self, query: "ActiveQuery", feature: FrameFeature, raw: float) -> Optional[float]:
        """EMA + threshold + hysteresis + cooldown on a raw score in [0, 1]."""
        if not math.isfinite(raw):  # a NaN would stay in the EMA for good
            raise ValueError(f"query {query.query_id!r}: score {raw!r} is not finite")
        state = self.state(query, feature.camera_id)
        alpha = self.config.smoothing
        ema = raw if "ema" not in state else alpha * state["ema"] + (1.0 - alpha) * raw
        state["ema"], state["raw"] = ema, raw
        threshold = query.spec.threshold if query.spec.threshold is not None \
            else self.config.trigger_threshold
        if not state.get("armed", True):
            if ema < threshold - self.config.hysteresis:
                state["armed"] = True
            return None
        if ema >= threshold and self._cooled_down(state, feature.stamp):
            state["armed"], state["last_fire"] = False, feature.stamp
            return float(ema)
        return None


class NowPolicy(Policy):
    """Fires once per camera, on the first feature seen after the query arrived - or, for a
    question told to wait (DecisionCore.add_query with catch_up), on the first feature at or
    after `not_before`."""

    name = "now"

    def observe(self, query, feature):
        state = self.state(query, feature.camera_id)
        if state.get("fired") or feature.stamp < state.get("not_before", -math.inf):
            return None
        state["fired"] = True
        state.pop("not_before", None)
        return 1.0

    def wait(self, query, camera_id: str, not_before: float) -> None:
        self.state(query, camera_id)["not_before"] = not_before

    def waiting(self, query) -> List[str]:
        """Cameras on which query still waits for a feature at its stamp."""
        return [camera for camera, state in query.state.items()
                if "not_before" in state and not state.get("fired")]

    def stop_waiting(self, query, camera_id: str) -> None:
        self.state(query, camera_id).pop("not_before", None)


class BoundaryPolicy(Policy):
    """Narration: fires at clip boundaries (scene changes) and loses none of them.

    At most one trigger per `boundary_cooldown_sec` of camera time (flooding stays bounded);
    a boundary inside the cooldown is remembered and fires on the first feature once the
    cooldown has passed, one trigger for every boundary met meanwhile (merged). The trigger
    then carries that feature's clip (the newest scene). With the default cooldown (the
    shipped minimum clip length) two boundaries are never closer than it, so each fires on
    its own frame.
    """

    name = "boundary"

    def observe(self, query, feature):
        state = self.state(query, feature.camera_id)
        if feature.clip_boundary:
            state["pending"] = state.get("pending", 0) + 1
        # 1 us of slack: sampled stamps like 6.1 - 5.1 fall a hair short of a 1.0 s cooldown
        if state.get("pending") and \
                feature.stamp - state.get("last_fire", -math.inf) >= self.config.boundary_cooldown_sec - 1e-6:
            if state["pending"] > 1 or not feature.clip_boundary:
                LOG.debug("query %r: %d scene change(s) from the cooldown narrated at %.3f",
                          query.query_id, state["pending"], feature.stamp)
            state["pending"], state["last_fire"] = 0, feature.stamp
            return 1.0
        return None


def sigmoid(z: float) -> float:
    """Overflow-safe logistic function."""
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


class MatchPolicy(Policy):
    """Zero-shot text-image match: sigmoid(scale * cos(text, frame) + bias), gated.

    Args:
        config: thresholds and timing.
        calibration: (scale, bias) of the dual encoder (VisionEncoder.match_calibration());
            the default maps cos 0.5 to 0.5 and cos 1 to 0.99 for encoders without one.
    """

    name = "match"
    needs_text_embedding = True

    def __init__(self, config: Optional[PolicyConfig] = None,
                 calibration: Tuple[float, float] = (10.0, -5.0)):
        super().__init__(config)
        scale, bias = (float(v) for v in calibration)
        if not (math.isfinite(scale) and scale > 0 and math.isfinite(bias)):
            raise ValueError(f"calibration {calibration!r} must be (scale > 0, finite bias)")
        self.scale, self.bias = scale, bias

    def raw_score(self, query, feature) -> float:
        text, frame = query.text_embedding, feature.embedding
        if text is None or text.shape != frame.shape:
            raise ValueError(f"query {query.query_id!r}: text embedding "
                             f"{None if text is None else text.shape} does not match frame "
                             f"embedding {frame.shape} (same dual encoder in perception and decision?)")
        cos = float(np.dot(text, frame))  # both L2-normalised
        return sigmoid(self.scale * cos + self.bias)

    def observe(self, query, feature):
        return self._gate(query, feature, self.raw_score(query, feature))


class ActivationPolicy(Policy):
    """StreamBridge-style learned activation: head.score(text, frame) in [0, 1], gated.

    Args:
        head: object with score(text (N, D), frame (N, D)) -> (N,) probabilities, e.g.
            models.activation.ActivationHead.
        config: thresholds and timing.
    """

    name = "activation"
    needs_text_embedding = True

    def __init__(self, head: ActivationScorer, config: Optional[PolicyConfig] = None):
        super().__init__(config)
        self.head = head

    def observe(self, query, feature):
        if query.text_embedding is None:
            raise ValueError(f"query {query.query_id!r} has no text embedding")
        raw = float(self.head.score(query.text_embedding[None], feature.embedding[None])[0])
        return self._gate(query, feature, raw)
