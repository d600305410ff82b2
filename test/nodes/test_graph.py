"""The three node processes over real DDS: answers, proactive triggers, parameters, images."""
import math

import cv2
import numpy as np
import pytest

from conftest import SHARED_DATA
from graph_tools import NODES, Client, Graph, unique_namespace
from ros_tools import require_ros, wait_for

VIDEOS = SHARED_DATA / "videos"


def stamp_of(value) -> float:
    """Seconds of a Header or a builtin_interfaces/Time."""
    stamp = getattr(value, "stamp", value)
    return stamp.sec + stamp.nanosec * 1e-9


class Camera:
    """Publishes real footage with monotonic camera stamps across tests."""

    def __init__(self, client):
        from sensor_msgs.msg import CompressedImage, Image

        self.raw = client.publisher(Image, "image", wait_subscribers=1)  # perception only: reaction takes sampled_image
        self.compressed = client.publisher(CompressedImage, "image/compressed")
        self.clock = 0.0

    def play(self, video, seconds=None, compressed=False, speed=2.0):
        """Publish a clip paced at `speed` x real time; returns its first camera stamp."""
        import time

        from sensor_msgs.msg import CompressedImage

        from dispider_ros.footage import video_frames
        from dispider_ros.nodes.camera_player import rgb_to_image
        from dispider_ros.nodes.convert import header

        start, wall = self.clock, time.monotonic()
        for t, rgb in video_frames(video, max_seconds=seconds, size=(160, 120)):
            self.clock = start + t
            if compressed:
                ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]))
                self.compressed.publish(CompressedImage(header=header(self.clock, "cam"),
                                                        format="jpeg", data=jpeg.tobytes()))
            else:
                self.raw.publish(rgb_to_image(rgb, self.clock, "cam"))
            delay = wall + t / speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self.clock += 0.5  # a gap between clips
        return start


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    require_ros()
    if not VIDEOS.is_dir():
        pytest.skip(f"{VIDEOS} is absent on this machine")
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import String

    from dispider_ros.msg import FrameFeature, Response, Trigger

    namespace = unique_namespace("graph")
    graph = Graph(tmp_path_factory.mktemp("graph-logs"), namespace)
    common = {"autostart": True, "preset": "tiny", "diagnostics_period_sec": 0.5}
    graph.start("perception_node", {**common, "compressed_topics": ["image/compressed"],
                                    "clip_similarity_threshold": 0.85})
    graph.start("decision_node", {**common, "cooldown_sec": 1.0})
    graph.start("reaction_node", {**common, "max_new_tokens": 12})
    client = Client(namespace)
    try:
        for name in NODES:
            client.wait_state(name, "active")
        client.listen(FrameFeature, "features")
        client.listen(Trigger, "trigger")
        client.listen(Response, "response")
        client.listen(Response, "response_stream")
        client.listen(String, "response_text")
        client.listen(DiagnosticArray, "/diagnostics")
        camera = Camera(client)
        from dispider_ros.msg import Query

        queries = client.publisher(Query, "query", wait_subscribers=1)
        yield graph, client, camera, queries
    finally:
        client.close()
        codes = graph.stop()
        assert codes == {name: 0 for name in NODES}, (codes, {n: graph.log(n)[-2000:] for n in NODES})


