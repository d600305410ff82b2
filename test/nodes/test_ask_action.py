"""The `ask` action over real DDS, through dispider_ros.client, with the installed node
executables: a `now` goal answered, a proactive goal answered after its event, cancel
mid-generation, a goal refused while the decision node is inactive, and the reaction node
killed mid-answer.

The reaction node runs through test/robustness/fault_node.py (the installed reaction_node
plus a test-only decoder hook): a question containing SLOW sleeps SLOW_TOKEN_SEC per decode
step, so an answer is long enough to cancel or kill in the middle; other questions are
untouched. Timings measured here are printed (pytest -s) and kept in TIMINGS.
"""
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from graph_tools import Client, Graph, _yaml, unique_namespace
from ros_tools import require_ros, start_process, wait_for

VIDEOS = SHARED_DATA / "videos"
FAULT_NODE = Path(__file__).resolve().parents[1] / "robustness" / "fault_node.py"
SLOW_TOKEN_SEC = 0.25  # one decode step of a SLOW question
ANSWER_TIMEOUT_SEC = 5.0  # > 20 slow steps: a chunk (a word) always comes sooner
LONG = 40  # tokens of a long SLOW answer (10 s)
NODES = ("perception_node", "decision_node", "reaction_node")
TIMINGS = {}


def stamp_of(value) -> float:
    stamp = getattr(value, "stamp", value)
    return stamp.sec + stamp.nanosec * 1e-9


class Camera:
    """Publishes real footage on `image` with camera stamps that only go forward."""

    def __init__(self, client):
        from sensor_msgs.msg import Image

        self.publisher = client.publisher(Image, "image", wait_subscribers=1)
        self.clock = 0.0

    def play(self, video, seconds, speed=2.0) -> float:
        """Publish the first seconds of a clip at speed x real time; its first stamp."""
        from dispider_ros.footage import video_frames
        from dispider_ros.nodes.camera_player import rgb_to_image

        start, wall = self.clock, time.monotonic()
        for t, rgb in video_frames(video, max_seconds=seconds, size=(160, 120)):
            self.clock = start + t
            self.publisher.publish(rgb_to_image(rgb, self.clock, "cam"))
            time.sleep(max(0.0, wall + t / speed - time.monotonic()))
        self.clock += 0.5
        return start


class Recorder:
    """ask_async callbacks that keep every feedback with its arrival time."""

    def __init__(self):
        self.events = []  # (monotonic, kind, message)
        self.lock = threading.Lock()
        self.first_chunk = threading.Event()

    def _add(self, kind, message):
        with self.lock:
            self.events.append((time.monotonic(), kind, message))
        if kind == "chunk":
            self.first_chunk.set()

    def callbacks(self):
        return dict(on_trigger=lambda m: self._add("trigger", m),
                    on_chunk=lambda m: self._add("chunk", m),
                    on_answer=lambda m: self._add("final", m))

    def of(self, kind):
        with self.lock:
            return [(t, m) for t, k, m in self.events if k == kind]


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    require_ros()
    if not VIDEOS.is_dir():
        pytest.skip(f"{VIDEOS} is absent on this machine")
    from dispider_ros.client import AskClient
    from dispider_ros.msg import FrameFeature, Response, Trigger

    namespace = unique_namespace("ask")
    log_dir = tmp_path_factory.mktemp("ask-logs")
    graph = Graph(log_dir, namespace)
    common = {"autostart": True, "preset": "tiny", "torch_threads": 1}
    graph.start("perception_node", {**common, "clip_similarity_threshold": 0.85})
    graph.start("decision_node", {**common, "cooldown_sec": 1.0,
                                  "answer_timeout_sec": ANSWER_TIMEOUT_SEC})
    args = [sys.executable, str(FAULT_NODE), "--ros-args", "-r", f"__ns:={namespace}"]
    for key, value in {**common, "max_new_tokens": 12}.items():
        args += ["-p", f"{key}:={_yaml(value)}"]
    graph.processes["reaction_node"] = start_process(
        args, log_dir / "reaction_node.log", env={"DISPIDER_TEST_SLOW_TOKEN_SEC": str(SLOW_TOKEN_SEC)})
    client = Client(namespace)
    asker = AskClient(namespace=namespace)
    try:
        for name in NODES:
            client.wait_state(name, "active")
        assert asker.wait_for_server(timeout=30)
        client.listen(Response, "response")
        client.listen(Trigger, "trigger")
        client.listen(FrameFeature, "features")
        yield graph, client, asker, Camera(client)
    finally:
        asker.close()
        client.close()
        codes = graph.stop()
        if TIMINGS:
            print("\nask action timings:", {k: round(v, 4) for k, v in TIMINGS.items()})
        logs = {n: graph.log(n)[-2000:] for n in NODES}
        assert codes["perception_node"] == 0 and codes["decision_node"] == 0, (codes, logs)


