"""Image messages -> arrays: the zero-copy numpy path on hand-built messages, every encoding."""
import types

import cv2
import numpy as np
import pytest

from dispider_ros.imaging import (ConversionConfig, ImageError, image_to_array, message_to_rgb8,
                                  to_rgb8)

RNG = np.random.default_rng(0)


def raw(array, encoding, pad=0, bigendian=False):
    """A duck-typed sensor_msgs/Image with `pad` extra bytes per row."""
    height, width = array.shape[:2]
    rows = array.astype(array.dtype.newbyteorder(">" if bigendian else "<")).reshape(height, -1)
    rows = rows.view(np.uint8)
    data = np.zeros((height, rows.shape[1] + pad), np.uint8)
    data[:, :rows.shape[1]] = rows
    return types.SimpleNamespace(height=height, width=width, encoding=encoding,
                                 is_bigendian=int(bigendian), step=data.shape[1], data=data.tobytes())


def compressed(rgb, ext=".jpg"):
    ok, buffer = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return types.SimpleNamespace(format=ext[1:], data=buffer.tobytes())


@pytest.mark.parametrize("pad", [0, 3, 64])
@pytest.mark.parametrize("encoding,expect", [
    ("rgb8", lambda a: a), ("bgr8", lambda a: a[..., ::-1]),
    ("rgba8", lambda a: a[..., :3]), ("bgra8", lambda a: a[..., 2::-1]),
])
def test_color_encodings(encoding, expect, pad):
    channels = 4 if encoding.endswith("a8") else 3
    array = RNG.integers(0, 256, (6, 7, channels), dtype=np.uint8)
    msg = raw(array, encoding, pad)
    np.testing.assert_array_equal(image_to_array(msg), array)
    np.testing.assert_array_equal(to_rgb8(msg), expect(array))


def test_raw_path_is_zero_copy():
    array = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    msg = raw(array, "rgb8", pad=16)
    msg.data = bytearray(msg.data)
    view = image_to_array(msg)
    msg.data[0] = (int(msg.data[0]) + 1) % 256  # the array sees the message's own buffer
    assert view[0, 0, 0] == msg.data[0]


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_and_mono8(bigendian):
    depth = RNG.integers(0, 65535, (5, 4), dtype=np.uint16)
    msg = raw(depth, "mono16", pad=2, bigendian=bigendian)
    np.testing.assert_array_equal(image_to_array(msg), depth)
    rgb = to_rgb8(msg)
    assert rgb.shape == (5, 4, 3) and rgb.dtype == np.uint8
    assert rgb[..., 0].argmax() == depth.argmax()
    gray = RNG.integers(0, 256, (3, 5), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb8(raw(gray, "mono8", pad=1)), np.repeat(gray[..., None], 3, 2))


def test_compressed_png_is_exact_and_jpeg_close():
    rgb = RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(message_to_rgb8(compressed(rgb, ".png")), rgb)
    smooth = np.full((16, 24, 3), (200, 40, 10), np.uint8)
    assert np.abs(message_to_rgb8(compressed(smooth)).astype(int) - smooth).max() < 8


@pytest.mark.parametrize("mutate,kind", [
    (lambda m: setattr(m, "encoding", "yuv422_yuy2_weird"), "encoding"),
    (lambda m: setattr(m, "width", 0), "size"),
    (lambda m: setattr(m, "height", 100000), "size"),
    (lambda m: setattr(m, "step", 2), "step"),
    (lambda m: setattr(m, "data", m.data[:-10]), "data"),
])
def test_malformed_raw_images_name_their_fault(mutate, kind):
    msg = raw(RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8), "rgb8")
    mutate(msg)
    with pytest.raises(ImageError) as error:
        to_rgb8(msg)
    assert error.value.kind == kind


def test_corrupt_jpeg_and_pixel_limit():
    good = compressed(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="could not decode") as error:
        message_to_rgb8(types.SimpleNamespace(format="jpeg", data=good.data[:20]))
    assert error.value.kind == "decode"
    with pytest.raises(ImageError) as error:
        message_to_rgb8(good, ConversionConfig(max_pixels=100))
    assert error.value.kind == "size"


def test_equal_to_cv_bridge_where_installed():
    cv_bridge = pytest.importorskip("cv_bridge", reason="ROS 2 cv_bridge is not installed here")
    pytest.importorskip("sensor_msgs.msg")
    from sensor_msgs.msg import Image

    bridge = cv_bridge.CvBridge()
    for encoding, channels in (("rgb8", 3), ("bgr8", 3), ("rgba8", 4), ("mono8", 1), ("mono16", 1)):
        dtype = np.uint16 if encoding == "mono16" else np.uint8
        array = RNG.integers(0, 255, (6, 5, channels), dtype=dtype).squeeze()
        duck = raw(array, encoding, pad=4)
        msg = Image(height=duck.height, width=duck.width, encoding=encoding, is_bigendian=0,
                    step=duck.step, data=duck.data)
        np.testing.assert_array_equal(image_to_array(msg), bridge.imgmsg_to_cv2(msg, "passthrough"))
