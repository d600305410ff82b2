"""P1 (perception rate while decoding) and P2 (trigger latency while decoding).

A camera thread publishes real footage as 640x480 rgb8 image messages at `camera_fps`
(camera time = wall time since the arm started) into a latest-frame slot, like the
nodes' camera input. One perception loop takes the latest message and runs what the
node graph runs per frame: message -> RGB (dispider_ros.imaging), FrameSampler at
`sample_fps`, PerceptionPipeline (bench SigLIP) + clip segmenter, DecisionCore (a
`boundary` query: a trigger at every scene cut, cooldown 0), and the reaction side's
on-arrival encoding (ReactionEngine.ingest / the same encode_frame + MemoryBuffer).

Each arm runs three phases on the same stream: idle (reaction idle), busy (the reaction
decodes long answers back to back: `answer_tokens` each, forced length), tail (reaction
idle again, so late detections of events that happened while busy are still seen).
- ours: answers run in the ReactionEngine's worker thread; the perception loop never waits.
- sequential baseline (VideoLLM-online / Dispider's released inference loop): one loop
  perceive -> decide -> react, with generate() called inline after each perceived frame
  while busy.
P1 = sampled-frame rate in busy / rate in idle. P2 = trigger emit time minus its evidence
frame's capture time (p50/p95), over the sampling period. Event latency = time from a
scene cut in the stream to the first trigger whose evidence frame shows it.
Threads: torch.set_num_threads(1) in the perception loop and in the reaction worker.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import List


from bench.common import Footage, ImageMsg, percentile, set_threads, stamp_sec
from dispider_ros.core.decision import DecisionConfig, DecisionCore
from dispider_ros.core.memory import MemoryConfig
from dispider_ros.core.perception import PerceptionConfig, PerceptionPipeline
from dispider_ros.core.reaction import ReactionConfig, ReactionEngine
from dispider_ros.core.sampler import LatestSlot, SamplerConfig
from dispider_ros.core.segmenter import SegmenterConfig
from dispider_ros.core.types import QuerySpec, TriggerEvent
from dispider_ros.imaging import message_to_rgb8
from dispider_ros.core.protocols import PromptParts

QUESTION = "Describe everything that is happening in the scene in detail."
QUERY = "Narrate what happens, step by step."
# The random-weight encoder maps all real images close together: consecutive frames at
# 4 Hz score >= 0.978 inside a segment of the bench footage and <= 0.95 across its cuts, so
# the cut threshold sits between (a trained SigLIP separates scenes far more; 0.85 default).
SEGMENTER = SegmenterConfig(similarity_threshold=0.97)


@dataclass
class ArmResult:
    arm: str
    idle_fps: float
    busy_fps: float
    ratio: float
    busy_fraction: float  # share of the busy window the reaction spent decoding
    decode_tokens_per_sec: float
    proc_ms_idle_p50: float
    proc_ms_busy_p50: float
    proc_ms_busy_p95: float
    trigger_latency_ms: List[float] = field(default_factory=list)  # busy window, evidence -> emit
    trigger_latency_idle_ms: List[float] = field(default_factory=list)
    event_latency_ms: List[float] = field(default_factory=list)  # busy-window cuts -> trigger
    events: int = 0
    events_detected: int = 0
    sampled_busy: int = 0
    sampled_idle: int = 0

    def summary(self, period: float) -> dict:
        lat = self.trigger_latency_ms
        ev = self.event_latency_ms
        return {
            "idle_fps": round(self.idle_fps, 3), "busy_fps": round(self.busy_fps, 3),
            "ratio": round(self.ratio, 3), "busy_fraction": round(self.busy_fraction, 3),
            "decode_tokens_per_sec": round(self.decode_tokens_per_sec, 1),
            "perception_ms_per_frame_idle_p50": round(self.proc_ms_idle_p50, 1),
            "perception_ms_per_frame_busy_p50": round(self.proc_ms_busy_p50, 1),
            "perception_ms_per_frame_busy_p95": round(self.proc_ms_busy_p95, 1),
            "sampled_frames_idle": self.sampled_idle, "sampled_frames_busy": self.sampled_busy,
            "triggers_busy": len(lat),
            "trigger_latency_ms_p50": round(percentile(lat, 50), 1),
            "trigger_latency_ms_p95": round(percentile(lat, 95), 1),
            "trigger_latency_p50_over_period": round(percentile(lat, 50) / 1e3 / period, 3),
            "trigger_latency_p95_over_period": round(percentile(lat, 95) / 1e3 / period, 3),
            "trigger_latency_idle_ms_p95": round(percentile(self.trigger_latency_idle_ms, 95), 1),
            "cut_events_in_busy_window": self.events, "cut_events_detected": self.events_detected,
            "event_latency_ms_p50": round(percentile(ev, 50), 1),
            "event_latency_ms_p95": round(percentile(ev, 95), 1),
            "event_latency_p95_over_period": round(percentile(ev, 95) / 1e3 / period, 3),
        }


class Camera(threading.Thread):
    """Publishes footage frames as rgb8 messages into a LatestSlot at fps, paced by wall time."""

    def __init__(self, footage: Footage, slot: LatestSlot, fps: float, t0: float, end: float):
        super().__init__(name="bench-camera", daemon=True)
        self.footage, self.slot, self.fps, self.t0, self.end = footage, slot, fps, t0, end
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
            self.slot.put(ImageMsg(frame, "rgb8", t, data=memoryview(frame.reshape(-1))))
            self.published += 1
            k += 1
        self.slot.close()


def _setup(encoder, vlm, sample_fps: float):
    perception = PerceptionPipeline(encoder, PerceptionConfig(
        sampler=SamplerConfig(sample_fps=sample_fps), segmenter=SEGMENTER))
    decision = DecisionCore(DecisionConfig(cooldown_sec=0.0, id_prefix="bench"),
                            text_encoder=encoder.encode_texts)
    decision.add_query(QuerySpec(query_id="narrate", text=QUERY, mode="boundary"), 0.0)
    vlm.reset_cache()
    return perception, decision


def run_arm(arm: str, encoder, vlm, footage: Footage, *, sample_fps: float, camera_fps: float,
            idle_sec: float, busy_sec: float, tail_sec: float, answer_tokens: int,
            max_tokens: int = 4096) -> ArmResult:
    """One arm ("ours" or "sequential") over idle, busy and tail phases; see the module doc."""
    assert arm in ("ours", "sequential")
    set_threads(1)
    perception, decision = _setup(encoder, vlm, sample_fps)
    memory_config = MemoryConfig(max_tokens=max_tokens)
    answers: List[dict] = []  # {"end": t, "duration": s, "tokens": n}
    answers_lock = threading.Lock()
    t0_holder = {}

    def on_response(event) -> None:
        if event.final and event.token_count:
            with answers_lock:
                answers.append({"end": time.monotonic() - t0_holder["t0"],
                                "duration": event.extras.get("duration_sec", 0.0),
                                "tokens": event.token_count})

    # Both arms keep memory and encode on arrival through a ReactionEngine (same budget rules);
    # only ours lets its worker answer, the sequential loop calls generate() itself.
    engine = ReactionEngine(ReactionConfig(memory=memory_config, max_queue=1000,
                                           preempt_same_query=False, evidence_wait_sec=0.0,
                                           worker_threads=1), on_response, vlm=vlm)
    memory = engine.memory
    busy_start, busy_end = idle_sec, idle_sec + busy_sec
    end = busy_end + tail_sec
    slot: LatestSlot = LatestSlot()
    sampled: List[tuple] = []  # (stamp, processing ms)
    triggers: List[tuple] = []  # (evidence stamp, emit time)
    stop = threading.Event()
    t0 = time.monotonic() + 0.05
    t0_holder["t0"] = t0
    camera = Camera(footage, slot, camera_fps, t0, end)
    camera.start()
    busy_started = False

    def start_busy() -> None:
        stamp = time.monotonic() - t0
        if arm == "ours":
            n = int(busy_sec * 400 / answer_tokens) + 2  # more answers than the window can hold
            for k in range(n):
                engine.submit(TriggerEvent(
                    trigger_id=f"busy-{k}", query_id=f"busy-{k}", query_text=QUESTION,
                    camera_id="cam", policy="now", score=1.0, stamp=stamp, frame_index=0,
                    clip_index=0, clip_start=0.0, clip_end=stamp))
        threading.Timer(max(0.0, t0 + busy_end - time.monotonic()), end_busy).start()

    def end_busy() -> None:
        stop.set()
        engine.close(timeout=30)  # ours: stops the running answer, drops the waiting ones

    while True:
        msg = slot.get(timeout=0.5)
        now = time.monotonic() - t0
        if msg is None:
            if slot.closed:
                break
            continue
        if not busy_started and now >= busy_start:
            busy_started = True
            start_busy()
        start = time.perf_counter()
        rgb = message_to_rgb8(msg)
        frame = perception.offer("cam", stamp_sec(msg), rgb, "camera")
        if frame is None:
            continue
        feature = perception.process([frame])[0]
        fired = decision.on_feature(feature)
        emit = time.monotonic() - t0
        for trig in fired:
            triggers.append((trig.stamp, emit))
        engine.ingest(frame)
        sampled.append((frame.stamp, (time.perf_counter() - start) * 1e3))
        if arm == "sequential" and busy_started and not stop.is_set():
            g0 = time.monotonic() - t0
            result = vlm.generate(PromptParts(memory.snapshot(), QUESTION), stop=stop)
            answers.append({"end": time.monotonic() - t0, "duration": result.duration_sec,
                            "tokens": result.token_count, "start": g0})
    camera.join(5)

    def in_window(stamp, a, b):
        return a <= stamp < b

    # Windows start and end on whole seconds, where the sampling grid has the same phase
    # against the camera's frame times, so a loop that keeps up counts exactly fps * window.
    idle = [ms for s, ms in sampled if in_window(s, 1.0, busy_start)]  # first second: start-up
    busy = [ms for s, ms in sampled if in_window(s, busy_start, busy_end)]
    idle_fps = len(idle) / (busy_start - 1.0)
    busy_fps = len(busy) / busy_sec
    covered = tokens = 0.0
    decode_time = 0.0
    for a in answers:
        a_start = a.get("start", a["end"] - a["duration"])
        overlap = max(0.0, min(a["end"], busy_end) - max(a_start, busy_start))
        covered += overlap
        if a["duration"] > 0:
            tokens += a["tokens"] * overlap / a["duration"]
            decode_time += overlap
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
        busy_fraction=covered / busy_sec,
        decode_tokens_per_sec=tokens / decode_time if decode_time else float("nan"),
        proc_ms_idle_p50=percentile(idle, 50), proc_ms_busy_p50=percentile(busy, 50),
        proc_ms_busy_p95=percentile(busy, 95),
        trigger_latency_ms=[(emit - s) * 1e3 for s, emit in triggers if in_window(s, busy_start, busy_end)],
        trigger_latency_idle_ms=[(emit - s) * 1e3 for s, emit in triggers if in_window(s, 1.0, busy_start)],
        event_latency_ms=event_latency, events=len(events), events_detected=detected,
        sampled_busy=len(busy), sampled_idle=len(idle))


def run(encoder, vlm, footage: Footage, quick: bool, log=print) -> dict:
    """Both arms on the same stream; returns the P1/P2 section of the results."""
    sample_fps, camera_fps = 4.0, 15.0
    idle_sec, busy_sec, tail_sec = (2.0, 3.0, 0.3) if quick else (8.0, 24.0, 2.0)
    answer_tokens = vlm.config.max_new_tokens
    arms = {}
    for arm in ("ours", "sequential"):
        log(f"  P1/P2 {arm}: idle {idle_sec} s, busy {busy_sec} s, tail {tail_sec} s ...")
        arms[arm] = run_arm(arm, encoder, vlm, footage, sample_fps=sample_fps, camera_fps=camera_fps,
                            idle_sec=idle_sec, busy_sec=busy_sec, tail_sec=tail_sec,
                            answer_tokens=answer_tokens)
    period = 1.0 / sample_fps
    return {
        "protocol": {"sample_fps": sample_fps, "period_sec": period, "camera_fps": camera_fps,
                     "frame": "640x480 rgb8 messages of real footage",
                     "idle_sec": idle_sec, "busy_sec": busy_sec, "tail_sec": tail_sec,
                     "answer_tokens": answer_tokens, "trigger_query": "boundary (scene cuts), cooldown 0",
                     "segmenter_similarity_threshold": SEGMENTER.similarity_threshold,
                     "threads": "perception loop 1, reaction worker 1 (torch.set_num_threads)"},
        "ours": arms["ours"].summary(period),
        "sequential": arms["sequential"].summary(period),
        "raw": {name: {"trigger_latency_ms": [round(x, 2) for x in a.trigger_latency_ms],
                       "event_latency_ms": [round(x, 2) for x in a.event_latency_ms]}
                for name, a in arms.items()},
    }
