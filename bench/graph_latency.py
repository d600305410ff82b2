"""P1/P2 through the graph that ships: the three node processes over DDS, measured from outside.

    python -m bench.graph_latency [--quick]     this section alone (JSON on stdout)

Ours: perception_node, decision_node and reaction_node started as a user starts them (the
installed executables, `--params-file` the shipped config/dispider.yaml, then a second
parameter file with only this benchmark's overrides, OVERRIDES, each with its reason in
DEVIATIONS; a unique namespace; the shipped Fast DDS profile in every process, as
dispider.launch.py sets it). The models are the bench-scale ones (bench/models.py) through
the nodes' own `vision_model` / `vlm_model` parameters; the preset stays the shipped tiny
(device cpu, float32). Three more processes, children of this module:
- `camera`: real footage (bench.common.footage: single-shot clips cut into 1.5 s segments,
  hard cuts at known times) as 640x480 rgb8 sensor_msgs/Image at 10 fps, reliable
  keep-last 10, stamped with the wall clock at its schedule point;
- `observe` (ours): watches features, trigger, response_stream, response and /diagnostics,
  and asks the questions on `query`: nothing while idle; at busy start a `boundary`
  narration query, and "now" questions kept BUSY_OUTSTANDING unanswered until busy ends, so
  the reaction decodes long answers (min_new_tokens = max_new_tokens) back to back; after
  the camera stops, ALONE answers one at a time (the reaction with nothing beside it);
- `sequential` (baseline): one process, the same stages from the same settings
  (dispider_ros.compose.build_graph) as a StreamingGraph with answer_timeout_sec, so each
  trigger is answered before the next frame is taken, subscribed to the same camera over
  DDS (stamp-first sampling in the callback, latest due frame parked, as perception_node
  does), asking the same questions at the same times as ours asked them (one per loop
  step, between frames): a loop that generates only when triggered, on ours' schedule.
Both arms see the same camera schedule (fresh camera process each) and phases: warm-up,
idle, busy, tail. Figures (one host: the camera's stamps and every receipt are wall time):
- P1 = sampled rate while busy / idle: features (ours) or processed frames (baseline) with
  stamps in each window, windows shifted half a camera period off the frame times;
- P2 trigger = narration trigger receipt (ours: at the observer, one DDS hop; baseline: its
  emit) minus its evidence stamp, p95 over the busy window, in sampled periods;
- P2 first token = the trigger's first response_stream chunk minus its evidence stamp;
- cut -> trigger / first token: from each footage cut in the busy window to the first
  narration trigger (first token) whose evidence shows it (missed cuts count to the run end);
- decode tokens/s = (tokens at an answer's last chunk - at its first) / (seconds between
  those chunks), summed over answers of >= MIN_TOKENS: busy answers (their chunks from busy
  start until the camera stops: perception and on-arrival encoding running) vs the ALONE
  answers (camera stopped). Decode
  slows with context, so the busy answers compared are those whose prompt_tokens (on the
  final Response) are within CONTEXT_BAND of the alone answers'; all busy ones if none is.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

from bench.common import REPO, percentile

NODES = ("perception_node", "decision_node", "reaction_node")
CAMERA_FPS = 10.0
NARRATION_ID = "narrate"
NARRATION = "Narrate what happens, step by step."
QUESTION = "Describe everything that is happening in the scene in detail."
ANSWER_TOKENS = 256
# Ours: unanswered "now" questions while busy. One: the next is asked when an answer's final
# arrives (the reaction idles for one DDS round trip, ~ms), so a narration trigger waits for
# at most the running answer, as it would beside one user asking; more would queue it behind
# questions asked before it.
BUSY_OUTSTANDING = 1
# Answers counted in decode rates decode at least this many tokens after their first: a
# narration answer preempted by the next cut 1.5 s later still decodes tens of tokens.
MIN_TOKENS = 8
CONTEXT_BAND = 0.15  # busy answers compared with alone ones: prompts within 15 % of theirs
ANSWER_TIMEOUT_SEC = 120.0  # baseline: the longest one inline answer may take
PHASES = {True: dict(warmup=2.0, idle=6.0, busy=15.0, tail=1.5, alone=2),  # quick
          False: dict(warmup=5.0, idle=20.0, busy=45.0, tail=3.0, alone=4)}

# Only what the benchmark needs on top of config/dispider.yaml (the model folders are added
# by node_overrides()).
OVERRIDES: Dict[str, Dict[str, object]] = {
    "perception_node": {"torch_threads": 1, "clip_similarity_threshold": 0.97},
    "decision_node": {"torch_threads": 1, "cooldown_sec": 0.0},
    "reaction_node": {"torch_threads": 1, "max_new_tokens": ANSWER_TOKENS,
                      "min_new_tokens": ANSWER_TOKENS},
}
DEVIATIONS = {
    "torch_threads": "1 in each of the three processes, as config/dispider.yaml advises when "
        "three nodes share a small CPU: on 2 cores torch's default gives every process 2 "
        "intra-op threads and oversubscribes them",
    "clip_similarity_threshold": "the random-weight bench encoder maps all real images close "
        "together (>= 0.978 inside a segment of the footage, <= 0.95 across its cuts), so "
        "the cut threshold sits between; a trained SigLIP separates scenes far more",
    "cooldown_sec": "the footage cuts every 1.5 s; the shipped 5 s cooldown would fire on "
        "about one cut in three and leave P2 few samples",
    "max_new_tokens": "long answers (shipped 48): the reaction is always decoding while busy",
    "min_new_tokens": "= max_new_tokens (shipped 0), so no answer ends early at the "
        "end-of-answer token: a steady, known decode load",
    "vision_model": "the bench-scale SigLIP (bench/models.py) instead of the tiny preset's, "
        "for a realistic share of encoder cost",
    "vlm_model": "the bench-scale Qwen2-VL (bench/models.py) instead of the tiny preset's, "
        "for a realistic share of decode cost",
}


def node_overrides() -> Dict[str, Dict[str, object]]:
    """{node: overrides}: OVERRIDES plus the bench-scale model folder as the node's model."""
    from bench import models
    from dispider_ros.core import schema

    return {node: {schema.MODEL_PARAM[node]: models.model_path(models.NODE_MODEL[node]),
                   **OVERRIDES[node]} for node in NODES}


