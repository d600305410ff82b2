"""Answers that mean something: now-questions over a stream of photographs, checked against
what the camera showed.

The graph is built by the composition root (compose.build_graph) from the schema's
settings, with the trained tiny VLM (`tiny:qwen2_vl_trained`, which names the scene of the
newest frame of its prompt, see models/tiny_qwen2_vl_trained.py) and the tiny SigLIP. A
seeded `world.cut_stream` (panned and zoomed photographs with hard cuts) is offered at the
sampling rate (2 fps, every frame sampled); now-questions ("What is in front of the
camera?", restricted to one camera) are asked every few frames and answered before the
stream goes on (answer_timeout_sec: deterministic under greedy decoding). An answer is right
when it names the caption of the shot its trigger's evidence frame belongs to
(world.names_scene).

answer_accuracy_steady: the share of right answers over the second half of a >= 2,000-frame
stream (1,000 s of camera time) at the shipped memory budget (reaction max_tokens from the
schema), for ours (round_decay), FIFO (memory_policy fifo) and unbounded memory (max_tokens
at the schema's maximum: nothing is pooled or dropped). The quick run streams the same
2,000 frames and asks every 20th frame instead of every 10th.

The same harness runs the semantic tests (test/semantic), which also inject deliberately
broken components (`BREAKAGES`) to show the checks cannot pass vacuously.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

VLM_MODEL = "tiny:qwen2_vl_trained"
VISION_MODEL = "tiny:siglip"
FPS = 2.0  # the shipped sample_fps: every offered frame is sampled
FRAME_SIZE = (160, 120)
FULL_FRAMES = 2000
QUICK_FRAMES = 2000  # the bar is defined on >= 2,000 frames: the quick run asks fewer questions
ASK_EVERY = 10  # frames between two now-questions (5 s of camera time)
QUICK_ASK_EVERY = 20
ARMS = ("ours", "fifo", "unbounded")


def settings(reaction: Optional[dict] = None, perception: Optional[dict] = None,
             decision: Optional[dict] = None) -> Dict[str, dict]:
    """Each node's settings from the schema (and config/dispider.yaml) with the semantic
    models, then the given overrides."""
    from dispider_ros.settings import node_settings

    out = {}
    for node, extra in (("perception_node", perception), ("decision_node", decision),
                        ("reaction_node", reaction)):
        model = {"reaction_node": {"vlm_model": VLM_MODEL, "max_new_tokens": 12}}.get(
            node, {"vision_model": VISION_MODEL})
        out[node] = node_settings(node, overrides={"preset": "tiny", **model, **(extra or {})})
    return out


# ---- deliberately broken components (what the semantic checks must catch) ------------------
class _Wrapped:
    """The reaction VLM with one method changed; everything else goes to the real one."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)


class ShuffledFrames(_Wrapped):
    """Frames reach the prompt out of order (a memory that loses time order)."""

    def __init__(self, inner, seed: int = 0):
        super().__init__(inner)
        self.rng = np.random.default_rng(seed)

    def generate(self, parts, on_text=None, stop=None):
        from dispider_ros.core.memory import FrameTokens

        slots = [i for i, it in enumerate(parts.items) if isinstance(it, FrameTokens)]
        items = list(parts.items)
        for i, j in zip(slots, self.rng.permutation(slots)):
            items[i] = parts.items[j]
        return self.inner.generate(dataclasses.replace(parts, items=items), on_text, stop)


class SwappedCameras(_Wrapped):
    """Frames are stored under the other camera's id (perception mixes up its topics)."""

    def __init__(self, inner, cameras: Sequence[str]):
        super().__init__(inner)
        a, b = cameras
        self.swap = {a: b, b: a}

    def encode_frame(self, image, camera_id="", stamp=0.0, frame_index=0, frame_id=""):
        return self.inner.encode_frame(image, self.swap.get(camera_id, camera_id), stamp, frame_index,
                                       frame_id)


class ZeroedNewest(_Wrapped):
    """The newest `newest` frames' visual tokens are zeros in every prompt (frames destroyed;
    4 = the shipped protected_frames)."""

    def __init__(self, inner, newest: int = 4):
        super().__init__(inner)
        self.newest = newest

    def destroyed(self, frame, rank: int) -> bool:
        return rank < self.newest

    def generate(self, parts, on_text=None, stop=None):
        from dispider_ros.core.memory import FrameTokens

        items = list(parts.items)
        frames = [i for i, it in enumerate(items) if isinstance(it, FrameTokens)]
        for rank, i in enumerate(reversed(frames)):
            if self.destroyed(items[i], rank):
                items[i] = dataclasses.replace(items[i], tokens=items[i].tokens * 0, key=-1)
        return self.inner.generate(dataclasses.replace(parts, items=items), on_text, stop)


class CorruptingCompression(ZeroedNewest):
    """A compression that destroys what it pools and does not protect the newest frames:
    every pooled frame (level > 0) and the newest four are zeros in the prompt."""

    def destroyed(self, frame, rank: int) -> bool:
        return frame.level > 0 or rank < self.newest


BREAKAGES = {"shuffled_frames": ShuffledFrames, "zeroed_newest": ZeroedNewest,
             "corrupting_compression": CorruptingCompression}


# ---- the harness ----------------------------------------------------------------------------
@dataclasses.dataclass
class Answer:
    camera: str
    stamp: float  # the trigger's evidence stamp
    frame_index: int
    expected: str  # the evidence shot's scene name
    text: str
    right: bool


