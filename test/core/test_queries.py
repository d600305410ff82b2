"""QueryRegistry: validation errors, duplicates, rate limit, expiry, limits, cancel."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispider_ros.core.queries import (QueryRegistry, QueryRejected, RegistryConfig,
                                       validate_text)
from dispider_ros.core.types import QuerySpec


def spec(text="what is on the table?", query_id="q", **kw):
    return QuerySpec(query_id=query_id, text=text, **kw)


@pytest.mark.parametrize("text, reason, match", [
    ("", "empty_text", "empty"),
    ("  \n\t ", "empty_text", "empty"),
    ("x" * 101, "too_long", "101 characters > max_query_chars 100"),
    ("hi\x00there", "control_characters", "U\\+0000 at position 2"),
    ("ring \x07 bell", "control_characters", "U\\+0007"),
    ("abc\u202edcba", "control_characters", "U\\+202E"),  # right-to-left override
    ("bad \ud800 half", "control_characters", "U\\+D800"),  # lone surrogate
])
def test_text_validation_is_specific(text, reason, match):
    registry = QueryRegistry(RegistryConfig(max_query_chars=100))
    with pytest.raises(QueryRejected, match=match) as info:
        registry.add(spec(text), now=0.0)
    assert info.value.reason == reason
    assert registry.rejected == {reason: 1} and len(registry) == 0


def test_accepted_text_is_stripped_and_keeps_newlines_tabs_and_emoji():
    assert validate_text("  line one\n\tline two 👩‍🍳  ", 100) == "line one\n\tline two 👩‍🍳"
    with pytest.raises(TypeError, match="bytes"):
        validate_text(b"abc", 100)


def test_bad_ids_and_thresholds_are_rejected():
    registry = QueryRegistry(RegistryConfig(max_id_chars=8))
    for bad_id in ("x" * 9, "a\nb"):
        with pytest.raises(QueryRejected, match="query id") as info:
            registry.add(spec(query_id=bad_id), now=0.0)
        assert info.value.reason == "bad_id"
    with pytest.raises(QueryRejected, match="threshold 1.5") as info:
        registry.add(spec(threshold=1.5), now=0.0)
    assert info.value.reason == "bad_threshold"


def test_empty_id_gets_a_fresh_one_and_auto_mode_is_resolved():
    registry = QueryRegistry()
    a = registry.add(spec("Tell me when the door opens", query_id=""), now=1.0)
    b = registry.add(spec("What colour is the car?", query_id=""), now=1.0)
    assert (a.query_id, b.query_id) == ("q1", "q2")
    assert (a.mode, b.mode) == ("match", "now")
    assert a.event_text == "the door opens"
    assert (a.max_responses, b.max_responses) == (0, 1)  # mode defaults
    assert a.spec.stamp == 1.0  # unset stamp = now


def test_assigned_ids_carry_the_prefix_and_skip_ids_a_client_chose():
    registry = QueryRegistry(RegistryConfig(max_queries_per_sec=0), id_prefix="/robot1/decision_node-3fa2c1")
    registry.add(spec(query_id="/robot1/decision_node-3fa2c1-q1"), now=1.0)
    assigned = registry.add(spec(query_id=""), now=1.0)
    assert assigned.query_id == "/robot1/decision_node-3fa2c1-q2"


def test_duplicate_id_replace_or_reject():
    registry = QueryRegistry(RegistryConfig(on_duplicate="replace"))
    first = registry.add(spec("first", query_id="same", mode="match"), now=0.0)
    first.responses = 3
    second = registry.add(spec("second", query_id="same", mode="match"), now=0.0)
    assert registry.get("same") is second and second.responses == 0 and len(registry) == 1
    assert registry.counters["replaced"] == 1
    strict = QueryRegistry(RegistryConfig(on_duplicate="reject"))
    strict.add(spec(query_id="same"), now=0.0)
    with pytest.raises(QueryRejected, match="'same' is already active") as info:
        strict.add(spec(query_id="same"), now=0.0)
    assert info.value.reason == "duplicate_id"


def test_rate_limit_token_bucket_on_the_callers_clock():
    registry = QueryRegistry(RegistryConfig(max_queries_per_sec=2.0))
    registry.add(spec(query_id="a"), now=10.0)
    registry.add(spec(query_id="b"), now=10.0)
    with pytest.raises(QueryRejected, match="max_queries_per_sec 2") as info:
        registry.add(spec(query_id="c"), now=10.1)
    assert info.value.reason == "rate_limited"
    registry.add(spec(query_id="c"), now=10.6)  # 0.5 s refills one token
    registry.add(spec(query_id="d"), now=5.0)  # clock went back: bucket refilled
    unlimited = QueryRegistry(RegistryConfig(max_queries_per_sec=0))
    for i in range(50):
        unlimited.add(spec(query_id=str(i)), now=0.0)
    with pytest.raises(ValueError, match="now nan"):
        unlimited.add(spec(query_id="x"), now=float("nan"))


def test_too_many_queries():
    registry = QueryRegistry(RegistryConfig(max_active_queries=2, max_queries_per_sec=0))
    registry.add(spec(query_id="a"), now=0.0)
    registry.add(spec(query_id="b"), now=0.0)
    registry.add(spec(query_id="b"), now=0.0)  # replacing does not grow the registry
    with pytest.raises(QueryRejected, match="max_active_queries 2") as info:
        registry.add(spec(query_id="c"), now=0.0)
    assert info.value.reason == "too_many_queries"


def test_expiry_by_camera_time_and_response_limits_and_cancel():
    registry = QueryRegistry(RegistryConfig(max_queries_per_sec=0))
    registry.add(spec(query_id="short", mode="match", expiry_sec=5.0, stamp=100.0), now=0.0)
    registry.add(spec(query_id="twice", mode="boundary", max_responses=2), now=100.0)
    registry.add(spec(query_id="now", mode="now"), now=100.0)
    assert registry.expire(104.9) == []
    assert [q.query_id for q in registry.expire(105.0)] == ["short"]
    assert registry.record_response("twice") is False
    assert registry.record_response("twice") is True and registry.get("twice") is None
    assert registry.record_response("now") is True
    assert registry.record_response("missing") is False
    assert len(registry) == 0
    assert registry.counters["expired"] == 1 and registry.counters["completed"] == 2
    registry.add(spec(query_id="c"), now=0.0)
    assert registry.cancel("c") is True
    assert registry.cancel("c") is False and registry.cancel("never") is False
    assert registry.counters["cancelled"] == 1


def test_a_query_says_why_it_left_the_registry():
    registry = QueryRegistry(RegistryConfig(max_queries_per_sec=0))
    expiring = registry.add(spec(query_id="e", mode="match", expiry_sec=1.0, stamp=10.0), now=0.0)
    answered = registry.add(spec(query_id="n", mode="now"), now=10.0)
    canceled = registry.add(spec(query_id="c", mode="boundary"), now=10.0)
    replaced = registry.add(spec(query_id="r", mode="boundary"), now=10.0)
    assert {q.ended for q in (expiring, answered, canceled, replaced)} == {""}
    registry.expire(11.0)
    registry.record_response("n")
    registry.cancel("c")
    replacement = registry.add(spec("edited", query_id="r", mode="boundary"), now=10.0)
    assert (expiring.ended, answered.ended, canceled.ended, replaced.ended, replacement.ended) == \
        ("expired", "completed", "cancelled", "replaced", "")


def test_active_filters_by_camera():
    registry = QueryRegistry(RegistryConfig(max_queries_per_sec=0))
    registry.add(spec(query_id="all", mode="match"), now=0.0)
    registry.add(spec(query_id="front", mode="match", cameras=("front",)), now=0.0)
    assert [q.query_id for q in registry.active("front")] == ["all", "front"]
    assert [q.query_id for q in registry.active("rear")] == ["all"]
    assert len(registry.active()) == 2


@pytest.mark.parametrize("kwargs, match", [
    ({"max_query_chars": 0}, "max_query_chars 0"),
    ({"max_queries_per_sec": -1.0}, "max_queries_per_sec -1.0"),
    ({"on_duplicate": "merge"}, "on_duplicate 'merge'"),
    ({"max_active_queries": True}, "max_active_queries True"),
])
def test_config_errors_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RegistryConfig(**kwargs)


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=60))
def test_property_any_unicode_is_accepted_or_rejected_with_a_reason(text):
    registry = QueryRegistry(RegistryConfig(max_query_chars=40, max_queries_per_sec=0))
    try:
        query = registry.add(spec(text, query_id=""), now=0.0)
    except QueryRejected as error:
        assert error.reason in {"empty_text", "too_long", "control_characters"}
        assert len(registry) == 0
    else:
        assert query.spec.text == text.strip() and query.mode in {"now", "match", "boundary"}
        assert query.event_text
