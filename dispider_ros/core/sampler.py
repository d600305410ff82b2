"""Per-camera frame sampling at `sample_fps` on SOURCE stamps, and a latest-item mailbox.

Sampling rule: a camera's first frame is sampled; after that a frame is sampled when its
stamp reaches the next point of a fixed grid (`last due + 1/sample_fps`), so the average
rate is exact whatever the source rate, and the sampled frame is always the latest one
offered at that moment. After a gap longer than one period the grid restarts at the new
frame (no burst to catch up). Only source stamps are used, never the wall clock, so
replays and sim time sample exactly like live cameras.

Rejected input (each counted per reason in `stats()`, then raised as `RejectedFrame`, a
ValueError, so a node can log the specific reason and drop the frame):
  - "bad_stamp": NaN/inf or non-numeric stamp;
  - "bad_image": not an (H, W, 3) uint8 array with H, W > 0;
  - "non_monotonic": a stamp not later than the camera's last offered stamp, but by at
    most `max_backward_jump_sec` (reordering, duplicates).
A stamp more than `max_backward_jump_sec` BEFORE the last one (bag loop, sim-time reset)
is a clock jump: that camera's state is reset (no other camera's), `resets` counted, the
frame is sampled as a fresh start, and `on_reset(camera_id, last, new)` is called when that
frame is built. Frame indices keep counting across resets so (camera_id, index) stays
unique for the whole run.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Generic, List, Optional, Tuple, TypeVar

import numpy as np

from dispider_ros.core import schema
from dispider_ros.core.types import Frame

LOG = logging.getLogger(__name__)
_EPS = 1e-6  # seconds: absorbs float error of sec+nanosec stamps on the sampling grid


@dataclass
class SamplerConfig:
    """Args:
        sample_fps: sampled frames per second of camera time, > 0.
        max_backward_jump_sec: a stamp further back than this resets the camera.
    """

    sample_fps: float = schema.default("perception_node", "sample_fps")
    max_backward_jump_sec: float = 1.0

    def __post_init__(self):
        self.sample_fps = schema.check("perception_node", "sample_fps", self.sample_fps)
        if not isinstance(self.max_backward_jump_sec, (int, float)) or \
                not (0.0 <= self.max_backward_jump_sec < math.inf):
            raise ValueError(f"max_backward_jump_sec {self.max_backward_jump_sec!r} must be a "
                             "finite number >= 0")


class RejectedFrame(ValueError):
    """An offered frame that was not accepted; `reason` is the stats key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class CameraStats:
    offered: int = 0
    sampled: int = 0
    dropped: int = 0  # valid frames not sampled (between grid points)
    resets: int = 0
    rejected: Dict[str, int] = field(default_factory=dict)


@dataclass
class _CameraState:
    last_stamp: Optional[float] = None
    next_due: float = -math.inf
    next_index: int = 0
    granted_due: float = -math.inf  # next_due before the latest grant (re-opened by discard)
    # clock jumps not yet reported: (first index after the jump, last stamp, new stamp)
    pending_resets: List[Tuple[int, float, float]] = field(default_factory=list)
    stats: CameraStats = field(default_factory=CameraStats)