def long_answers(client, on: bool):
    """SLOW answers of LONG tokens (end of answer suppressed), or back to short ones."""
    values = {"max_new_tokens": LONG, "min_new_tokens": LONG} if on else \
        {"min_new_tokens": 0, "max_new_tokens": 12}
    for name, value in values.items():  # one at a time: min <= max holds after each
        (result,) = client.set_params("reaction_node", {name: value})
        assert result.successful, result.reason


def test_a_now_goal_is_answered_with_feedback_and_the_topics_still_carry_it(graph):
    _, client, asker, camera = graph
    from dispider_ros.core.asks import Outcome
    from dispider_ros.core.types import ErrorCode

    camera.play(VIDEOS / "mdn_cc0_flower.mp4", seconds=1.5)
    recorder = Recorder()
    handle = asker.ask_async("What is on the screen right now?", mode="now", **recorder.callbacks())
    result = handle.result(timeout=60)
    assert result.status == "succeeded" and result.outcome == Outcome.ANSWERED
    assert result.error_code == ErrorCode.OK and result.error == ""
    (final,) = result.responses
    assert final.final and final.error_code == ErrorCode.OK and final.query_id == result.query_id
    assert result.text == final.text and final.token_count > 0
    assert result.query_id.startswith(f"{client.namespace}/decision_node-")
    # Feedback: the trigger first, then the chunks (text so far), then the final.
    kinds = [k for _, k, _ in recorder.events]
    assert kinds[0] == "trigger" and kinds[-1] == "final" and set(kinds[1:-1]) <= {"chunk"}
    (_, trigger), = recorder.of("trigger")
    assert trigger.policy == "now" and trigger.trigger_id == final.trigger_id
    chunks = [m for _, m in recorder.of("chunk")]
    assert "".join(c.text for c in chunks) == final.text and chunks[-1].text_so_far == final.text
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    # The topic interface is unchanged: the same trigger and final went over the topics.
    wait_for(lambda: any(m.response_id == final.response_id for m in client.messages("response")),
             10, "the final on `response`")
    assert any(t.trigger_id == trigger.trigger_id for t in client.messages("trigger"))
    TIMINGS["now: goal -> first feedback (trigger) s"] = handle.first_feedback_at - handle.sent_at
    TIMINGS["now: goal -> first chunk s"] = recorder.of("chunk")[0][0] - handle.sent_at
    TIMINGS["now: goal -> result s"] = recorder.of("final")[0][0] - handle.sent_at


def test_stream_yields_the_chunks_of_the_answer(graph):
    _, client, asker, camera = graph
    camera.play(VIDEOS / "mdn_cc0_flower.mp4", seconds=1.0)
    chunks = list(asker.stream("What is on the screen right now?", mode="now", timeout=60))
    assert chunks and len({c.response_id for c in chunks}) == 1
    text = "".join(c.text for c in chunks)
    assert chunks[-1].text_so_far == text and chunks[-1].token_count > 0
    wait_for(lambda: any(m.response_id == chunks[0].response_id for m in client.messages("response")),
             10, "the final on `response`")
    (final,) = [m for m in client.messages("response") if m.response_id == chunks[0].response_id]
    assert final.text == text


