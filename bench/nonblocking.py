"""P1 (perception rate while decoding) and P2 (trigger latency while decoding).

Both arms run the composition the nodes run: a StreamingGraph (dispider_ros.core.graph)
whose stages come from the shipped settings (config/dispider.yaml over the parameter
schema) through the builders the nodes use (dispider_ros.compose), with the bench-scale
models injected and the benchmark's deviations passed as explicit overrides (OVERRIDES,
each with its reason in DEVIATIONS; all listed in the results' "protocol").

A camera thread publishes real footage as 640x480 rgb8 image messages at `camera_fps`
(camera time = wall time since the arm started). Like the perception node's image
callback it samples on the header stamp first (graph.take) and parks only due messages
in a latest-frame slot; the feeding loop converts a due message (dispider_ros.imaging),
builds its Frame (graph.frame) and runs graph.process: perception (bench SigLIP + clip
segmenter) -> the frame into the reaction's memory (visual tokens on arrival) ->
decision (a `boundary` narration query: a trigger at every scene cut) -> triggers
submitted to the reaction.

Phases on the same stream: idle (perception and on-arrival encoding alone), busy (the
narration query is asked, and "now" questions keep the reaction decoding long answers
back to back: `answer_tokens` each, forced length), tail (no new questions; late
detections of cuts that happened while busy are still seen). Then, camera stopped, a few
of the busy answers' prompts (recorded as the reaction's worker handed them to the VLM)
are generated again, to the same length, by the same model with nothing beside it: the
reaction alone, on the same prompts, so the decode rates compare at the same context
length (this model's decode slows with context, and memory grows through the run).
With the shipped preempt_same_query, a newer narration trigger stops the running
narration answer and is answered ahead of waiting questions, so in long runs most of
the busy decoding is narration.
- ours: StreamingGraph as the nodes run it (answer_timeout_sec None): answers decode in
  the reaction's worker thread while the loop goes on; it asks a new busy question
  whenever fewer than BUSY_OUTSTANDING are unanswered (the shipped queue of 8 never
  overflows).
- sequential baseline (VideoLLM-online / Dispider's released inference loop): the same
  graph with answer_timeout_sec set, so every trigger is answered before the loop goes
  on, and while busy a "now" question after each perceived frame.
P1 = sampled-frame rate in busy / rate in idle. P2 = trigger emit time (decision done,
before submission) minus its evidence frame's capture time (p50/p95), over the sampling
period. Event latency = time from a scene cut in the stream to the first narration
trigger whose evidence frame shows it. decode_tokens_per_sec = answer tokens / answer
seconds (prefill included) over the busy window, as before; the price of concurrency is
the decode-only rate (tokens after the first / seconds after the first token) of the
replayed answers while busy vs alone (`decode_slowdown_beside_perception`).
Threads: torch.set_num_threads(1) in the feeding loop and in the reaction worker.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from bench import models
from bench.common import Footage, ImageMsg, percentile, set_threads, stamp_sec
from dispider_ros import compose
from dispider_ros.core.graph import StreamingGraph
from dispider_ros.core.sampler import LatestSlot
from dispider_ros.core.schema import NODES
from dispider_ros.core.types import QuerySpec
from dispider_ros.imaging import message_to_rgb8

CAMERA = "cam"
QUESTION = "Describe everything that is happening in the scene in detail."
QUERY = "Narrate what happens, step by step."
NARRATION_ID = "narrate"
BUSY_OUTSTANDING = 2  # ours: unanswered busy questions kept waiting (answers ~1.5-2.5 s each)
ANSWER_TIMEOUT_SEC = 120.0  # sequential arm: longest one inline answer may take
MIN_REPLAY_TOKENS = 32  # shorter (early-stopped) answers say little about decode speed


class RecordingVLM:
    """The injected reaction VLM, unchanged, recording each generation's prompt and result."""

    def __init__(self, vlm, clock):
        self.vlm, self.clock = vlm, clock
        self.calls: List[tuple] = []  # (prompt parts, GenerationResult, end time on clock)

    def __getattr__(self, name):
        return getattr(self.vlm, name)

    def generate(self, parts, on_text=None, stop=None):
        result = self.vlm.generate(parts, on_text=on_text, stop=stop)
        self.calls.append((parts, result, self.clock()))
        return result
