"""Image message -> numpy, without ROS imports (duck-typed on the message fields).

Works on `sensor_msgs/Image` and `CompressedImage` from rclpy and on the equivalent
objects `rosbags` deserialises, so the nodes and the offline evaluator share it.
Raw images are wrapped zero-copy (`np.frombuffer` + strides honour padded rows); only
the final RGB conversion for the model copies, where the encoding requires it.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

LOG = logging.getLogger(__name__)

# encoding -> (numpy dtype, channels)
ENCODINGS = {
    "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1), "8UC1": (np.uint8, 1), "8UC3": (np.uint8, 3), "8UC4": (np.uint8, 4),
    "mono16": (np.uint16, 1), "16UC1": (np.uint16, 1),
}
MAX_SIDE = 16384  # no camera we know of is larger; beyond it a header is corrupt


class ImageError(ValueError):
    """A malformed or unsupported image; `kind` names the fault for diagnostics counters."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class ConversionConfig:
    max_pixels: int = 4096 * 4096  # refuse larger frames before touching their data

    def __post_init__(self):
        if self.max_pixels <= 0:
            raise ValueError(f"max_pixels must be > 0, got {self.max_pixels}")


def image_to_array(msg, config: Optional[ConversionConfig] = None) -> np.ndarray:
    """Wrap a raw Image's buffer as (H, W[, C]) in its own encoding, zero-copy where possible.

    Same result as cv_bridge's `imgmsg_to_cv2(msg, "passthrough")`.
    """
    config = config or ConversionConfig()
    encoding = msg.encoding
    if encoding not in ENCODINGS:
        raise ImageError("encoding", f"unsupported encoding {encoding!r}; supported: {sorted(ENCODINGS)}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageError("size", f"zero-sized image {width}x{height}")
    if height > MAX_SIDE or width > MAX_SIDE or height * width > config.max_pixels:
        raise ImageError("size", f"image {width}x{height} exceeds the limit of "
                                 f"{config.max_pixels} pixels (max side {MAX_SIDE})")
    dtype, channels = ENCODINGS[encoding]
    dtype = np.dtype(dtype)
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageError("step", f"step {step} < width*channels*bytes = {row_bytes} for {encoding}")
    if step % dtype.itemsize:
        raise ImageError("step", f"step {step} is not a multiple of the {dtype.itemsize}-byte pixel type")
    data = msg.data
    size = len(data)
    needed = step * (height - 1) + row_bytes
    if size < needed:
        raise ImageError("data", f"data has {size} bytes, {width}x{height} {encoding} "
                                 f"with step {step} needs {needed}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        data = np.asarray(data, dtype=np.uint8)  # rosbags gives a uint8 ndarray already
    wire_dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    buffer = np.frombuffer(data, dtype=wire_dtype, count=needed // dtype.itemsize)
    array = np.lib.stride_tricks.as_strided(
        buffer, shape=(height, width, channels),
        strides=(step, channels * dtype.itemsize, dtype.itemsize), writeable=False)
    if wire_dtype != dtype:  # big-endian 16-bit on a little-endian host: the one copy
        array = array.astype(dtype)
    return array[..., 0] if channels == 1 else array


def to_rgb8(msg, config: Optional[ConversionConfig] = None) -> np.ndarray:
    """Raw Image -> (H, W, 3) uint8 RGB for the vision models."""
    array = image_to_array(msg, config)
    encoding = msg.encoding
    if encoding in ("rgb8",):
        return array
    if encoding in ("bgr8", "8UC3"):
        # One fast contiguous copy: a reversed-channel view costs ~1 ms more downstream,
        # where the resize has to gather it (bench P5).
        import cv2

        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    if encoding == "rgba8":
        return array[..., :3]
    if encoding in ("bgra8", "8UC4"):
        return array[..., 2::-1]
    if array.dtype == np.uint16:  # depth/IR: scale to the frame's own range for the model
        low, high = int(array.min()), int(array.max())
        scaled = ((array.astype(np.float32) - low) * (255.0 / max(high - low, 1))).astype(np.uint8)
        return np.repeat(scaled[..., None], 3, axis=2)
    return np.repeat(array[..., None], 3, axis=2)


def compressed_to_rgb8(msg, config: Optional[ConversionConfig] = None) -> np.ndarray:
    """CompressedImage (jpeg/png/...) -> (H, W, 3) uint8 RGB via OpenCV."""
    import cv2

    config = config or ConversionConfig()
    raw = bytes(msg.data)
    data = np.frombuffer(raw, dtype=np.uint8)
    if data.size == 0:
        raise ImageError("data", f"empty compressed image (format {msg.format!r})")
    # A few hundred bytes of header can declare 20000x20000: check before OpenCV allocates it.
    size = _header_size(raw)
    if size is not None and size[0] * size[1] > config.max_pixels:
        raise ImageError("size", f"compressed image (format {msg.format!r}) declares "
                                 f"{size[0]}x{size[1]}, over {config.max_pixels} pixels")
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as error:  # e.g. a header over OpenCV's own pixel limit
        raise ImageError("decode", f"could not decode {data.size}-byte compressed image "
                                   f"(format {msg.format!r}): {str(error).strip()[-120:]}") from None
    if image is None:
        raise ImageError("decode", f"could not decode {data.size}-byte compressed image "
                                   f"(format {msg.format!r}): corrupt or unsupported")
    if image.shape[0] * image.shape[1] > config.max_pixels:
        raise ImageError("size", f"decoded image {image.shape[1]}x{image.shape[0]} exceeds "
                                 f"{config.max_pixels} pixels")
    return image[..., ::-1]


def _header_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) a compressed image's header declares, read without decoding.

    None where Pillow is absent or does not know the format (OpenCV then decides alone).
    Raises ImageError("size") for a header far beyond Pillow's decompression-bomb limit.
    """
    try:
        from PIL import Image as PILImage
    except ImportError:
        return None
    try:
        with PILImage.open(io.BytesIO(data)) as image:  # reads the header only
            return tuple(image.size)
    except PILImage.DecompressionBombError as error:  # over twice Pillow's own limit
        raise ImageError("size", f"compressed image header: {error}") from None
    except Exception:  # noqa: BLE001 -- unknown or corrupt header: OpenCV reports it
        return None


def is_compressed(msg) -> bool:
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def message_to_rgb8(msg, config: Optional[ConversionConfig] = None) -> np.ndarray:
    """Image or CompressedImage -> (H, W, 3) uint8 RGB."""
    if is_compressed(msg):
        return compressed_to_rgb8(msg, config)
    return to_rgb8(msg, config)
