"""The camera input's two small rules, without DDS: the reliability choice and the stamp
read from serialized bytes (what lets a frame that is not sampled stay undecoded)."""
import pytest

from ros_tools import require_ros


@pytest.fixture(scope="module")
def rules():
    require_ros()
    from rclpy.qos import QoSReliabilityPolicy as R

    from dispider_ros.nodes import camera_input

    return camera_input, R


@pytest.mark.parametrize("mode, offered, current, wanted", [
    ("auto", ["RELIABLE"], "BEST_EFFORT", "RELIABLE"),
    ("auto", ["RELIABLE", "RELIABLE"], "BEST_EFFORT", "RELIABLE"),
    ("auto", ["RELIABLE", "BEST_EFFORT"], "RELIABLE", "BEST_EFFORT"),  # one lossy publisher
    ("auto", ["BEST_EFFORT"], "RELIABLE", "BEST_EFFORT"),
    ("auto", [], "RELIABLE", "RELIABLE"),  # nobody publishes: no churn
    ("auto", [], "BEST_EFFORT", "BEST_EFFORT"),
    ("reliable", ["BEST_EFFORT"], "BEST_EFFORT", "RELIABLE"),  # fixed modes ignore publishers
    ("best_effort", ["RELIABLE"], "RELIABLE", "BEST_EFFORT"),
])
def test_reliability_follows_the_publishers_like_ros2_bag_record(rules, mode, offered, current, wanted):
    camera_input, R = rules
    got = camera_input.choose_reliability(mode, [R[o] for o in offered], R[current])
    assert got == R[wanted]


@pytest.mark.parametrize("stamp", [(0, 0), (1796518238, 87545144), (2**31 - 1, 999_999_999)])
def test_header_stamp_is_read_from_the_serialized_message(rules, stamp):
    camera_input, _ = rules
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CompressedImage, Image

    for msg in (Image(height=2, width=3, encoding="bgr8", step=9, data=bytes(18)),
                CompressedImage(format="jpeg", data=b"\xff\xd8")):
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        msg.header.frame_id = "camera_optical_frame"
        raw = serialize_message(msg)
        assert camera_input.header_stamp(raw) == pytest.approx(stamp[0] + stamp[1] * 1e-9, abs=1e-9)
    big_endian = bytes([0, 0, 0, 0]) + (7).to_bytes(4, "big") + (5).to_bytes(4, "big")
    assert camera_input.header_stamp(big_endian) == pytest.approx(7 + 5e-9)


@pytest.mark.parametrize("raw", [b"", b"\x00\x01\x00\x00", b"\x00\x0a\x00\x00" + bytes(12),
                                 b"\x01\x01\x00\x00" + bytes(12)])
def test_unknown_or_short_bytes_are_refused_so_the_caller_deserializes(rules, raw):
    camera_input, _ = rules
    with pytest.raises(ValueError):
        camera_input.header_stamp(raw)
