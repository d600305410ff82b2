"""Clock jumps at the core: a bag loop (camera time back), a ROS clock going back.

What must hold (the node-level counterpart is test_graph_faults.py):
- sampler: a jump back beyond max_backward_jump_sec restarts that camera and says so;
- decision: policy state of the camera resets, and query timers (expiry) move back with the
  camera time, so a query neither lives a whole loop longer nor expires at once;
- query rate limit: a clock that goes back refills the bucket, with a log line.
"""
import logging

import numpy as np

from dispider_ros.core.decision import DecisionConfig, DecisionCore
from dispider_ros.core.queries import QueryRegistry, QueryRejected, RegistryConfig
from dispider_ros.core.sampler import FrameSampler, SamplerConfig
from dispider_ros.core.types import FrameFeature, QuerySpec

EMBEDDING = np.ones(4, np.float32) / 2.0


def feature(stamp, camera="cam", boundary=False):
    return FrameFeature(camera, stamp, 0, 0, boundary, 0.9, 0.0, EMBEDDING)


def test_sampler_restarts_a_camera_on_a_loop_and_says_so(caplog):
    sampler = FrameSampler(SamplerConfig(sample_fps=2.0, max_backward_jump_sec=1.0))
    image = np.zeros((2, 2, 3), np.uint8)
    for i in range(10):
        sampler.offer("cam", 100.0 + 0.5 * i, image)
    with caplog.at_level(logging.WARNING):
        frame = sampler.offer("cam", 0.0, image)  # the bag starts over
    assert frame is not None and sampler.stats("cam").resets == 1
    assert "time jumped back" in caplog.text


def test_expiry_follows_camera_time_across_a_loop(caplog):
    core = DecisionCore(DecisionConfig(cooldown_sec=0.0))
    core.on_feature(feature(100.0))
    core.add_query(QuerySpec("narrate", "narrate it", mode="boundary", expiry_sec=10.0,
                             stamp=100.0), 100.0)
    core.on_feature(feature(104.0))  # 4 s of the query's 10 s used
    with caplog.at_level(logging.WARNING):
        core.on_feature(feature(1.0))  # loop: camera time 104 -> 1
    assert "went back" in caplog.text and "query timer" in caplog.text
    assert core.stats()["camera_resets"] == 1
    assert [q.query_id for q in core.active_queries()] == ["narrate"]
    core.on_feature(feature(6.5))  # 4 + 5.5 = 9.5 s: still active
    assert [q.query_id for q in core.active_queries()] == ["narrate"]
    core.on_feature(feature(7.0))  # 10 s: expired, not a whole loop (~100 s) later
    assert core.active_queries() == []


def test_synchronised_cameras_looping_move_a_query_timer_once():
    core = DecisionCore(DecisionConfig(cooldown_sec=0.0))
    for camera in ("a", "b"):
        core.on_feature(feature(100.0, camera))
    core.add_query(QuerySpec("q", "narrate it", mode="boundary", expiry_sec=10.0, stamp=100.0), 100.0)
    for camera in ("a", "b"):
        core.on_feature(feature(104.0, camera))
    for camera in ("a", "b"):
        core.on_feature(feature(0.0, camera))  # both cameras of one bag start over
    core.on_feature(feature(5.5, "a"))  # 4 + 5.5 s
    assert [q.query_id for q in core.active_queries()] == ["q"]
    core.on_feature(feature(6.0, "a"))  # 10 s
    assert core.active_queries() == []


def test_boundary_cooldown_from_the_old_timeline_does_not_block_the_new_one():
    core = DecisionCore(DecisionConfig(boundary_cooldown_sec=30.0))
    core.add_query(QuerySpec("b", "narrate", mode="boundary"), 0.0)
    assert core.on_feature(feature(100.0, boundary=True))
    assert not core.on_feature(feature(110.0, boundary=True))  # cooling down (kept for later)
    assert core.on_feature(feature(2.0, boundary=True))  # loop: cooldown forgotten


def test_rate_limit_bucket_refills_when_the_clock_goes_back(caplog):
    registry = QueryRegistry(RegistryConfig(max_queries_per_sec=1.0))
    registry.add(QuerySpec("", "first"), now=1000.0)
    try:
        registry.add(QuerySpec("", "second"), now=1000.0)
        raise AssertionError("the second query in the same instant should be rate limited")
    except QueryRejected as error:
        assert error.reason == "rate_limited"
    with caplog.at_level(logging.WARNING):
        registry.add(QuerySpec("", "after the jump"), now=5.0)  # /clock went back
    assert "went back" in caplog.text
