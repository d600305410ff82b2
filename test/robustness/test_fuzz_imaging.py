"""Malformed Image / CompressedImage messages -> an array or ImageError(kind), nothing else."""
import struct
import time
import types
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispider_ros.imaging import (ENCODINGS, MAX_SIDE, ConversionConfig, ImageError,
                                  compressed_to_rgb8, image_to_array, message_to_rgb8, to_rgb8)
from fuzz_tools import profile, tally

RAW_KINDS = {"encoding", "size", "step", "data"}
COMPRESSED_KINDS = {"data", "decode", "size"}
UNKNOWN_ENCODINGS = ["", "RGB8", "rgb16", "bayer_rggb8", "32FC1", "16SC1", "yuv422", "16UC3",
                     "jpeg", "rgb8 ", "\x00", "mono8\n", "ｒｇｂ８", "8UC2"]
HUGE = [MAX_SIDE, MAX_SIDE + 1, 2 ** 16, 2 ** 31 - 1, 2 ** 32 - 1, 10 ** 9]


def raw_msg(encoding, height, width, step, data, bigendian=0):
    return types.SimpleNamespace(encoding=encoding, height=height, width=width, step=step,
                                 data=data, is_bigendian=bigendian)


# Strategies are built once: building them inside a composite costs more than the test.
KNOWN = st.sampled_from(sorted(ENCODINGS))
UNKNOWN = st.one_of(st.sampled_from(UNKNOWN_ENCODINGS), st.text(max_size=10))
SIDE = st.one_of(st.integers(1, 9), st.integers(-3, 0), st.sampled_from(HUGE))
STEP_HOW = st.sampled_from(["padded", "padded", "any", "special"])
SMALL = st.integers(-4, 8)
SPECIAL_STEP = st.sampled_from([0, 1, 2 ** 31, 2 ** 32 - 1])
LENGTH_HOW = st.sampled_from(["exact", "truncated", "any"])
ANY_LENGTH = st.integers(0, 512)
PAYLOAD = st.binary(max_size=64)
CONTAINER = st.sampled_from(["bytes", "bytearray", "array"])
ENDIAN = st.sampled_from([0, 1, 2])


@st.composite
def raw_images(draw):
    """Mostly plausible headers with one thing wrong, plus anything at all."""
    encoding = draw(KNOWN) if draw(st.booleans()) else draw(UNKNOWN)
    dtype, channels = ENCODINGS.get(encoding, (np.uint8, 3))
    height, width = draw(SIDE), draw(SIDE)
    row = max(width, 0) * channels * np.dtype(dtype).itemsize
    how = draw(STEP_HOW)
    step = {"padded": row + abs(draw(SMALL)), "any": row + draw(SMALL),
            "special": draw(SPECIAL_STEP)}[how]
    needed = max(step, 0) * max(min(height, 64) - 1, 0) + row
    how = draw(LENGTH_HOW)
    length = {"exact": needed, "truncated": needed - 1 - abs(draw(SMALL)),
              "any": draw(ANY_LENGTH)}[how]
    length = min(max(length, 0), 4096)
    payload = draw(PAYLOAD)
    data = (payload * (length // max(len(payload), 1) + 1))[:length] if payload else bytes(length)
    container = draw(CONTAINER)
    if container == "array":
        data = np.frombuffer(data, np.uint8).copy()  # what rosbags hands over
    elif container == "bytearray":
        data = bytearray(data)
    return raw_msg(encoding, height, width, step, data, draw(ENDIAN))


@profile("raw_image", 3000)
@given(msg=raw_images(), max_pixels=st.sampled_from([1, 16, 64, 4096 * 4096]))
def test_raw_image_gives_an_array_or_a_named_image_error(msg, max_pixels):
    tally("raw_image")
    config = ConversionConfig(max_pixels=max_pixels)
    try:
        array = image_to_array(msg, config)
    except ImageError as error:
        assert error.kind in RAW_KINDS, error.kind
        with pytest.raises(ImageError):  # the RGB path refuses it for the same reason
            to_rgb8(msg, config)
        return
    assert array.shape[:2] == (msg.height, msg.width)
    assert msg.height * msg.width <= max_pixels
    rgb = message_to_rgb8(msg, config)
    assert rgb.shape == (msg.height, msg.width, 3) and rgb.dtype == np.uint8


def _encoded(ext, seed, size=(12, 16)):
    rng = np.random.default_rng(seed)
    ok, buffer = cv2.imencode(ext, rng.integers(0, 256, size + (3,), dtype=np.uint8))
    assert ok
    return buffer.tobytes()


BASES = [_encoded(ext, seed) for ext in (".jpg", ".png", ".bmp") for seed in range(2)]


def _jpeg_with_size(height, width):
    data = bytearray(BASES[0])
    at = data.find(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) height(2) width(2)
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_with_size(height, width):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * (3 * min(width, 64) + 1))) + chunk(b"IEND", b""))


