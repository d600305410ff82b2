"""The decision core: active queries x perception features -> trigger events.

For each feature it expires queries by camera time, scores every active query watching
that camera with its mode's policy, and emits a TriggerEvent (unique id, evidence stamp,
frame and clip range) when one fires, then counts the response against the query's
limit. Text embeddings are computed once per query when it is added, through the
`text_encoder` callable (VisionEncoder.encode_texts in the node, anything in tests).
A feature stamp earlier than the camera's previous one (bag loop, sim-time reset) resets
that camera's policy state, so cooldowns from the old timeline cannot block the new one,
and moves the expiry timers of the queries watching it back by the jump (logged).
All public methods are serialised by one lock (the node calls them from several threads).

Revision (MOSS-Video-Preview: an answer is revised when new evidence appears): a trigger
of a query with revision on (`QuerySpec.revise`, else `revise_answers`) stays revisable
until `revise_window_sec` of its camera's time has passed - also when it completed the
query (a `now` question leaves the registry at once), so revisable answers are kept apart
from the registry: the newest per (query, camera), at most REVISABLE_KEPT. Boundary-mode
answers are never revisable: their next narration, at the next clip boundary, is the
update. A later feature of that camera inside the window revises an answer when
  - it starts a new clip (`clip_boundary`), or
  - the query's smoothed match/activation score has fallen below threshold - hysteresis
    (the evidence that fired it is gone; reason "score_drop").
A revision is a TriggerEvent with `revises_trigger_id` and `revision_reason` and the new
evidence frame; it does not count against max_responses and opens no window of its own
(one revision per answer, so a flood of cuts gives at most one extra answer each). A
query canceled, replaced or expired is not revised; time going back on a camera forgets
its revisable answers.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dispider_ros.core.clip_index import ClipIndex
from dispider_ros.core.policies import (ActivationPolicy, BoundaryPolicy, MatchPolicy, NowPolicy,
                                        Policy, PolicyConfig)
from dispider_ros.core.queries import ActiveQuery, QueryRegistry, QueryRejected, RegistryConfig
from dispider_ros.core.query_text import infer_mode, refers_to_past, retrieval_text
from dispider_ros.core import schema
from dispider_ros.core.types import FrameFeature, QuerySpec, TriggerEvent

LOG = logging.getLogger(__name__)
EmbedTexts = Callable[[Sequence[str]], np.ndarray]  # N texts -> (N, D), e.g. TextEncoder.encode_texts
_TEXT_CACHE_SIZE = 256
# Stamps near 1.7e9 s carry ~2e-7 s of float error; 0.1 ms is far below any sample interval.
_STAMP_SLACK = 1e-4
REVISABLE_KEPT = 256  # revisable answers held at once (the oldest window is dropped first)
GATED_MODES = ("match", "activation")  # modes whose smoothed score can drop (policies._gate)


@dataclass
class DecisionConfig:
    """Every tunable of the decision core (all live-settable through set_config).

    Args:
        trigger_threshold, hysteresis, cooldown_sec, smoothing, boundary_cooldown_sec: see
            policies.PolicyConfig.
        max_query_chars, max_queries_per_sec, max_active_queries, on_duplicate: see
            queries.RegistryConfig.
        retrieval_k, retrieval_min_score, retrieval_max_clips: question-relevant clip
            retrieval (the parameter schema; core/clip_index.py). retrieval_max_clips is
            read once, at construction.
        id_prefix: trigger ids are "<id_prefix>-<n>", assigned query ids "<id_prefix>-q<n>";
            "" = a random 8-hex prefix per core. Ids must stay unique across robots,
            namespaces and restarts recorded in one log: decision_node passes its fully
            qualified name plus a random token.
        revise_answers: revise answers when the evidence changes (a query's `revise` wins).
        revise_window_sec: camera seconds after a trigger in which it can be revised.
    """

    trigger_threshold: float = schema.default("decision_node", "trigger_threshold")
    hysteresis: float = schema.default("decision_node", "hysteresis")
    cooldown_sec: float = schema.default("decision_node", "cooldown_sec")
    smoothing: float = schema.default("decision_node", "smoothing")
    boundary_cooldown_sec: float = schema.default("decision_node", "boundary_cooldown_sec")
    max_query_chars: int = schema.default("decision_node", "max_query_chars")
    max_queries_per_sec: float = schema.default("decision_node", "max_queries_per_sec")
    max_active_queries: int = schema.default("decision_node", "max_active_queries")
    on_duplicate: str = "replace"
    id_prefix: str = ""
    retrieval_k: int = schema.default("decision_node", "retrieval_k")
    retrieval_min_score: float = schema.default("decision_node", "retrieval_min_score")
    retrieval_max_clips: int = schema.default("decision_node", "retrieval_max_clips")
    revise_answers: bool = schema.default("decision_node", "revise_answers")
    revise_window_sec: float = schema.default("decision_node", "revise_window_sec")

    def __post_init__(self):
        self.policy_config()  # validates
        self.registry_config()
        for name in ("retrieval_k", "retrieval_min_score", "retrieval_max_clips",
                     "revise_answers", "revise_window_sec"):
            setattr(self, name, schema.check("decision_node", name, getattr(self, name)))
        if not isinstance(self.id_prefix, str) or not (self.id_prefix == "" or self.id_prefix.isprintable()):
            raise ValueError(f"id_prefix {self.id_prefix!r} must be a printable string")

    def policy_config(self) -> PolicyConfig:
        return PolicyConfig(self.trigger_threshold, self.hysteresis, self.cooldown_sec, self.smoothing,
                            boundary_cooldown_sec=self.boundary_cooldown_sec)

    def registry_config(self) -> RegistryConfig:
        return RegistryConfig(self.max_query_chars, self.max_queries_per_sec,
                              self.max_active_queries, self.on_duplicate)


class DecisionCore:
    """Holds the queries and policies; turns features into triggers.

    Args:
        config: thresholds and limits.
        text_encoder: texts -> (N, D) embeddings in the frame embeddings' space; needed
            by match and activation queries.
        match_calibration: (scale, bias) for MatchPolicy (VisionEncoder.match_calibration()).
        activation_head: scorer for activation queries (models.activation.ActivationHead).
    """

    def __init__(self, config: Optional[DecisionConfig] = None,
                 text_encoder: Optional[EmbedTexts] = None,
                 match_calibration: Tuple[float, float] = (10.0, -5.0),
                 activation_head=None):
        self.config = config or DecisionConfig()
        self.text_encoder = text_encoder
        self._prefix = self.config.id_prefix or uuid.uuid4().hex[:8]
        self.registry = QueryRegistry(self.config.registry_config(), id_prefix=self._prefix)
        policy_config = self.config.policy_config()
        self.policies: Dict[str, Policy] = {
            "now": NowPolicy(policy_config), "boundary": BoundaryPolicy(policy_config),
            "match": MatchPolicy(policy_config, match_calibration)}
        if activation_head is not None:
            self.policies["activation"] = ActivationPolicy(activation_head, policy_config)
        self._lock = threading.RLock()
        self._trigger_count = 0
        self._last_feature: Dict[str, FrameFeature] = {}
        self._interval: Dict[str, float] = {}  # camera_id -> its last sample interval
        self._text_cache: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._loops: Dict[str, int] = {}  # camera_id -> backward time jumps seen
        self.clips = ClipIndex(self.config.retrieval_max_clips)
        # (query id, camera id) -> its newest revisable answer (see the module docstring)
        self._revisable: "OrderedDict[Tuple[str, str], _Revisable]" = OrderedDict()
        self.counters = {"features": 0, "triggers": 0, "policy_errors": 0, "camera_resets": 0,
                         "bad_features": 0, "revisions": 0, "now_waits": 0, "now_waits_expired": 0}

    def set_config(self, **changes) -> DecisionConfig:
        """Apply new settings at once (ValueError naming the bad value, nothing applied)."""
        with self._lock:
            new = dataclasses.replace(self.config, **changes)
            self.config = new
            self.registry.config = new.registry_config()
            for policy in self.policies.values():
                policy.config = new.policy_config()
            LOG.info("decision config updated: %s", changes)
            return new

    def add_query(self, spec: QuerySpec, now_stamp: float,
                  catch_up: bool = False) -> Tuple[ActiveQuery, List[TriggerEvent]]:
        """Register a query; a "now" query fires at once on the latest feature if any.

        Args:
            spec: the question (mode "auto" resolved with query_text.infer_mode).
            now_stamp: current camera/ROS time, seconds (rate limit, default query stamp).
            catch_up: the caller may not have delivered every feature up to spec.stamp yet
                (decision_node: features and queries arrive on separate callbacks). A "now"
                question then fires at once only where the camera's latest feature is the
                frame current at its stamp (no later sample is due by then: latest stamp +
                the camera's last sample interval > spec.stamp); elsewhere it waits for the
                first feature that is, or for release_waiting (a stopped camera).
        Returns:
            (the registered query, triggers fired immediately).
        Raises:
            QueryRejected (a ValueError with .reason) or TypeError.
        """
        with self._lock:
            if not isinstance(spec.text, str):
                raise TypeError(f"query text must be str, got {type(spec.text).__name__}")
            mode = infer_mode(spec.text) if spec.mode == "auto" else spec.mode
            self._check_mode_supported(spec.query_id, mode)
            query = self.registry.add(dataclasses.replace(spec, mode=mode), now_stamp)
            query.loops = max(self._loops.values(), default=0)  # asked on the current timeline
            if self.policies[mode].needs_text_embedding:
                try:
                    query.text_embedding = self._embed(query.event_text)
                except Exception:
                    self.registry.cancel(query.query_id)
                    raise
            triggers: List[TriggerEvent] = []
            if mode == "now":
                for camera_id, feature in list(self._last_feature.items()):
                    if not (query.watches(camera_id) and self.registry.get(query.query_id) is query):
                        continue
                    not_before = spec.stamp - self._interval.get(camera_id, math.inf) + _STAMP_SLACK
                    if catch_up and feature.stamp < not_before:
                        self.policies["now"].wait(query, camera_id, not_before)
                        self.counters["now_waits"] += 1
                        continue
                    triggers += self._score(query, feature)
            return query, triggers

    def waiting(self, query_id: str) -> List[str]:
        """Cameras on which a "now" question still waits for the frame at its stamp."""
        with self._lock:
            query = self.registry.get(query_id)
            return [] if query is None or query.mode != "now" else self.policies["now"].waiting(query)

    def release_waiting(self, query_id: str) -> List[TriggerEvent]:
        """Fire a "now" question still waiting for the frame at its stamp on its cameras'
        latest features (decision_node calls it after `now_wait_sec`: the camera stopped)."""
        with self._lock:
            query = self.registry.get(query_id)
            if query is None or query.mode != "now":
                return []
            triggers: List[TriggerEvent] = []
            for camera_id in self.policies["now"].waiting(query):
                self.policies["now"].stop_waiting(query, camera_id)
                self.counters["now_waits_expired"] += 1
                feature = self._last_feature.get(camera_id)
                if feature is not None and self.registry.get(query_id) is query:
                    triggers += self._score(query, feature)
            return triggers

    def new_query_id(self) -> str:
        """A fresh query id for a query sent without one ("<id_prefix>-q<n>")."""
        with self._lock:
            return self.registry.new_id()

    def cancel(self, query_id: str) -> bool:
        """End a query; False when it is not active (unknown or already finished)."""
        with self._lock:
            return self.registry.cancel(query_id)

    def on_feature(self, feature: FrameFeature) -> List[TriggerEvent]:
        """Score every active query watching feature.camera_id.

        Args:
            feature: one sampled frame's perception output.
        Returns:
            Triggers fired by this feature (possibly empty).
        Raises:
            ValueError: a non-finite stamp or embedding (counted as bad_features).
        """
        with self._lock:
            self._check_feature(feature)
            previous = self._last_feature.get(feature.camera_id)
            if previous is not None and feature.stamp < previous.stamp:
                self._on_time_jump(feature.camera_id, previous.stamp, feature.stamp)
            elif previous is not None and feature.stamp > previous.stamp:
                self._interval[feature.camera_id] = feature.stamp - previous.stamp
            self._last_feature[feature.camera_id] = feature
            self.clips.observe(feature)
            self.counters["features"] += 1
            self.registry.expire(feature.stamp)
            triggers: List[TriggerEvent] = []
            for query in self.registry.active(feature.camera_id):
                triggers += self._score(query, feature)
            return triggers + self._revisions(feature)

    def _check_feature(self, feature: FrameFeature) -> None:
        """Refuse (and count) a feature that would poison policy state: one NaN score keeps
        a query's EMA at NaN, so it would never fire again."""
        embedding = np.asarray(feature.embedding)
        problem = None
        if not isinstance(feature.stamp, (int, float)) or not math.isfinite(feature.stamp):
            problem = f"feature stamp {feature.stamp!r} is not finite"
        elif embedding.ndim != 1 or not np.issubdtype(embedding.dtype, np.number) \
                or not np.all(np.isfinite(embedding)):
            problem = (f"feature embedding {embedding.dtype} {embedding.shape} is not a 1-D "
                       "vector of finite numbers")
        if problem:
            self.counters["bad_features"] += 1
            raise ValueError(f"camera {feature.camera_id!r}: {problem}")

    def _on_time_jump(self, camera_id: str, last: float, stamp: float) -> None:
        """Camera time went back (bag loop, sim-time reset): reset the camera's policy state
        and move the timers of the queries watching it back by the jump, so expiry counts
        camera time elapsed across the loop. A jump is applied to a query once per loop,
        so cameras of one bag looping together do not move it twice."""
        self.reset_camera(camera_id)
        self.clips.clear(camera_id)  # the old timeline's clips would be ranked as the new one's
        loop = self._loops[camera_id] = self._loops.get(camera_id, 0) + 1
        moved = 0
        for query in self.registry.active(camera_id):
            if query.loops < loop:
                query.loops = loop
                query.spec.stamp -= last - stamp
                moved += 1
        LOG.warning("camera %r: feature time went back %.3f -> %.3f; policy state reset, "
                    "%d query timer(s) moved back %.3f s", camera_id, last, stamp, moved, last - stamp)

    def reset_camera(self, camera_id: str) -> None:
        """Forget one camera's latest feature, every query's policy state for it and its
        revisable answers."""
        with self._lock:
            self._last_feature.pop(camera_id, None)
            for query in self.registry.active():
                query.state.pop(camera_id, None)
            for key in [key for key in self._revisable if key[1] == camera_id]:
                del self._revisable[key]
            self.counters["camera_resets"] += 1

    def active_queries(self, camera_id: Optional[str] = None) -> List[ActiveQuery]:
        with self._lock:
            return self.registry.active(camera_id)

    def stats(self) -> Dict[str, float]:
        """Counters for diagnostics (flat dict of numbers)."""
        with self._lock:
            out = dict(self.counters, queries_active=len(self.registry), **self.clips.stats())
            out.update({f"queries_{k}": v for k, v in self.registry.counters.items()})
            out.update({f"rejected_{k}": v for k, v in self.registry.rejected.items()})
            return out

    def _check_mode_supported(self, query_id: str, mode: str) -> None:
        reason = None
        if mode not in self.policies:
            reason = ("no_activation_head", f"query {query_id!r}: mode {mode!r} needs an "
                      "activation head and none is loaded")
        elif self.policies[mode].needs_text_embedding and self.text_encoder is None:
            reason = ("no_text_encoder", f"query {query_id!r}: mode {mode!r} needs a text encoder")
        if reason:
            self.registry.rejected[reason[0]] = self.registry.rejected.get(reason[0], 0) + 1
            raise QueryRejected(*reason)

    def _embed(self, text: str) -> np.ndarray:
        cached = self._text_cache.get(text)
        if cached is None:
            vectors = np.asarray(self.text_encoder([text]), dtype=np.float32)  # (1, D)
            if vectors.ndim != 2 or vectors.shape[0] != 1:
                raise ValueError(f"text encoder returned shape {vectors.shape}, expected (1, D)")
            norm = float(np.linalg.norm(vectors[0]))
            if not math.isfinite(norm) or norm == 0.0:
                raise ValueError(f"text encoder returned a vector of norm {norm}")
            cached = vectors[0] / norm
            self._text_cache[text] = cached
            while len(self._text_cache) > _TEXT_CACHE_SIZE:
                self._text_cache.popitem(last=False)
        self._text_cache.move_to_end(text)
        return cached

    def _retrieve(self, query: ActiveQuery) -> tuple:
        """The stored clips relevant to a question about the past, best first (() = none: a
        question about the present, retrieval_k 0, or no text encoder)."""
        k = self.config.retrieval_k
        if k <= 0 or self.text_encoder is None or not refers_to_past(query.spec.text):
            return ()
        try:
            text = self._embed(retrieval_text(query.spec.text))
        except Exception as error:  # noqa: BLE001 -- retrieval is an extra: the answer still goes
            self.counters["retrieval_errors"] = self.counters.get("retrieval_errors", 0) + 1
            LOG.warning("retrieval for query %r failed: %s: %s", query.query_id, type(error).__name__, error)
            return ()
        match = self.policies["match"]
        return tuple(self.clips.rank(text, k, (match.scale, match.bias), query.spec.cameras,
                                     self.config.retrieval_min_score))

    def _score(self, query: ActiveQuery, feature: FrameFeature) -> List[TriggerEvent]:
        try:
            score = self.policies[query.mode].observe(query, feature)
        except ValueError as error:
            self.counters["policy_errors"] += 1
            if self.counters["policy_errors"] <= 10 or self.counters["policy_errors"] % 1000 == 0:
                LOG.warning("policy %s failed for query %r: %s", query.mode, query.query_id, error)
            return []
        if score is None:
            return []
        event = self._new_trigger(query, feature, score, retrieved=self._retrieve(query))
        LOG.info("trigger %s: query %r (%s) score %.3f at %.3f on %r", event.trigger_id,
                 query.query_id, query.mode, score, feature.stamp, feature.camera_id)
        self.registry.record_response(query.query_id)
        self._remember_revisable(query, event)
        return [event]

    # ---- revision ----------------------------------------------------------------------
    def revises(self, query: ActiveQuery) -> bool:
        """Whether the answers of query are revised (its own `revise`, else the parameter)."""
        revise = query.spec.revise
        return self.config.revise_answers if revise is None else bool(revise)

    def revision_deadline(self, trigger_id: str) -> Optional[float]:
        """Camera time (of the trigger's camera) until which that trigger's answer may still
        be revised; None when it cannot be (revision off, already revised, window over)."""
        with self._lock:
            for entry in self._revisable.values():
                if entry.trigger.trigger_id == trigger_id:
                    return entry.until
            return None

    def _remember_revisable(self, query: ActiveQuery, event: TriggerEvent) -> None:
        if query.mode == "boundary" or not self.revises(query) or self.config.revise_window_sec <= 0.0:
            return  # (a narration's next trigger is its update: nothing would revise it)
        key = (query.query_id, event.camera_id)
        self._revisable.pop(key, None)  # its newer answer replaces (and revises) the older one
        self._revisable[key] = _Revisable(event, query, event.stamp + self.config.revise_window_sec)
        while len(self._revisable) > REVISABLE_KEPT:
            self._revisable.popitem(last=False)

    def _revisions(self, feature: FrameFeature) -> List[TriggerEvent]:
        """Revision triggers for the revisable answers of feature's camera (after scoring, so
        the policies' smoothed scores include this frame)."""
        out: List[TriggerEvent] = []
        for key, entry in list(self._revisable.items()):
            query, trigger = entry.query, entry.trigger
            if key[1] != feature.camera_id or feature.stamp <= trigger.stamp:
                continue
            if feature.stamp >= entry.until or query.ended not in ("", "completed") \
                    or not self.revises(query):
                del self._revisable[key]  # window over, or the question is gone or turned off
                continue
            reason, score = "", 1.0
            if feature.clip_boundary:
                reason = "clip_boundary"
            elif query.mode in GATED_MODES:
                score = self._smoothed(query, feature)
                threshold = query.spec.threshold if query.spec.threshold is not None \
                    else self.config.trigger_threshold
                if score is not None and score < threshold - self.config.hysteresis:
                    reason = "score_drop"
            if not reason:
                continue
            del self._revisable[key]  # one revision per answer; a revision opens no window
            self.counters["revisions"] += 1
            event = self._new_trigger(query, feature, score, revises_trigger_id=trigger.trigger_id,
                                      revision_reason=reason, retrieved=trigger.retrieved)  # same clips
            LOG.info("trigger %s revises %s: query %r, %s at %.3f on %r", event.trigger_id,
                     trigger.trigger_id, query.query_id, reason, feature.stamp, feature.camera_id)
            out.append(event)
        return out

    def _new_trigger(self, query: ActiveQuery, feature: FrameFeature, score: float, **fields) -> TriggerEvent:
        """A trigger of query on feature (a fresh id, counted); fields: retrieval, revision."""
        self._trigger_count += 1
        self.counters["triggers"] += 1
        return TriggerEvent(
            trigger_id=f"{self._prefix}-{self._trigger_count}", query_id=query.query_id,
            query_text=query.spec.text, camera_id=feature.camera_id, policy=query.mode,
            score=float(score), stamp=feature.stamp, frame_index=feature.frame_index,
            clip_index=feature.clip_index, clip_start=feature.clip_start, clip_end=feature.stamp,
            frame_id=feature.frame_id, **fields)

    def _smoothed(self, query: ActiveQuery, feature: FrameFeature) -> Optional[float]:
        """The query's smoothed score on feature's camera, this frame included. A query still
        in the registry was just scored; one that completed is observed here (its policy
        state is its own, so a would-be trigger of it is ignored)."""
        if self.registry.get(query.query_id) is not query:
            try:
                self.policies[query.mode].observe(query, feature)
            except (ValueError, KeyError):
                return None
        return query.state.get(feature.camera_id, {}).get("ema")


@dataclass
class _Revisable:
    """An answer that a change of evidence may still revise."""

    trigger: TriggerEvent
    query: ActiveQuery
    until: float  # camera time of trigger.camera_id at which its window closes