def test_a_proactive_goal_is_answered_after_its_event(graph):
    _, client, asker, camera = graph
    from dispider_ros.core.asks import Outcome
    from dispider_ros.core.types import ErrorCode

    camera.play(VIDEOS / "mdn_stream-of-water.mp4", seconds=1.0)
    recorder = Recorder()
    handle = asker.ask_async("Narrate each new scene as it happens.", mode="boundary",
                             max_responses=1, expiry_sec=120.0, **recorder.callbacks())
    wait_for(lambda: handle.accepted, 30, "the goal to be accepted")
    camera.play(VIDEOS / "mdn_stream-of-water.mp4", seconds=2.0)  # the same scene: silent
    assert not recorder.of("trigger") and not handle.done(), "the boundary goal fired without a cut"
    cut = camera.play(VIDEOS / "mdn_cc0_friday.mp4", seconds=2.0)
    result = handle.result(timeout=60)
    assert result.status == "succeeded" and result.outcome == Outcome.MAX_RESPONSES
    (final,) = result.responses
    assert final.error_code == ErrorCode.OK and result.text == final.text
    (_, trigger), = recorder.of("trigger")
    assert trigger.policy == "boundary" and trigger.trigger_id == final.trigger_id
    # Fired at the scene change: on one of the first three frames perception sampled from
    # the new clip (by their stamps on `features`: a loaded host drops camera frames before
    # sampling, which moves the first sampled one later but must not delay the trigger).
    sampled = sorted(stamp_of(f.header) for f in client.messages("features") if stamp_of(f.header) >= cut)
    assert sampled and cut <= stamp_of(trigger.header) <= sampled[min(2, len(sampled) - 1)], \
        (cut, stamp_of(trigger.header), sampled[:5])
    assert stamp_of(trigger.clip_start) == pytest.approx(stamp_of(trigger.header), abs=1e-6)


def test_cancel_mid_generation_stops_the_answer_within_a_decode_step(graph):
    _, client, asker, camera = graph
    from dispider_ros.core.asks import Outcome
    from dispider_ros.core.types import ErrorCode

    long_answers(client, True)
    try:
        camera.play(VIDEOS / "mdn_cc0_flower.mp4", seconds=1.0)
        recorder = Recorder()
        handle = asker.ask_async("SLOW: describe everything you see", mode="now", **recorder.callbacks())
        assert recorder.first_chunk.wait(60), "no chunk of the slow answer"
        canceled = time.monotonic()
        result = handle.cancel(timeout=30)
    finally:
        long_answers(client, False)
    assert result.status == "canceled" and result.outcome == Outcome.CANCELED
    assert result.error_code == ErrorCode.CANCELED
    (final,) = result.responses
    assert final.error_code == ErrorCode.CANCELED and 0 < final.token_count < LONG
    (final_at, _), = recorder.of("final")
    chunk_times = [t for t, _ in recorder.of("chunk")]
    # The reaction stopped within the decode step in flight (+ the cancel's way over DDS and
    # the executors); running on it would have taken (LONG - tokens) x SLOW_TOKEN_SEC more.
    assert final_at - canceled < SLOW_TOKEN_SEC + 1.0, final_at - canceled
    assert (LONG - final.token_count) * SLOW_TOKEN_SEC > 2.0  # it did stop early
    wait_for(lambda: any(m.response_id == final.response_id and m.error_code == ErrorCode.CANCELED
                         for m in client.messages("response")), 10, "the CANCELED final on `response`")
    TIMINGS["cancel: cancel -> final s"] = final_at - canceled
    TIMINGS["cancel: cancel -> last token (chunk) s"] = max(chunk_times) - canceled \
        if max(chunk_times) > canceled else 0.0
    TIMINGS["cancel: chunks after cancel"] = sum(t > canceled for t in chunk_times)
    TIMINGS["cancel: tokens when stopped"] = final.token_count


def test_cancel_latency_at_full_decode_speed(graph):
    """The same at the tiny model's own speed (about a millisecond per token): what the
    cancel's way client -> decision node -> reaction node costs, in time and tokens."""
    _, client, asker, camera = graph
    from dispider_ros.core.types import ErrorCode

    fast_long = 4000
    for name, value in (("max_new_tokens", fast_long), ("min_new_tokens", fast_long)):
        (result,) = client.set_params("reaction_node", {name: value})
        assert result.successful, result.reason
    try:
        camera.play(VIDEOS / "mdn_cc0_flower.mp4", seconds=1.0)
        recorder = Recorder()
        handle = asker.ask_async("Describe everything you see.", mode="now", **recorder.callbacks())
        assert recorder.first_chunk.wait(60), "no chunk of the answer"
        canceled = time.monotonic()
        result = handle.cancel(timeout=30)
    finally:
        long_answers(client, False)
    (final,) = result.responses
    assert result.status == "canceled" and final.error_code == ErrorCode.CANCELED
    assert final.token_count < fast_long
    (final_at, _), = recorder.of("final")
    chunk_times = [t for t, _ in recorder.of("chunk")]
    TIMINGS["fast cancel: cancel -> final s"] = final_at - canceled
    TIMINGS["fast cancel: cancel -> last token (chunk) s"] = max(chunk_times) - canceled \
        if max(chunk_times) > canceled else 0.0
    (started, _), = recorder.of("trigger")
    rate = final.token_count / (final_at - started)  # tokens/s of this answer, a lower bound
    TIMINGS["fast cancel: tokens per s"] = rate
    TIMINGS["fast cancel: tokens generated during the cancel's trip (rate x time)"] = rate * (final_at - canceled)
    TIMINGS["fast cancel: tokens when stopped"] = final.token_count


