"""The three node processes over real DDS with the trained tiny VLM: an answer names what the
camera shows (and, for the second photo, changes with it)."""
import time

import numpy as np
import pytest

from graph_tools import NODES, Client, Graph, unique_namespace
from ros_tools import require_ros, wait_for

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_answer_names_what_the_camera_shows(tmp_path):
    require_ros()
    from sensor_msgs.msg import Image

    from dispider_ros import world
    from dispider_ros.models import tiny
    from dispider_ros.msg import Query, Response
    from dispider_ros.nodes.camera_player import rgb_to_image

    tiny.resolve_model_path("tiny:qwen2_vl_trained")  # built once here, not in the node's configure
    namespace = unique_namespace("semantic")
    graph = Graph(tmp_path, namespace)
    common = {"autostart": True, "preset": "tiny", "torch_threads": 1}
    graph.start("perception_node", common)
    graph.start("decision_node", common)
    graph.start("reaction_node", {**common, "vlm_model": "tiny:qwen2_vl_trained", "max_new_tokens": 12})
    client = Client(namespace)
    try:
        for name in NODES:
            client.wait_state(name, "active")
        client.listen(Response, "response")
        camera = client.publisher(Image, "image", wait_subscribers=1)
        queries = client.publisher(Query, "query", wait_subscribers=1)
        rng = np.random.default_rng(3)
        clock = 0.0
        for number, name in enumerate(("chelsea", "rocket")):
            scene = world.scene(name)
            photo = world.load_photo(name)
            for _ in range(8):  # 4 s of camera time at 2 fps (the sampling rate)
                camera.publish(rgb_to_image(world.camera_view(photo, rng, size=(160, 120)), clock, "cam"))
                clock += 0.5
                time.sleep(0.1)
            time.sleep(1.0)  # the last frame reaches perception and the reaction's memory
            query_id = f"now-{number}"
            query = Query(query_id=query_id, text=world.NOW_QUESTION)
            query.header.stamp.sec = int(clock)
            queries.publish(query)
            finals = lambda: [m for m in client.messages("response") if m.query_id == query_id]  # noqa: E731
            wait_for(lambda: finals(), 120, f"the final response to {query_id}")
            final = finals()[0]
            assert final.error_code == final.OK, final.error
            assert world.names_scene(final.text, scene), (final.text, scene.caption)
    finally:
        client.close()
        codes = graph.stop()
        assert codes == {name: 0 for name in NODES}, (codes, {n: graph.log(n)[-2000:] for n in NODES})


@pytest.mark.retrieval
def test_a_question_about_the_past_retrieves_the_clip_and_its_keyframes_over_dds(tmp_path):
    """The three node processes: the decision names the rocket's clip on the trigger, and the
    reaction's final says its keyframes were in the prompt (SampledImage.clip_index told the
    reaction which frames are that clip's)."""
    require_ros()
    from sensor_msgs.msg import Image

    from dispider_ros import world
    from dispider_ros.models import tiny
    from dispider_ros.msg import Query, Response, Trigger
    from dispider_ros.nodes.camera_player import rgb_to_image

    for model in ("tiny:qwen2_vl_trained", "tiny:siglip_trained"):
        tiny.resolve_model_path(model)  # built once here, not in the nodes' configure
    namespace = unique_namespace("retrieval")
    graph = Graph(tmp_path, namespace)
    common = {"autostart": True, "preset": "tiny_trained", "torch_threads": 1}
    for name in NODES:
        graph.start(name, {**common, **({"max_new_tokens": 12} if name == "reaction_node" else {})})
    client = Client(namespace)
    try:
        for name in NODES:
            client.wait_state(name, "active")
        client.listen(Trigger, "trigger")
        client.listen(Response, "response")
        camera = client.publisher(Image, "image", wait_subscribers=1)
        queries = client.publisher(Query, "query", wait_subscribers=1)
        rng = np.random.default_rng(5)
        clock, shots = 0.0, {}
        for name in ("chelsea", "rocket", "horse", "coffee", "clock"):
            photo = world.load_photo(name)
            shots[name] = clock
            for _ in range(8):  # 4 s of camera time at 2 fps (the sampling rate)
                camera.publish(rgb_to_image(world.camera_view(photo, rng, size=(160, 120)), clock, "cam"))
                clock += 0.5
                time.sleep(0.1)
        time.sleep(1.0)  # the last frame reaches perception and the reaction's memory
        query = Query(query_id="past", text="Tell me about the rocket you saw.", mode="now")
        query.header.stamp.sec = int(clock)
        queries.publish(query)
        finals = lambda: [m for m in client.messages("response") if m.query_id == "past"]  # noqa: E731
        wait_for(lambda: finals(), 120, "the final response to the question about the past")
        final = finals()[0]
        trigger = next(t for t in client.messages("trigger") if t.trigger_id == final.trigger_id)
        assert final.error_code == final.OK, final.error
        sec = lambda t: t.sec + t.nanosec * 1e-9  # noqa: E731
        named = [(sec(c.start), sec(c.end)) for c in trigger.retrieved_clips]
        assert len(named) == 1, named  # the shipped retrieval_k
        start, end = named[0]
        assert shots["rocket"] <= start and end < shots["horse"], (named, shots)  # the rocket's clip
        (clip,) = final.retrieved_clips
        assert (clip.clip_index, clip.keyframes) == (trigger.retrieved_clips[0].clip_index, 2)
        # the memory's frames (up to 40: a busy host may drop a camera frame) and the two keyframes
        assert 2 + 30 <= final.frames_in_prompt <= 40 + 2, final.frames_in_prompt
    finally:
        client.close()
        codes = graph.stop()
        assert codes == {name: 0 for name in NODES}, (codes, {n: graph.log(n)[-2000:] for n in NODES})
