"""Old-needle retrieval: is a photograph shown once, minutes ago, found again when asked about?

A seeded *needle recording* (`needle_recording`): a few seconds of other footage, one shot of
the needle photograph, then minutes of other shots (world.cut_stream's panned and zoomed
photographs with hard cuts, never the needle), then a question that names the needle ("Tell
me about the rocket you saw."). It runs through the composition root (compose.build_graph)
at the given settings, every frame sampled, the answer awaited (greedy: deterministic).

Per recording (`run_needle`): which clips the trigger retrieved and their scores, whether one
of them lies inside the needle shot (the retrieval hit), the keyframes the reaction model was
given (`PromptProbe`: level 0 = full resolution, and their stamps), how many needle frames its
memory still held at full resolution (compression pools them), and the answer and whether it
names the needle (world.names_scene). `recall_at_k` over many seeds is the figure.
`run_needle(..., wrap_vlm=...)` wraps the reaction VLM, e.g. with `KeyframeSwap` (a broken
retrieval: the retrieved keyframes show another scene), to check that the answer follows them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dispider_ros import world

FPS = 2.0  # the shipped sample_fps: every offered frame is sampled
FRAME_SIZE = (160, 120)
LEAD_SEC = 6.0  # other footage before the needle
NEEDLE_SEC = 4.0  # the needle's one shot
QUESTION = "Tell me about the {word} you saw."


@dataclass(frozen=True)
class NeedleRecording:
    seed: int
    needle: world.Scene
    shots: Tuple[world.Shot, ...]
    question: str

    @property
    def needle_shot(self) -> world.Shot:
        return next(s for s in self.shots if s.scene == self.needle)

    @property
    def seconds(self) -> float:
        return self.shots[-1].end


def needle_recording(seed: int, seconds: float = 180.0,
                     scenes: Sequence[world.Scene] = world.PHOTO_SCENES) -> NeedleRecording:
    """A seeded recording of `seconds`: lead, the needle's one shot, then other shots."""
    rng = np.random.default_rng(seed)
    needle = scenes[int(rng.integers(len(scenes)))]
    others = [s for s in scenes if s != needle]
    lead = world.plan_shots(seed * 7 + 1, LEAD_SEC, scenes=others)
    shots = list(lead) + [world.Shot(needle, LEAD_SEC, LEAD_SEC + NEEDLE_SEC)]
    start = LEAD_SEC + NEEDLE_SEC
    for shot in world.plan_shots(seed * 7 + 2, seconds - start, scenes=others):
        if shot.scene == shots[-1].scene:  # no cut would be visible between them
            shot = world.Shot(next(s for s in others if s != shot.scene), shot.start, shot.end)
        shots.append(world.Shot(shot.scene, shot.start + start, shot.end + start))
    return NeedleRecording(seed, needle, tuple(shots), QUESTION.format(word=needle.word))


class PromptProbe:
    """The reaction VLM, recording what each prompt's retrieved part held."""

    def __init__(self, inner):
        self._inner = inner
        self.parts: List[object] = []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def generate(self, parts, on_text=None, stop=None):
        self.parts.append(parts)
        return self._inner.generate(parts, on_text=on_text, stop=stop)


class KeyframeSwap:
    """A broken retrieval: the reaction VLM, given every retrieved keyframe's visual tokens
    replaced by those of camera views of `scene` (labels and stamps kept). An answer that
    then names `scene` comes from the retrieved frames, not from the question's word."""

    def __init__(self, inner, scene: world.Scene, seed: int = 0):
        self._inner = inner
        self.scene = scene
        rng = np.random.default_rng(seed)
        photo = world.load_photo(scene.name)
        self._views = inner.encode_images([world.camera_view(photo, rng, size=FRAME_SIZE) for _ in range(4)])

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def generate(self, parts, on_text=None, stop=None):
        swapped = []
        for i, frame in enumerate(parts.retrieved):
            tokens, grid = self._views[i % len(self._views)]
            if tuple(grid) != tuple(frame.grid):
                raise ValueError(f"swapped view grid {grid} differs from the keyframe's {frame.grid}")
            swapped.append(dataclasses.replace(frame, tokens=tokens))
        parts = dataclasses.replace(parts, retrieved=swapped)
        return self._inner.generate(parts, on_text=on_text, stop=stop)