def test_a_trigger_that_arrives_after_its_cancel_is_not_answered(graph):
    """`trigger` and `query_cancel` are two topics with no order between them: a trigger the
    decision fired just before a cancel can reach the reaction node after it. Sent here in
    that order, as the decision node would, the trigger gets a final CANCELED and no answer;
    a trigger of another query right after it is answered."""
    _, client, _, camera = graph
    from dispider_ros.msg import Query, Trigger
    from dispider_ros.nodes.convert import header
    from dispider_ros.core.types import ErrorCode

    camera.play(VIDEOS / "mdn_cc0_flower.mp4", seconds=1.0)
    evidence = camera.clock - 0.5
    cancels = client.publisher(Query, "query_cancel", wait_subscribers=1)
    triggers = client.publisher(Trigger, "trigger", wait_subscribers=1)

    def fire(query_id):
        trigger = Trigger(header=header(evidence, "cam"), trigger_id=f"{query_id}-t", query_id=query_id,
                          query_text="What is in front of the camera?", camera_id="image", policy="now",
                          score=1.0)
        trigger.clip_start = trigger.clip_end = trigger.header.stamp
        triggers.publish(trigger)

    cancels.publish(Query(header=header(camera.clock, "cam"), query_id="late-1", cancel=True))
    time.sleep(0.5)  # the cancel lands first
    fire("late-1")
    fire("late-2")
    finals = lambda q: [r for r in client.messages("response") if r.query_id == q]  # noqa: E731
    wait_for(lambda: finals("late-1") and finals("late-2"), 60, "finals of both triggers")
    (canceled,), (answered,) = finals("late-1"), finals("late-2")
    assert canceled.error_code == ErrorCode.CANCELED and canceled.token_count == 0, canceled
    assert answered.error_code == ErrorCode.OK and answered.token_count > 0, answered


def test_a_goal_is_refused_with_a_reason_while_the_node_is_inactive_or_over_limits(graph):
    _, client, asker, camera = graph
    from lifecycle_msgs.msg import Transition

    from dispider_ros.client import AskError
    from dispider_ros.core.asks import Outcome
    from dispider_ros.core.types import ErrorCode

    assert client.transition("decision_node", Transition.TRANSITION_DEACTIVATE)
    try:
        with pytest.raises(AskError) as refused:
            asker.ask("What is on the screen right now?", mode="now", timeout=30)
    finally:
        assert client.transition("decision_node", Transition.TRANSITION_ACTIVATE)
    error = refused.value
    assert error.outcome == Outcome.REJECTED and error.error_code == ErrorCode.QUERY_REJECTED
    assert "inactive" in error.error and "activate" in error.error
    assert error.result.status == "aborted" and error.result.responses == []
    with pytest.raises(AskError) as too_long:
        asker.ask("x" * 2001, timeout=30)
    assert too_long.value.outcome == Outcome.REJECTED and "max_query_chars" in too_long.value.error
    # Active again: the next question is answered.
    camera.play(VIDEOS / "mdn_cc0_flower.mp4", seconds=1.0)
    assert asker.ask("What is on the screen right now?", mode="now", timeout=60).succeeded


