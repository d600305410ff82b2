"""Clip features for question-relevant retrieval (Dispider: the decision works on clip-level
features; the reaction answers from the clips relevant to the question).

`ClipIndex` keeps, per camera and clip (perception's segmentation: FrameFeature.clip_index),
the clip feature: the mean of its frames' L2-normalised vision embeddings, with the clip's
first and last stamps. At trigger time `rank` scores every closed clip against the
question's text embedding with the match policy's calibration (sigmoid(scale * cos + bias):
the probability that the clip shows what the question names) and returns the best k above a
floor. The clip still open on a camera is left out: its frames are the newest in the prompt
memory, at full resolution already. Bounded: the oldest clips go first beyond `max_clips`
(a clip costs its embedding, 3 KB at 768 dimensions). ROS-free and model-free; not
thread-safe (DecisionCore serialises it).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from dispider_ros.core.types import FrameFeature, RetrievedClip


@dataclass
class _Clip:
    camera_id: str
    clip_index: int
    start: float
    end: float
    total: np.ndarray  # sum of the frames' embeddings
    frames: int


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


class ClipIndex:
    """Clip features of every camera, oldest evicted beyond max_clips (>= 1)."""

    def __init__(self, max_clips: int):
        if not isinstance(max_clips, int) or isinstance(max_clips, bool) or max_clips < 1:
            raise ValueError(f"max_clips {max_clips!r} must be an int >= 1")
        self.max_clips = max_clips
        self._clips: "OrderedDict[Tuple[str, int], _Clip]" = OrderedDict()
        self._open: Dict[str, int] = {}  # camera -> its newest clip index
        self.evicted = 0

    def observe(self, feature: FrameFeature) -> None:
        """Add one frame's embedding to its clip (a new clip index opens a clip)."""
        key = (feature.camera_id, int(feature.clip_index))
        clip = self._clips.get(key)
        embedding = np.asarray(feature.embedding, dtype=np.float32)
        if clip is None or clip.total.shape != embedding.shape:
            clip = self._clips[key] = _Clip(feature.camera_id, key[1], feature.clip_start, feature.stamp,
                                            np.zeros_like(embedding), 0)
            while len(self._clips) > self.max_clips:
                self._clips.popitem(last=False)
                self.evicted += 1
        clip.total += embedding
        clip.frames += 1
        clip.start = min(clip.start, feature.clip_start)
        clip.end = max(clip.end, feature.stamp)
        self._open[feature.camera_id] = key[1]

    def clear(self, camera_id: str) -> None:
        """Forget a camera's clips (its timeline restarted: bag loop, sim-time reset)."""
        for key in [k for k in self._clips if k[0] == camera_id]:
            del self._clips[key]
        self._open.pop(camera_id, None)

    def rank(self, text: np.ndarray, k: int, calibration: Tuple[float, float],
             cameras: Sequence[str] = (), min_score: float = 0.0) -> List[RetrievedClip]:
        """The k closed clips most relevant to an L2-normalised text embedding, best first.

        Args:
            text: (D,) the question's embedding in the clip features' space.
            k: clips at most (0 = none).
            calibration: (scale, bias) turning a cosine into a match probability.
            cameras: the cameras the question watches (empty = every camera).
            min_score: clips below this probability are left out.
        """
        candidates = [c for c in self._clips.values()
                      if (not cameras or c.camera_id in cameras) and c.total.shape == text.shape
                      and self._open.get(c.camera_id) != c.clip_index]
        if k <= 0 or not candidates:
            return []
        means = np.stack([c.total for c in candidates])  # (N, D)
        norms = np.linalg.norm(means, axis=1)
        cos = (means @ text) / np.where(norms > 0, norms, 1.0)
        scale, bias = calibration
        scores = _sigmoid(scale * cos + bias)
        best = np.argsort(-scores, kind="stable")[:k]
        return [RetrievedClip(candidates[i].camera_id, candidates[i].clip_index, candidates[i].start,
                              candidates[i].end, float(scores[i]))
                for i in best if scores[i] >= min_score and math.isfinite(scores[i])]

    def __len__(self) -> int:
        return len(self._clips)

    def stats(self) -> dict:
        return {"clips_indexed": len(self._clips), "clips_evicted": self.evicted}


__all__ = ["ClipIndex"]
