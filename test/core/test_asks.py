"""AskTracker: when an ask goal ends and how (outcome, error code), including timeouts."""
import pytest

from dispider_ros.core.asks import AskConfig, AskTracker, Outcome
from dispider_ros.core.queries import QueryRegistry, RegistryConfig
from dispider_ros.core.types import ErrorCode, QuerySpec


@pytest.fixture
def registry():
    return QueryRegistry(RegistryConfig(max_queries_per_sec=0))


def start(tracker, registry, key, mode="now", **kw):
    query_id = f"q-{key}"
    tracker.expect(key, query_id)
    query = registry.add(QuerySpec(query_id=query_id, text="what is there?", mode=mode, **kw), now=1.0)
    tracker.started(key, query)
    return query_id


def test_a_now_goal_ends_answered_once_its_final_arrives(registry):
    tracker = AskTracker(AskConfig(answer_timeout_sec=5.0))
    qid = start(tracker, registry, "g")
    assert tracker.trigger(qid, "t1", now=0.0) == "g"
    registry.record_response(qid)  # a now query completes at its trigger
    assert tracker.ended(now=0.1) == []  # ... but its answer is still pending
    assert tracker.chunk(qid, "t1", "r1", "A red ", now=0.2) == ("g", "A red ")
    assert tracker.chunk(qid, "t1", "r1", "cup.", now=0.3) == ("g", "A red cup.")
    assert tracker.final(qid, "t1", "r1", ErrorCode.OK, "", "final-1", now=0.4) == ("g", "A red cup.", 2)
    assert tracker.finals("g") == ["final-1"]
    ((key, end),) = tracker.ended(now=0.5)
    assert key == "g" and end.outcome == Outcome.ANSWERED and end.succeeded and len(tracker) == 0
    assert end.query_id == qid and end.finals == ("final-1",)
    assert tracker.chunk(qid, "t1", "r1", "late", now=0.6) is None  # forgotten


@pytest.mark.parametrize("how, outcome, code", [
    ("max_responses", Outcome.MAX_RESPONSES, ErrorCode.OK),
    ("expiry", Outcome.EXPIRED, ErrorCode.OK),
    ("topic_cancel", Outcome.CANCELED, ErrorCode.CANCELED),
    ("replaced", Outcome.CANCELED, ErrorCode.CANCELED),
])
def test_a_proactive_goal_ends_when_its_query_does(registry, how, outcome, code):
    tracker = AskTracker()
    qid = start(tracker, registry, "g", mode="boundary", max_responses=2, expiry_sec=10.0)
    for n in (1, 2) if how == "max_responses" else ():
        tracker.trigger(qid, f"t{n}", now=float(n))
        registry.record_response(qid)
        tracker.final(qid, f"t{n}", f"r{n}", ErrorCode.OK, "", n, now=float(n))
    if how == "expiry":
        registry.expire(11.0)
    elif how == "topic_cancel":
        registry.cancel(qid)
    elif how == "replaced":
        registry.add(QuerySpec(query_id=qid, text="edited", mode="boundary"), now=1.0)
    ((_, end),) = tracker.ended(now=3.0)
    assert (end.outcome, end.error_code, end.by_client) == (outcome, code, False)


def test_a_proactive_goal_stays_active_between_answers(registry):
    tracker = AskTracker(AskConfig(answer_timeout_sec=1.0))
    qid = start(tracker, registry, "g", mode="match")
    tracker.trigger(qid, "t1", now=0.0)
    tracker.final(qid, "t1", "r1", ErrorCode.OK, "", 1, now=0.5)
    assert tracker.ended(now=1000.0) == []  # nothing pending: no timeout, silent until the next event


def test_a_failed_answer_aborts_with_its_code_and_revisions_do_not(registry):
    tracker = AskTracker()
    qid = start(tracker, registry, "g", mode="boundary", max_responses=3)
    for n, code in enumerate((ErrorCode.PREEMPTED, ErrorCode.OK, ErrorCode.TRIGGER_DROPPED)):
        tracker.trigger(qid, f"t{n}", now=0.0)
        registry.record_response(qid)
        tracker.final(qid, f"t{n}", f"r{n}", code, "dropped: queue full" if code else "", n, now=0.0)
    ((_, end),) = tracker.ended(now=0.1)
    assert end.outcome == Outcome.ABORTED and end.error_code == ErrorCode.TRIGGER_DROPPED
    assert "r2" in end.error and "queue full" in end.error and not end.succeeded
    assert tracker.finals("g") == []  # gone with the goal


def test_client_cancel_waits_for_the_stopped_answer(registry):
    tracker = AskTracker()
    qid = start(tracker, registry, "g")
    tracker.trigger(qid, "t1", now=0.0)
    assert tracker.cancel("g") == qid and tracker.cancel("nope") is None
    assert tracker.ended(now=0.1) == []  # the running answer's CANCELED final is due
    tracker.final(qid, "t1", "r1", ErrorCode.CANCELED, "canceled", 1, now=0.2)
    ((_, end),) = tracker.ended(now=0.3)
    assert (end.outcome, end.error_code, end.by_client, end.cancel_query) == \
        (Outcome.CANCELED, ErrorCode.CANCELED, True, False)


