"""A small closed world of real photographs with captions: what the trained tiny models know.

scikit-image's wheel ships real photographs. Each becomes a *scene* with a short caption
("a cat") and the word a question names it by ("cat"). `camera_view` turns a photograph into
what a camera streaming it would see (a crop at some zoom and position, colour and exposure
changes, sensor noise); `cut_stream` plays seeded shots of panned and zoomed photographs
with hard cuts between them and says when each shot starts. The trained tiny models learn
from views of these scenes, and the semantic tests and benchmarks stream them, so a test
can check that an answer names what the camera saw.

When `../shared/data/videos` is present, frames of its CC0 clips join as more scenes
(`video_scenes`); builders put which ones into their cache key.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class Scene:
    """One thing the tiny models know.

    Args:
        name: identifier (the scikit-image loader or the clip's file stem).
        caption: the answer to "what is in front of the camera?" ("a cat").
        word: how a question names it ("cat").
    """

    name: str
    caption: str
    word: str


# scikit-image sample photographs (real photos; the grey ones are repeated to RGB).
PHOTO_SCENES: Tuple[Scene, ...] = (
    Scene("chelsea", "a cat", "cat"),
    Scene("coffee", "a cup of coffee", "coffee"),
    Scene("rocket", "a rocket", "rocket"),
    Scene("astronaut", "an astronaut", "astronaut"),
    Scene("horse", "a horse", "horse"),
    Scene("camera", "a man with a camera", "camera"),
    Scene("coins", "some coins", "coins"),
    Scene("clock", "a clock", "clock"),
    Scene("moon", "the moon", "moon"),
    Scene("stereo_motorcycle", "a motorcycle", "motorcycle"),
    Scene("hubble_deep_field", "galaxies in space", "galaxies"),
    Scene("retina", "an eye", "eye"),
    Scene("page", "a page of text", "text"),
    Scene("brick", "a brick wall", "brick"),
    Scene("grass", "grass", "grass"),
    Scene("gravel", "gravel", "gravel"),
)
# CC0 clips of ../shared/data/videos (see its MANIFEST) that become scenes when present.
VIDEO_SCENES: Tuple[Scene, ...] = (
    Scene("mdn_cc0_flower", "a red flower", "flower"),
    Scene("mdn_stream-of-water", "a stream of water", "water"),
)
NOW_QUESTION = "What is in front of the camera?"


def match_question(scene: Scene) -> str:
    """The zero-shot trigger question for a scene ("Tell me when the rocket appears.")."""
    return f"Tell me when the {scene.word} appears."


# How users ask to be told about a scene ({word} = Scene.word); the first is match_question's.
MATCH_TEMPLATES: Tuple[str, ...] = (
    "Tell me when the {word} appears.",
    "Let me know when the {word} is in view.",
    "Let me know when you see the {word}.",
    "Alert me when the {word} shows up.",
    "Notify me as soon as the {word} appears.",
    "Watch for the {word}.",
)


def match_questions(scene: Scene) -> List[str]:
    """Every MATCH_TEMPLATES question about scene."""
    return [template.format(word=scene.word) for template in MATCH_TEMPLATES]


def shared_data_dir() -> Optional[Path]:
    """The shared data folder: $DISPIDER_SHARED_DATA, else the first `shared/data` (with a
    videos/ folder) beside an ancestor of this file -- a checkout's ../shared/data, which an
    install inside that checkout's venv finds too -- else None."""
    env = os.environ.get("DISPIDER_SHARED_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data"
        if (candidate / "videos").is_dir():
            return candidate
    return None


def scene(name: str) -> Scene:
    for s in PHOTO_SCENES + VIDEO_SCENES:
        if s.name == name or s.word == name:
            return s
    raise KeyError(f"unknown scene {name!r}; known: {[s.name for s in PHOTO_SCENES + VIDEO_SCENES]}")


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """The scikit-image photograph `name` as (H, W, 3) uint8 RGB (read-only)."""
    from skimage import data

    photo = getattr(data, name)()
    if isinstance(photo, tuple):  # stereo_motorcycle: (left, right, disparity)
        photo = photo[0]
    photo = np.asarray(photo)
    if photo.dtype == bool:  # horse is a silhouette mask
        photo = photo.astype(np.uint8) * 255
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=2)
    photo = np.ascontiguousarray(photo[..., :3]).astype(np.uint8, copy=False)
    photo.setflags(write=False)
    return photo


def video_scenes(shared_data: Optional[Path], every: int = 10) -> Dict[str, List[np.ndarray]]:
    """Frames (every `every`-th, RGB) of the CC0 clips present under shared_data/videos."""
    from dispider_ros.footage import video_frames

    found: Dict[str, List[np.ndarray]] = {}
    if shared_data is None:
        return found
    for s in VIDEO_SCENES:
        path = Path(shared_data) / "videos" / f"{s.name}.mp4"
        if path.is_file():
            found[s.name] = [np.ascontiguousarray(f) for i, (_, f) in enumerate(video_frames(path)) if i % every == 0]
    return found


@dataclass(frozen=True)
class Window:
    """A crop of a photograph: centre (cx, cy) and size as fractions of the photo."""

    cx: float
    cy: float
    scale: float  # crop side / photo side (same fraction for both sides)


def random_window(rng: np.random.Generator, min_scale: float = 0.45, max_scale: float = 0.95) -> Window:
    scale = float(rng.uniform(min_scale, max_scale))
    half = scale / 2
    return Window(float(rng.uniform(half, 1 - half)), float(rng.uniform(half, 1 - half)), scale)


def render(photo: np.ndarray, window: Window, size: Tuple[int, int]) -> np.ndarray:
    """The window of photo resized to size (W, H), keeping the output's aspect ratio."""
    import cv2

    height, width = photo.shape[:2]
    out_w, out_h = size
    aspect = out_w / out_h
    crop_h = max(2, int(round(min(height, width / aspect) * window.scale)))
    crop_w = max(2, min(width, int(round(crop_h * aspect))))
    x0 = int(np.clip(window.cx * width - crop_w / 2, 0, width - crop_w))
    y0 = int(np.clip(window.cy * height - crop_h / 2, 0, height - crop_h))
    crop = photo[y0:y0 + crop_h, x0:x0 + crop_w]
    interp = cv2.INTER_AREA if crop_w > out_w else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop), (out_w, out_h), interpolation=interp)


