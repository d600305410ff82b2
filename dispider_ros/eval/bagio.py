"""Camera input for evaluation: rosbag2 (sqlite3 or MCAP), ROS 1 bags and video files.

Reading uses the `rosbags` library (AnyReader + a typestore), so no ROS install is needed.
`open_source(path)` accepts a rosbag2 directory, a single ``.db3``/``.mcap`` file, a ROS 1
``.bag`` file, or a video file (anything OpenCV decodes: ``.mp4``, ``.webm``, ...).

What a source yields (`CameraSource.frames`): one `SourceFrame` per image message of the
selected topics, in bag order, with
  - ``stamp``: the message's ``header.stamp`` in seconds (the camera's time, the clock every
    output of the system carries); the bag's receive time when the header stamp is zero;
  - ``msg``: the deserialised message itself (duck-typed: `dispider_ros.imaging` converts it,
    and the live player copies its fields into an rclpy message).
A video's frames get stamps ``index / fps`` from 0 on one camera topic (`VIDEO_TOPIC`),
as ``sensor_msgs/msg/Image`` look-alikes in ``rgb8``.

`start_stamp` is the stamp of the first image of the selected topics: "t = 0" of an
annotation file whose recording has no ``start_stamp`` of its own.

`write_bag` turns frames (a video, or any (t, rgb) iterator) into a rosbag2 with either
storage plug-in: tests build their fixtures with it, and `python -m dispider_ros.eval
convert` exposes it.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from dispider_ros.imaging import ConversionConfig, message_to_rgb8

RAW = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = {RAW: "raw", COMPRESSED: "compressed"}
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv")
VIDEO_TOPIC = "/camera/image_raw"
STORAGES = ("sqlite3", "mcap")


class NoImagesError(ValueError):
    """The input holds no image topic (or none of the requested ones)."""


@dataclass(frozen=True)
class TopicInfo:
    topic: str
    msgtype: str
    count: int

    @property
    def kind(self) -> str:
        """"raw" | "compressed" for image topics, "" otherwise."""
        return IMAGE_TYPES.get(self.msgtype, "")


@dataclass(frozen=True)
class _Time:
    sec: int
    nanosec: int


@dataclass(frozen=True)
class _Header:
    stamp: _Time
    frame_id: str


@dataclass(frozen=True)
class VideoImage:
    """A sensor_msgs/Image look-alike for a decoded video frame (rgb8)."""

    header: _Header
    height: int
    width: int
    data: bytes
    encoding: str = "rgb8"
    is_bigendian: int = 0

    @property
    def step(self) -> int:
        return self.width * 3


@dataclass(frozen=True)
class SourceFrame:
    """One image message of the source."""

    topic: str
    kind: str  # raw | compressed
    stamp: float  # seconds, camera time (header stamp; receive time when that is zero)
    log_time: float  # seconds, when the bag recorded it (= stamp for a video)
    frame_id: str
    msg: Any  # the deserialised message (duck-typed Image / CompressedImage)

    def rgb(self, config: Optional[ConversionConfig] = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB (raises imaging.ImageError on a malformed message)."""
        return message_to_rgb8(self.msg, config)


def stamp_seconds(stamp) -> float:
    return int(stamp.sec) + int(stamp.nanosec) * 1e-9


def is_video(path: Union[str, Path]) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