# ---- records and figures (pure: unit-tested) --------------------------------------------------
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


def _ros_record(record: Record, msg, wall: float) -> None:
    """A Response message into the record (chunk or final)."""
    stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
    if msg.final:
        record.final(trigger_id=msg.trigger_id, query_id=msg.query_id, stamp=stamp, wall=wall,
                     token_count=int(msg.token_count), error_code=int(msg.error_code),
                     prompt_tokens=int(msg.prompt_tokens), reused_tokens=int(msg.reused_tokens),
                     ttft_sec=float(msg.ttft_sec))
    else:
        record.chunk(msg.trigger_id, msg.query_id, int(msg.token_count), wall)


# ---- children ----------------------------------------------------------------------------------
def _emit(value: dict) -> None:
    print(json.dumps(value), flush=True)


def _read_start() -> float:
    """The camera's first schedule point (wall time), sent by the parent on stdin."""
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("parent closed stdin before the start")
    return float(json.loads(line)["wall0"])


class _Ros:
    """An rclpy node in its own context, spinning on a thread."""

    def __init__(self, name: str):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"{name}_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=2)
        self.thread.join(2.0)  # a spin thread still in rclpy at interpreter exit aborts it
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def camera_main(topic: str, seconds: float, match_timeout: float = 240.0) -> None:
    """Publish the footage at CAMERA_FPS from the parent's start time for `seconds`."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from bench.common import SINGLE_SHOT_CLIPS, footage
    from dispider_ros.nodes.camera_player import rgb_to_image

    stream = footage(fps=CAMERA_FPS, clips=SINGLE_SHOT_CLIPS)
    ros = _Ros("graph_bench_camera")
    try:
        # What most drivers offer (rmw default): reliable, keep-last 10.
        publisher = ros.node.create_publisher(Image, topic, QoSProfile(
            depth=10, reliability=ReliabilityPolicy.RELIABLE))
        messages = [rgb_to_image(f, 0.0, "camera") for f in stream.frames]
        _wait(lambda: publisher.get_subscription_count() >= 1, match_timeout, f"a subscriber on {topic}")
        _emit({"ready": True})
        wall0 = _read_start()
        total, late = int(round(seconds * CAMERA_FPS)), 0
        for k in range(total):
            stamp = wall0 + k / CAMERA_FPS
            delay = stamp - time.time()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0 / CAMERA_FPS:
                late += 1
            msg = messages[k % len(messages)]
            msg.header.stamp.sec = int(stamp)
            msg.header.stamp.nanosec = int((stamp - int(stamp)) * 1e9)
            publisher.publish(msg)
        _emit({"published": total, "late": late, "source": stream.source,
               "cuts": [wall0 + c for c in stream.cuts_between(0.0, seconds)]})
    finally:
        ros.close()


def observe_main(namespace: str, plan: dict) -> None:
    """Ours: watch the launched graph's topics and ask the questions; print the record."""
    from diagnostic_msgs.msg import DiagnosticArray

    from dispider_ros.msg import FrameFeature, Query, Response, Trigger
    from dispider_ros.nodes.base import RELIABLE_INPUT
    from dispider_ros.nodes.convert import header

    record = Record()
    diagnostics: Dict[str, dict] = {}
    ros = _Ros("graph_bench_observer")
    node = ros.node

    def stamp_of(msg) -> float:
        return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9

    def on_trigger(msg) -> None:
        record.trigger(msg.trigger_id, msg.query_id, msg.policy, stamp_of(msg), time.time())

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            for name in NODES:
                if status.name.endswith(f"{namespace}/{name}"):
                    diagnostics[name] = {kv.key: kv.value for kv in status.values}

    def topic(name: str) -> str:
        return f"{namespace}/{name}"

    def subscribed(name: str, node_name: str) -> bool:
        return any(info.node_name == node_name for info in node.get_subscriptions_info_by_topic(topic(name)))

    node.create_subscription(FrameFeature, topic("features"), lambda m: record.feature(stamp_of(m)),
                             RELIABLE_INPUT)
    node.create_subscription(Trigger, topic("trigger"), on_trigger, RELIABLE_INPUT)
    for name in ("response", "response_stream"):
        node.create_subscription(Response, topic(name),
                                 lambda m: _ros_record(record, m, time.time()), RELIABLE_INPUT)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 50)
    query_pub = node.create_publisher(Query, topic("query"), RELIABLE_INPUT)
    try:
        # Every node active: each creates these subscriptions when it activates.
        _wait(lambda: (subscribed("image", "perception_node") and subscribed("features", "decision_node")
                       and subscribed("trigger", "reaction_node")
                       and subscribed("sampled_image", "reaction_node")
                       and query_pub.get_subscription_count() >= 1), 300, "the three nodes active")
        _emit({"ready": True})
        plan = dict(plan, wall0=_read_start())
        win = windows(plan)
        asked = 0

        def ask(query_id: str, text: str, mode: str, cancel: bool = False) -> None:
            query_pub.publish(Query(header=header(0.0), query_id=query_id, text=text, mode=mode,
                                    cancel=cancel))  # zero stamp: "now" = the latest frame
            if not cancel:
                record.ask(query_id, time.time())

        _sleep_until(win["busy"][0])
        ask(NARRATION_ID, NARRATION, "boundary")
        while time.time() < win["busy"][1]:
            if asked - record.finals_of("busy-") < plan["outstanding"]:
                ask(f"busy-{asked}", QUESTION, "now")
                asked += 1
            time.sleep(0.01)
        _sleep_until(win["camera_end"] + 0.5)
        # Camera stopped, so no new triggers: the waiting ones (a narration trigger of the last
        # seconds) are answered before the narration ends.
        with record.lock:
            pending = {t["trigger_id"] for t in record.triggers}
        _wait(lambda: pending <= {f["trigger_id"] for f in record.to_json()["finals"]},
              2 * ANSWER_TIMEOUT_SEC, "finals of every busy trigger")
        record.extra["end_wall"] = time.time()  # cuts never spoken of count to here
        ask(NARRATION_ID, "", "", cancel=True)
        # The reaction alone: camera stopped, nothing else running, one answer at a time.
        for i in range(plan["alone"]):
            ask(f"alone-{i}", QUESTION, "now")
            _wait(lambda: record.finals_of(f"alone-{i}") >= 1, ANSWER_TIMEOUT_SEC, f"answer alone-{i}")
        time.sleep(1.2)  # one more diagnostics period
        record.extra["diagnostics"] = {name: {k: v for k, v in values.items() if k.startswith((
            "frames_", "processed_fps", "queue_lag", "fault.", "sampled", "dropped", "queue",
            "memory", f"{topic('image')}/"))} for name, values in diagnostics.items()}
        _emit(record.to_json())
    finally:
        ros.close()