def camera_effects(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0,
                   noise: float = 4.0) -> np.ndarray:
    """Exposure, contrast, colour cast and sensor noise (std `noise` grey levels at full
    strength), as a camera adds them."""
    x = image.astype(np.float32)
    gain = 1.0 + strength * rng.uniform(-0.25, 0.25)
    contrast = 1.0 + strength * rng.uniform(-0.25, 0.25)
    cast = 1.0 + strength * rng.uniform(-0.08, 0.08, size=3)
    mean = x.mean()
    x = ((x - mean) * contrast + mean) * gain * cast
    x += rng.normal(0.0, noise * strength, size=x.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def camera_view(photo: np.ndarray, rng: np.random.Generator, size: Tuple[int, int] = (64, 48)) -> np.ndarray:
    """One random view of photo as a camera would stream it: (H, W, 3) uint8 of size (W, H)."""
    return camera_effects(render(photo, random_window(rng), size), rng)


@dataclass(frozen=True)
class Shot:
    """One shot of a cut stream: `scene` on screen from `start` to `end` (seconds)."""

    scene: Scene
    start: float
    end: float


def plan_shots(seed: int, seconds: float, shot_range: Tuple[float, float] = (2.5, 6.0),
               scenes: Sequence[Scene] = PHOTO_SCENES) -> List[Shot]:
    """Seeded shots covering [0, seconds): random lengths in shot_range, never the same
    scene twice in a row."""
    rng = np.random.default_rng(seed)
    shots: List[Shot] = []
    t = 0.0
    last = None
    while t < seconds:
        choices = [s for s in scenes if s != last]
        pick = choices[int(rng.integers(len(choices)))]
        length = float(rng.uniform(*shot_range))
        shots.append(Shot(pick, t, min(t + length, seconds)))
        last, t = pick, t + length
    return shots


def shot_frames(shots: Sequence[Shot], fps: float, size: Tuple[int, int] = (320, 240), seed: int = 0,
                start: float = 0.0) -> Iterator[Tuple[float, np.ndarray, Shot]]:
    """Yield (seconds, RGB uint8 frame, its shot) at fps: inside a shot the camera pans and
    zooms smoothly from one random window to another, with fresh sensor noise per frame."""
    rng = np.random.default_rng(seed)
    index = int(np.ceil(start * fps - 1e-9))
    for shot in shots:
        photo = load_photo(shot.scene.name)
        a, b = random_window(rng, 0.55, 0.95), random_window(rng, 0.55, 0.95)
        look = rng.uniform(-0.5, 0.5, size=5)  # the shot's own exposure and colour
        while index / fps < shot.end:
            t = index / fps
            if t >= shot.start:
                u = (t - shot.start) / max(shot.end - shot.start, 1e-6)
                window = Window(a.cx + (b.cx - a.cx) * u, a.cy + (b.cy - a.cy) * u,
                                a.scale + (b.scale - a.scale) * u)
                frame = render(photo, window, size)
                yield t, _shot_look(frame, look, rng), shot
            index += 1


def _shot_look(image: np.ndarray, look: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = image.astype(np.float32)
    mean = x.mean()
    x = ((x - mean) * (1 + 0.2 * look[0]) + mean) * (1 + 0.2 * look[1]) * (1 + 0.1 * look[2:5])
    x += rng.normal(0.0, 3.0, size=x.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def cut_stream(seed: int, seconds: float, fps: float = 10.0, size: Tuple[int, int] = (320, 240),
               shot_range: Tuple[float, float] = (2.5, 6.0), scenes: Sequence[Scene] = PHOTO_SCENES
               ) -> Tuple[List[Shot], Iterator[Tuple[float, np.ndarray, Shot]]]:
    """(shots, frames): a seeded stream of panned, zoomed photographs with hard cuts."""
    shots = plan_shots(seed, seconds, shot_range, scenes)
    return shots, shot_frames(shots, fps, size, seed=seed + 1)


def names_scene(answer: str, target: Scene, scenes: Sequence[Scene] = PHOTO_SCENES + VIDEO_SCENES) -> bool:
    """True when answer names target's caption and no other scene's."""
    text = answer.strip().lower()
    hits = [s for s in scenes if s.caption in text]
    # "a cat" is not contained in other captions, but guard against prefixes all the same.
    longest = max(hits, key=lambda s: len(s.caption), default=None)
    return longest == target


__all__ = ["Scene", "PHOTO_SCENES", "VIDEO_SCENES", "NOW_QUESTION", "match_question", "scene",
           "load_photo", "video_scenes", "Window", "random_window", "render", "camera_effects",
           "camera_view", "Shot", "plan_shots", "shot_frames", "cut_stream", "names_scene"]
__all__ += ["MATCH_TEMPLATES", "match_questions", "shared_data_dir"]
