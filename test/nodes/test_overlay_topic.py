"""The `overlay` image over real DDS with the installed nodes: off by default, turned on by
the reaction node's `overlay` parameter (static: set while unconfigured), then each sampled
frame comes back as an rgb8 image of its size and header with a `now` question's trigger and
answer drawn on it, differing from the sampled frame exactly where the text bands are."""
import time

import numpy as np
import pytest

from conftest import SHARED_DATA
from graph_tools import NODES, Client, Graph, unique_namespace
from ros_tools import require_ros, wait_for

VIDEO = SHARED_DATA / "videos" / "mdn_cc0_flower.mp4"
SIZE = (320, 240)  # (W, H): room for the text bands and untouched rows between them


def stamp_of(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


class Camera:
    """Publishes real footage on `image` with camera stamps that only go forward."""

    def __init__(self, client):
        from sensor_msgs.msg import Image

        self.publisher = client.publisher(Image, "image", wait_subscribers=1)
        self.clock = 0.0

    def play(self, seconds, speed=2.0) -> None:
        from dispider_ros.footage import video_frames
        from dispider_ros.nodes.camera_player import rgb_to_image

        start, wall = self.clock, time.monotonic()
        for t, rgb in video_frames(VIDEO, max_seconds=seconds, size=SIZE):
            self.clock = start + t
            self.publisher.publish(rgb_to_image(rgb, self.clock, "cam"))
            time.sleep(max(0.0, wall + t / speed - time.monotonic()))
        self.clock += 0.5


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    require_ros()
    if not VIDEO.is_file():
        pytest.skip(f"{VIDEO} is absent on this machine")
    from sensor_msgs.msg import Image

    from dispider_ros.msg import Query, Response, SampledImage, Trigger

    namespace = unique_namespace("overlay")
    graph = Graph(tmp_path_factory.mktemp("overlay-logs"), namespace)
    common = {"autostart": True, "preset": "tiny"}
    graph.start("perception_node", common)
    graph.start("decision_node", common)
    graph.start("reaction_node", {**common, "max_new_tokens": 12})  # overlay left at its default
    client = Client(namespace)
    try:
        for name in NODES:
            client.wait_state(name, "active")
        client.listen(Image, "overlay")
        client.listen(SampledImage, "sampled_image")
        client.listen(Trigger, "trigger")
        client.listen(Response, "response")
        client.listen(Response, "response_stream")
        yield graph, client, client.publisher(Query, "query", wait_subscribers=1)
    finally:
        client.close()
        codes = graph.stop()
        assert codes == {name: 0 for name in NODES}, (codes, {n: graph.log(n)[-2000:] for n in NODES})


def test_overlay_is_off_by_default_and_a_static_parameter_turns_it_on(graph):
    from lifecycle_msgs.msg import Transition

    _, client, _ = graph
    assert client.get_params("reaction_node", ["overlay"]) == [False]
    assert client.node.count_publishers(client.topic("overlay")) == 0
    refused = client.set_params("reaction_node", {"overlay": True})[0]
    assert not refused.successful and "only change while unconfigured" in refused.reason
    for step in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP):
        assert client.transition("reaction_node", step)
    assert client.set_params("reaction_node", {"overlay": True})[0].successful
    for step in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
        assert client.transition("reaction_node", step)
    wait_for(lambda: client.node.count_publishers(client.topic("overlay")) == 1, 10,
             "the overlay publisher")


def test_overlay_shows_the_question_trigger_and_answer_on_the_sampled_frame(graph):
    from dispider_ros.core.types import ErrorCode, ResponseEvent
    from dispider_ros.msg import Query
    from dispider_ros.nodes.convert import to_sec, trigger_from_msg
    from dispider_ros.overlay import OverlayState, draw

    _, client, queries = graph
    if not client.get_params("reaction_node", ["overlay"])[0]:
        pytest.skip("needs the overlay turned on by the test before")
    camera = Camera(client)
    camera.play(1.0)
    wait_for(lambda: client.messages("overlay"), 30, "a first overlay image")

    query = Query(query_id="overlay-now-1", text="What is on the screen right now? \u2014 caf\u00e9")
    query.header.stamp.sec = int(camera.clock)
    queries.publish(query)
    camera.play(1.0)
    finals = lambda: [m for m in client.messages("response") if m.query_id == query.query_id]  # noqa: E731
    wait_for(finals, 60, "the final answer to the now question")
    final = finals()[0]
    assert final.error_code == final.OK and final.text
    # Frames sampled after the answer was final show the state it left.
    answered = len(client.messages("overlay"))
    camera.play(1.5)
    wait_for(lambda: len(client.messages("overlay")) >= answered + 2, 30, "overlays after the answer")
    overlay = client.messages("overlay")[-1]
    key = (stamp_of(overlay.header), overlay.header.frame_id)
    sampled = lambda: {(stamp_of(m.header), m.header.frame_id): m  # noqa: E731
                       for m in client.messages("sampled_image")}
    # The frame travels to us on its own topic: it may arrive after its overlay.
    wait_for(lambda: key in sampled(), 10, "the overlay's sampled frame")
    raw_msg = sampled()[key].image  # same header

    # It decodes: rgb8 of the sampled frame's size, rows packed.
    assert (overlay.encoding, overlay.height, overlay.width) == ("rgb8", raw_msg.height, raw_msg.width)
    assert (overlay.width, overlay.height) == SIZE and overlay.step == overlay.width * 3
    image = np.frombuffer(bytes(overlay.data), np.uint8).reshape(overlay.height, overlay.width, 3)
    raw = np.frombuffer(bytes(raw_msg.data), np.uint8).reshape(raw_msg.height, raw_msg.width, 3)

    # It differs from the raw frame in a top band (trigger) and a bottom band (answer) only.
    rows = np.flatnonzero((image != raw).any(axis=(1, 2)))
    top, bottom = rows[rows < overlay.height // 2], rows[rows >= overlay.height // 2]
    assert len(top) and top[0] == 0 and np.array_equal(top, np.arange(top[-1] + 1))
    assert len(bottom) and bottom[-1] == overlay.height - 1
    assert np.array_equal(bottom, np.arange(bottom[0], overlay.height))
    assert bottom[0] - top[-1] > overlay.height // 4  # untouched rows between the bands

    # And it is exactly what the drawing makes of what the node heard.
    state = OverlayState()
    state.on_query(query.query_id, query.text, stamp=to_sec(query.header.stamp))
    (trigger,) = [t for t in client.messages("trigger") if t.query_id == query.query_id]
    state.on_trigger(trigger_from_msg(trigger))
    for message in sorted((m for m in client.messages("response_stream")
                           if m.response_id == final.response_id), key=lambda m: m.sequence) + [final]:
        state.on_response(ResponseEvent(
            message.response_id, message.trigger_id, message.query_id, message.camera_id,
            stamp_of(message.header), message.text, message.final, message.sequence,
            error_code=ErrorCode(message.error_code)))
    view = state.view(stamp_of(overlay.header))
    assert view.questions == () and view.answer == final.text  # a `now` question ends answered
    assert view.trigger.startswith(f"trigger now score 1.00 at t={stamp_of(trigger.header):.2f}s")
    assert np.array_equal(image, draw(raw, view))
