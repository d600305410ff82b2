"""P1/P2 through the graph (bench/graph_latency.py): what one arm saw, and its figures.

Pure (no ROS): a Record of wall-time observations (sampled frames, triggers, each answer's
chunks, finals, questions asked) and `summarize_arm`, which turns it and the run's plan
(phase lengths, the camera's start, its footage cuts) into P1, P2 and decode figures.
"""
from __future__ import annotations

import threading
from typing import Dict, List, Optional

from bench.common import percentile
from dispider_ros.core.types import ErrorCode

NARRATION_ID = "narrate"
# Answers counted in decode rates decode at least this many tokens after their first: a
# narration answer preempted by the next cut 1.5 s later still decodes tens of tokens.
MIN_TOKENS = 8
CONTEXT_BAND = 0.15  # busy answers compared with alone ones: prompts within 15 % of theirs


class Record:
    """What one arm saw, in wall time: sampled frames, triggers, answers, questions asked."""

    def __init__(self):
        self.lock = threading.Lock()
        self.features: List[float] = []  # evidence stamps of sampled frames
        self.triggers: List[dict] = []  # trigger_id, query_id, policy, stamp, wall
        self.chunks: Dict[str, dict] = {}  # trigger_id -> query_id, walls, tokens (so far)
        self.finals: List[dict] = []
        self.asks: List[list] = []  # [query_id, wall]
        self.extra: Dict[str, object] = {}

    def feature(self, stamp: float) -> None:
        with self.lock:
            self.features.append(stamp)

    def trigger(self, trigger_id: str, query_id: str, policy: str, stamp: float, wall: float) -> None:
        with self.lock:
            self.triggers.append({"trigger_id": trigger_id, "query_id": query_id,
                                  "policy": policy, "stamp": stamp, "wall": wall})

    def chunk(self, trigger_id: str, query_id: str, tokens: int, wall: float) -> None:
        with self.lock:
            entry = self.chunks.setdefault(trigger_id, {"query_id": query_id, "walls": [],
                                                        "tokens": []})
            entry["walls"].append(round(wall, 4))
            entry["tokens"].append(tokens)

    def final(self, **fields) -> None:
        with self.lock:
            self.finals.append(fields)

    def ask(self, query_id: str, wall: float) -> None:
        with self.lock:
            self.asks.append([query_id, wall])

    def finals_of(self, prefix: str) -> int:
        with self.lock:
            return sum(1 for f in self.finals if f["query_id"].startswith(prefix))

    def answered_of(self, prefix: str) -> int:
        """Questions (query ids with the prefix) that got their answer: a final that was not
        PREEMPTED (a pre-empted answer's revision still comes). A revision's final counts
        nothing more, so revisions do not make the asker ask more."""
        with self.lock:
            return len({f["query_id"] for f in self.finals if f["query_id"].startswith(prefix)
                        and f.get("error_code") != ErrorCode.PREEMPTED})

    def to_json(self) -> dict:
        with self.lock:
            return {"features": list(self.features), "triggers": list(self.triggers),
                    "chunks": {k: dict(v) for k, v in self.chunks.items()},
                    "finals": list(self.finals),
                    "asks": list(self.asks), **self.extra}


def windows(plan: dict) -> dict:
    """Wall-time windows of the phases; edges half a camera period off the frame stamps."""
    half = 0.5 / plan["camera_fps"]
    idle = plan["wall0"] + plan["warmup"] + half
    busy = idle + plan["idle"]
    end = busy + plan["busy"]
    return {"idle": (idle, busy), "busy": (busy, end),
            "camera_end": plan["wall0"] + camera_seconds(plan)}


def camera_seconds(plan: dict) -> float:
    return plan["warmup"] + plan["idle"] + plan["busy"] + plan["tail"]


def _inside(t: float, window) -> bool:
    return window[0] <= t < window[1]