@dataclass
class NeedleResult:
    seed: int
    needle: str
    needle_shot: Tuple[float, float]
    retrieved: List[dict]  # the final's retrieved_clips (start, end, score, keyframes)
    hit_rank: int  # 1-based rank of the first retrieved clip inside the needle shot; 0 = none
    keyframes: List[Tuple[float, int]]  # (stamp, pooling level) of each keyframe in the prompt
    needle_keyframes: int  # of those, inside the needle shot at full resolution (level 0)
    memory_needle_full: int  # needle frames the prompt's memory still held at full resolution
    answer: str
    names_needle: bool
    error_code: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def run_needle(recording: NeedleRecording, node_settings: Dict[str, dict],
               answer_timeout_sec: float = 120.0,
               wrap_vlm: Optional[Callable[[object], object]] = None) -> NeedleResult:
    """Stream the recording through a fresh graph, ask its question at the end, await it.
    wrap_vlm (optional) wraps the reaction VLM, inside the probe (e.g. a KeyframeSwap)."""
    from dispider_ros import compose
    from dispider_ros.core.types import QuerySpec

    finals: Dict[str, object] = {}

    def on_response(event) -> None:
        if event.final:
            finals[event.trigger_id] = event

    comp = compose.build_graph(node_settings, on_response, answer_timeout_sec=answer_timeout_sec,
                               id_prefix=f"needle{recording.seed}")
    try:
        vlm = comp.graph.reaction.vlm
        probe = PromptProbe(wrap_vlm(vlm) if wrap_vlm is not None else vlm)
        comp.graph.reaction.vlm = probe
        camera = "/camera/color/image_raw"
        t = 0.0
        for t, image, _ in world.shot_frames(recording.shots, FPS, FRAME_SIZE, seed=recording.seed + 1):
            comp.graph.offer(camera, t, image)
        spec = QuerySpec(query_id="needle", text=recording.question, mode="now", stamp=t)
        triggers = comp.graph.ask(spec, t)
        comp.graph.wait_idle(answer_timeout_sec)
    finally:
        comp.close()
    if not triggers:
        raise RuntimeError(f"seed {recording.seed}: the question fired no trigger")
    final = finals.get(triggers[0].trigger_id)
    shot = recording.needle_shot
    inside = lambda a, b: a < shot.end and b >= shot.start  # noqa: E731 -- overlaps the needle shot
    clips = list(final.extras.get("retrieved_clips", [])) if final is not None else []
    hit = next((i + 1 for i, c in enumerate(clips) if inside(c["start"], c["end"])), 0)
    parts = probe.parts[0] if probe.parts else None
    keyframes = [(float(f.stamp), int(f.level)) for f in (parts.retrieved if parts else [])]
    memory = [it for it in (parts.items if parts else []) if hasattr(it, "level")]
    text = final.text if final is not None else ""
    return NeedleResult(recording.seed, recording.needle.name, (shot.start, shot.end), clips, hit, keyframes,
                        sum(shot.start <= s < shot.end and level == 0 for s, level in keyframes),
                        sum(shot.start <= f.stamp < shot.end and f.level == 0 for f in memory),
                        text, world.names_scene(text, recording.needle),
                        int(final.error_code) if final is not None else -1)


def recall_at_k(results: Sequence[NeedleResult], k: Optional[int] = None) -> float:
    """Share of recordings whose needle clip is among the first k retrieved (all when None)."""
    hits = [r.hit_rank > 0 and (k is None or r.hit_rank <= k) for r in results]
    return float(np.mean(hits)) if hits else float("nan")


__all__ = ["KeyframeSwap", "NeedleRecording", "NeedleResult", "PromptProbe", "needle_recording", "run_needle", "recall_at_k"]
