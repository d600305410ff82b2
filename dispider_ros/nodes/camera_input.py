"""Camera subscriptions that sample on header stamps, feeding a worker thread.

The image callback reads the header stamp and asks `take(camera_id, stamp)` whether the
frame is sampled (microseconds): a frame that is not due is never decoded. A due message
is parked in a per-camera LatestSlot, so the callback never starves parameter, lifecycle
or query callbacks; conversion and model work run on this class's own thread. A due frame
the worker never took (overwritten by the next due one) is counted as dropped.
"""
from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from dispider_ros.core.sampler import LatestSlot
from dispider_ros.imaging import ConversionConfig, ImageError, message_to_rgb8
from dispider_ros.nodes.base import SENSOR, SENSOR_OVERRIDES
from dispider_ros.nodes.convert import to_sec

# (camera_id, stamp sec, sampled index, RGB (H, W, 3) uint8, frame_id, receipt time.monotonic())
CameraFrame = Tuple[str, float, int, np.ndarray, str, float]
# take(camera_id, stamp) -> sampled frame index, or None when the frame is not due; may raise
# a ValueError with a `.reason` (core.sampler.RejectedFrame).
TakeFn = Callable[[str, float], Optional[int]]


def _official_cv_bridge():
    """The ROS 2 cv_bridge when installed (not the unofficial PyPI port), else None."""
    try:
        import cv_bridge
        from cv_bridge.boost import cv_bridge_boost  # noqa: F401  (only ROS 2's has it)
    except ImportError:
        return None
    return cv_bridge.CvBridge()


class CameraInput:
    """Image/CompressedImage topics -> batches of converted frames on a worker thread.

    Args:
        node: the owning node (subscriptions, logging, health).
        image_topics, compressed_topics: relative topic names; the resolved name is the
            camera id.
        take: the sampling decision on the header stamp (called on the callback thread).
        handle: called on the worker thread with each batch (one latest frame per camera).
    """

    def __init__(self, node, image_topics: List[str], compressed_topics: List[str],
                 take: TakeFn, handle: Callable[[List[CameraFrame]], None], max_pixels: int):
        self.node = node
        self.take = take
        self.handle = handle
        self.conversion = ConversionConfig(max_pixels=max_pixels)
        self.bridge = _official_cv_bridge()
        self.slots: Dict[str, LatestSlot] = {}
        self.subscriptions = []
        self._wake = threading.Event()
        self._running = False
        self._thread: Optional[threading.Thread] = None
        self.received = 0
        self.lag_ms: deque = deque(maxlen=100)
        self._fps_window: deque = deque(maxlen=50)
        for topic in [t for t in image_topics if t]:
            self._subscribe(Image, topic)
        for topic in [t for t in compressed_topics if t]:
            self._subscribe(CompressedImage, topic)
        if not self.subscriptions:
            raise ValueError("no camera topics: set image_topics and/or compressed_topics")

    def _subscribe(self, msg_type, topic: str) -> None:
        camera_id = self.node.resolve_topic_name(topic)
        slot = self.slots.setdefault(camera_id, LatestSlot())
        self.subscriptions.append(self.node.create_subscription(
            msg_type, topic, lambda msg: self._on_image(camera_id, slot, msg), SENSOR,
            callback_group=self.node.input_group, qos_overriding_options=SENSOR_OVERRIDES))

    def _on_image(self, camera_id: str, slot: LatestSlot, msg) -> None:
        self.received += 1
        received = time.monotonic()
        try:
            index = self.take(camera_id, to_sec(msg.header.stamp))
        except ValueError as error:  # RejectedFrame: bad or non-monotonic stamp
            self.node.health.fault(f"frame_{getattr(error, 'reason', 'rejected')}", str(error))
            return
        if index is None:
            return  # not sampled: never decoded
        slot.put((camera_id, msg, received, index))
        self._wake.set()

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="camera-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        self._wake.set()
        for subscription in self.subscriptions:
            self.node.destroy_subscription(subscription)
        self.subscriptions = []
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._thread = None

    @property
    def dropped(self) -> int:
        return sum(slot.overwritten for slot in self.slots.values())

    def stats(self) -> Dict[str, float]:
        window = list(self._fps_window)
        fps = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 2 and window[-1] > window[0] else 0.0
        lag = statistics.median(self.lag_ms) if self.lag_ms else 0.0
        return {"frames_received": self.received, "frames_dropped_latest_policy": self.dropped,
                "processed_fps": fps, "queue_lag_ms": lag,
                "image_conversion": "cv_bridge" if self.bridge else "numpy"}

    def convert(self, msg) -> np.ndarray:
        if self.bridge is not None:
            if isinstance(msg, CompressedImage):
                return self.bridge.compressed_imgmsg_to_cv2(msg, "rgb8")
            return self.bridge.imgmsg_to_cv2(msg, "rgb8")
        return message_to_rgb8(msg, self.conversion)

    def _loop(self) -> None:
        while self._running:
            if not self._wake.wait(timeout=0.5):
                continue
            self._wake.clear()
            batch: List[CameraFrame] = []
            for slot in self.slots.values():
                item = slot.get(timeout=0)
                if item is None:
                    continue
                camera_id, msg, received, index = item
                try:
                    rgb = self.convert(msg)
                except ImageError as error:
                    self.node.health.fault(f"image_{error.kind}", f"{camera_id}: {error}")
                    continue
                except Exception as error:  # cv_bridge raises its own types
                    self.node.health.fault("image_conversion", f"{camera_id}: {error}")
                    continue
                self.lag_ms.append((time.monotonic() - received) * 1e3)
                batch.append((camera_id, to_sec(msg.header.stamp), index, rgb, msg.header.frame_id,
                              received))
            if not batch:
                continue
            try:
                self.handle(batch)
            except Exception as error:  # the worker must survive anything a frame does
                self.node.health.fault("processing", f"{type(error).__name__}: {error}")
            self._fps_window.append(time.monotonic())
