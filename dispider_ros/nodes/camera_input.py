"""Camera subscriptions that sample on header stamps, feeding a worker thread.

Stamp first: the subscriptions take serialized messages (raw), the image callback reads
the header stamp from the bytes and asks the sampler whether the frame is due
(`FrameSampler.take`, microseconds); a frame that is not due is never deserialized or
decoded (a 1280x720 Image costs ~1.7 ms to deserialize into Python, under the GIL, at 30 fps
on the thread that must not fall behind). A due message is parked in a per-camera
LatestSlot, so the callback never starves
parameter, lifecycle or query callbacks; conversion and model work run on this class's own
thread. A due frame the worker never took (overwritten by the next due one) is counted as
dropped; one that cannot be decoded is handed back to the sampler (`discard`), which
samples the camera's next frame in its place.

Reliability, depth 1 either way: `camera_reliability` auto subscribes reliable when every
publisher of the topic offers reliable, else best effort (the rule `ros2 bag record`
adapts its QoS by, and the rmw's BEST_AVAILABLE, but looked at again whenever a publisher
matches or offers an incompatible QoS and every RECHECK_SEC, since a driver may start later
or restart with other QoS). When the answer changes the new subscription is made before
the old one is dropped (make before break: no frame is lost to the switch). A best-effort
subscription to a reliable publisher loses a whole large frame whenever one fragment is
lost, which is why matching matters (README: "Large camera images over DDS"). The standard
QoS overrides still apply: history and depth through rclpy, and
`qos_overrides.<topic>.subscription.reliability` (reliable | best_effort | auto; empty =
camera_reliability), which this class declares itself because rclpy would freeze the first
value it saw.
"""
from __future__ import annotations

import statistics
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.event_handler import SubscriptionEventCallbacks, UnsupportedEventTypeError
from rclpy.qos import (QoSDurabilityPolicy, QoSHistoryPolicy, QoSPolicyKind, QoSProfile,
                       QoSReliabilityPolicy)
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image

from dispider_ros.core.sampler import FrameSampler, LatestSlot, RejectedFrame
from dispider_ros.imaging import ConversionConfig, ImageError, message_to_rgb8
from dispider_ros.nodes.convert import to_sec

# (camera_id, stamp sec, sampled index, RGB (H, W, 3) uint8, frame_id, receipt time.monotonic())
CameraFrame = Tuple[str, float, int, np.ndarray, str, float]
RELIABILITY_CHOICES = ("auto", "reliable", "best_effort")
RECHECK_SEC = 1.0  # how often auto looks at the topic's publishers again
RETIRE_SEC = 5.0  # an old subscription is dropped after this even if the new one is unmatched
_POLICY = {"reliable": QoSReliabilityPolicy.RELIABLE,
           "best_effort": QoSReliabilityPolicy.BEST_EFFORT}
# History and depth overrides go through rclpy; reliability is ours (see module docstring).
_OVERRIDES = QoSOverridingOptions((QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH))


def _official_cv_bridge():
    """The ROS 2 cv_bridge when installed (not the unofficial PyPI port), else None."""
    try:
        import cv_bridge
        from cv_bridge.boost import cv_bridge_boost  # noqa: F401  (only ROS 2's has it)
    except ImportError:
        return None
    return cv_bridge.CvBridge()


def header_stamp(raw: bytes) -> float:
    """Seconds of the header stamp of a serialized message whose first field is a
    std_msgs/Header (Image, CompressedImage), without deserializing it.

    After the 4-byte encapsulation header (RTPS 10.5: byte 1 names plain CDR / XCDR2 and the
    byte order) come the stamp's int32 sec and uint32 nanosec. ValueError for any other
    encapsulation (the caller then deserializes the message).
    """
    if len(raw) < 12 or raw[0] != 0 or raw[1] not in (0, 1, 6, 7):
        raise ValueError(f"unknown CDR encapsulation {bytes(raw[:2]).hex()}")
    sec, nanosec = struct.unpack_from("<iI" if raw[1] & 1 else ">iI", raw, 4)
    return sec + nanosec * 1e-9


def camera_qos(reliability: QoSReliabilityPolicy) -> QoSProfile:
    """Latest frame only: keep-last 1, volatile."""
    return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1, reliability=reliability,
                      durability=QoSDurabilityPolicy.VOLATILE)


def choose_reliability(mode: str, offered: List[QoSReliabilityPolicy],
                       current: QoSReliabilityPolicy) -> QoSReliabilityPolicy:
    """The subscription's reliability for a mode and the publishers' offered reliabilities.

    auto: reliable iff every publisher offers reliable; no publisher: keep `current`.
    """
    if mode in _POLICY:
        return _POLICY[mode]
    if not offered:
        return current
    if all(p == QoSReliabilityPolicy.RELIABLE for p in offered):
        return QoSReliabilityPolicy.RELIABLE
    return QoSReliabilityPolicy.BEST_EFFORT