@st.composite
def compressed_images(draw):
    how = draw(st.sampled_from(["valid", "truncated", "flipped", "garbage", "declared", "empty"]))
    base = draw(st.sampled_from(BASES))
    if how == "valid":
        data = base
    elif how == "truncated":
        data = base[:draw(st.integers(0, len(base) - 1))]
    elif how == "flipped":
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        data = bytes(data)
    elif how == "garbage":
        data = draw(st.binary(min_size=1, max_size=300))
    elif how == "declared":  # a tiny file whose header claims any size, huge included
        side = st.one_of(st.integers(1, 64), st.sampled_from([4097, 20000, 65535]))
        height, width = draw(side), draw(side)
        data = draw(st.sampled_from([_jpeg_with_size, _png_with_size]))(height, width)
    else:
        data = b""
    fmt = draw(st.one_of(st.sampled_from(["jpeg", "png", "bmp", "rgb8; jpeg compressed bgr8",
                                          "16UC1; compressedDepth png", ""]), st.text(max_size=8)))
    return types.SimpleNamespace(format=fmt, data=data)


@profile("compressed_image", 1500)
@given(msg=compressed_images(), max_pixels=st.sampled_from([64, 4096, 4096 * 4096]))
def test_compressed_image_gives_an_array_or_a_named_image_error(msg, max_pixels):
    tally("compressed_image")
    try:
        rgb = message_to_rgb8(msg, ConversionConfig(max_pixels=max_pixels))
    except ImageError as error:
        assert error.kind in COMPRESSED_KINDS, error.kind
        return
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
    assert 0 < rgb.shape[0] * rgb.shape[1] <= max_pixels


@pytest.mark.parametrize("make", [_jpeg_with_size, _png_with_size])
@pytest.mark.parametrize("side", [12000, 20000, 65535])
def test_a_small_file_declaring_a_huge_image_is_refused_before_decoding(make, side):
    """Regression: such a header made OpenCV allocate it (1.2 GB, ~8 s) or raise cv2.error."""
    start = time.perf_counter()
    with pytest.raises(ImageError) as error:
        compressed_to_rgb8(types.SimpleNamespace(format="jpeg", data=make(side, side)))
    assert error.value.kind == "size"
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("msg,kind", [
    (raw_msg("yuv422", 2, 2, 4, bytes(8)), "encoding"),
    (raw_msg("rgb8", 0, 4, 12, b""), "size"),
    (raw_msg("rgb8", 2 ** 32 - 1, 2 ** 32 - 1, 3, b"\x00" * 9), "size"),
    (raw_msg("rgb8", 2, 4, 11, bytes(24)), "step"),
    (raw_msg("mono16", 2, 2, 5, bytes(10)), "step"),
    (raw_msg("rgb8", 2, 4, 12, bytes(23)), "data"),
    (types.SimpleNamespace(format="jpeg", data=b""), "data"),
    (types.SimpleNamespace(format="jpeg", data=BASES[0][:40]), "decode"),
])
def test_each_fault_has_its_kind(msg, kind):
    with pytest.raises(ImageError) as error:
        message_to_rgb8(msg)
    assert error.value.kind == kind
