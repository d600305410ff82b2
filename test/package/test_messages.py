"""Every message serialises, deserialises and crosses a process boundary over real DDS."""
import subprocess
import sys
from pathlib import Path


from ros_tools import require_ros, wait_for

HERE = Path(__file__).resolve().parent


def _equal(a, b) -> bool:
    import numpy as np

    for name in a.get_fields_and_field_types():
        x, y = getattr(a, name), getattr(b, name)
        if hasattr(x, "get_fields_and_field_types"):
            if not _equal(x, y):
                return False
        elif hasattr(x, "__len__") and not isinstance(x, str):
            if not np.allclose(np.asarray(x, dtype=float), np.asarray(y, dtype=float)) \
                    if len(x) and not isinstance(x[0], str) else list(x) != list(y):
                return False
        elif x != y:
            return False
    return True


def test_fields_have_documented_header_first():
    require_ros()
    from msg_samples import samples

    for message in samples():
        assert list(message.get_fields_and_field_types())[0] == "header", type(message)


def test_serialize_round_trip():
    require_ros()
    from rclpy.serialization import deserialize_message, serialize_message

    from msg_samples import samples

    for message in samples():
        data = serialize_message(message)
        back = deserialize_message(data, type(message))
        assert _equal(message, back), type(message).__name__
        assert back == message or type(message).__name__ == "FrameFeature"


def test_response_error_codes_are_the_core_error_codes():
    """Every Response constant is an ErrorCode of the same name and value, and vice versa."""
    require_ros()
    from dispider_ros.core.types import ErrorCode
    from dispider_ros.msg import Response

    assert Response.get_fields_and_field_types()["error_code"] == "uint8"
    in_msg = {name: getattr(Response, name) for name in dir(Response)
              if name.isupper() and isinstance(getattr(Response, name), int)}
    assert in_msg == {code.name: code.value for code in ErrorCode}


def test_ask_action_outcomes_are_the_core_outcomes():
    """Ask.Result's OUTCOME_* constants are core.asks.Outcome, both directions; its
    error_code and the feedback's response use the Response codes."""
    require_ros()
    from dispider_ros.action import Ask
    from dispider_ros.core.asks import Outcome

    in_action = {name[len("OUTCOME_"):]: getattr(Ask.Result, name) for name in dir(Ask.Result)
                 if name.startswith("OUTCOME_")}
    assert in_action == {outcome.name: outcome.value for outcome in Outcome}
    fields = Ask.Result.get_fields_and_field_types()
    assert fields["error_code"] == "uint8" and fields["responses"] == "sequence<dispider_ros/Response>"
    assert {Ask.Feedback.KIND_TRIGGER, Ask.Feedback.KIND_CHUNK, Ask.Feedback.KIND_FINAL} == {0, 1, 2}
    assert list(Ask.Goal.get_fields_and_field_types()) == [
        "text", "mode", "cameras", "max_responses", "expiry_sec", "threshold", "revise"]


PUBLISHER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import rclpy
from msg_samples import samples
rclpy.init()
node = rclpy.create_node("msg_sample_publisher")
messages = samples()
pubs = [node.create_publisher(type(m), "roundtrip_" + type(m).__name__, 10) for m in messages]
deadline = time.monotonic() + 30
while any(p.get_subscription_count() == 0 for p in pubs):
    if time.monotonic() > deadline:
        sys.exit("no subscriber appeared")
    rclpy.spin_once(node, timeout_sec=0.05)
for _ in range(100):  # resend until the parent has what it needs or kills us
    for pub, message in zip(pubs, messages):
        pub.publish(message)
    rclpy.spin_once(node, timeout_sec=0.1)
"""


def test_every_message_crosses_processes_over_dds(tmp_path):
    require_ros()
    import rclpy

    from msg_samples import samples

    expected = {type(m).__name__: m for m in samples()}
    received = {}
    rclpy.init()
    node = rclpy.create_node("msg_sample_subscriber")
    try:
        for name, message in expected.items():
            node.create_subscription(type(message), "roundtrip_" + name,
                                     lambda msg, name=name: received.setdefault(name, msg), 10)
        child = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(HERE)])
        try:
            wait_for(lambda: len(received) == len(expected), 60, "all four messages",
                     spin=lambda t: rclpy.spin_once(node, timeout_sec=t))
        finally:
            child.kill()
            child.wait()
    finally:
        node.destroy_node()
        rclpy.shutdown()
    for name, message in expected.items():
        assert _equal(message, received[name]), name


def test_what_an_answer_cost_goes_from_the_event_into_the_message_and_the_record():
    """response_to_msg copies a final's cost from its extras; response_cost reads it back as
    the run record's keys; a final without them (never reached the model) says 0 and NaN."""
    require_ros()
    import math

    from dispider_ros.core.reaction import COST_KEYS as ENGINE_KEYS
    from dispider_ros.core.types import ResponseEvent
    from dispider_ros.eval.record import COST_KEYS
    from dispider_ros.nodes.convert import response_cost, response_to_msg

    assert COST_KEYS == ENGINE_KEYS
    cost = {"prompt_tokens": 3585, "reused_tokens": 3396, "prefill_tokens": 189,
            "frames_in_prompt": 80, "history_span_sec": 39.5,
            "retrieved_clips": [{"camera_id": "front", "clip_index": 3, "start": 1.5, "end": 4.0,
                                 "score": 0.875, "keyframes": 2}]}
    event = ResponseEvent(response_id="r", trigger_id="t", query_id="q", camera_id="front",
                          stamp=12.0, text="Open.", final=True, sequence=2,
                          extras=dict(cost, stop_reason="eos"))
    assert response_cost(response_to_msg(event)) == cost
    # a narration that stands for the waiting ones it replaced names them, oldest first
    merged = dict(cost, merged_trigger_ids=["t-13", "t-14"])
    event.extras = dict(merged, stop_reason="eos")
    assert response_to_msg(event).merged_trigger_ids == ["t-13", "t-14"]
    assert response_cost(response_to_msg(event)) == merged
    bare = response_cost(response_to_msg(ResponseEvent("r", "t", "q", "front", 12.0, "", True, 0)))
    assert bare.pop("retrieved_clips") == []
    assert math.isnan(bare.pop("history_span_sec")) and set(bare.values()) == {0}