def _sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        time.sleep(delay)


def sequential_main(namespace: str, plan: dict) -> None:
    """The baseline: the same stages in one StreamingGraph, each trigger answered inline."""
    from sensor_msgs.msg import Image

    from bench import models
    from bench.common import set_threads
    from dispider_ros import compose
    from dispider_ros.core.queries import QueryRejected
    from dispider_ros.core.sampler import LatestSlot, RejectedFrame
    from dispider_ros.core.types import QuerySpec
    from dispider_ros.imaging import message_to_rgb8
    from dispider_ros.nodes.camera_input import camera_qos
    from rclpy.qos import QoSReliabilityPolicy

    settings = {node: models.node_settings(node, plan["overrides"][node]) for node in NODES}
    set_threads(settings["perception_node"]["torch_threads"])
    record = Record()

    def on_response(event) -> None:
        wall = time.time()
        if event.final:
            record.final(trigger_id=event.trigger_id, query_id=event.query_id, stamp=event.stamp,
                         wall=wall, token_count=int(event.token_count),
                         error_code=int(event.error_code),
                         prompt_tokens=int(event.extras.get("prompt_tokens", 0) or 0),
                         reused_tokens=int(event.extras.get("reused_tokens", 0) or 0),
                         ttft_sec=float(event.ttft_sec))
        else:
            record.chunk(event.trigger_id, event.query_id, int(event.token_count), wall)

    def on_trigger(trigger) -> None:
        record.trigger(trigger.trigger_id, trigger.query_id, trigger.policy, trigger.stamp, time.time())

    composition = compose.build_graph(settings, on_response, answer_timeout_sec=ANSWER_TIMEOUT_SEC,
                                      on_trigger=on_trigger, id_prefix="seq")
    graph = composition.graph
    camera_id = f"{namespace}/image"  # the camera id perception_node gives this topic
    slot: LatestSlot = LatestSlot()

    def on_image(msg) -> None:  # stamp-first sampling; only due messages are kept
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        try:
            index = graph.take(camera_id, stamp)
        except RejectedFrame:
            return
        if index is not None:
            slot.put((msg, stamp, index))

    ros = _Ros("graph_bench_sequential")
    try:
        ros.node.create_subscription(Image, camera_id, on_image, camera_qos(QoSReliabilityPolicy.RELIABLE))
        _emit({"ready": True})
        plan = dict(plan, wall0=_read_start())
        win = windows(plan)
        pending = sorted((win["busy"][0] + offset, query_id, mode, text)
                         for offset, query_id, mode, text in plan["asks"])
        latest, rejected = None, 0
        while time.time() < win["camera_end"] + 1.0:
            item = slot.get(timeout=0.05)
            if item is not None:
                msg, stamp, index = item
                frame = graph.frame(camera_id, stamp, index, message_to_rgb8(msg), msg.header.frame_id)
                graph.process([frame])  # triggers answered before it returns
                record.feature(stamp)
                latest = stamp
            if pending and latest is not None and pending[0][0] <= time.time():
                _, query_id, mode, text = pending.pop(0)  # one question per loop step
                record.ask(query_id, time.time())
                try:
                    graph.ask(QuerySpec(query_id=query_id, text=text, mode=mode, stamp=latest), latest)
                except QueryRejected:
                    rejected += 1
        record.extra.update(end_wall=time.time(), not_asked=len(pending), rejected=rejected,
                            due_overwritten=slot.overwritten)
        graph.wait_idle(ANSWER_TIMEOUT_SEC)
        _emit(record.to_json())
    finally:
        ros.close()
        composition.close()


