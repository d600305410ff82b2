"""Does narration miss a scene change? Recall and precision of narrated cuts.

A boundary question ("Narrate what happens step by step.") should be answered at every
scene change, and only there. Given the true cut times of a stream (world.plan_shots: each
shot's start after the first), the minimum clip length (perception's min_clip_frames /
sample_fps: two cuts closer than it cannot both be clip boundaries) and every final of the
narration query:

- recall: of the cuts at least `min_clip_sec` after the previous cut (or the stream's
  start), whose shot lasts at least `min_clip_sec` too (two changes closer than a clip
  cannot both be clip boundaries) and which come at least `tolerance_sec` before the
  stream's end (a later frame can still show them), the share narrated: some narration ended OK whose trigger -- or one of the triggers it
  merged (extras["merged_trigger_ids"]) -- has its evidence stamp inside that cut's shot;
- precision: of all finals of the query (every trigger gets exactly one, whatever its
  error code), the share whose trigger's evidence stamp lies within `tolerance_sec` after a
  true cut. A trigger in the middle of a shot (a pan or zoom taken for a cut), or one that
  comes too late, is wrong.
- named_rate (when the caller says, per narration, whether its text names the scene of its
  trigger's shot): the share of OK narrations that do.

ROS-free and model-free: it scores recorded stamps, so a run can be re-scored.
`run_stream` plays a seeded world.cut_stream through a composition it is given
(compose.build_graph, built with a `Finals` as its on_response) and scores each question;
`decision_replay` runs a stream's recorded features through the decision core at other
settings, and `dropping_cooldown` gives the triggers of the pre-fix boundary rule (a scene
change inside the cooldown was dropped): before-baselines on the same clip boundaries.
"""
from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from dispider_ros import world
from dispider_ros.core.types import QuerySpec

QUESTION = "Narrate what happens step by step."  # mode auto -> boundary
CAMERA = "camera"


@dataclass(frozen=True)
class Narration:
    """One final of the narration query.

    Args:
        trigger_id: its trigger.
        stamp: the trigger's evidence stamp (camera seconds).
        ok: it ended with ErrorCode.OK (an answer was given).
        merged_stamps: evidence stamps of the waiting triggers it replaced (merged).
        names_scene: whether its text names the scene of its trigger's shot; None = not checked.
    """

    trigger_id: str
    stamp: float
    ok: bool
    merged_stamps: Tuple[float, ...] = ()
    names_scene: Optional[bool] = None


def cut_times(shots: Sequence) -> List[float]:
    """The cuts of a shot list (world.Shot: .start): every shot's start but the first's."""
    return [float(shot.start) for shot in shots[1:]]


def narrations(triggers: Iterable, finals: Iterable, names: Optional[Dict[str, bool]] = None
               ) -> List[Narration]:
    """Narrations from recorded TriggerEvents and final ResponseEvents of one query.

    Args:
        triggers: every trigger of the query (.trigger_id, .stamp).
        finals: their finals (.trigger_id, .error_code, .extras["merged_trigger_ids"]).
        names: {trigger id: its text names its shot's scene}, optional.
    Raises:
        ValueError: a final without its trigger, or a trigger with no or several finals.
    """
    stamps = {t.trigger_id: float(t.stamp) for t in triggers}
    out, seen = [], set()
    for final in finals:
        if final.trigger_id not in stamps:
            raise ValueError(f"final of trigger {final.trigger_id!r} has no recorded trigger")
        if final.trigger_id in seen:
            raise ValueError(f"trigger {final.trigger_id!r} has more than one final")
        seen.add(final.trigger_id)
        merged = tuple(stamps[i] for i in final.extras.get("merged_trigger_ids", ()))
        out.append(Narration(final.trigger_id, stamps[final.trigger_id], int(final.error_code) == 0,
                             merged, None if names is None else names.get(final.trigger_id)))
    missing = sorted(set(stamps) - seen)
    if missing:
        raise ValueError(f"triggers without a final: {missing[:5]}")
    return out


