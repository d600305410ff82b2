"""Camera intake over DDS: 640x480 frames from another process reach perception at sample_fps.

The camera is a separate process (bench.intake's publisher, as a driver would be), started
like the node with the shipped Fast DDS profile; first a reliable publisher, then a
best-effort one on the same topic, so the node's auto reliability has to follow them.
Bounds are loose (>= 70 % of sample_fps over 6 s of camera time): the point is getting
frames at all, not timing. Frames that are not sampled must never be converted.
"""
import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO
from graph_tools import Client, unique_namespace
from ros_tools import require_ros, start_process, stop_process, wait_for

pytestmark = [pytest.mark.ros, pytest.mark.slow]
SAMPLE_FPS = 2.0
SECONDS = 6.0
PROFILE = REPO / "config" / "fastdds_large_images.xml"


def _status(client, name):
    """The latest /diagnostics values of one node, as a dict (or {})."""
    for array in reversed(client.messages("/diagnostics")):
        for status in array.status:
            if status.name.endswith(name):
                return {kv.key: kv.value for kv in status.values}
    return {}


@pytest.fixture(scope="module")
def perception(tmp_path_factory):
    require_ros()
    from diagnostic_msgs.msg import DiagnosticArray

    from dispider_ros.msg import FrameFeature
    from dispider_ros.paths import executable

    namespace = unique_namespace("intake")
    logs = tmp_path_factory.mktemp("intake-logs")
    params = logs / "params.yaml"
    params.write_text(yaml.safe_dump({"/**/perception_node": {"ros__parameters": {
        "autostart": True, "preset": "tiny", "sample_fps": SAMPLE_FPS,
        "diagnostics_period_sec": 0.5, "image_topics": ["image", "image_fixed"],
        # the standard override beats camera_reliability (auto) for this topic
        "qos_overrides": {f"{namespace}/image_fixed": {"subscription": {
            "reliability": "reliable", "depth": 3}}}}}}))
    env = {"FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE)}
    node = start_process([str(executable("perception_node")), "--ros-args", "-r",
                          f"__ns:={namespace}", "--params-file", str(params)],
                         logs / "perception_node.log", env=env)
    client = Client(namespace)
    try:
        client.listen(FrameFeature, "features")
        client.listen(DiagnosticArray, "/diagnostics")
        client.wait_state("perception_node", "active")
        yield client, namespace, env
    finally:
        client.close()
        code = stop_process(node)
        assert code == 0, (logs / "perception_node.log").read_text()[-3000:]


@pytest.mark.parametrize("reliability", ["reliable", "best_effort"])
def test_vga_stream_from_another_process_reaches_perception(perception, reliability):
    client, namespace, env = perception
    camera = f"{namespace}/image"
    case = {"topic": camera, "stream": "640x480@10", "reliability": reliability,
            "seconds": SECONDS, "warmup": 2.0}
    publisher = subprocess.run(
        [sys.executable, "-m", "bench.intake", "publish", json.dumps([case])], cwd=REPO,
        env={**os.environ, **env}, capture_output=True, text=True, timeout=180)
    lines = [json.loads(l) for l in publisher.stdout.splitlines() if l.startswith("{")]
    assert lines and lines[-1]["matched"], publisher.stderr[-2000:]
    sent = lines[-1]
    start, end = sent["window_start"], sent["window_start"] + SECONDS
    stamps = lambda: [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9  # noqa: E731
                      for m in client.messages("features") if m.camera_id == camera]
    wait_for(lambda: any(s >= end - 1.0 for s in stamps()), 20, "the window's last features")
    features = [s for s in stamps() if start - 1e-6 <= s < end - 1e-6]
    assert len(features) >= 0.7 * SECONDS * SAMPLE_FPS, (reliability, len(features), sent)

    time.sleep(1.0)  # a diagnostics period after the last frame
    values = _status(client, f"{namespace}/perception_node")
    received, converted = int(values["frames_received"]), int(values["frames_converted"])
    sampled = int(float(values[f"{camera}/sampled"]))
    assert converted <= sampled, values  # only sampled frames are ever decoded
    assert received >= 3 * converted, values  # 10 fps in, 2 fps sampled
    # auto followed the publisher; the override on image_fixed held it at reliable
    assert values[f"{camera}/reliability"].startswith(reliability + " (auto"), values
    assert values[f"{namespace}/image_fixed/reliability"].startswith("reliable (reliable"), values


def test_qos_overrides_apply_to_the_camera_subscriptions(perception):
    client, namespace, _ = perception
    fixed = f"{namespace}/image_fixed"
    names = [f"qos_overrides.{fixed}.subscription.{p}" for p in ("reliability", "depth")]
    assert client.get_params("perception_node", names) == ["reliable", 3]
    from rclpy.qos import ReliabilityPolicy

    infos = client.node.get_subscriptions_info_by_topic(fixed)
    assert [i.qos_profile.reliability for i in infos] == [ReliabilityPolicy.RELIABLE]
