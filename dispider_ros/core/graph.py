"""The composition root: sampler -> perception -> decision -> reaction, wired once.

`StreamingGraph` owns the three stages for in-process use (offline replay, benchmarks, the
single-process graph); the three ROS nodes wrap the same stages one each, in the same
order, so what the replay and the benchmarks measure is what the nodes run:

1. `take(camera_id, stamp)` samples on the stamp alone: a frame that is not due is never
   decoded (the nodes' camera callbacks do the same).
2. `process(frames)` encodes the sampled frames in one batch (perception), stores each
   frame in the reaction's memory (visual tokens encoded on arrival), and only then hands
   the features to the decision, so every trigger's evidence frame is in memory by
   construction; triggers are submitted to the reaction at once.
3. `ask(spec, stamp)` registers a question; a `now` question fires on the latest feature.

Nothing here knows ROS or a model family: the encoders and the reaction VLM are injected
through the Protocols in core.protocols (models implements them; dispider_ros.compose
loads them from the parameter schema's settings).
"""
from __future__ import annotations

import logging
from typing import Callable, List, Optional, Sequence

import numpy as np

from dispider_ros.core.decision import DecisionCore
from dispider_ros.core.perception import PerceptionPipeline
from dispider_ros.core.reaction import ReactionEngine
from dispider_ros.core.types import Frame, FrameFeature, QuerySpec, TriggerEvent

LOG = logging.getLogger(__name__)

FeatureCallback = Callable[[FrameFeature], None]
TriggerCallback = Callable[[TriggerEvent], None]


class StreamingGraph:
    """The three stages in one process; not thread-safe (one feeding thread).

    Args:
        perception: sampler, vision encoder and clip segmenter.
        decision: queries and policies.
        reaction: memory and reaction VLM with its own worker thread; its `on_response`
            receives the answers.
        on_feature: called with each feature before the decision scores it.
        on_trigger: called with each trigger before it is submitted to the reaction.
        answer_timeout_sec: None = triggers are answered concurrently with the stream (as
            in the nodes); a number = each trigger is answered before the stream goes on,
            waiting at most this long (deterministic offline replay: with greedy decoding
            the memory and the text do not depend on the machine's speed).
    """

    def __init__(self, perception: PerceptionPipeline, decision: DecisionCore,
                 reaction: ReactionEngine, on_feature: Optional[FeatureCallback] = None,
                 on_trigger: Optional[TriggerCallback] = None,
                 answer_timeout_sec: Optional[float] = None):
        self.perception = perception
        self.decision = decision
        self.reaction = reaction
        self.on_feature = on_feature
        self.on_trigger = on_trigger
        self.answer_timeout_sec = answer_timeout_sec

    # -- camera side ---------------------------------------------------------------------
    def take(self, camera_id: str, stamp: float) -> Optional[int]:
        """Sample on the stamp alone; the sampled index, or None (raises RejectedFrame)."""
        return self.perception.take(camera_id, stamp)

    def frame(self, camera_id: str, stamp: float, index: int, image: np.ndarray,
              frame_id: str = "") -> Frame:
        """The Frame of a taken sample once decoded (raises RejectedFrame on a bad image)."""
        return self.perception.frame(camera_id, stamp, index, image, frame_id)

    def offer(self, camera_id: str, stamp: float, image: np.ndarray,
              frame_id: str = "") -> List[TriggerEvent]:
        """Sample an already decoded frame and, when due, process it; the triggers fired."""
        index = self.take(camera_id, stamp)
        if index is None:
            return []
        return self.process([self.frame(camera_id, stamp, index, image, frame_id)])

    def process(self, frames: Sequence[Frame]) -> List[TriggerEvent]:
        """Encode sampled frames, store them in memory, decide, submit; the triggers fired.

        Args:
            frames: sampled frames (from `frame`), each camera's in time order.
        """
        features = self.perception.process(frames)
        clips = {(f.camera_id, f.frame_index): f.clip_index for f in features}
        for frame in frames:  # evidence before decision: a trigger never waits for its frame
            self.reaction.ingest(frame, clips.get((frame.camera_id, frame.index), -1))
        triggers: List[TriggerEvent] = []
        for feature in features:
            if self.on_feature is not None:
                self.on_feature(feature)
            fired = self.decision.on_feature(feature)
            self._submit(fired)
            triggers += fired
        return triggers

    # -- asker side ----------------------------------------------------------------------
    def ask(self, spec: QuerySpec, now_stamp: float) -> List[TriggerEvent]:
        """Register a question; a `now` question fires at once (raises QueryRejected)."""
        _, fired = self.decision.add_query(spec, now_stamp)
        self._submit(fired)
        return fired

    def cancel(self, query_id: str) -> bool:
        return self.decision.cancel(query_id)

    def wait_idle(self, timeout: float) -> bool:
        """Block until the reaction has answered everything submitted, or timeout."""
        return self.reaction.wait_idle(timeout)

    def close(self) -> None:
        """Stop the reaction worker (waiting triggers get an error final)."""
        self.reaction.close()

    def _submit(self, triggers: Sequence[TriggerEvent]) -> None:
        for trigger in triggers:
            if self.on_trigger is not None:
                self.on_trigger(trigger)
            self.reaction.submit(trigger)
            if self.answer_timeout_sec is not None and \
                    not self.reaction.wait_idle(self.answer_timeout_sec):
                raise TimeoutError(f"no answer to trigger {trigger.trigger_id} within "
                                   f"{self.answer_timeout_sec:.0f} s")