def span(entry: dict, window=None) -> Optional[dict]:
    """An answer's decoding between its first and last chunk (inside `window` if given):
    query_id, first/last wall and tokens; None with fewer than two chunks there."""
    inside = [i for i, wall in enumerate(entry["walls"]) if window is None or _inside(wall, window)]
    if len(inside) < 2:
        return None
    first, last = inside[0], inside[-1]
    return {"query_id": entry["query_id"], "first_wall": entry["walls"][first],
            "first_tokens": entry["tokens"][first], "last_wall": entry["walls"][last],
            "last_tokens": entry["tokens"][last]}


def decode_rate(chunks: List[dict]) -> Optional[float]:
    """Decode-only tokens/s over answers: tokens between first and last chunk / their seconds."""
    tokens = sum(c["last_tokens"] - c["first_tokens"] for c in chunks)
    seconds = sum(c["last_wall"] - c["first_wall"] for c in chunks)
    return tokens / seconds if seconds > 0 else None


def rate_at(answers: List[dict], prompt_tokens: float) -> Optional[float]:
    """Decode tokens/s at `prompt_tokens` from a token-weighted least-squares line of seconds
    per token against prompt tokens (attention makes each token's cost grow with the
    context); None without 3 answers spread over 20 % of that size or a positive reading."""
    points = [(c["prompt_tokens"], (c["last_wall"] - c["first_wall"]) / n, n) for c in answers
              if c["prompt_tokens"] and (n := c["last_tokens"] - c["first_tokens"]) > 0]
    if len(points) < 3 or max(x for x, _, _ in points) - min(x for x, _, _ in points) < 0.2 * prompt_tokens:
        return None
    total = sum(w for _, _, w in points)
    mx = sum(w * x for x, _, w in points) / total
    my = sum(w * y for _, y, w in points) / total
    slope = sum(w * (x - mx) * (y - my) for x, y, w in points) / sum(w * (x - mx) ** 2 for x, _, w in points)
    seconds = my + slope * (prompt_tokens - mx)
    return 1.0 / seconds if seconds > 0 else None


def _first_after(values: List[tuple], since: float) -> Optional[float]:
    """The earliest wall time of (stamp, wall) pairs whose stamp is at or after `since`."""
    walls = [wall for stamp, wall in values if stamp >= since - 1e-6]
    return min(walls) if walls else None