# The benchmark's deviations from the shipped settings, applied as node parameter overrides.
OVERRIDES: Dict[str, Dict[str, object]] = {
    "perception_node": {"sample_fps": 4.0, "clip_similarity_threshold": 0.97, "torch_threads": 1},
    "decision_node": {"cooldown_sec": 0.0},
    "reaction_node": {},
}
DEVIATIONS = {
    "perception_node.sample_fps": "twice the shipped rate: perception does twice the work "
        "beside the decode (a harder P1) and the quick run's 3 s busy window holds 12 sampled "
        "frames instead of 6",
    "perception_node.clip_similarity_threshold": "the random-weight bench encoder maps all real "
        "images close together: consecutive frames at 4 Hz score >= 0.978 inside a segment of "
        "the footage and <= 0.95 across its cuts, so the cut threshold sits between (a trained "
        "SigLIP separates scenes far more)",
    "perception_node.torch_threads": "one intra-op thread for the feeding loop (the reaction "
        "worker has one too): on 2 cores each gets a core; more oversubscribe them",
    "decision_node.cooldown_sec": "the footage cuts every 1.5 s; the shipped 5 s cooldown "
        "would fire on about one cut in three and leave P2 and the cut-detection figures "
        "few samples",
    "answer_tokens": "answers of exactly `answer_tokens` tokens (min_new_tokens = "
        "max_new_tokens; shipped max_new_tokens 48, ending at the end-of-answer token): a "
        "long, steady decode to measure perception beside",
    "narration query asked at busy start": "its answers are part of the busy load; the idle "
        "phase measures perception with the reaction idle",
}


@dataclass
class ArmResult:
    arm: str
    idle_fps: float
    busy_fps: float
    ratio: float
    busy_fraction: float  # share of the busy window the reaction spent answering
    decode_tokens_per_sec: float  # busy window, beside perception (prefill included)
    decode_only_busy: float  # replayed answers as they ran beside perception, decode only
    decode_only_alone: float  # the same prompts again, nothing beside the reaction
    proc_ms_idle_p50: float
    proc_ms_busy_p50: float
    proc_ms_busy_p95: float
    trigger_latency_ms: List[float] = field(default_factory=list)  # busy window, evidence -> emit
    event_latency_ms: List[float] = field(default_factory=list)  # busy-window cuts -> trigger
    events: int = 0
    events_detected: int = 0
    sampled_busy: int = 0
    sampled_idle: int = 0
    published: int = 0
    due_overwritten: int = 0  # due messages the loop never took (latest-frame policy)
    answers: Dict[str, int] = field(default_factory=dict)
    reaction_counts: Dict[str, int] = field(default_factory=dict)

    def summary(self, period: float) -> dict:
        lat = self.trigger_latency_ms
        ev = self.event_latency_ms
        alone = self.decode_only_alone
        cost = 1.0 - self.decode_only_busy / alone if alone == alone and alone > 0 else float("nan")
        return {
            "idle_fps": round(self.idle_fps, 3), "busy_fps": round(self.busy_fps, 3),
            "ratio": round(self.ratio, 3), "busy_fraction": round(self.busy_fraction, 3),
            "decode_tokens_per_sec": round(self.decode_tokens_per_sec, 1),
            "decode_tokens_per_sec_busy_same_prompts": round(self.decode_only_busy, 1),
            "decode_tokens_per_sec_idle_reaction": round(alone, 1),
            "decode_slowdown_beside_perception": round(cost, 3),
            "perception_ms_per_frame_idle_p50": round(self.proc_ms_idle_p50, 1),
            "perception_ms_per_frame_busy_p50": round(self.proc_ms_busy_p50, 1),
            "perception_ms_per_frame_busy_p95": round(self.proc_ms_busy_p95, 1),
            "sampled_frames_idle": self.sampled_idle, "sampled_frames_busy": self.sampled_busy,
            "camera_messages_published": self.published,
            "due_messages_overwritten": self.due_overwritten,
            "triggers_busy": len(lat),
            "trigger_latency_ms_p50": round(percentile(lat, 50), 1),
            "trigger_latency_ms_p95": round(percentile(lat, 95), 1),
            "trigger_latency_p50_over_period": round(percentile(lat, 50) / 1e3 / period, 3),
            "trigger_latency_p95_over_period": round(percentile(lat, 95) / 1e3 / period, 3),
            "cut_events_in_busy_window": self.events, "cut_events_detected": self.events_detected,
            "event_latency_ms_p50": round(percentile(ev, 50), 1),
            "event_latency_ms_p95": round(percentile(ev, 95), 1),
            "event_latency_p95_over_period": round(percentile(ev, 95) / 1e3 / period, 3),
            "answers": self.answers, "reaction": self.reaction_counts,
        }