def test_silence_from_the_reaction_side_aborts_after_the_timeout(registry):
    tracker = AskTracker(AskConfig(answer_timeout_sec=2.0))
    qid = start(tracker, registry, "g")
    other = start(tracker, registry, "h", mode="match")
    tracker.trigger(qid, "t1", now=10.0)
    tracker.chunk(qid, "t1", "r1", "A", now=11.0)
    assert tracker.ended(now=12.9) == []
    tracker.heard(now=12.5)  # another answer streaming: the reaction is alive, t1 waits its turn
    assert tracker.ended(now=14.4) == []
    ((key, end),) = tracker.ended(now=14.6)
    assert key == "g" and end.outcome == Outcome.ABORTED and end.error_code == ErrorCode.ANSWER_TIMEOUT
    assert end.cancel_query and "t1" in end.error and "2 s" in end.error
    assert tracker.trigger(other, "t2", now=20.0) == "h"  # the other goal is untouched


def test_end_all_and_unknown_queries(registry):
    tracker = AskTracker()
    start(tracker, registry, "g")
    start(tracker, registry, "h")
    tracker.cancel("h")
    assert tracker.trigger("someone-else", "t9", now=0.0) is None
    assert tracker.final("someone-else", "t9", "r9", 0, "", None, now=0.0) is None
    assert tracker.final("q-g", "t1", "r1", 0, "", "f", now=0.0) == ("g", "", 0)  # no chunk seen
    assert tracker.final("q-g", "t1", "r1", 0, "", "f", now=0.0) is None  # once per answer
    ends = dict(tracker.end_all(ErrorCode.SHUTDOWN, "decision node deactivated"))
    assert ends["g"].outcome == Outcome.ABORTED and ends["g"].error_code == ErrorCode.SHUTDOWN
    assert ends["h"].outcome == Outcome.CANCELED and ends["h"].by_client
    assert len(tracker) == 0
    with pytest.raises(ValueError, match="answer_timeout_sec"):
        AskConfig(answer_timeout_sec=0.0)


# --- revision windows: a completed goal waits for a revision of its answer --------------

def answered(tracker, registry, key="g", until=5.0):
    """A now goal whose answer (trigger t1 at camera time 3.0) is revisable until `until`."""
    qid = start(tracker, registry, key)
    assert tracker.trigger(qid, "t1", now=10.0, camera_id="cam", stamp=3.0, revisable_until=until) == key
    registry.record_response(qid)
    return qid


@pytest.mark.revision
def test_a_now_goal_waits_out_its_revision_window_in_camera_time(registry):
    tracker = AskTracker()
    qid = answered(tracker, registry)
    tracker.final(qid, "t1", "r1", ErrorCode.OK, "", "final-1", now=10.5)
    assert tracker.ended(now=10.6) == []  # a revision may still come
    tracker.camera_time("rear", 9.0)  # another camera's clock says nothing about cam
    tracker.camera_time("cam", 4.5)
    assert tracker.ended(now=10.7) == []
    tracker.camera_time("cam", 5.0)  # the window [3, 5) has passed on its camera
    ((_, end),) = tracker.ended(now=10.8)
    assert end.outcome == Outcome.ANSWERED and end.succeeded and end.finals == ("final-1",)


@pytest.mark.revision
def test_a_stopped_camera_never_holds_a_goal_the_wall_clock_ends_the_window(registry):
    tracker = AskTracker(AskConfig(answer_timeout_sec=1.0))
    qid = answered(tracker, registry)
    tracker.final(qid, "t1", "r1", ErrorCode.OK, "", "final-1", now=10.5)
    assert tracker.ended(now=12.4) == []  # no feature since: camera time stands still
    ((_, end),) = tracker.ended(now=12.5)  # 2 s (the window) after the final
    assert end.outcome == Outcome.ANSWERED and end.succeeded


@pytest.mark.revision
@pytest.mark.parametrize("first_code", [ErrorCode.OK, ErrorCode.PREEMPTED])
def test_a_revision_is_waited_for_and_listed_after_the_answer_it_revises(registry, first_code):
    tracker = AskTracker()
    qid = answered(tracker, registry)
    if first_code == ErrorCode.OK:
        tracker.final(qid, "t1", "r1", first_code, "", "final-1", now=10.5)
    assert tracker.trigger(qid, "t2", now=11.0, camera_id="cam", stamp=4.0,
                           revises_trigger_id="t1") == "g"
    if first_code == ErrorCode.PREEMPTED:  # it was still generating: the revision stopped it
        tracker.final(qid, "t1", "r1", first_code, "preempted by trigger t2", "final-1", now=11.1)
    tracker.camera_time("cam", 6.0)
    assert tracker.ended(now=20.0) == []  # windows over, but the revision's answer is pending
    tracker.final(qid, "t2", "r2", ErrorCode.OK, "", "final-2", now=20.5)
    ((_, end),) = tracker.ended(now=20.6)  # the revision opened no window of its own
    assert end.outcome == Outcome.ANSWERED and end.succeeded
    assert end.finals == ("final-1", "final-2")


@pytest.mark.revision
def test_a_client_cancel_or_a_failure_ends_a_goal_inside_its_window(registry):
    tracker = AskTracker()
    qid = answered(tracker, registry)
    tracker.final(qid, "t1", "r1", ErrorCode.OK, "", "final-1", now=10.5)
    tracker.cancel("g")
    ((_, end),) = tracker.ended(now=10.6)
    assert end.outcome == Outcome.CANCELED and end.by_client
    qid = answered(tracker, registry, key="h")
    tracker.final(qid, "t1", "r1", ErrorCode.GENERATION_FAILED, "boom", "final-1", now=10.5)
    ((_, end),) = tracker.ended(now=10.6)
    assert end.outcome == Outcome.ABORTED and end.error_code == ErrorCode.GENERATION_FAILED