def score(cuts: Sequence[float], narrated: Sequence[Narration], min_clip_sec: float,
          tolerance_sec: float, start: float = 0.0, end: float = float("inf")) -> dict:
    """Recall and precision of narrated cuts (see the module docstring).

    Args:
        cuts: true cut times, camera seconds, ascending.
        narrated: every final of the narration query.
        min_clip_sec: the minimum clip length (seconds), >= 0.
        tolerance_sec: how long after a cut its narration's trigger may come, > 0.
        start, end: the stream's first and last camera time.
    Returns:
        recall, precision, the counts behind them, missed cuts, wrong trigger stamps,
        merged triggers, the smallest gap between two triggers, named_rate.
    """
    if not (min_clip_sec >= 0.0 and tolerance_sec > 0.0):
        raise ValueError(f"min_clip_sec {min_clip_sec!r} must be >= 0 and tolerance_sec "
                         f"{tolerance_sec!r} > 0")
    cuts = [float(c) for c in cuts]
    if cuts != sorted(cuts):
        raise ValueError("cuts must be ascending")
    bounds = [start] + cuts + [end]  # shot k spans [bounds[k], bounds[k + 1])
    scored = [k for k, c in enumerate(cuts, start=1)
              if min(c - bounds[k - 1], bounds[k + 1] - c) >= min_clip_sec - 1e-9
              and end - c >= tolerance_sec]
    told = sorted(s for n in narrated if n.ok for s in (n.stamp,) + n.merged_stamps)

    def in_shot(k: int) -> bool:
        i = bisect.bisect_left(told, bounds[k])
        return i < len(told) and told[i] < bounds[k + 1]

    hits = [k for k in scored if in_shot(k)]
    wrong = [n.stamp for n in narrated if not _after_a_cut(cuts, n.stamp, tolerance_sec)]
    stamps = sorted(n.stamp for n in narrated)
    checked = [n.names_scene for n in narrated if n.ok and n.names_scene is not None]
    return {
        "recall": len(hits) / len(scored) if scored else 0.0,
        "precision": (len(narrated) - len(wrong)) / len(narrated) if narrated else 0.0,
        "cuts": len(cuts), "scored_cuts": len(scored), "narrated_cuts": len(hits),
        "narrations": len(narrated), "ok_narrations": sum(n.ok for n in narrated),
        "correct_narrations": len(narrated) - len(wrong),
        "merged": sum(len(n.merged_stamps) for n in narrated if n.ok),
        "missed_cuts": [bounds[k] for k in scored if k not in set(hits)],
        "wrong_stamps": wrong,
        "min_gap_sec": min((b - a for a, b in zip(stamps, stamps[1:])), default=None),
        "named_rate": sum(checked) / len(checked) if checked else None, "named_checked": len(checked),
    }


def _after_a_cut(cuts: Sequence[float], stamp: float, tolerance_sec: float) -> bool:
    """True when stamp lies in [cut, cut + tolerance_sec] for the latest cut at or before it."""
    i = bisect.bisect_right(cuts, stamp + 1e-9) - 1
    return i >= 0 and stamp - cuts[i] <= tolerance_sec + 1e-9


def pool(results: Sequence[dict]) -> dict:
    """Recall, precision and named_rate over several streams' score() results (counts summed)."""
    total = {key: sum(r[key] for r in results) for key in
             ("cuts", "scored_cuts", "narrated_cuts", "narrations", "ok_narrations",
              "correct_narrations", "merged", "named_checked")}
    named = sum((r["named_rate"] or 0.0) * r["named_checked"] for r in results)
    total.update(recall=total["narrated_cuts"] / total["scored_cuts"] if total["scored_cuts"] else 0.0,
                 precision=total["correct_narrations"] / total["narrations"] if total["narrations"] else 0.0,
                 named_rate=named / total["named_checked"] if total["named_checked"] else None,
                 streams=len(results))
    return total


def dropping_cooldown(boundaries: Sequence[float], cooldown_sec: float) -> List[float]:
    """The trigger stamps of the pre-fix BoundaryPolicy on these clip-boundary stamps: a
    boundary fired when cooldown_sec had passed since the last trigger, else was dropped."""
    fired: List[float] = []
    for stamp in boundaries:
        if stamp - (fired[-1] if fired else -math.inf) >= cooldown_sec:
            fired.append(stamp)
    return fired


def decision_replay(features: Sequence, question: str = QUESTION, **config) -> List[float]:
    """The trigger stamps DecisionCore(DecisionConfig(**config)) fires for a boundary
    question asked at the first feature, on these recorded features (the rest of them).
    Boundary queries need no model, so this is the decision as shipped, minus perception."""
    from dispider_ros.core.decision import DecisionConfig, DecisionCore

    core = DecisionCore(DecisionConfig(**config))
    core.on_feature(features[0])
    core.add_query(QuerySpec("replay", question, mode="boundary"), features[0].stamp)
    return [t.stamp for f in features[1:] for t in core.on_feature(f)]


