"""Perception pipeline: sampler + vision encoder + per-camera clip segmenter.

`offer()` samples (cheap, call per source frame); `process()` encodes a batch of sampled
frames in one forward pass and assigns clips, returning one FrameFeature per frame.
A clock jump reported by the sampler also resets that camera's segmenter.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Sequence

import numpy as np

from dispider_ros.core.protocols import ImageEncoder
from dispider_ros.core.sampler import FrameSampler, SamplerConfig
from dispider_ros.core.segmenter import ClipSegmenter, SegmenterConfig
from dispider_ros.core.types import Frame, FrameFeature

LOG = logging.getLogger(__name__)


@dataclass
class PerceptionConfig:
    """Args:
        sampler: sampling rate and clock-jump rule.
        segmenter: clip boundary rule.
        stats_window: number of recent batches the timing averages cover, >= 1.
    """

    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    stats_window: int = 50

    def __post_init__(self):
        if not isinstance(self.sampler, SamplerConfig):
            raise TypeError(f"sampler {self.sampler!r} must be a SamplerConfig")
        if not isinstance(self.segmenter, SegmenterConfig):
            raise TypeError(f"segmenter {self.segmenter!r} must be a SegmenterConfig")
        if not isinstance(self.stats_window, int) or self.stats_window < 1:
            raise ValueError(f"stats_window {self.stats_window!r} must be an int >= 1")


class PerceptionPipeline:
    """Frames in, FrameFeatures out. One worker owns it, except that `take` (the sampler
    locks itself) may run on a transport thread.

    Args:
        encoder: anything with encode_images (models.vision.VisionEncoder).
        config: sampler/segmenter settings.
    """

    def __init__(self, encoder: ImageEncoder, config: Optional[PerceptionConfig] = None):
        self.encoder = encoder
        self.config = config or PerceptionConfig()
        self.sampler = FrameSampler(self.config.sampler, on_reset=self._on_clock_jump)
        self._segmenters: Dict[str, ClipSegmenter] = {}
        # per batch: (frames, total seconds, encode seconds, segment seconds)
        self._timings: Deque[tuple] = deque(maxlen=self.config.stats_window)
        self.frames_processed = 0

    def offer(self, camera_id: str, stamp: float, image: np.ndarray,
              frame_id: str = "") -> Optional[Frame]:
        """Sample one source frame (see FrameSampler.offer; raises RejectedFrame)."""
        return self.sampler.offer(camera_id, stamp, image, frame_id)

    def take(self, camera_id: str, stamp: float) -> Optional[int]:
        """Sample on the stamp alone, before decoding (see FrameSampler.take)."""
        return self.sampler.take(camera_id, stamp)

    def frame(self, camera_id: str, stamp: float, index: int, image: np.ndarray,
              frame_id: str = "") -> Frame:
        """The Frame of a taken sample once decoded (raises RejectedFrame on a bad image)."""
        return self.sampler.frame(camera_id, stamp, index, image, frame_id)

    def process(self, frames: Sequence[Frame]) -> List[FrameFeature]:
        """Encode frames in one batch and assign clips; input order is kept.

        Args:
            frames: sampled frames, any mix of cameras, each camera's in time order.
        Returns:
            One FrameFeature per frame.
        """
        if not frames:
            return []
        t0 = time.perf_counter()
        embeddings = self.encoder.encode_images([f.image for f in frames])  # (N, D)
        t1 = time.perf_counter()
        if embeddings.shape[0] != len(frames):
            raise ValueError(f"encoder returned {embeddings.shape[0]} embeddings for {len(frames)} frames")
        features = []
        for frame, embedding in zip(frames, embeddings):
            segmenter = self._segmenters.get(frame.camera_id)
            if segmenter is None:
                segmenter = self._segmenters[frame.camera_id] = ClipSegmenter(self.config.segmenter)
            clip = segmenter.update(embedding, frame.stamp)
            if clip.boundary:
                LOG.debug("camera %r: clip %d starts at %.3f (similarity %.3f)", frame.camera_id,
                          clip.clip_index, frame.stamp, clip.similarity)
            features.append(FrameFeature(
                camera_id=frame.camera_id, stamp=frame.stamp, frame_index=frame.index,
                clip_index=clip.clip_index, clip_boundary=clip.boundary,
                clip_similarity=clip.similarity, clip_start=clip.clip_start,
                embedding=np.ascontiguousarray(embedding, dtype=np.float32), frame_id=frame.frame_id))
        t2 = time.perf_counter()
        self._timings.append((len(frames), t2 - t0, t1 - t0, t2 - t1))
        self.frames_processed += len(frames)
        return features

    def set_sample_fps(self, sample_fps: float) -> None:
        self.sampler.set_sample_fps(sample_fps)
        self.config.sampler = self.sampler.config

    def set_segmenter(self, config: SegmenterConfig) -> None:
        """New clip rule for every camera, applied from the next frame on."""
        self.config.segmenter = config
        for segmenter in self._segmenters.values():
            segmenter.config = config

    def reset(self, camera_id: Optional[str] = None) -> None:
        """Restart sampling and clips of one camera or all (e.g. on a seek)."""
        self.sampler.reset(camera_id)
        for cam, segmenter in self._segmenters.items():
            if camera_id is None or cam == camera_id:
                segmenter.reset()

    def stats(self) -> Dict[str, float]:
        """Mean per-frame milliseconds over the recent window plus sampler counters."""
        frames = sum(t[0] for t in self._timings) or 1
        out = {
            "frames_processed": float(self.frames_processed),
            "process_ms_per_frame": 1e3 * sum(t[1] for t in self._timings) / frames,
            "encode_ms_per_frame": 1e3 * sum(t[2] for t in self._timings) / frames,
            "segment_ms_per_frame": 1e3 * sum(t[3] for t in self._timings) / frames,
        }
        timing = getattr(self.encoder, "last_timing", None)
        if timing and timing.get("frames"):
            out["last_preprocess_ms_per_frame"] = timing["preprocess_ms"] / timing["frames"]
            out["last_forward_ms_per_frame"] = timing["forward_ms"] / timing["frames"]
        for camera_id in self.sampler.cameras():
            s = self.sampler.stats(camera_id)
            for key in ("offered", "sampled", "dropped", "resets"):
                out[f"{camera_id}/{key}"] = float(getattr(s, key))
            out[f"{camera_id}/rejected"] = float(sum(s.rejected.values()))
        return out

    def _on_clock_jump(self, camera_id: str, last: float, stamp: float) -> None:
        segmenter = self._segmenters.get(camera_id)
        if segmenter is not None:
            segmenter.reset()