class Camera(threading.Thread):
    """Publishes footage frames as rgb8 messages, paced by wall time; samples each on its
    stamp (graph.take, as the node's image callback does) and parks only due ones."""

    def __init__(self, footage: Footage, graph: StreamingGraph, slot: LatestSlot, fps: float,
                 t0: float, end: float):
        super().__init__(name="bench-camera", daemon=True)
        self.footage, self.graph, self.slot = footage, graph, slot
        self.fps, self.t0, self.end = fps, t0, end
        self.published = 0

    def run(self) -> None:
        k = 0
        while True:
            t = k / self.fps
            if t >= self.end:
                break
            delay = self.t0 + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            frame = self.footage.frame_at(t)
            # Zero-copy like rclpy's buffer: the conversion wraps it with np.frombuffer.
            msg = ImageMsg(frame, "rgb8", t, data=memoryview(frame.reshape(-1)))
            self.published += 1
            k += 1
            index = self.graph.take(CAMERA, stamp_sec(msg))  # the sampler locks itself
            if index is not None:
                self.slot.put((msg, index))
        self.slot.close()


def node_settings() -> Dict[str, dict]:
    """{node: settings}: shipped, the bench models, the benchmark's OVERRIDES."""
    return {node: models.node_settings(node, OVERRIDES[node]) for node in NODES}


def build_graph(settings: Dict[str, dict], encoder, vlm, on_response, on_trigger,
                answer_timeout_sec: Optional[float]) -> StreamingGraph:
    """The StreamingGraph of the nodes' stages (compose), with the loaded models injected."""
    return StreamingGraph(
        compose.perception_stage(settings["perception_node"], encoder),
        compose.decision_stage(settings["decision_node"], encoder, id_prefix="bench"),
        compose.reaction_stage(settings["reaction_node"], on_response, vlm),
        on_trigger=on_trigger, answer_timeout_sec=answer_timeout_sec)


def _decode_rate(calls: List[tuple], start: float, end: float) -> tuple:
    """(tokens/s, seconds answering) of the generations' parts inside [start, end),
    prefill included (answer tokens / answer seconds, weighted by overlap)."""
    tokens = seconds = 0.0
    for _, result, ended in calls:
        duration = result.duration_sec
        overlap = max(0.0, min(ended, end) - max(ended - duration, start))
        if duration > 0 and result.token_count and overlap > 0:
            tokens += result.token_count * overlap / duration
            seconds += overlap
    return (tokens / seconds if seconds else float("nan")), seconds


def _decode_only(results) -> float:
    """Tokens after the first / seconds after the first token, over all results."""
    tokens = sum(r.token_count - 1 for r in results)
    seconds = sum(r.duration_sec - r.ttft_sec for r in results)
    return tokens / seconds if seconds > 0 else float("nan")