def test_present_question_is_answered_with_consistent_ids(graph):
    _, client, camera, queries = graph
    from dispider_ros.msg import Query

    camera.play(VIDEOS / "mdn_cc0_flower.mp4", seconds=1.5)
    query = Query(query_id="now-1", text="What is on the screen right now?")
    query.header.stamp.sec = int(camera.clock)
    queries.publish(query)
    camera.play(VIDEOS / "mdn_cc0_flower.mp4", seconds=1.0)
    finals = lambda: [m for m in client.messages("response") if m.query_id == "now-1"]  # noqa: E731
    wait_for(lambda: finals(), 60, "the final response to now-1")
    final = finals()[0]
    triggers = [t for t in client.messages("trigger") if t.query_id == "now-1"]
    assert len(triggers) == 1 and triggers[0].policy == "now"
    trigger = triggers[0]
    assert final.trigger_id == trigger.trigger_id and final.final and final.error_code == final.OK
    assert stamp_of(final.header) == stamp_of(trigger.header)  # the evidence stamp is copied
    assert final.camera_id == trigger.camera_id and final.camera_id.endswith("/image")
    assert final.token_count > 0 and final.ttft_sec > 0
    # What it cost (the frames of 0 .. the evidence are in the prompt).
    assert final.prompt_tokens == final.prefill_tokens + final.reused_tokens > 0
    assert final.frames_in_prompt > 0 and 0 <= final.history_span_sec <= stamp_of(trigger.header)
    chunks = sorted((m for m in client.messages("response_stream")
                     if m.response_id == final.response_id), key=lambda m: m.sequence)
    assert [m.sequence for m in chunks] == list(range(len(chunks))) and final.sequence == len(chunks)
    assert "".join(m.text for m in chunks) == final.text
    # Chunks carry the tokens generated so far and the ttft (the first chunk fixes it).
    assert [m.token_count for m in chunks] == sorted(m.token_count for m in chunks)
    assert chunks and 0 < chunks[0].token_count and chunks[-1].token_count <= final.token_count
    assert all(m.ttft_sec == final.ttft_sec and m.error_code == m.OK for m in chunks)
    wait_for(lambda: any(m.data.startswith("[now-1] ") for m in client.messages("response_text")),
             10, "the String mirror of the answer")


def test_proactive_query_fires_at_the_scene_change_not_at_once(graph):
    _, client, camera, queries = graph
    from dispider_ros.msg import Query

    camera.play(VIDEOS / "mdn_stream-of-water.mp4", seconds=1.0)
    asked = camera.clock
    query = Query(query_id="scene-1", text="Narrate each new scene as it happens.",
                  mode=Query.MODE_BOUNDARY, max_responses=1)
    query.header.stamp.sec, query.header.stamp.nanosec = int(asked), int(asked % 1 * 1e9)
    queries.publish(query)
    camera.play(VIDEOS / "mdn_stream-of-water.mp4", seconds=2.0)
    assert not [t for t in client.messages("trigger") if t.query_id == "scene-1"], \
        "a boundary query fired without a scene change"
    cut = camera.play(VIDEOS / "mdn_cc0_friday.mp4", seconds=2.0)
    wait_for(lambda: [t for t in client.messages("trigger") if t.query_id == "scene-1"], 30,
             "the boundary trigger after the cut")
    trigger = [t for t in client.messages("trigger") if t.query_id == "scene-1"][0]
    # On one of the first two frames perception sampled from the new clip (a loaded host drops
    # camera frames before sampling: that moves the first sampled frame, not the trigger).
    sampled = sorted(stamp_of(f.header) for f in client.messages("features") if stamp_of(f.header) >= cut)
    assert sampled and cut <= stamp_of(trigger.header) <= sampled[min(1, len(sampled) - 1)], \
        (cut, stamp_of(trigger.header), sampled[:5])
    assert math.isclose(stamp_of(trigger.clip_start), stamp_of(trigger.header), abs_tol=1e-6)
    wait_for(lambda: [r for r in client.messages("response") if r.query_id == "scene-1"], 60,
             "the answer to the boundary trigger")


def test_parameters_out_of_range_rejected_in_range_applied(graph):
    _, client, camera, _ = graph
    (result,) = client.set_params("perception_node", {"sample_fps": 5000.0})
    assert not result.successful and "sample_fps" in result.reason
    (result,) = client.set_params("perception_node", {"sampled_image_format": "png"})
    assert not result.successful and "not one of" in result.reason
    # The models in use read back (resolved from the preset), not the empty parameter.
    assert client.get_params("perception_node", ["vision_model", "device"]) == ["tiny:siglip", "cpu"]
    assert client.get_params("reaction_node", ["vlm_model", "dtype"]) == ["tiny:qwen2_vl", "float32"]
    (result,) = client.set_params("decision_node", {"trigger_threshold": 1.5})
    assert not result.successful
    (result,) = client.set_params("perception_node", {"vision_model": "other/model"})
    assert not result.successful and "unconfigured" in result.reason
    (result,) = client.set_params("perception_node", {"sample_fps": 5.0})
    assert result.successful, result.reason
    assert client.get_params("perception_node", ["sample_fps"]) == [5.0]
    before = len(client.messages("features"))
    start = camera.play(VIDEOS / "mdn_cc0_flower.mp4", seconds=2.0, speed=1.0)
    wait_for(lambda: len([f for f in client.messages("features")[before:]
                          if stamp_of(f.header) >= start]) >= 6, 30, "features at 5 fps")
    stamps = sorted(stamp_of(f.header) for f in client.messages("features")[before:]
                    if stamp_of(f.header) >= start and f.camera_id.endswith("/image"))
    assert np.median(np.diff(stamps)) == pytest.approx(0.2, abs=0.04)
    client.set_params("perception_node", {"sample_fps": 2.0})