@pytest.mark.revision
def test_a_scene_cut_soon_after_a_now_answer_revises_it_in_the_goals_feedback(graph):
    """Revision over DDS: a `now` goal answered on one scene; the camera cuts to another
    within the revision window; the goal's feedback brings a second trigger naming the first
    (clip_boundary) and a final whose revises_response_id names the first answer; the result
    lists both and its text is the revision's."""
    _, client, asker, camera = graph
    from dispider_ros.core.asks import Outcome
    from dispider_ros.core.types import ErrorCode

    # A window longer than the default, so a loaded host's perception lag cannot close it on
    # the wall clock before the cut's feature arrives (the camera-time rule is what is tested).
    (result,) = client.set_params("decision_node", {"revise_window_sec": 5.0})
    assert result.successful, result.reason
    try:
        camera.play(VIDEOS / "mdn_stream-of-water.mp4", seconds=1.5)
        recorder = Recorder()
        handle = asker.ask_async("What is on the screen right now?", mode="now", revise=True,
                                 **recorder.callbacks())
        wait_for(lambda: recorder.of("trigger"), 30, "the answer's trigger")
        cut = camera.play(VIDEOS / "mdn_cc0_friday.mp4", seconds=2.0)
        result = handle.result(timeout=60)
    finally:
        (reset,) = client.set_params("decision_node", {"revise_window_sec": 2.0})
        assert reset.successful, reset.reason
    assert result.status == "succeeded" and result.outcome == Outcome.ANSWERED
    first, revision = result.responses
    assert first.error_code in (ErrorCode.OK, ErrorCode.PREEMPTED)  # neither fails the goal
    assert revision.error_code == ErrorCode.OK and revision.revises_response_id == first.response_id
    assert result.revisions == [revision] and result.text == revision.text
    (_, asked), (_, revising) = recorder.of("trigger")
    assert (revising.revises_trigger_id, revising.revision_reason) == (asked.trigger_id, "clip_boundary")
    assert revising.trigger_id == revision.trigger_id and cut - 1e-6 <= stamp_of(revising.header) < cut + 2.0
    finals = [m for _, m in recorder.of("final")]
    assert [f.response_id for f in finals] == [first.response_id, revision.response_id]
    revision_chunks = [m for _, m in recorder.of("chunk") if m.response_id == revision.response_id]
    assert revision_chunks and all(c.revises_response_id == first.response_id for c in revision_chunks)


@pytest.mark.revision
def test_a_now_goal_without_a_cut_ends_after_the_window_and_revise_off_at_its_answer(graph):
    _, _, asker, camera = graph
    camera.play(VIDEOS / "mdn_cc0_flower.mp4", seconds=1.0)
    ended = {}
    for revise in (True, False):  # the camera is still: the window closes on the wall clock
        recorder = Recorder()
        handle = asker.ask_async("What is on the screen right now?", mode="now", revise=revise,
                                 **recorder.callbacks())
        result = handle.result(timeout=60)
        done_at = time.monotonic()
        assert result.succeeded and len(result.responses) == 1 and result.revisions == []
        (final_at, _), = recorder.of("final")
        ended[revise] = done_at - final_at
    window = 2.0  # revise_window_sec's default
    assert window - 0.1 <= ended[True] <= window + 1.5, ended
    assert ended[False] < 1.0, ended
    TIMINGS["now, revise on, still camera: final -> goal end s"] = ended[True]
    TIMINGS["now, revise off: final -> goal end s"] = ended[False]


def test_the_reaction_node_killed_mid_answer_aborts_the_goal_within_the_timeout(graph):
    processes, client, asker, camera = graph
    from dispider_ros.client import AskError
    from dispider_ros.core.asks import Outcome
    from dispider_ros.core.types import ErrorCode

    long_answers(client, True)
    camera.play(VIDEOS / "mdn_cc0_flower.mp4", seconds=1.0)
    recorder = Recorder()
    handle = asker.ask_async("SLOW: describe everything you see", mode="now", **recorder.callbacks())
    assert recorder.first_chunk.wait(60), "no chunk of the slow answer"
    victim = processes.processes["reaction_node"]
    os.killpg(victim.pid, signal.SIGKILL)
    killed = time.monotonic()
    victim.wait(10)
    assert handle.wait(ANSWER_TIMEOUT_SEC + 10.0), "the goal did not end after the reaction died"
    ended = time.monotonic()
    with pytest.raises(AskError) as aborted:
        handle.result(0)
    error = aborted.value
    assert error.outcome == Outcome.ABORTED and error.error_code == ErrorCode.ANSWER_TIMEOUT
    assert error.result.status == "aborted" and "reaction node" in error.error
    last_progress = max(t for t, _ in recorder.of("chunk"))
    assert ended - last_progress >= ANSWER_TIMEOUT_SEC - 0.2  # not before the timeout ...
    assert ended - killed <= ANSWER_TIMEOUT_SEC + 2.0  # ... and soon after it
    TIMINGS["kill: reaction killed -> goal aborted s"] = ended - killed

