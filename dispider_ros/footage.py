"""Real footage as a camera stream: a video file, or real photographs played with cuts and pans.

The photograph fallback uses scikit-image's bundled sample images (real photos shipped in
the wheel), so a demo or test works on a machine without ../shared/data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def video_frames(path: Path, max_seconds: Optional[float] = None,
                 size: Optional[Tuple[int, int]] = None) -> Iterator[Tuple[float, np.ndarray]]:
    """Yield (seconds from start, RGB uint8) for every frame of a video file, via OpenCV."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FileNotFoundError(f"cannot open video {path}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    index = 0
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            t = index / fps
            if max_seconds is not None and t > max_seconds:
                break
            if size is not None:
                bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            yield t, bgr[..., ::-1]
            index += 1
    finally:
        capture.release()


def photo_frames(fps: float = 10.0, seconds_per_shot: float = 3.0,
                 size: Tuple[int, int] = (320, 240)) -> Iterator[Tuple[float, np.ndarray]]:
    """Yield (seconds, RGB uint8): each photo panned slowly for a shot, hard cuts between."""
    import cv2
    from skimage import data

    index = 0
    for name in PHOTOS:
        photo = getattr(data, name)()
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=2)
        photo = photo[..., :3]
        height, width = photo.shape[:2]
        crop_w, crop_h = int(width * 0.7), int(height * 0.7)
        frames = int(seconds_per_shot * fps)
        for k in range(frames):
            x = int((width - crop_w) * k / max(frames - 1, 1))  # pan left to right
            crop = photo[(height - crop_h) // 2:(height + crop_h) // 2, x:x + crop_w]
            yield index / fps, cv2.resize(np.ascontiguousarray(crop), size, interpolation=cv2.INTER_AREA)
            index += 1


def default_footage(shared_data: Path, size: Tuple[int, int] = (320, 240)):
    """(description, frame iterator): the CC0 flower clip if present, else the photos."""
    video = shared_data / "videos" / "mdn_cc0_flower.mp4"
    if video.is_file():
        return f"{video} (CC0 time-lapse of a flower opening)", video_frames(video, size=size)
    return "scikit-image sample photographs (astronaut, coffee, cat, rocket) with pans and cuts", \
        photo_frames(size=size)