# ---- the parent: processes, phases, figures ---------------------------------------------------
class _Child:
    """A child process in its own session, JSON lines on stdout, stdin for the start time."""

    def __init__(self, argv: List[str], env: dict, log: Path, cwd: Path = REPO):
        self.log = log
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=open(log, "wb"), env=env, cwd=cwd, text=True,
                                        start_new_session=True)
        self.lines: "queue.Queue[Optional[dict]]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith("{"):
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def send(self, value: dict) -> None:
        self.process.stdin.write(json.dumps(value) + "\n")
        self.process.stdin.flush()

    def expect(self, key: str, timeout: float, watch: Dict[str, subprocess.Popen] = None) -> dict:
        """The next JSON line holding `key`; raises when the child or a watched process ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in (watch or {}).items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({process.returncode}) while waiting for "
                                       f"{key!r} from {self.log.stem}")
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.log.stem} exited ({self.process.wait()}) before {key!r}; "
                                   f"its log ends:\n{_tail(self.log)}")
            if key in line:
                return line
        raise TimeoutError(f"no {key!r} from {self.log.stem} in {timeout:.0f} s; log:\n{_tail(self.log)}")


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _exited(children: List[_Child], timeout: float = 15.0) -> None:
    """Let children that said everything end on their own (stop_groups then has nothing to do)."""
    for child in children:
        try:
            child.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


def _module(*args: str) -> List[str]:
    return [sys.executable, "-m", "bench.graph_latency", *args]


def _start(children: list, wall_lead: float = 1.0) -> float:
    """Send every ready child the same start time; return it."""
    wall0 = time.time() + wall_lead
    for child in children:
        child.send({"wall0": wall0})
    return wall0


def run_ours(plan: dict, env: dict, log_dir: Path, params: Path, timing: dict) -> tuple:
    """The launched node processes + camera + observer; (record, camera report, wall0)."""
    from dispider_ros.paths import executable
    from dispider_ros.processes import stop_groups

    namespace = plan["namespace"]
    overrides = log_dir / "overrides.yaml"  # a second file: `-p` loses to the file's node keys
    overrides.write_text(json.dumps({f"/**/{node}": {"ros__parameters": values}
                                     for node, values in node_overrides().items()}, indent=1))
    nodes: Dict[str, subprocess.Popen] = {}
    children: List[_Child] = []
    started = time.monotonic()
    try:
        for name in NODES:
            nodes[name] = subprocess.Popen(
                [str(executable(name)), "--ros-args", "--params-file", str(params),
                 "--params-file", str(overrides), "-r", f"__ns:={namespace}"],
                stdout=open(log_dir / f"{name}.log", "wb"), stderr=subprocess.STDOUT, env=env,
                cwd=log_dir, start_new_session=True)  # cwd outside the source tree
        observer = _Child(_module("observe", namespace, json.dumps(plan)), env, log_dir / "observer.log")
        camera = _Child(_module("camera", f"{namespace}/image", str(camera_seconds(plan))), env,
                        log_dir / "camera_ours.log")
        children += [observer, camera]
        observer.expect("ready", 300, watch=nodes)
        camera.expect("ready", 60, watch=nodes)
        timing["ours_startup"] = round(time.monotonic() - started, 1)
        wall0 = _start([observer, camera])
        report = camera.expect("published", camera_seconds(plan) + 30, watch=nodes)
        record = observer.expect("features", 240 + plan["alone"] * ANSWER_TIMEOUT_SEC, watch=nodes)
        _exited(children)
        return record, report, wall0
    finally:
        stop_groups([c.process for c in children] + list(nodes.values()))


def run_sequential(plan: dict, env: dict, log_dir: Path, timing: dict) -> tuple:
    """The baseline process + camera; (record, camera report, wall0)."""
    from dispider_ros.processes import stop_groups

    children: List[_Child] = []
    started = time.monotonic()
    try:
        baseline = _Child(_module("sequential", plan["namespace"], json.dumps(plan)), env,
                          log_dir / "sequential.log")
        children.append(baseline)
        baseline.expect("ready", 300)
        camera = _Child(_module("camera", f"{plan['namespace']}/image", str(camera_seconds(plan))),
                        env, log_dir / "camera_sequential.log")
        children.append(camera)
        camera.expect("ready", 60)
        timing["sequential_startup"] = round(time.monotonic() - started, 1)
        wall0 = _start([baseline, camera])
        report = camera.expect("published", camera_seconds(plan) + 30)
        record = baseline.expect("features", 120 + ANSWER_TIMEOUT_SEC * 2)
        _exited(children)
        return record, report, wall0
    finally:
        stop_groups([c.process for c in children])


def _raw(record: dict) -> dict:
    """Per answer [query_id, prompt tokens, tokens decoded after the first, their seconds,
    first-chunk wall time], and every narration trigger's [stamp, receipt] (wall time)."""
    prompts = {f["trigger_id"]: f.get("prompt_tokens") for f in record["finals"]}
    spans = [(t, span(c)) for t, c in record["chunks"].items()]
    return {"answers": [[c["query_id"], prompts.get(t), c["last_tokens"] - c["first_tokens"],
                         round(c["last_wall"] - c["first_wall"], 3), round(c["first_wall"], 3)]
                        for t, c in spans if c is not None],
            "narration_triggers": [[round(t["stamp"], 3), round(t["wall"], 3)]
                                   for t in record["triggers"] if t["query_id"] == NARRATION_ID]}


def _shipped(node: str, name: str):
    """A parameter's value in config/dispider.yaml over the schema; a model parameter left
    empty there is shown with what the preset fills in."""
    from dispider_ros import settings

    values = settings.node_settings(node)
    if name in ("vision_model", "vlm_model") and not values[name]:
        return f"'' (preset {values['preset']}: {settings.resolve_models(node, values)['model']})"
    return values[name]


def _settings_value(node: str, name: str):
    from bench import models

    return models.node_settings(node, node_overrides()[node])[name]


def run(quick: bool, log=print, log_dir: Optional[Path] = None) -> dict:
    """Both arms; the p1_p2_graph section of the results."""
    from bench import intake

    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="bench_graph_"))
    phases = PHASES[quick]
    sample_fps = float(_settings_value("perception_node", "sample_fps"))
    dds = intake.settings()["ours"]  # the shipped Fast DDS profile, nothing else set
    env = intake.child_env(dds, 150 + random.randrange(60))
    params = intake.shipped_params()
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:4]}"
    plan = dict(phases, sample_fps=sample_fps, camera_fps=CAMERA_FPS, outstanding=BUSY_OUTSTANDING)
    log(f"  ours: 3 node processes + camera + observer; warm-up {phases['warmup']} s, idle "
        f"{phases['idle']} s, busy {phases['busy']} s, tail {phases['tail']} s, then "
        f"{phases['alone']} answers alone (logs {log_dir})")
    ours_plan = dict(plan, namespace=f"/bench_graph_{tag}")
    started, arm_sec = time.monotonic(), {}
    ours_record, ours_camera, wall0 = run_ours(ours_plan, env, log_dir, params, arm_sec)
    arm_sec["ours"] = round(time.monotonic() - started, 1)
    ours_plan.update(wall0=wall0, cuts=ours_camera["cuts"])
    ours = summarize_arm(ours_record, ours_plan)
    # The baseline asks what ours asked, at the same offsets from busy start.
    busy_start = windows(ours_plan)["busy"][0]
    asks = [[0.0, NARRATION_ID, "boundary", NARRATION]] + [
        [wall - busy_start, query_id, "now", QUESTION] for query_id, wall in ours_record["asks"]
        if query_id.startswith("busy-")]
    log(f"  ours: P1 {ours['ratio']}, trigger p95 {ours['trigger_p95_periods']} periods, first "
        f"token p95 {ours['first_token_sec_p95']} s; decode {ours['decode_tps_with_perception']} "
        f"tokens/s with perception vs {ours['decode_tps_alone']} alone")
    log(f"  sequential: one process, the same settings, {len(asks)} questions on ours' schedule ...")
    seq_plan = dict(plan, namespace=f"/bench_graph_seq_{tag}", asks=asks,
                    overrides=node_overrides())
    started = time.monotonic()
    seq_record, seq_camera, seq_wall0 = run_sequential(seq_plan, env, log_dir, arm_sec)
    arm_sec["sequential"] = round(time.monotonic() - started, 1)
    seq_plan.update(wall0=seq_wall0, cuts=seq_camera["cuts"])
    seq = summarize_arm(seq_record, seq_plan)
    seq["not_asked"] = seq_record.get("not_asked")
    seq["due_overwritten"] = seq_record.get("due_overwritten")
    log(f"  sequential: P1 {seq['ratio']}, trigger p95 {seq['trigger_p95_periods']} periods, "
        f"first token p95 {seq['first_token_sec_p95']} s")
    ours["diagnostics"] = ours_record.get("diagnostics")
    overrides = {f"{node}.{k}": {"value": v, "shipped": _shipped(node, k), "why": DEVIATIONS[k]}
                 for node, values in node_overrides().items() for k, v in values.items()}
    period = 1.0 / sample_fps
    return {
        "p1_graph_ratio": ours["ratio"], "p1_graph_ratio_sequential": seq["ratio"],
        "p2_graph_trigger_p95_periods": ours["trigger_p95_periods"],
        "p2_graph_trigger_p95_periods_sequential": seq["trigger_p95_periods"],
        "p2_graph_first_token_p95_sec": ours["first_token_sec_p95"],
        "p2_graph_first_token_p95_sec_sequential": seq["first_token_sec_p95"],
        "p2_graph_cut_to_trigger_p95_periods": ours["cut_to_trigger_p95_periods"],
        "p2_graph_cut_to_trigger_p95_periods_sequential": seq["cut_to_trigger_p95_periods"],
        "decode_tps_alone": ours["decode_tps_alone"],
        "decode_tps_with_perception": ours["decode_tps_with_perception"],
        "decode_tps_sequential": seq["decode_tps_all"],
        "protocol": {
            "ours": "installed perception_node, decision_node, reaction_node (dispider_ros.paths."
                    "executable), `--params-file` the shipped config/dispider.yaml then a second "
                    "file with the overrides below, namespace "
                    f"{ours_plan['namespace']}, cwd outside the source tree",
            "models": "bench-scale SigLIP and Qwen2-VL (bench/models.py) through the nodes' "
                      "vision_model / vlm_model parameters; preset tiny as shipped (cpu, float32)",
            "sequential": "one process: dispider_ros.compose.build_graph of the same settings "
                          f"(answer_timeout_sec {ANSWER_TIMEOUT_SEC:g}: each trigger answered "
                          "before the loop goes on), subscribed to the same kind of camera "
                          "process over DDS (graph.take on the stamp in the callback, latest due "
                          "message parked); the narration at busy start and ours' 'now' questions "
                          "at ours' offsets from busy start, one per loop step",
            "overrides": overrides,
            "dds": {k: v for k, v in dds.items() if v} or "nothing set",
            "camera": f"another process: 640x480 rgb8 at {CAMERA_FPS:g} fps, reliable keep-last "
                      f"10, wall-clock stamps; footage {ours_camera['source']}",
            "phases_sec": phases, "sample_fps": sample_fps, "period_sec": period,
            "answer_tokens": ANSWER_TOKENS, "busy_outstanding": BUSY_OUTSTANDING,
            "busy_load": "a boundary narration query asked at busy start and one 'now' question "
                         "at a time (the next asked when the previous final arrives); with the "
                         "shipped preempt_same_query each cut's narration trigger stops the "
                         "running narration answer (final PREEMPTED) and goes ahead of the "
                         "waiting question, so with cuts every 1.5 s much of the busy decoding "
                         "is narration revisions; the reaction decodes throughout",
            "p1": "features (ours, on `features`) or processed frames (baseline) with stamps in "
                  "the busy window / in the idle window, per second",
            "p2_trigger": "narration (boundary) trigger receipt at the observer (ours: one DDS "
                          "hop after decision_node published it; baseline: in-process emit) "
                          "minus its evidence stamp, busy window, p95 / period",
            "p2_first_token": "first response_stream chunk of a busy-window narration trigger's "
                              "answer minus its evidence stamp (answers superseded before "
                              "they started have none), p95 seconds; it includes waiting for "
                              f"the running answer (up to {ANSWER_TOKENS} tokens) and the "
                              "prompt's prefill",
            "decode": "measured from outside on response_stream, decode only: (tokens at an "
                      "answer's last chunk - at its first) / seconds between them, over answers "
                      f"of >= {MIN_TOKENS} tokens. alone = {phases['alone']} 'now' answers one at "
                      "a time after the camera stopped (nothing else running); with perception = "
                      "each answer's chunks from busy start until the camera stopped, "
                      f"only those whose prompt is within {CONTEXT_BAND:.0%} of the alone answers' "
                      "mean (decode slows with context: each token attends to the whole prompt); "
                      "when none is (the memory still filling, as in the quick run), read off a "
                      "token-weighted least-squares line of the busy answers' seconds per token "
                      "against their prompt tokens at the alone answers' mean (decode_context "
                      "'fit'), else all busy answers ('not matched'); "
                      "sequential = every baseline answer (perception waits while it decodes)",
            "clocks": "one host; camera stamps and receipts are time.time()",
            "logs": str(log_dir)},
        "ours": ours, "sequential": seq,
        "arm_seconds": arm_sec,
        "raw": {"ours": _raw(ours_record), "sequential": _raw(seq_record)},
        "camera": {"ours": {k: ours_camera[k] for k in ("published", "late")},
                   "sequential": {k: seq_camera[k] for k in ("published", "late")}},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.graph_latency",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases (~90 s)")
    sub = parser.add_subparsers(dest="command")
    c = sub.add_parser("camera")
    c.add_argument("topic")
    c.add_argument("seconds", type=float)
    for name in ("observe", "sequential"):
        p = sub.add_parser(name)
        p.add_argument("namespace")
        p.add_argument("plan", help="JSON")
    args = parser.parse_args(argv)
    if args.command == "camera":
        camera_main(args.topic, args.seconds)
    elif args.command == "observe":
        observe_main(args.namespace, json.loads(args.plan))
    elif args.command == "sequential":
        sequential_main(args.namespace, json.loads(args.plan))
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("DISPIDER_CACHE", str(REPO / "build" / "bench-cache"))  # as python -m bench
        print(json.dumps(run(args.quick, log=lambda s: print(s, file=sys.stderr, flush=True)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