def run_stream(node_settings: Dict[str, dict], streams: Dict[str, int], frames: int,
               ask_every: int = ASK_EVERY, ask_from: int = 0, ask_cameras: Optional[Sequence[str]] = None,
               wrap: Optional[Callable] = None, log: Optional[Callable] = None) -> Tuple[List[Answer], dict]:
    """Stream `frames` frames per camera (cameras interleaved, camera time shared) and ask a
    now-question restricted to each of `ask_cameras` every `ask_every` frames from frame
    `ask_from` on.

    Args:
        node_settings: {node: settings} for compose.build_graph.
        streams: {camera id: cut_stream seed}.
        wrap: applied to the loaded reaction VLM before the stream (a deliberate breakage).
    Returns:
        (answers to the questions, reaction stats at the end plus the decision's `revisions`:
        answers revised by a cut soon after them, answered too but not in `answers`).
    """
    from dispider_ros import compose, world
    from dispider_ros.core.types import QuerySpec

    finals: Dict[str, object] = {}
    done = threading.Lock()

    def on_response(event) -> None:
        if event.final:
            with done:
                finals[event.trigger_id] = event

    comp = compose.build_graph(node_settings, on_response, answer_timeout_sec=120.0, id_prefix="sem")
    try:
        engine = comp.graph.reaction
        if wrap is not None:
            engine.vlm = wrap(engine.vlm)
        seconds = frames / FPS
        plans = {cam: world.cut_stream(seed, seconds, fps=FPS, size=FRAME_SIZE) for cam, seed in streams.items()}
        shots = {cam: plan[0] for cam, plan in plans.items()}
        feeds = {cam: plan[1] for cam, plan in plans.items()}
        asked = list(ask_cameras or streams)
        triggers = []
        t0 = time.perf_counter()
        for n in range(frames):
            for cam in streams:
                t, image, _ = next(feeds[cam])
                comp.graph.offer(cam, t, image)
            if n >= ask_from and (n - ask_from) % ask_every == ask_every - 1:
                for cam in asked:
                    spec = QuerySpec(query_id=f"q{n}-{cam}", text=world.NOW_QUESTION, mode="now",
                                     cameras=(cam,), stamp=t)
                    triggers += comp.graph.ask(spec, t)
            if log is not None and n % 500 == 499:
                log(f"    {n + 1} frames, {len(triggers)} questions, {time.perf_counter() - t0:.0f} s")
        comp.graph.wait_idle(120.0)
        answers = []
        for trig in triggers:
            final = finals.get(trig.trigger_id)
            shot = next(s for s in shots[trig.camera_id] if s.start <= trig.stamp < s.end)
            text = final.text if final is not None else ""
            answers.append(Answer(trig.camera_id, trig.stamp, trig.frame_index, shot.scene.name, text,
                                  world.names_scene(text, shot.scene)))
        stats = engine.stats()
        stats["revisions"] = comp.graph.decision.stats()["revisions"]  # answers revised at a cut
    finally:
        comp.close()
    return answers, stats


def accuracy(answers: Sequence[Answer]) -> float:
    return float(np.mean([a.right for a in answers])) if answers else float("nan")


def run(quick: bool, log=print) -> dict:
    """answer_accuracy_steady for ours, FIFO and unbounded memory (see the module docstring)."""
    from dispider_ros.core import schema

    from bench.common import set_threads

    set_threads(1)
    frames = QUICK_FRAMES if quick else FULL_FRAMES
    every = QUICK_ASK_EVERY if quick else ASK_EVERY
    budget = schema.default("reaction_node", "max_tokens")
    arms = {"ours": {"memory_policy": "round_decay"}, "fifo": {"memory_policy": "fifo"},
            "unbounded": {"max_tokens": int(schema.param("reaction_node", "max_tokens").high)}}
    results = {}
    for name, overrides in arms.items():
        t0 = time.perf_counter()
        answers, stats = run_stream(settings(reaction=overrides), {"/camera/color/image_raw": 7},
                                    frames, ask_every=every, ask_from=frames // 2, log=log)
        results[name] = {"accuracy": accuracy(answers), "questions": len(answers),
                         "memory_frames": stats["memory_frames"], "memory_tokens": stats["memory_tokens"],
                         "compressions": stats["memory_compressions"],
                         "last_prompt_tokens": stats["last_prompt_tokens"],
                         "seconds": round(time.perf_counter() - t0, 1)}
        log(f"  semantic {name:9s}: {results[name]['accuracy']:.3f} of {len(answers)} now-questions right "
            f"(memory {stats['memory_frames']} frames, {stats['memory_tokens']} tokens, "
            f"{stats['memory_compressions']} compressions, {results[name]['seconds']} s)")
    return {"protocol": {"frames": frames, "fps": FPS, "frame_size": list(FRAME_SIZE), "ask_every_frames": every,
                         "asked_over": "second half", "max_tokens": budget, "vlm_model": VLM_MODEL,
                         "vision_model": VISION_MODEL, "stream": "world.cut_stream(seed 7)",
                         "answers": "before the stream goes on (answer_timeout_sec), greedy",
                         "unbounded_max_tokens": arms["unbounded"]["max_tokens"]},
            "arms": results, "answer_accuracy_steady": results["ours"]["accuracy"]}