class Finals:
    """A composition's on_response that keeps every final ResponseEvent (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.by_trigger: Dict[str, object] = {}

    def __call__(self, event) -> None:
        if event.final:
            with self._lock:
                self.by_trigger[event.trigger_id] = event

    def of(self, trigger_ids: Iterable[str]) -> list:
        with self._lock:
            return [self.by_trigger[i] for i in trigger_ids if i in self.by_trigger]


@dataclass
class Stream:
    """One played stream: its true cuts (camera time), its features, each question's score."""

    seed: int
    start: float
    end: float
    cuts: List[float]
    features: list
    results: Dict[str, dict]

    def score_stamps(self, stamps: Sequence[float], min_clip_sec: float = 1.0,
                     tolerance_sec: float = 1.0) -> dict:
        """score() of triggers at these stamps, each answered OK (a replayed decision)."""
        told = [Narration(str(k), s, True) for k, s in enumerate(stamps)]
        return score(self.cuts, told, min_clip_sec, tolerance_sec, self.start, self.end)


def run_stream(composition, finals: Finals, seed: int, seconds: float, fps: float = 10.0,
               questions: Sequence[Tuple[str, str]] = ((QUESTION, "auto"),), start: float = 0.0,
               min_clip_sec: float = 1.0, tolerance_sec: float = 1.0,
               timeout_sec: float = 120.0) -> Stream:
    """Play world.cut_stream(seed, seconds, fps) from camera time `start` through
    composition.graph, asking `questions` ((text, mode) pairs) once its first frame is in
    (a stream that follows another one opens with a change of scene that is no cut), wait
    for every answer and score each question.

    Args:
        composition: compose.build_graph's result, built with `finals` as its on_response;
            its graph's on_feature/on_trigger are used meanwhile.
        start: camera time of the first frame (later than any stream before it).
        min_clip_sec, tolerance_sec: see score().
    Returns:
        The Stream; its results map each question to score() of its finals plus
        "trigger_stamps" and "texts" ([(stamp, caption of its shot's scene, answer)]).
    """
    graph = composition.graph
    shots, frames = world.cut_stream(seed, seconds, fps=fps)
    features: list = []
    fired: Dict[str, list] = {}
    ids = {text: f"narrate-{seed}-{start:g}-{k}" for k, (text, _) in enumerate(questions)}
    graph.on_feature = features.append
    graph.on_trigger = lambda t: fired.setdefault(t.query_id, []).append(t)
    asked = False
    try:
        for t, image, _ in frames:
            graph.offer(CAMERA, start + t, image)
            if features and not asked:
                for text, mode in questions:
                    graph.ask(QuerySpec(query_id=ids[text], text=text, mode=mode, stamp=start + t),
                              start + t)
                asked = True
    finally:
        graph.on_feature = graph.on_trigger = None
        for query_id in ids.values():
            graph.cancel(query_id)
    if not graph.wait_idle(timeout_sec):
        raise TimeoutError(f"narrations not answered within {timeout_sec:.0f} s")
    stream = Stream(seed, start, start + seconds, [start + c for c in cut_times(shots)], features, {})

    def scene_at(stamp: float) -> world.Scene:
        return next(s.scene for s in shots if s.start <= stamp - start < s.end)

    for text, query_id in ids.items():
        triggers = fired.get(query_id, [])
        answered = finals.of(t.trigger_id for t in triggers)
        by_id = {t.trigger_id: t for t in triggers}
        names = {f.trigger_id: world.names_scene(f.text, scene_at(by_id[f.trigger_id].stamp))
                 for f in answered}
        result = score(stream.cuts, narrations(triggers, answered, names), min_clip_sec,
                       tolerance_sec, start=stream.start, end=stream.end)
        result.update(trigger_stamps=[t.stamp for t in triggers],
                      texts=[(by_id[f.trigger_id].stamp, scene_at(by_id[f.trigger_id].stamp).caption,
                              f.text) for f in answered])
        stream.results[text] = result
    return stream


__all__ = ["Narration", "cut_times", "narrations", "score", "pool", "dropping_cooldown",
           "decision_replay", "Finals", "Stream", "run_stream", "QUESTION"]
