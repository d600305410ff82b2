"""Does "Tell me when the rocket appears." fire when the rocket appears? Zero-shot trigger
semantics on seeded cut streams of the closed world (dispider_ros.world).

Protocol (one stream = one seed): `world.cut_stream(seed, seconds, fps)` plays panned,
zoomed photographs with hard cuts; before it starts, every scene's `match_question` is asked
(match mode, one every 1/QUESTIONS_PER_SEC s of camera time, under the shipped query rate
limit), then every frame is offered to the composition root's StreamingGraph (sampling,
perception, decision, reaction as shipped) and each trigger is kept.

Scoring, per question about scene X:
  - a trigger is correct when its evidence frame shows X (its stamp lies in a shot of X);
    precision = correct triggers / triggers (a trigger before X ever appears is wrong);
  - X's first appearance is detected when the question's FIRST trigger comes within one
    sampled period (1 / sample_fps) of the first sampled frame showing X -- on that frame
    or the next sampled one, and never before; recall = detected / first appearances
    (an appearance whose first sampled frame is the stream's last is not counted: it has
    no next sampled frame to fire on).
(Later appearances may fall in the cooldown of an earlier trigger, so only the first
counts for recall; every trigger counts for precision.)

Breakages (`sabotage`) run the same scoring on a deliberately broken pipeline, so the
semantic test cannot pass vacuously: "shuffle" offers the frames in a seeded random order
(stamps unchanged: images no longer match the shot table), "mislabel" asks each question
with the next scene's word (the text tower is given another question).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from dispider_ros import world
from dispider_ros.core.types import QuerySpec

LOG = logging.getLogger(__name__)

CAMERA = "camera"
START = 10.0  # camera time of the first stream's first frame (questions are asked before it)
QUESTIONS_PER_SEC = 4.0  # under the shipped max_queries_per_sec (5)
SABOTAGE = ("shuffle", "mislabel")


@dataclass
class Outcome:
    """One question on one stream."""

    seed: int
    scene: str
    appears: bool
    first_sampled: Optional[float]  # stamp of the first sampled frame showing the scene
    triggers: List[float] = field(default_factory=list)  # stamps
    correct: List[bool] = field(default_factory=list)
    detected: bool = False
    latency_sec: Optional[float] = None  # first trigger - first sampled frame showing it


def run_stream(composition, seed: int, seconds: float, fps: float = 10.0,
               scenes: Sequence[world.Scene] = world.PHOTO_SCENES,
               sabotage: str = "", start: float = START) -> List[Outcome]:
    """Play one seeded cut stream through a composition (compose.build_graph) from camera
    time `start` (later than any stream before it on that composition) and score every
    scene's question on it. The graph's on_feature/on_trigger are used meanwhile."""
    if sabotage and sabotage not in SABOTAGE:
        raise ValueError(f"sabotage {sabotage!r} is not one of {SABOTAGE}")
    graph = composition.graph
    shots, frames = world.cut_stream(seed, seconds, fps=fps, scenes=scenes)
    sampled: List[float] = []
    fired: Dict[str, List[float]] = {}
    graph.on_feature = lambda feature: sampled.append(feature.stamp)
    graph.on_trigger = lambda trigger: fired.setdefault(trigger.query_id, []).append(trigger.stamp)
    ask_at = start - (len(scenes) + 1) / QUESTIONS_PER_SEC
    for i, s in enumerate(scenes):
        named = scenes[(i + 1) % len(scenes)] if sabotage == "mislabel" else s
        graph.ask(QuerySpec(query_id=f"s{seed}-{s.name}", text=world.match_question(named),
                            mode="match"), ask_at + i / QUESTIONS_PER_SEC)
    stream = [(start + t, image) for t, image, _ in frames]
    if sabotage == "shuffle":
        order = np.random.default_rng(seed + 7).permutation(len(stream))
        stream = [(stream[i][0], stream[j][1]) for i, j in enumerate(order)]
    for stamp, image in stream:
        graph.offer(CAMERA, stamp, image)
    graph.on_feature = graph.on_trigger = None
    for s in scenes:
        graph.cancel(f"s{seed}-{s.name}")
    return [_outcome(seed, s, shots, sampled, fired.get(f"s{seed}-{s.name}", []), start)
            for s in scenes]


def _outcome(seed, scene, shots, sampled, triggers, start) -> Outcome:
    spans = [(start + shot.start, start + shot.end) for shot in shots if shot.scene == scene]
    shows = lambda stamp: any(a <= stamp < b for a, b in spans)  # noqa: E731
    first = next((t for t in sampled[:-1] if shows(t)), None)  # the last one has no next
    out = Outcome(seed, scene.name, bool(spans), first, list(triggers), [shows(t) for t in triggers])
    if first is not None and triggers:
        out.latency_sec = triggers[0] - first
    return out


def score(outcomes: Sequence[Outcome], period_sec: float) -> dict:
    """Precision, recall and F1 (module docstring) over outcomes; period_sec = 1 / sample_fps."""
    triggers = sum(len(o.triggers) for o in outcomes)
    correct = sum(sum(o.correct) for o in outcomes)
    appearances = [o for o in outcomes if o.first_sampled is not None]
    for o in appearances:
        o.detected = o.latency_sec is not None and -1e-6 <= o.latency_sec <= period_sec + 1e-6
    detected = sum(o.detected for o in appearances)
    precision = correct / triggers if triggers else 0.0
    recall = detected / len(appearances) if appearances else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    latencies = [o.latency_sec for o in appearances if o.detected]
    return {"precision": precision, "recall": recall, "f1": f1, "triggers": triggers,
            "correct_triggers": correct, "appearances": len(appearances), "detected": detected,
            "questions": len(outcomes), "streams": len({o.seed for o in outcomes}),
            "latency_mean_sec": float(np.mean(latencies)) if latencies else None,
            "missed": sorted({o.scene for o in appearances if not o.detected}),
            "wrong_trigger_scenes": sorted({o.scene for o in outcomes if not all(o.correct)})}


def evaluate(composition, seeds: Sequence[int], seconds: float, period_sec: float,
             fps: float = 10.0, sabotage: str = "") -> dict:
    """run_stream for each seed, then score; waits for the reaction to answer everything."""
    outcomes: List[Outcome] = []
    for k, seed in enumerate(seeds):  # each stream later in camera time than the one before
        outcomes += run_stream(composition, seed, seconds, fps, sabotage=sabotage,
                               start=START + k * (seconds + START))
    composition.graph.wait_idle(120.0)
    return score(outcomes, period_sec)


__all__ = ["Outcome", "SABOTAGE", "run_stream", "score", "evaluate"]