@dataclass
class _Camera:
    msg_type: type
    topic: str  # as given (relative names follow namespace and remaps)
    camera_id: str  # the resolved topic name
    slot: LatestSlot = field(default_factory=LatestSlot)
    subscription: object = None
    generation: int = 0  # of `subscription`; callbacks of older ones are the retiring one's
    retiring: object = None  # the previous subscription while the new one matches
    retiring_since: float = 0.0
    expected: int = 0  # publishers the new subscription should match before retiring the old
    last_stamp: float = float("-inf")
    reliability: QoSReliabilityPolicy = QoSReliabilityPolicy.BEST_EFFORT
    mode: str = "auto"
    received: int = 0
    switches: int = 0


class CameraInput:
    """Image/CompressedImage topics -> batches of converted, sampled frames on a worker thread.

    Args:
        node: the owning node (subscriptions, timers, logging, health, input_group).
        image_topics, compressed_topics: relative topic names; the resolved name is the
            camera id.
        sampler: decides on the header stamp (take, on the callback thread) and takes back
            frames that cannot be decoded (discard, on the worker); thread-safe.
        handle: called on the worker thread with each batch (one latest frame per camera).
        max_pixels: larger frames are refused as malformed.
        reliability: auto | reliable | best_effort (see the module docstring).
    """

    def __init__(self, node, image_topics: List[str], compressed_topics: List[str],
                 sampler: FrameSampler, handle: Callable[[List[CameraFrame]], None],
                 max_pixels: int, reliability: str = "auto"):
        if reliability not in RELIABILITY_CHOICES:
            raise ValueError(f"camera_reliability {reliability!r} is not one of "
                             f"{list(RELIABILITY_CHOICES)}")
        self.node = node
        self.sampler = sampler
        self.handle = handle
        self.reliability = reliability
        self.conversion = ConversionConfig(max_pixels=max_pixels)
        self.bridge = _official_cv_bridge()
        self.cameras: Dict[str, _Camera] = {}
        self._wake = threading.Event()
        self._running = False
        self._thread: Optional[threading.Thread] = None
        self._timer = None
        self.converted = 0
        self.lag_ms: deque = deque(maxlen=100)
        self._fps_window: deque = deque(maxlen=50)
        topics = [(Image, t) for t in image_topics if t] + \
            [(CompressedImage, t) for t in compressed_topics if t]
        if not topics:
            raise ValueError("no camera topics: set image_topics and/or compressed_topics")
        for msg_type, topic in topics:
            camera = _Camera(msg_type, topic, node.resolve_topic_name(topic))
            camera.mode = self._mode(camera.camera_id)
            camera.reliability = choose_reliability(camera.mode, self._offered(camera),
                                                    QoSReliabilityPolicy.BEST_EFFORT)
            self.cameras[camera.camera_id] = camera
            self._subscribe(camera)
        if any(c.mode == "auto" for c in self.cameras.values()):
            self._timer = node.create_timer(RECHECK_SEC, self._recheck,
                                            callback_group=node.input_group)

    # -- subscriptions -------------------------------------------------------------------
    def _mode(self, camera_id: str) -> str:
        """camera_reliability, unless the topic's reliability QoS override says otherwise."""
        name = f"qos_overrides.{camera_id}.subscription.reliability"
        if not self.node.has_parameter(name):
            self.node.declare_parameter(name, "", ParameterDescriptor(
                description=f"reliability of the subscription to `{camera_id}`: reliable, "
                "best_effort or auto (match the publishers); empty = camera_reliability",
                read_only=True))
        value = str(self.node.get_parameter(name).value or "").lower()
        if value == "best_available":  # the rmw's one-shot form of auto
            value = "auto"
        if value and value not in RELIABILITY_CHOICES:
            raise ValueError(f"{name} {value!r} is not one of {list(RELIABILITY_CHOICES)}")
        return value or self.reliability

    def _offered(self, camera: _Camera) -> List[QoSReliabilityPolicy]:
        return [info.qos_profile.reliability
                for info in self.node.get_publishers_info_by_topic(camera.camera_id)]

    def _subscribe(self, camera: _Camera) -> None:
        """Create the camera's subscription at its current reliability (a new generation)."""
        camera.generation += 1
        generation = camera.generation
        recheck = (lambda _info: self._recheck_camera(camera)) if camera.mode == "auto" else None
        kwargs = dict(callback_group=self.node.input_group, qos_overriding_options=_OVERRIDES,
                      raw=True)  # serialized bytes: see the module docstring
        try:
            camera.subscription = self.node.create_subscription(
                camera.msg_type, camera.topic, lambda raw: self._on_image(camera, generation, raw),
                camera_qos(camera.reliability), event_callbacks=SubscriptionEventCallbacks(
                    matched=recheck, incompatible_qos=recheck), **kwargs)
        except UnsupportedEventTypeError:  # an rmw without matched events: the timer suffices
            camera.subscription = self.node.create_subscription(
                camera.msg_type, camera.topic, lambda raw: self._on_image(camera, generation, raw),
                camera_qos(camera.reliability), **kwargs)

    def _recheck(self) -> None:
        """Timer (input group, so never beside an image callback): follow the publishers."""
        for camera in self.cameras.values():
            self._recheck_camera(camera)

    def _recheck_camera(self, camera: _Camera) -> None:
        if camera.subscription is None:
            return
        if camera.retiring is not None and (
                camera.subscription.get_publisher_count() >= camera.expected
                or time.monotonic() - camera.retiring_since > RETIRE_SEC):
            self.node.destroy_subscription(camera.retiring)
            camera.retiring = None
        if camera.mode != "auto":
            return
        offered = self._offered(camera)
        wanted = choose_reliability(camera.mode, offered, camera.reliability)
        if wanted == camera.reliability:
            return
        self.node.get_logger().info(
            f"camera {camera.camera_id}: publishers offer "
            f"{sorted({p.name.lower() for p in offered})}; subscribing {wanted.name.lower()} "
            f"(was {camera.reliability.name.lower()})")
        if camera.retiring is not None:  # switched back before the last switch finished
            self.node.destroy_subscription(camera.retiring)
        camera.retiring, camera.retiring_since = camera.subscription, time.monotonic()
        camera.expected = len(offered)
        camera.reliability = wanted
        camera.switches += 1
        self._subscribe(camera)

    # -- callback thread -----------------------------------------------------------------
    def _on_image(self, camera: _Camera, generation: int, raw: bytes) -> None:
        msg = None
        try:
            stamp = header_stamp(raw)
        except ValueError:  # an encapsulation we do not read: deserialize this one
            try:
                msg = deserialize_message(raw, camera.msg_type)
            except Exception as error:  # noqa: BLE001  malformed bytes: count, drop
                self.node.health.fault("image_deserialize", f"{camera.camera_id}: {error}")
                return
            stamp = to_sec(msg.header.stamp)
        if camera.retiring is not None:
            # Both subscriptions may deliver while the new one matches: the old one's frames
            # count until the new one has its publishers, and no frame counts twice.
            if generation != camera.generation and \
                    camera.subscription.get_publisher_count() >= camera.expected:
                return
            if stamp == camera.last_stamp:
                return
        camera.last_stamp = stamp
        camera.received += 1
        received = time.monotonic()
        try:
            index = self.sampler.take(camera.camera_id, stamp)
        except RejectedFrame as error:  # bad or non-monotonic stamp
            self.node.health.fault(f"frame_{error.reason}", str(error))
            return
        if index is None:
            return  # not sampled: never decoded
        camera.slot.put((msg if msg is not None else raw, received, index))
        self._wake.set()

    # -- worker --------------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="camera-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        self._wake.set()
        if self._timer is not None:
            self.node.destroy_timer(self._timer)
            self._timer = None
        for camera in self.cameras.values():
            for subscription in (camera.subscription, camera.retiring):
                if subscription is not None:
                    self.node.destroy_subscription(subscription)
            camera.subscription = camera.retiring = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._thread = None

    @property
    def received(self) -> int:
        return sum(c.received for c in self.cameras.values())

    @property
    def dropped(self) -> int:
        return sum(c.slot.overwritten for c in self.cameras.values())

    def stats(self) -> Dict[str, float]:
        window = list(self._fps_window)
        fps = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 2 and window[-1] > window[0] else 0.0
        lag = statistics.median(self.lag_ms) if self.lag_ms else 0.0
        out = {"frames_received": self.received, "frames_converted": self.converted,
               "frames_dropped_latest_policy": self.dropped, "processed_fps": fps,
               "queue_lag_ms": lag, "image_conversion": "cv_bridge" if self.bridge else "numpy"}
        for camera in self.cameras.values():
            out[f"{camera.camera_id}/reliability"] = (
                f"{camera.reliability.name.lower()} ({camera.mode}"
                f"{f', {camera.switches} switches' if camera.switches else ''})")
        return out

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
            for camera_id, camera in self.cameras.items():
                item = camera.slot.get(timeout=0)
                if item is None:
                    continue
                payload, received, index = item
                try:
                    self.converted += 1
                    msg = payload if not isinstance(payload, bytes) else \
                        deserialize_message(payload, camera.msg_type)
                    rgb = self.convert(msg)
                except ImageError as error:
                    self._undecodable(camera_id, index, f"image_{error.kind}", str(error))
                    continue
                except Exception as error:  # cv_bridge and deserialization raise their own types
                    self._undecodable(camera_id, index, "image_conversion", str(error))
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

    def _undecodable(self, camera_id: str, index: int, kind: str, message: str) -> None:
        self.sampler.discard(camera_id, index, kind)
        self.node.health.fault(kind, f"{camera_id}: {message}")