def replay_alone(vlm, calls: List[tuple], start: float, end: float, count: int) -> tuple:
    """(decode-only tokens/s while busy, the same prompts alone, prompts replayed): up to
    `count` generations that overlapped [start, end), spread over it, each generated again
    to the same length (answers stopped early by a newer narration trigger included)."""
    ran = [(parts, result) for parts, result, ended in calls
           if ended > start and ended - result.duration_sec < end
           and result.token_count >= MIN_REPLAY_TOKENS]
    if not ran or count <= 0:
        return float("nan"), float("nan"), 0
    step = max(1, len(ran) // count)
    chosen = ran[::step][:count]
    config, alone = vlm.config, []
    try:
        for parts, result in chosen:  # this thread: 1 torch thread, like the worker
            n = result.token_count
            vlm.config = dataclasses.replace(config, max_new_tokens=n, min_new_tokens=n)
            alone.append(vlm.generate(parts))
    finally:
        vlm.config = config
    return _decode_only([r for _, r in chosen]), _decode_only(alone), len(chosen)


def run_arm(arm: str, encoder, vlm, footage: Footage, *, settings: Dict[str, dict],
            camera_fps: float, idle_sec: float, busy_sec: float, tail_sec: float,
            replays: int) -> ArmResult:
    """One arm ("ours" or "sequential") over idle, busy and tail phases; see the module doc."""
    assert arm in ("ours", "sequential")
    set_threads(settings["perception_node"]["torch_threads"])
    vlm.reset_cache()
    finals: Dict[str, int] = {}
    lock = threading.Lock()
    clock = {"t0": time.monotonic() + 0.5}
    emitted: List[float] = []  # perf_counter at each trigger of the current process() call
    triggers: List[tuple] = []  # (evidence stamp, emit time) of narration triggers

    def now() -> float:
        return time.monotonic() - clock["t0"]

    def on_response(event) -> None:
        if not event.final:
            return
        with lock:
            finals[event.query_id] = finals.get(event.query_id, 0) + 1

    def on_trigger(trigger) -> None:
        emit = now()
        emitted.append(time.perf_counter())
        if trigger.query_id == NARRATION_ID:
            triggers.append((trigger.stamp, emit))

    recorder = RecordingVLM(vlm, now)
    graph = build_graph(settings, encoder, recorder, on_response, on_trigger,
                        ANSWER_TIMEOUT_SEC if arm == "sequential" else None)
    busy_start, busy_end = idle_sec, idle_sec + busy_sec
    end = busy_end + tail_sec
    slot: LatestSlot = LatestSlot()
    sampled: List[tuple] = []  # (stamp, ms from message to decision done)
    asked = 0

    def ask_now(stamp: float) -> None:
        nonlocal asked
        graph.ask(QuerySpec(query_id=f"busy-{asked}", text=QUESTION, mode="now", stamp=stamp), stamp)
        asked += 1

    def unanswered() -> int:
        with lock:
            return asked - sum(n for q, n in finals.items() if q.startswith("busy-"))

    camera = Camera(footage, graph, slot, camera_fps, clock["t0"], end)
    camera.start()
    narrating = False
    while True:
        item = slot.get(timeout=0.5)
        if item is None:
            if slot.closed:
                break
            continue
        msg, index = item
        stamp = stamp_sec(msg)
        if not narrating and stamp >= busy_start:
            narrating = True
            graph.ask(QuerySpec(query_id=NARRATION_ID, text=QUERY, mode="boundary", stamp=stamp), stamp)
        start = time.perf_counter()
        emitted.clear()
        frame = graph.frame(CAMERA, stamp, index, message_to_rgb8(msg), msg.header.frame_id)
        graph.process([frame])
        # Message -> decision done: the first trigger's emit time when one fired (the
        # sequential arm's process() then answers it inline before returning).
        done = emitted[0] if emitted else time.perf_counter()
        sampled.append((stamp, (done - start) * 1e3))
        if busy_start <= stamp < busy_end:
            if arm == "sequential":
                ask_now(stamp)  # answered inline before the next frame
            else:
                while unanswered() < BUSY_OUTSTANDING:
                    ask_now(stamp)
    camera.join(5)
    graph.wait_idle(ANSWER_TIMEOUT_SEC * 4)
    counts = dict(graph.reaction.counts)
    graph.close()
    # The reaction alone: camera stopped, busy prompts generated again with nothing beside.
    busy_only, alone_only, replayed = replay_alone(vlm, recorder.calls, busy_start, busy_end, replays)

    def in_window(stamp, a, b):
        return a <= stamp < b

    # Windows start and end on whole seconds, where the sampling grid has the same phase
    # against the camera's frame times, so a loop that keeps up counts exactly fps * window.
    idle = [ms for s, ms in sampled if in_window(s, 1.0, busy_start)]  # first second: start-up
    busy = [ms for s, ms in sampled if in_window(s, busy_start, busy_end)]
    idle_fps = len(idle) / (busy_start - 1.0)
    busy_fps = len(busy) / busy_sec
    busy_rate, covered = _decode_rate(recorder.calls, busy_start, busy_end)
    events = footage.cuts_between(busy_start, busy_end)
    event_latency, detected = [], 0
    for e in events:
        after = [emit for s, emit in triggers if s >= e - 1e-6]
        if after:
            detected += 1
            event_latency.append((min(after) - e) * 1e3)
        else:  # never seen before the run ended: a lower bound
            event_latency.append((end - e) * 1e3)
    return ArmResult(
        arm=arm, idle_fps=idle_fps, busy_fps=busy_fps, ratio=busy_fps / idle_fps if idle_fps else 0.0,
        busy_fraction=covered / busy_sec, decode_tokens_per_sec=busy_rate,
        decode_only_busy=busy_only, decode_only_alone=alone_only,
        proc_ms_idle_p50=percentile(idle, 50), proc_ms_busy_p50=percentile(busy, 50),
        proc_ms_busy_p95=percentile(busy, 95),
        trigger_latency_ms=[(emit - s) * 1e3 for s, emit in triggers if in_window(s, busy_start, busy_end)],
        event_latency_ms=event_latency, events=len(events), events_detected=detected,
        sampled_busy=len(busy), sampled_idle=len(idle), published=camera.published,
        due_overwritten=slot.overwritten,
        answers={"busy_questions": asked, "narration_finals": finals.get(NARRATION_ID, 0),
                 "generations": len(recorder.calls), "replayed_alone": replayed},
        reaction_counts={k: v for k, v in counts.items() if isinstance(v, int)})


def run(encoder, vlm, footage: Footage, quick: bool, log=print) -> dict:
    """Both arms on the same stream; returns the P1/P2 section of the results."""
    settings = node_settings()
    shipped = {node: models.node_settings(node) for node in NODES}
    sample_fps = settings["perception_node"]["sample_fps"]
    camera_fps = 15.0
    idle_sec, busy_sec, tail_sec = (2.0, 3.0, 0.3) if quick else (8.0, 24.0, 2.0)
    replays = 3 if quick else 6
    answer_tokens = vlm.config.max_new_tokens
    assert vlm.config.min_new_tokens == answer_tokens, "P1 needs answers of a forced length"
    arms = {}
    for arm in ("ours", "sequential"):
        log(f"  P1/P2 {arm}: idle {idle_sec} s, busy {busy_sec} s, tail {tail_sec} s ...")
        arms[arm] = run_arm(arm, encoder, vlm, footage, settings=settings, camera_fps=camera_fps,
                            idle_sec=idle_sec, busy_sec=busy_sec, tail_sec=tail_sec,
                            replays=replays if arm == "ours" else 0)
    period = 1.0 / sample_fps
    ours = arms["ours"].summary(period)
    log(f"  P1 ours: {ours['ratio']:.2f} of the idle rate; decode {ours['decode_tokens_per_sec']:.0f} "
        f"tokens/s (prefill included); decode only, same prompts: "
        f"{ours['decode_tokens_per_sec_busy_same_prompts']:.0f} beside perception vs "
        f"{ours['decode_tokens_per_sec_idle_reaction']:.0f} alone "
        f"({-100 * ours['decode_slowdown_beside_perception']:+.0f} %)")
    overrides = {f"{node}.{k}": {"value": v, "shipped": shipped[node][k],
                                 "why": DEVIATIONS[f"{node}.{k}"]}
                 for node in NODES for k, v in OVERRIDES[node].items()}
    return {
        "protocol": {
            "path": "dispider_ros.core.graph.StreamingGraph from the shipped settings "
                    "(bench.models.node_settings: config/dispider.yaml over the schema, the "
                    "bench-scale models) through dispider_ros.compose's stage builders; "
                    "graph.take on the message stamp before decoding, graph.frame + "
                    "graph.process for due frames",
            "overrides": overrides,
            "other_deviations": {
                "answer_tokens": {"value": answer_tokens, "shipped": shipped["reaction_node"]["max_new_tokens"],
                                  "why": DEVIATIONS["answer_tokens"]},
                "narration query asked at busy start": DEVIATIONS["narration query asked at busy start"]},
            "sample_fps": sample_fps, "period_sec": period, "camera_fps": camera_fps,
            "frame": "640x480 rgb8 messages of real footage",
            "idle_sec": idle_sec, "busy_sec": busy_sec, "tail_sec": tail_sec,
            "answer_tokens": answer_tokens,
            "trigger_query": f"boundary (scene cuts), cooldown {settings['decision_node']['cooldown_sec']}",
            "segmenter_similarity_threshold": settings["perception_node"]["clip_similarity_threshold"],
            "busy_load": {"ours": f"'now' questions, {BUSY_OUTSTANDING} unanswered at all times",
                          "sequential": "a 'now' question after each perceived frame, answered inline "
                                        "(StreamingGraph answer_timeout_sec)"},
            "reaction_alone": f"ours: after the run, camera stopped, up to {replays} busy-window "
                              f"answers of >= {MIN_REPLAY_TOKENS} tokens: their prompts (as the "
                              "worker handed them to the VLM) generated again to the same length "
                              "by the same model, one at a time, 1 torch thread; "
                              "decode_tokens_per_sec_busy_same_prompts vs _idle_reaction are "
                              "decode only (tokens after the first / seconds after it); "
                              "decode_tokens_per_sec is prefill included over the busy window",
            "reaction_settings": {k: settings["reaction_node"][k] for k in
                                  ("max_tokens", "max_queue", "preempt_same_query",
                                   "evidence_timeout_sec", "protected_frames")},
            "threads": "feeding loop 1, reaction worker 1 (torch.set_num_threads)"},
        "ours": ours,
        "sequential": arms["sequential"].summary(period),
        "raw": {name: {"trigger_latency_ms": [round(x, 2) for x in a.trigger_latency_ms],
                       "event_latency_ms": [round(x, 2) for x in a.event_latency_ms]}
                for name, a in arms.items()},
    }
