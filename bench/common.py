"""Shared pieces of the benchmark: machine facts, timers, RSS, real footage, image messages."""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"  # committed reference results
# Where a run writes unless told to record: untracked (build/ is git-ignored), so a local
# run never rewrites the committed reference figures.
LOCAL_RESULTS = Path(__file__).resolve().parents[1] / "build" / "bench-results"


def results_dir(record: bool) -> Path:
    """bench/results when recording the reference figures (--record), else build/bench-results."""
    folder = RESULTS if record else LOCAL_RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    return folder
# Clips joined into one camera stream; their joins are scene cuts with known times.
CLIPS = ("mdn_cc0_flower.mp4", "mdn_stream-of-water.mp4", "mdn_cc0_friday.mp4",
         "moviepy_big_buck_bunny_0_30.webm")
# Single-shot clips: the only scene changes of a stream made of them are its joins (the
# first seconds of Big Buck Bunny hold a title fade and cuts of their own).
SINGLE_SHOT_CLIPS = CLIPS[:3]
FRAME_SIZE = (640, 480)  # (width, height): a common VGA camera


def set_threads(n: int = 1) -> None:
    """Torch intra-op threads of the calling thread (and the process default)."""
    import torch

    torch.set_num_threads(n)


def load_average() -> Tuple[float, float, float]:
    return os.getloadavg()


def wait_quiet(max_wait_sec: float, threshold: float = 0.5, log=print) -> Tuple[float, float, float]:
    """Wait up to max_wait_sec for the 1-minute load average to drop below threshold."""
    deadline = time.monotonic() + max_wait_sec
    load = load_average()
    while load[0] >= threshold and time.monotonic() < deadline:
        log(f"  waiting for a quiet machine: load average {load[0]:.2f} >= {threshold}")
        time.sleep(min(15.0, max(1.0, deadline - time.monotonic())))
        load = load_average()
    return load


def machine(threads: Dict[str, object]) -> dict:
    """CPU model, cores, versions, load average and thread settings for the JSON."""
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib,
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "numpy": np.__version__,
        "load_average_start": [round(x, 2) for x in load_average()],
        "threads": threads,
    }


def rss_mb() -> float:
    """Resident set size of this process from /proc/self/statm, MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_rss_mb() -> float:
    """Peak resident set size (VmHWM) of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); nan for no values."""
    if not len(values):
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def timed(fn, repeats: int, warmup: int = 1) -> List[float]:
    """Seconds per call of fn() over repeats (after warmup calls)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


# ---- real footage ----------------------------------------------------------------------
def _clip_frames(path: Path, fps: float, seconds: float, size) -> List[np.ndarray]:
    """RGB frames of the first `seconds` of a clip at `fps`, resized to size (w, h)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        return []
    source_fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    out, index, next_t = [], 0, 0.0
    try:
        while len(out) < int(round(seconds * fps)):
            ok, bgr = capture.read()
            if not ok:
                break
            t = index / source_fps
            index += 1
            if t + 1e-6 < next_t:
                continue
            next_t += 1.0 / fps
            out.append(np.ascontiguousarray(cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)[..., ::-1]))
    finally:
        capture.release()
    return out


def _photo_clips(fps: float, seconds: float, size) -> List[List[np.ndarray]]:
    """Fallback: scikit-image's real photographs, slowly panned (one clip per photo)."""
    from dispider_ros.footage import PHOTOS, photo_frames

    frames = [f for _, f in photo_frames(fps=fps, seconds_per_shot=seconds, size=size)]
    per = int(round(seconds * fps))
    return [frames[i * per:(i + 1) * per] for i in range(len(PHOTOS))]


@dataclass
class Footage:
    """A camera stream made of real clips cut into segments: frames and cut times."""

    frames: List[np.ndarray]  # (H, W, 3) uint8 RGB, one per 1/fps seconds
    fps: float
    cuts: List[float]  # seconds from the start where a new clip segment begins (first excluded)
    source: str

    @property
    def duration(self) -> float:
        return len(self.frames) / self.fps

    def frame_at(self, t: float) -> np.ndarray:
        """Frame shown at stream time t (the stream loops)."""
        return self.frames[int(t * self.fps) % len(self.frames)]

    def cuts_between(self, start: float, end: float) -> List[float]:
        """Cut times in [start, end) of the looping stream."""
        out, loop = [], self.duration
        first = int(start // loop)
        for k in range(first, int(end // loop) + 1):
            for c in [0.0] + self.cuts if k > 0 else self.cuts:
                t = k * loop + c
                if start <= t < end:
                    out.append(t)
        return sorted(set(out))


def footage(fps: float = 15.0, segment_sec: float = 1.5, segments_per_clip: int = 2,
            size=FRAME_SIZE, clips: Sequence[str] = CLIPS) -> Footage:
    """Round-robin segments of the shared clips (hard cuts between them), else photographs."""
    clips = [SHARED_DATA / "videos" / name for name in clips]
    clips = [c for c in clips if c.is_file()]
    need = segment_sec * segments_per_clip
    decoded = [f for f in (_clip_frames(c, fps, need, size) for c in clips) if f]
    source = " + ".join(c.name for c in clips) + " (../shared/data/videos)"
    if len(decoded) < 2:
        decoded = _photo_clips(fps, need, size)
        source = "scikit-image photographs with pans (no ../shared/data videos)"
    per = int(round(segment_sec * fps))
    frames, cuts = [], []
    for s in range(segments_per_clip):
        for clip in decoded:
            part = clip[s * per:(s + 1) * per] or clip[-per:]
            if frames:
                cuts.append(len(frames) / fps)
            frames.extend(part)
    return Footage(frames, fps, cuts, source)


def distinct_frames(n: int, size=FRAME_SIZE, fps: float = 2.0) -> List[np.ndarray]:
    """n real frames sampled at fps from the clips (looping when the clips run out)."""
    base = footage(fps=fps, segment_sec=6.0, segments_per_clip=1, size=size).frames
    return [base[i % len(base)] for i in range(n)]


# ---- image messages ----------------------------------------------------------------------
class Stamp:
    __slots__ = ("sec", "nanosec")

    def __init__(self, t: float):
        self.sec = int(t // 1)
        self.nanosec = int(round((t - self.sec) * 1e9))


class Header:
    __slots__ = ("stamp", "frame_id")

    def __init__(self, t: float, frame_id: str = "camera"):
        self.stamp, self.frame_id = Stamp(t), frame_id


class ImageMsg:
    """Duck-typed sensor_msgs/Image (the fields dispider_ros.imaging reads)."""

    __slots__ = ("header", "height", "width", "encoding", "is_bigendian", "step", "data")

    def __init__(self, rgb: np.ndarray, encoding: str = "rgb8", t: float = 0.0, data=None):
        h, w = rgb.shape[:2]
        self.header = Header(t)
        self.height, self.width, self.encoding, self.is_bigendian = h, w, encoding, 0
        self.step = w * 3
        if data is None:
            data = (rgb if encoding == "rgb8" else np.ascontiguousarray(rgb[..., ::-1])).tobytes()
        self.data = data


class CompressedMsg:
    """Duck-typed sensor_msgs/CompressedImage."""

    __slots__ = ("header", "format", "data")

    def __init__(self, rgb: np.ndarray, quality: int = 90, t: float = 0.0):
        import cv2

        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        self.header, self.format, self.data = Header(t), "jpeg", buf.tobytes()


def stamp_sec(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