class CameraSource:
    """Base: list topics, pick camera topics, iterate frames."""

    path: Path
    storage: str

    def topics(self) -> List[TopicInfo]:
        raise NotImplementedError

    def frames(self, topics: Optional[Sequence[str]] = None) -> Iterator[SourceFrame]:
        raise NotImplementedError

    def image_topics(self) -> List[TopicInfo]:
        return [t for t in self.topics() if t.kind]

    def select(self, wanted: Optional[Sequence[str]] = None) -> List[TopicInfo]:
        """The camera topics to replay: `wanted` (checked), or every image topic.

        Raises:
            NoImagesError: naming every topic found, when there is no (requested) image topic.
        """
        found = self.topics()
        images = [t for t in found if t.kind]
        listing = ", ".join(f"{t.topic} ({t.msgtype}, {t.count} msgs)" for t in found) or "none"
        if not images:
            raise NoImagesError(
                f"{self.path}: no sensor_msgs/msg/Image or CompressedImage topic to replay; "
                f"topics found: {listing}")
        if not wanted:
            return images
        by_name = {t.topic: t for t in images}
        missing = [w for w in wanted if w not in by_name]
        if missing:
            raise NoImagesError(f"{self.path}: camera topic(s) {missing} not found among the image "
                                f"topics; topics found: {listing}")
        return [by_name[w] for w in wanted]

    def start_stamp(self, topics: Optional[Sequence[str]] = None) -> float:
        """Stamp of the first image of `topics` (all image topics by default)."""
        for frame in self.frames(topics):
            return frame.stamp
        raise NoImagesError(f"{self.path}: the image topics hold no messages")

    def duration_hint(self) -> float:
        """Approximate length in seconds, from metadata only (for progress lines)."""
        return 0.0

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class BagSource(CameraSource):
    """A rosbag2 (sqlite3/MCAP, folder or file) or ROS 1 bag read with rosbags' AnyReader."""

    def __init__(self, path: Union[str, Path]):
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"bag {self.path} does not exist")
        self._reader = AnyReader([self.path], default_typestore=get_typestore(Stores.LATEST))
        try:
            self._reader.open()
        except Exception as error:  # rosbags raises its own types for unreadable bags
            raise ValueError(f"{self.path}: cannot read as a rosbag2 or ROS 1 bag: "
                             f"{type(error).__name__}: {error}") from None
        self.storage = self._storage()

    def _storage(self) -> str:
        if self.path.suffix == ".bag":
            return "ros1"
        names = [self.path] if self.path.is_file() else list(self.path.iterdir())
        if any(p.suffix == ".mcap" for p in names):
            return "mcap"
        return "sqlite3"

    def topics(self) -> List[TopicInfo]:
        counts = {}
        for conn in self._reader.connections:
            key = (conn.topic, conn.msgtype)
            counts[key] = counts.get(key, 0) + conn.msgcount
        return sorted((TopicInfo(topic, msgtype, n) for (topic, msgtype), n in counts.items()),
                      key=lambda t: t.topic)

    def frames(self, topics: Optional[Sequence[str]] = None) -> Iterator[SourceFrame]:
        selected = {t.topic: t.kind for t in self.select(topics)}
        connections = [c for c in self._reader.connections if c.topic in selected]
        for conn, log_time, raw in self._reader.messages(connections=connections):
            msg = self._reader.deserialize(raw, conn.msgtype)
            stamp = stamp_seconds(msg.header.stamp)
            yield SourceFrame(topic=conn.topic, kind=selected[conn.topic],
                              stamp=stamp if stamp > 0 else log_time * 1e-9,
                              log_time=log_time * 1e-9, frame_id=msg.header.frame_id, msg=msg)

    def duration_hint(self) -> float:
        return max(0.0, (self._reader.end_time - self._reader.start_time) * 1e-9)

    def close(self) -> None:
        self._reader.close()


class VideoSource(CameraSource):
    """A video file as one raw camera topic; stamps are index / fps from 0."""

    def __init__(self, path: Union[str, Path], topic: str = VIDEO_TOPIC,
                 size: Optional[Tuple[int, int]] = None, frame_id: str = "camera"):
        import cv2

        self.path = Path(path)
        self.storage = "video"
        self.topic = topic
        self.size = size
        self.frame_id = frame_id
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise ValueError(f"{self.path}: OpenCV cannot open this video")
        self.fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
        self.count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        capture.release()

    def topics(self) -> List[TopicInfo]:
        return [TopicInfo(self.topic, RAW, self.count)]

    def duration_hint(self) -> float:
        return self.count / self.fps if self.fps else 0.0

    def frames(self, topics: Optional[Sequence[str]] = None) -> Iterator[SourceFrame]:
        from dispider_ros.footage import video_frames

        self.select(topics)
        for t, rgb in video_frames(self.path, size=self.size):
            yield SourceFrame(self.topic, "raw", t, t, self.frame_id,
                              rgb_message(rgb, t, self.frame_id))


def rgb_message(rgb: np.ndarray, stamp: float, frame_id: str = "camera") -> VideoImage:
    """An rgb8 Image look-alike (what `VideoSource` yields)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    sec = int(math.floor(stamp))
    nanosec = min(int(round((stamp - sec) * 1e9)), 999_999_999)
    return VideoImage(_Header(_Time(sec, nanosec), frame_id), rgb.shape[0], rgb.shape[1],
                      rgb.tobytes())


def open_source(path: Union[str, Path], video_size: Optional[Tuple[int, int]] = None) -> CameraSource:
    """A bag (rosbag2 folder/.db3/.mcap, ROS 1 .bag) or a video file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if is_video(path):
        return VideoSource(path, size=video_size)
    return BagSource(path)


# ----------------------------------------------------------------------- writing ------
BAG_FILE_SUFFIXES = (".mcap", ".db3", ".db3-shm", ".db3-wal")


