"""Policies: now/boundary/match/activation firing rules."""
import math

import numpy as np
import pytest

from dispider_ros.core.policies import (ActivationPolicy, BoundaryPolicy, MatchPolicy, NowPolicy,
                                        PolicyConfig, sigmoid)
from dispider_ros.core.queries import ActiveQuery
from dispider_ros.core.types import FrameFeature, QuerySpec

D = 8
E0 = np.eye(D, dtype=np.float32)[0]


def query(mode, embedding=None, threshold=None):
    q = ActiveQuery(QuerySpec(query_id="q", text="t", mode=mode, threshold=threshold), 0, "t")
    q.text_embedding = embedding
    return q


def feature(stamp, embedding=E0, boundary=False, camera="cam"):
    return FrameFeature(camera_id=camera, stamp=stamp, frame_index=int(stamp * 10), clip_index=0,
                        clip_boundary=boundary, clip_similarity=0.5 if boundary else 0.99,
                        clip_start=0.0, embedding=embedding)


def with_cos(cos):
    """A unit vector whose cosine with E0 is cos."""
    v = np.zeros(D, np.float32)
    v[0], v[1] = cos, math.sqrt(max(0.0, 1.0 - cos * cos))
    return v


def test_now_fires_once_per_camera():
    policy, q = NowPolicy(), query("now")
    assert policy.observe(q, feature(1.0)) == 1.0
    assert policy.observe(q, feature(1.5)) is None
    assert policy.observe(q, feature(1.5, camera="other")) == 1.0


def boundary_fires(config, timeline):
    policy, q = BoundaryPolicy(config), query("boundary")
    return [t for t, b in timeline if policy.observe(q, feature(t, boundary=b)) is not None]


@pytest.mark.parametrize("timeline, fired", [
    # no change, no narration
    ([(0, False), (1, False), (2, False)], []),
    # a change inside the cooldown is not lost: it fires on the first frame after the cooldown
    ([(0, False), (1, True), (2, False), (2.5, True), (2.9, False), (3.0, False), (4, False)], [1, 3.0]),
    # two changes inside one cooldown: one trigger for both (merged), on the frame it ends
    ([(1, True), (1.5, True), (2.5, True), (2.8, False), (3.2, False), (6, False)], [1, 3.2]),
    # a change right when the cooldown ends fires on its own frame
    ([(1, True), (3.0, True), (5.5, True)], [1, 3.0, 5.5]),
])
def test_boundary_loses_no_change_inside_its_cooldown(timeline, fired):
    assert boundary_fires(PolicyConfig(cooldown_sec=100.0, boundary_cooldown_sec=2.0), timeline) == fired


def test_boundary_uses_its_own_cooldown_not_cooldown_sec():
    timeline = [(t, True) for t in (1.0, 1.5, 2.0)]
    assert boundary_fires(PolicyConfig(cooldown_sec=100.0, boundary_cooldown_sec=0.0), timeline) == [1.0, 1.5, 2.0]


def test_boundaries_a_minimum_clip_apart_each_fire_on_their_own_frame():
    """The default cooldown is the shipped minimum clip length (min_clip_frames 2 at 2 fps):
    sampled stamps a clip apart (6.1 - 5.1 is a hair under 1.0 in floating point) all fire."""
    assert PolicyConfig().boundary_cooldown_sec == 1.0
    stamps = [5.1, 6.1, 7.1, 9.3, 10.3]
    timeline = sorted([(t, True) for t in stamps] + [(t + 0.5, False) for t in stamps])
    assert boundary_fires(PolicyConfig(), timeline) == stamps


def test_a_boundary_storm_fires_at_most_once_per_cooldown_and_loses_nothing():
    timeline = [(k * 0.25, True) for k in range(400)]  # a "scene change" every frame, 100 s
    fired = boundary_fires(PolicyConfig(boundary_cooldown_sec=1.0), timeline)
    assert fired == [float(k) for k in range(100)]  # bounded: one a second
    # none lost: every change is followed within a cooldown by a trigger standing for it
    assert all(any(0 <= f - t <= 1.0 for f in fired) for t, _ in timeline[:-3])