def summarize_arm(record: dict, plan: dict) -> dict:
    """P1, P2 and decode figures of one arm's record over the plan's windows."""
    win = windows(plan)
    period = 1.0 / plan["sample_fps"]
    idle_n = sum(1 for s in record["features"] if _inside(s, win["idle"]))
    busy_n = sum(1 for s in record["features"] if _inside(s, win["busy"]))
    idle_rate, busy_rate = idle_n / plan["idle"], busy_n / plan["busy"]
    narration = [t for t in record["triggers"] if t["query_id"] == NARRATION_ID]
    in_busy = [t for t in narration if _inside(t["stamp"], win["busy"])]
    chunks = record["chunks"]
    trigger_sec = [t["wall"] - t["stamp"] for t in in_busy]
    first_sec = [chunks[t["trigger_id"]]["walls"][0] - t["stamp"] for t in in_busy
                 if t["trigger_id"] in chunks]
    # Scene cuts of the footage while busy -> the first narration trigger / token showing them.
    end = record.get("end_wall", win["camera_end"])
    seen = [(t["stamp"], t["wall"]) for t in narration]
    spoken = [(t["stamp"], chunks[t["trigger_id"]]["walls"][0]) for t in narration
              if t["trigger_id"] in chunks]
    cuts = [c for c in plan.get("cuts", []) if _inside(c, win["busy"])]
    cut_trigger, cut_token, detected = [], [], 0
    for cut in cuts:
        first = _first_after(seen, cut)
        detected += first is not None
        cut_trigger.append((first if first is not None else end) - cut)
        token = _first_after(spoken, cut)
        cut_token.append((token if token is not None else end) - cut)
    # Decode slows with context: the busy answers compared with the alone ones are those whose
    # prompts are within CONTEXT_BAND of the alone answers' mean; if none is, a line through
    # the busy answers' seconds per token against prompt tokens, read at the alone prompts.
    prompts = {f["trigger_id"]: f.get("prompt_tokens") or 0 for f in record["finals"]}

    def answers(window=None) -> List[dict]:
        spans = [(t, span(c, window)) for t, c in chunks.items()]
        return [dict(c, prompt_tokens=prompts.get(t, 0)) for t, c in spans
                if c is not None and c["last_tokens"] - c["first_tokens"] >= MIN_TOKENS]

    long_answers = answers()
    # Decoding while the camera feeds perception: each answer's part from busy start on.
    busy_answers = answers((win["busy"][0], win["camera_end"]))
    alone = [c for c in long_answers if c["query_id"].startswith("alone-")]
    alone_prompt = _mean(c["prompt_tokens"] for c in alone)
    matched = [c for c in busy_answers if alone_prompt
               and abs(c["prompt_tokens"] - alone_prompt) <= CONTEXT_BAND * alone_prompt]
    with_perception = matched or busy_answers
    decode_busy, context = decode_rate(matched), "matched"
    if not matched:
        decode_busy = rate_at(busy_answers, alone_prompt) if alone_prompt else None
        context = "fit"
        if decode_busy is None:
            decode_busy, context = decode_rate(busy_answers), "not matched"

    def p(values, q, scale=1.0, digits=3):
        value = percentile(values, q)
        return round(value / scale, digits) if value == value else None

    return {
        "idle_fps": round(idle_rate, 3), "busy_fps": round(busy_rate, 3),
        "ratio": round(busy_rate / idle_rate, 3) if idle_rate else None,
        "sampled_idle": idle_n, "sampled_busy": busy_n,
        "grid_points_idle": int(round(plan["idle"] * plan["sample_fps"])),
        "grid_points_busy": int(round(plan["busy"] * plan["sample_fps"])),
        "narration_triggers_busy": len(in_busy), "narration_answered_busy": len(first_sec),
        "trigger_sec_p50": p(trigger_sec, 50), "trigger_sec_p95": p(trigger_sec, 95),
        "trigger_p50_periods": p(trigger_sec, 50, period), "trigger_p95_periods": p(trigger_sec, 95, period),
        "first_token_sec_p50": p(first_sec, 50), "first_token_sec_p95": p(first_sec, 95),
        "cuts_busy": len(cuts), "cuts_detected": detected,
        "cut_to_trigger_p95_periods": p(cut_trigger, 95, period),
        "cut_to_first_token_sec_p95": p(cut_token, 95),
        "decode_tps_with_perception": _round(decode_busy),
        "decode_answers_with_perception": len(with_perception),
        "decode_context": context,  # matched | fit | not matched
        "prompt_tokens_mean_with_perception": _round(_mean(c["prompt_tokens"] for c in with_perception)),
        "decode_tps_alone": _round(decode_rate(alone)), "decode_answers_alone": len(alone),
        "prompt_tokens_mean_alone": _round(alone_prompt),
        "decode_tps_busy_all": _round(decode_rate(busy_answers)),
        "decode_answers_busy_all": len(busy_answers),
        "prompt_tokens_mean_busy_all": _round(_mean(c["prompt_tokens"] for c in busy_answers)),
        "decode_tps_all": _round(decode_rate(long_answers)), "decode_answers_all": len(long_answers),
        "questions_asked": len(record["asks"]), "triggers": len(record["triggers"]),
        "finals": len(record["finals"]),
        "finals_by_error_code": _count(f["error_code"] for f in record["finals"]),
    }


def _mean(values) -> Optional[float]:
    values = [v for v in values if v]
    return sum(values) / len(values) if values else None


def _round(value: Optional[float], digits: int = 1) -> Optional[float]:
    return None if value is None else round(value, digits)


def _count(values) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out