def is_bag_folder(path: Union[str, Path]) -> bool:
    """A folder holding only rosbag2 files (metadata.yaml, storage files): safe to replace."""
    path = Path(path)
    return path.is_dir() and all(
        p.is_file() and (p.name == "metadata.yaml" or p.suffix in BAG_FILE_SUFFIXES)
        for p in path.iterdir())


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an existing `out` unless it is a bag folder (or nothing) and `overwrite`."""
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{out} exists: choose another --out, or pass --overwrite "
                              "to replace the bag there")
    if not is_bag_folder(out):
        raise FileExistsError(f"{out} exists and is not a rosbag2 folder (only metadata.yaml "
                              "and .mcap/.db3 files): not replacing it; choose another --out")


def write_bag(frames: Iterable[Tuple[float, np.ndarray]], out: Union[str, Path],
              storage: str = "sqlite3", topic: str = VIDEO_TOPIC, start_stamp: float = 1.7e9,
              frame_id: str = "camera", compressed: bool = False, jpeg_quality: int = 90,
              overwrite: bool = False) -> Path:
    """Write (seconds from start, RGB uint8) frames as a rosbag2 folder.

    All or nothing: the bag is written in a hidden folder beside `out` and moved to `out`
    once complete; when anything fails (a video that does not open, no frames, Ctrl-C)
    nothing is left behind and an existing `out` is untouched.

    Args:
        frames: (t, rgb) pairs in time order (footage.video_frames gives them).
        out: the bag folder to create.
        storage: "sqlite3" or "mcap".
        topic: image topic name; with `compressed`, a sensor_msgs/CompressedImage (JPEG) topic.
        start_stamp: absolute stamp of t = 0; header stamps and receive times both get
            start_stamp + t.
        frame_id: header.frame_id of every image.
        overwrite: replace an existing `out` that is a rosbag2 folder (see `is_bag_folder`).
    Returns:
        The bag folder.
    Raises:
        FileExistsError: `out` exists (and `overwrite` is off, or it is not a bag folder).
        ValueError: bad arguments, or no frames to write.
    """
    import shutil
    import tempfile

    if storage not in STORAGES:
        raise ValueError(f"storage {storage!r} is not one of {STORAGES}")
    if not math.isfinite(start_stamp) or start_stamp < 0:
        raise ValueError(f"start_stamp {start_stamp!r} must be finite and >= 0")
    out = Path(out)
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        # rosbags names the storage file after the bag folder: write staging/<out.name>.
        count = _write(frames, staging / out.name, storage, topic, start_stamp, frame_id,
                       compressed, jpeg_quality)
        if count == 0:
            raise ValueError(f"no frames to write into {out}")
        if out.exists():  # checked above: a bag folder, and overwrite is on
            shutil.rmtree(out)
        (staging / out.name).rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _write(frames, out: Path, storage: str, topic: str, start_stamp: float, frame_id: str,
           compressed: bool, jpeg_quality: int) -> int:
    """The rosbags writing loop of write_bag; returns the number of frames written."""
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS2_KILTED)
    Image = typestore.types[RAW]
    CompressedImage = typestore.types[COMPRESSED]
    Header = typestore.types["std_msgs/msg/Header"]
    Time = typestore.types["builtin_interfaces/msg/Time"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    count = 0
    with Writer(out, version=8, storage_plugin=plugin) as writer:
        conn = writer.add_connection(topic, COMPRESSED if compressed else RAW, typestore=typestore)
        for t, rgb in frames:
            stamp = start_stamp + float(t)
            ns = int(round(stamp * 1e9))
            header = Header(stamp=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000),
                            frame_id=frame_id)
            rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
            if compressed:
                ok, jpeg = cv2.imencode(".jpg", rgb[..., ::-1],
                                        [int(cv2.IMWRITE_JPEG_QUALITY), jpeg_quality])
                if not ok:
                    raise ValueError(f"JPEG encoding failed at t={t}")
                msg = CompressedImage(header=header, format="jpeg",
                                      data=np.frombuffer(jpeg.tobytes(), dtype=np.uint8))
            else:
                height, width = rgb.shape[:2]
                msg = Image(header=header, height=height, width=width, encoding="rgb8",
                            is_bigendian=0, step=width * 3, data=rgb.reshape(-1))
            writer.write(conn, ns, typestore.serialize_cdr(msg, conn.msgtype))
            count += 1
    return count


def video_to_bag(video: Union[str, Path], out: Union[str, Path], storage: str = "sqlite3",
                 size: Optional[Tuple[int, int]] = (320, 240), max_seconds: Optional[float] = None,
                 progress: bool = False, **kwargs) -> Path:
    """A video file -> a rosbag2 of its frames (see write_bag for kwargs).

    Args:
        progress: a tqdm bar of frames written, on stderr.
    Raises:
        FileNotFoundError: the video does not exist.
        ValueError: OpenCV cannot open it.
    """
    from dispider_ros.footage import video_frames

    video = Path(video)
    if not video.is_file():
        raise FileNotFoundError(f"video {video} does not exist")
    _check_out(Path(out), kwargs.get("overwrite", False))  # before decoding anything
    source = VideoSource(video)  # opens it once: ValueError when OpenCV cannot
    frames = video_frames(video, max_seconds=max_seconds, size=size)
    if progress:
        from tqdm import tqdm

        total = source.count or None
        if total and max_seconds is not None:
            total = min(total, int(max_seconds * source.fps) + 1)
        frames = tqdm(frames, total=total, desc="convert", unit="frame", file=sys.stderr,
                      dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 10.0)
    return write_bag(frames, out, storage=storage, **kwargs)


def describe(source: CameraSource) -> str:
    """One line per topic, for the CLI."""
    return "\n".join(f"  {t.topic}  {t.msgtype}  {t.count} msgs" + ("  [camera]" if t.kind else "")
                     for t in source.topics())