def scores_to_fires(policy, q, cos_values, dt=0.5):
    fired = []
    for i, cos in enumerate(cos_values):
        if policy.observe(q, feature(i * dt, with_cos(cos))) is not None:
            fired.append(i)
    return fired


def test_match_silent_when_the_query_does_not_match():
    policy = MatchPolicy(PolicyConfig(smoothing=0.0, cooldown_sec=0.0), calibration=(10.0, -5.0))
    q = query("match", E0)
    assert scores_to_fires(policy, q, [0.0, 0.1, 0.3, 0.45, 0.2] * 10) == []
    assert q.state["cam"]["ema"] < 0.5


def test_match_hysteresis_needs_a_drop_below_threshold_minus_hysteresis():
    # sigmoid(10 cos - 5): cos 0.6 -> 0.73, cos 0.45 -> 0.38 (above 0.5 - 0.2), cos 0.2 -> 0.05
    policy = MatchPolicy(PolicyConfig(trigger_threshold=0.5, hysteresis=0.2, smoothing=0.0,
                                      cooldown_sec=0.0), calibration=(10.0, -5.0))
    q = query("match", E0)
    fires = scores_to_fires(policy, q, [0.6, 0.6, 0.45, 0.6, 0.45, 0.6, 0.2, 0.6, 0.6])
    assert fires == [0, 7]


def test_match_cooldown_in_camera_time():
    policy = MatchPolicy(PolicyConfig(hysteresis=0.0, smoothing=0.0, cooldown_sec=3.0),
                         calibration=(10.0, -5.0))
    q = query("match", E0)
    # re-armed after every dip, but a new trigger waits 3 s (6 frames at 0.5 s)
    fires = scores_to_fires(policy, q, [1.0, 0.0] * 10)
    assert fires == [0, 6, 12, 18]


def test_match_smoothing_delays_a_single_spike():
    q = query("match", E0)
    smooth = MatchPolicy(PolicyConfig(smoothing=0.8, cooldown_sec=0.0), calibration=(10.0, -5.0))
    assert scores_to_fires(smooth, q, [0.0, 0.0, 1.0, 0.0, 0.0]) == []
    q2 = query("match", E0)
    assert scores_to_fires(smooth, q2, [0.0, 1.0, 1.0, 1.0, 1.0]) == [4]
    q3 = query("match", E0, threshold=0.9)  # per-query threshold
    raw = MatchPolicy(PolicyConfig(smoothing=0.0, cooldown_sec=0.0), calibration=(10.0, -5.0))
    assert scores_to_fires(raw, q3, [0.6, 0.7, 1.0]) == [2]


def test_match_dimension_mismatch_is_a_clear_error():
    policy = MatchPolicy()
    with pytest.raises(ValueError, match=r"text embedding \(4,\) does not match frame embedding \(8,\)"):
        policy.observe(query("match", np.ones(4, np.float32) / 2), feature(0.0))


class StubHead:
    """Scores each frame by its first coordinate (a stand-in for ActivationHead)."""

    def score(self, text, frame):
        assert text.shape == frame.shape == (1, D)
        return np.clip(frame[:, 0], 0, 1)


def test_activation_policy_uses_the_head_and_the_same_gate():
    policy = ActivationPolicy(StubHead(), PolicyConfig(smoothing=0.0, cooldown_sec=0.0))
    q = query("activation", E0)
    assert scores_to_fires(policy, q, [0.1, 0.9, 0.8, 0.1, 0.7]) == [1, 4]


@pytest.mark.parametrize("kwargs, match", [
    ({"trigger_threshold": 0.0}, "trigger_threshold 0.0"),
    ({"hysteresis": 1.0}, "hysteresis 1.0"),
    ({"smoothing": -0.1}, "smoothing -0.1"),
    ({"cooldown_sec": math.inf}, "cooldown_sec inf"),
    ({"boundary_cooldown_sec": -1.0}, "boundary_cooldown_sec -1.0"),
])
def test_policy_config_errors_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PolicyConfig(**kwargs)
    with pytest.raises(ValueError, match="calibration"):
        MatchPolicy(calibration=(0.0, 1.0))


def test_sigmoid_is_overflow_safe():
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0 and sigmoid(0.0) == 0.5