class FrameSampler:
    """Per-camera sampler; thread-safe.

    Two ways in: `offer(camera, stamp, image)` for frames already decoded (offline), or
    `take(camera, stamp)` on the header stamp alone (a transport callback) followed, for a
    sampled frame only, by `frame(camera, stamp, index, image)` once the worker has decoded
    it (or `discard(camera, index, reason)` when it cannot be). `on_reset` runs on the
    thread that builds the first frame after a clock jump (`frame` or `offer`), so a
    consumer's per-camera state resets in order with the frames it processes.

    Args:
        config: sampling settings.
        on_reset: called as on_reset(camera_id, last_stamp, new_stamp) on a clock jump.
    """

    def __init__(self, config: Optional[SamplerConfig] = None,
                 on_reset: Optional[Callable[[str, float, float], None]] = None):
        self.config = config or SamplerConfig()
        self.on_reset = on_reset
        self._cameras: Dict[str, _CameraState] = {}
        # Held for microseconds (no callbacks, no decoding inside): a transport thread
        # never waits for an encode.
        self._lock = threading.Lock()

    @property
    def period(self) -> float:
        return 1.0 / self.config.sample_fps

    def set_sample_fps(self, sample_fps: float) -> None:
        """Change the rate live; the next due point moves to last sample + new period."""
        new = SamplerConfig(sample_fps=sample_fps,
                            max_backward_jump_sec=self.config.max_backward_jump_sec)
        with self._lock:
            old_period, self.config = self.period, new
            for state in self._cameras.values():
                if state.next_due > -math.inf:
                    state.next_due += self.period - old_period

    def offer(self, camera_id: str, stamp: float, image: np.ndarray,
              frame_id: str = "") -> Optional[Frame]:
        """Offer one decoded source frame; returns a Frame when one is due, else None.

        Args:
            camera_id: source name (topic or camera id).
            stamp: camera time of the frame, seconds.
            image: (H, W, 3) uint8 RGB; kept by reference, not copied.
            frame_id: the source's coordinate frame, passed through.
        Raises:
            RejectedFrame: see the module docstring for the reasons.
        """
        self.check_image(camera_id, image)
        index = self.take(camera_id, stamp)
        return None if index is None else self.frame(camera_id, stamp, index, image, frame_id)

    def check_image(self, camera_id: str, image: np.ndarray) -> None:
        """Raise RejectedFrame("bad_image") unless image is (H, W, 3) uint8 with H, W > 0
        (counted as an offered frame, for frames checked before `take`)."""
        problem = _image_problem(image)
        if problem:
            with self._lock:
                state = self._state(camera_id)
                state.stats.offered += 1
                self._count_reject(state, "bad_image")
            raise RejectedFrame("bad_image", f"camera {camera_id!r}: {problem}")

    def take(self, camera_id: str, stamp: float) -> Optional[int]:
        """Decide on the stamp alone whether a source frame is sampled, before decoding it.

        Returns:
            The sampled frame's per-camera index, or None when the frame is not due.
        Raises:
            RejectedFrame: bad_stamp or non_monotonic (see the module docstring).
        """
        try:
            value = float(stamp)
        except (TypeError, ValueError):
            value = None
        with self._lock:
            state = self._state(camera_id)
            state.stats.offered += 1
            if value is None or not math.isfinite(value):
                self._count_reject(state, "bad_stamp")
                what = "is not a number" if value is None else "is not finite"
                raise RejectedFrame("bad_stamp", f"camera {camera_id!r}: stamp {stamp!r} {what}")
            last = state.last_stamp
            if last is not None and value <= last:
                if last - value <= self.config.max_backward_jump_sec:
                    self._count_reject(state, "non_monotonic")
                    raise RejectedFrame("non_monotonic", f"camera {camera_id!r}: stamp "
                                        f"{value:.6f} is not after the last one {last:.6f}")
                LOG.warning("camera %r: time jumped back %.3f s (%.3f -> %.3f); sampling "
                            "restarts", camera_id, last - value, last, value)
                state.next_due = -math.inf
                state.stats.resets += 1
                state.pending_resets.append((state.next_index, last, value))
            state.last_stamp = value
            if value + _EPS < state.next_due:
                state.stats.dropped += 1
                return None
            # Stay on the grid unless the source paused for more than a period.
            state.granted_due = state.next_due
            state.next_due = state.next_due + self.period
            if state.next_due + _EPS <= value:
                state.next_due = value + self.period
            index = state.next_index
            state.next_index += 1
            state.stats.sampled += 1
            return index

    def frame(self, camera_id: str, stamp: float, index: int, image: np.ndarray,
              frame_id: str = "") -> Frame:
        """The Frame of a sample `take` granted, once its image is decoded.

        Reports the camera's pending clock jumps (on_reset) first. Raises RejectedFrame
        ("bad_image", counted like `discard`) unless image is (H, W, 3) uint8 with H, W > 0.
        """
        problem = _image_problem(image)
        if problem:
            self.discard(camera_id, index, "bad_image")
            raise RejectedFrame("bad_image", f"camera {camera_id!r}: {problem}")
        with self._lock:
            state = self._state(camera_id)
            due = [r for r in state.pending_resets if r[0] <= index]
            state.pending_resets = [r for r in state.pending_resets if r[0] > index]
        if self.on_reset is not None:
            for _, last, new in due:
                self.on_reset(camera_id, last, new)
        return Frame(camera_id=camera_id, stamp=float(stamp), index=index, image=image,
                     frame_id=frame_id)

    def discard(self, camera_id: str, index: int, reason: str) -> None:
        """A granted sample could not be decoded: count it under rejected[reason] instead of
        sampled and, if no later frame was granted, re-open its grid point so the camera's
        next frame is sampled in its place (one bad message does not cost a sample)."""
        with self._lock:
            state = self._state(camera_id)
            state.stats.sampled -= 1
            self._count_reject(state, reason)
            if index == state.next_index - 1:
                state.next_due = state.granted_due

    def stats(self, camera_id: str) -> CameraStats:
        """A copy of one camera's counters (a zeroed record for an unknown camera)."""
        with self._lock:
            state = self._cameras.get(camera_id)
            if state is None:
                return CameraStats()
            return replace(state.stats, rejected=dict(state.stats.rejected))

    def cameras(self) -> List[str]:
        with self._lock:
            return list(self._cameras)

    def reset(self, camera_id: Optional[str] = None) -> None:
        """Forget sampling state (not counters or indices) of one camera or all."""
        with self._lock:
            for cam, state in self._cameras.items():
                if camera_id is None or cam == camera_id:
                    state.last_stamp, state.next_due = None, -math.inf

    def _state(self, camera_id: str) -> _CameraState:
        state = self._cameras.get(camera_id)
        if state is None:
            state = self._cameras[camera_id] = _CameraState()
        return state

    @staticmethod
    def _count_reject(state: _CameraState, reason: str) -> None:
        state.stats.rejected[reason] = state.stats.rejected.get(reason, 0) + 1


def _image_problem(image) -> str:
    """Why image is not (H, W, 3) uint8 with H, W > 0, or "" when it is."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 \
            and image.shape[2] == 3 and image.shape[0] > 0 and image.shape[1] > 0:
        return ""
    desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
    return f"image {desc} is not (H, W, 3) uint8 with H, W > 0"


T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Thread-safe single-item mailbox: put() overwrites, get() takes the newest item.

    Implements the latest-frame policy between a transport callback and a slower worker:
    the worker never sees a backlog, and `overwritten` counts the items it never saw.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._item: Optional[T] = None
        self._full = False
        self._closed = False
        self.overwritten = 0
        self.put_count = 0

    def put(self, item: T) -> bool:
        """Store item; returns True when it replaced one that was never taken."""
        with self._cond:
            replaced = self._full
            if replaced:
                self.overwritten += 1
            self._item, self._full = item, True
            self.put_count += 1
            self._cond.notify()
            return replaced

    def get(self, timeout: Optional[float] = None) -> Optional[T]:
        """Take the item, waiting up to timeout seconds (None = forever); None if none/closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._full or self._closed, timeout)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        """Wake every waiting get() (it returns None once the slot is empty)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return int(self._full)
