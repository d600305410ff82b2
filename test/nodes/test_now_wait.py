"""A stamped `now` question over DDS is answered from the frame at its stamp, not an older one.

decision_node takes features and queries on separate callbacks, so features older than a
stamped question (a bag replay) can still be queued when the question arrives. The node
waits for the frame current at the stamp; a stopped camera releases it after now_wait_sec.
Features are published by the test (known stamps), so the order is the test's to choose.
"""
import time

import numpy as np

from graph_tools import Client, Graph, unique_namespace
from ros_tools import require_ros, wait_for

CAMERA = "cam"


def _feature(stamp: float, index: int):
    from dispider_ros.msg import FrameFeature
    from dispider_ros.nodes.convert import header, to_time
    embedding = np.zeros(8, np.float32)
    embedding[index % 8] = 1.0
    return FrameFeature(header=header(stamp), camera_id=CAMERA, frame_index=index, clip_index=0,
                        clip_start=to_time(0.0), clip_similarity=0.9, encoder="test",
                        embedding=embedding.tolist())


def _features_seen(client, namespace: str) -> int:
    """The decision node's `features` counter in its latest /diagnostics status."""
    for array in reversed(client.messages("/diagnostics")):
        for status in array.status:
            if status.name.endswith(f"{namespace}/decision_node"):
                return int(next((kv.value for kv in status.values if kv.key == "features"), 0))
    return 0


def test_a_stamped_now_question_waits_for_its_frame_and_a_stopped_camera_releases_it(tmp_path):
    require_ros()
    from diagnostic_msgs.msg import DiagnosticArray

    from dispider_ros.msg import FrameFeature, Query, Trigger
    from dispider_ros.nodes.convert import header, to_sec

    namespace = unique_namespace("now_wait")
    graph = Graph(tmp_path, namespace)
    client = Client(namespace)
    try:
        graph.start("decision_node", {"autostart": True, "preset": "tiny", "now_wait_sec": 30.0,
                                      "revise_answers": False})
        client.wait_state("decision_node", "active")
        client.listen(Trigger, "trigger")
        client.listen(DiagnosticArray, "/diagnostics")
        features = client.publisher(FrameFeature, "features")
        queries = client.publisher(Query, "query")

        def fired(query_id):
            return [to_sec(m.header.stamp) for m in client.messages("trigger") if m.query_id == query_id]

        def ask(query_id, stamp):
            queries.publish(Query(header=header(stamp), query_id=query_id, text="What is there now?",
                                  mode="now"))

        for index, stamp in enumerate((2.5, 3.0)):
            features.publish(_feature(stamp, index))
        wait_for(lambda: _features_seen(client, namespace) >= 2, 30, "both features in the decision")
        # The frame current at 3.4 is the 3.0 one (the next is due at 3.5): answered at once.
        ask("q-current", 3.4)
        wait_for(lambda: fired("q-current"), 30, "the trigger of a question at its frame")
        assert fired("q-current") == [3.0]

        # Stamped 4.0 while the newest feature is 3.0: the 3.5 and 4.0 frames are still due.
        ask("q-ahead", 4.0)
        time.sleep(1.0)
        assert fired("q-ahead") == [], "answered from a frame older than its stamp"
        features.publish(_feature(3.5, 2))
        time.sleep(0.5)
        assert fired("q-ahead") == []
        features.publish(_feature(4.0, 3))
        wait_for(lambda: fired("q-ahead"), 30, "the trigger on the frame at the stamp")
        assert fired("q-ahead") == [4.0]

        # The camera stops: a question stamped 9.0 is answered from the newest frame once
        # now_wait_sec (live) has passed, on the node's wall clock.
        assert client.set_params("decision_node", {"now_wait_sec": 1.0})[0].successful
        t_ask = time.monotonic()
        ask("q-stopped", 9.0)
        wait_for(lambda: fired("q-stopped"), 30, "the stopped camera's question released")
        waited = time.monotonic() - t_ask
        assert fired("q-stopped") == [4.0]
        assert 0.9 <= waited < 10.0, waited
    finally:
        client.close()
        codes = graph.stop()
    assert codes == {"decision_node": 0}, graph.log("decision_node")[-2000:]