def test_compressed_images_are_perceived(graph):
    _, client, camera, _ = graph
    start = camera.play(VIDEOS / "mdn_cc0_flower.mp4", seconds=1.5, compressed=True)
    wait_for(lambda: [f for f in client.messages("features")
                      if f.camera_id.endswith("/image/compressed") and stamp_of(f.header) >= start],
             30, "features from the CompressedImage topic")
    feature = [f for f in client.messages("features") if f.camera_id.endswith("/image/compressed")][0]
    assert len(feature.embedding) > 0
    assert math.isclose(float(np.linalg.norm(feature.embedding)), 1.0, rel_tol=1e-3)


def test_diagnostics_report_every_node(graph):
    _, client, _, _ = graph
    namespace = client.namespace.strip("/")

    def statuses():
        return {s.name: {kv.key: kv.value for kv in s.values}
                for array in client.messages("/diagnostics") for s in array.status
                if namespace in s.name}
    wait_for(lambda: len(statuses()) >= 3, 20, "diagnostics from the three nodes")
    by_node = {name: values for status, values in statuses().items() for name in NODES
               if status.endswith(name)}
    assert by_node["perception_node"]["lifecycle_state"] == "active"
    assert "processed_fps" in by_node["perception_node"]
    assert "frames_dropped_latest_policy" in by_node["perception_node"]
    assert "queries_active" in by_node["decision_node"]
    assert "model" in by_node["reaction_node"]
    # The last answer's cost (before any answer: 0 tokens, span nan).
    assert {"last_prompt_tokens", "last_reused_tokens", "last_prefill_tokens",
            "last_frames_in_prompt", "last_history_span_sec"} <= set(by_node["reaction_node"])


FLOOD = r"""
import sys, time, numpy as np, rclpy
from sensor_msgs.msg import Image
from dispider_ros.nodes.camera_player import rgb_to_image
rclpy.init()
node = rclpy.create_node("image_flood")
publisher = node.create_publisher(Image, sys.argv[1], 10)
while publisher.get_subscription_count() < 1:  # perception (the reaction takes sampled_image)
    rclpy.spin_once(node, timeout_sec=0.05)
frame, start, sent = np.zeros((240, 320, 3), np.uint8), float(sys.argv[2]), 0
print("flooding", flush=True)
while True:  # as fast as one process can publish: far above any camera rate
    publisher.publish(rgb_to_image(frame, start + sent * 1e-3, "cam"))
    sent += 1
"""


def test_image_flood_does_not_starve_parameter_services(graph, tmp_path):
    """A flood of images from another process; parameter services still answer promptly."""
    import subprocess
    import sys
    import time

    from ros_tools import stop_process

    _, client, camera, _ = graph
    log = tmp_path / "flood.log"
    flood = subprocess.Popen([sys.executable, "-c", FLOOD, client.topic("image"), str(camera.clock)],
                             stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: b"flooding" in log.read_bytes(), 30, "the flood to start")
        received = lambda: [f for f in client.messages("features") if stamp_of(f.header) > camera.clock]  # noqa: E731
        wait_for(lambda: len(received()) >= 2, 30, "features from the flood")
        durations = []
        for _ in range(10):
            t0 = time.monotonic()
            assert client.get_params("perception_node", ["sample_fps"]) == [2.0]
            durations.append(time.monotonic() - t0)
    finally:
        stop_process(flood)
        camera.clock += 1000.0  # the flood's stamps advanced 1 ms per frame
    # Starved services answer late every time; a loaded host delays one call now and then
    # (one call of 6.1 s among 0.02-0.1 s ones in a fresh-clone run on 2 cores: the bound on
    # the slowest call went from 5 to 10 s; the median, what starvation moves, stays < 0.5 s).
    assert sorted(durations)[len(durations) // 2] < 0.5 and max(durations) < 10.0, durations
