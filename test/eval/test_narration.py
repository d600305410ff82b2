"""Scoring narrated cuts (dispider_ros.eval.narration): recall and precision by tables of cases."""
from types import SimpleNamespace

import numpy as np
import pytest

from dispider_ros import world
from dispider_ros.core.types import ErrorCode, FrameFeature
from dispider_ros.eval import narration as nar

N = nar.Narration
CUTS = [3.0, 6.0, 10.0]


@pytest.mark.parametrize("told, recall, precision, missed, wrong", [
    # every cut narrated on the first sampled frame after it
    ([N("a", 3.5, True), N("b", 6.5, True), N("c", 10.5, True)], 1.0, 1.0, [], []),
    # a cut missed and a narration in the middle of a shot (a pan taken for a cut)
    ([N("a", 3.5, True), N("b", 4.5, True), N("c", 10.5, True)], 2 / 3, 2 / 3, [6.0], [4.5]),
    # a mid-shot narration still narrates its shot's scene (recall), but is no timely one
    ([N("a", 3.5, True), N("b", 8.0, True), N("c", 10.5, True)], 1.0, 2 / 3, [], [8.0]),
    # a narration that did not end OK (pre-empted, dropped) narrates nothing, but was a trigger
    ([N("a", 3.5, True), N("b", 6.5, False), N("c", 10.5, True)], 2 / 3, 1.0, [6.0], []),
    # merged: the 10.5 narration stands for the waiting trigger of cut 6 it replaced
    ([N("a", 3.5, True), N("b", 6.5, False), N("c", 10.5, True, (6.5,))], 1.0, 1.0, [], []),
    # ... but only when the merging narration itself ended OK
    ([N("a", 3.5, True), N("c", 10.5, False, (6.5,))], 1 / 3, 1.0, [6.0, 10.0], []),
    # a late trigger (a cooldown's) still lies in its cut's shot, but is no timely narration
    ([N("a", 3.5, True), N("b", 7.5, True), N("c", 10.5, True)], 1.0, 2 / 3, [], [7.5]),
    # a trigger before any cut, and nothing at all
    ([N("a", 1.0, True)], 0.0, 0.0, CUTS, [1.0]),
    ([], 0.0, 0.0, CUTS, []),
])
def test_recall_and_precision_of_narrated_cuts(told, recall, precision, missed, wrong):
    out = nar.score(CUTS, told, min_clip_sec=1.0, tolerance_sec=1.0, end=20.0)
    assert out["recall"] == pytest.approx(recall) and out["precision"] == pytest.approx(precision)
    assert out["missed_cuts"] == missed and out["wrong_stamps"] == wrong
    assert out["scored_cuts"] == 3 and out["narrations"] == len(told)


def test_only_cuts_a_minimum_clip_apart_and_before_the_end_are_scored():
    # 0.5 s after the start; a 0.4 s shot (3.0) and the cut 0.4 s after it; 0.4 s before the end
    cuts = [0.5, 3.0, 3.4, 6.0, 9.0, 19.6]
    out = nar.score(cuts, [N("a", 3.5, True), N("b", 6.5, True)], min_clip_sec=1.0, tolerance_sec=1.0,
                    end=20.0)
    assert (out["cuts"], out["scored_cuts"], out["narrated_cuts"], out["recall"]) == (6, 2, 1, 0.5)
    assert out["missed_cuts"] == [9.0]
    # the 3.5 narration lies 0.1 s after the 3.4 cut: timely, so precise
    assert out["precision"] == 1.0 and out["min_gap_sec"] == 3.0
    # a stream that starts later: cuts are scored against its own start
    out = nar.score([103.0, 106.0], [N("a", 103.5, True)], 1.0, 1.0, start=100.0, end=120.0)
    assert (out["scored_cuts"], out["recall"], out["missed_cuts"]) == (2, 0.5, [106.0])


def test_named_rate_counts_ok_narrations_that_were_checked():
    told = [N("a", 3.5, True, names_scene=True), N("b", 6.5, True, names_scene=False),
            N("c", 10.5, False, names_scene=False), N("d", 10.6, True)]
    out = nar.score(CUTS, told, 1.0, 1.0, end=20.0)
    assert (out["named_rate"], out["named_checked"]) == (0.5, 2)
    assert nar.score(CUTS, [], 1.0, 1.0)["named_rate"] is None


@pytest.mark.parametrize("kwargs, match", [
    ({"min_clip_sec": -1.0}, "min_clip_sec -1.0"), ({"tolerance_sec": 0.0}, "tolerance_sec 0.0"),
    ({"cuts": [5.0, 3.0]}, "ascending")])
def test_bad_arguments_are_named(kwargs, match):
    args = {"cuts": CUTS, "narrated": [], "min_clip_sec": 1.0, "tolerance_sec": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        nar.score(**args)


def _trigger(n, stamp):
    return SimpleNamespace(trigger_id=f"t{n}", stamp=stamp)


def _final(n, code=ErrorCode.OK, merged=()):
    extras = {"merged_trigger_ids": list(merged)} if merged else {}
    return SimpleNamespace(trigger_id=f"t{n}", error_code=code, extras=extras)


def test_narrations_from_recorded_triggers_and_finals():
    triggers = [_trigger(1, 3.5), _trigger(2, 6.5), _trigger(3, 10.5)]
    finals = [_final(1), _final(2, ErrorCode.TRIGGER_SUPERSEDED), _final(3, merged=["t2"])]
    told = nar.narrations(triggers, finals, names={"t1": True})
    assert told == [N("t1", 3.5, True, (), True), N("t2", 6.5, False, (), None),
                    N("t3", 10.5, True, (6.5,), None)]
    assert nar.score(CUTS, told, 1.0, 1.0, end=20.0)["recall"] == 1.0
    with pytest.raises(ValueError, match="without a final"):
        nar.narrations(triggers, finals[:2])
    with pytest.raises(ValueError, match="more than one final"):
        nar.narrations(triggers, finals + [_final(1)])
    with pytest.raises(ValueError, match="no recorded trigger"):
        nar.narrations(triggers[:2], finals)


def test_cut_times_of_planned_shots_and_pooled_figures():
    shots = world.plan_shots(0, 60.0)
    cuts = nar.cut_times(shots)
    assert cuts == [s.start for s in shots[1:]] and all(2.5 <= b - a <= 6.0 for a, b in zip(cuts, cuts[1:]))
    one = nar.score(CUTS, [N("a", 3.5, True)], 1.0, 1.0, end=20.0)
    two = nar.score(CUTS, [N("a", 3.5, True), N("b", 6.5, True), N("c", 9.0, True)], 1.0, 1.0, end=20.0)
    pooled = nar.pool([one, two])
    assert (pooled["scored_cuts"], pooled["narrated_cuts"], pooled["narrations"]) == (6, 3, 4)
    assert pooled["recall"] == 0.5 and pooled["precision"] == 0.75 and pooled["streams"] == 2


@pytest.mark.parametrize("boundaries, cooldown, fired", [
    ([1.0, 3.0, 5.5, 7.0, 12.0], 5.0, [1.0, 7.0, 12.0]),  # the pre-fix rule dropped 3.0 and 5.5
    ([1.0, 3.0, 5.5], 0.0, [1.0, 3.0, 5.5]),
    ([], 5.0, []),
])
def test_the_pre_fix_rule_drops_changes_inside_the_cooldown(boundaries, cooldown, fired):
    assert nar.dropping_cooldown(boundaries, cooldown) == fired


def test_decision_replay_runs_the_real_decision_on_recorded_features():
    cuts = {1.0, 2.0, 4.0, 4.5, 5.0}
    features = [FrameFeature("cam", k * 0.5, k, 0, k * 0.5 in cuts, 0.5, 0.0, np.ones(4, np.float32))
                for k in range(20)]
    assert nar.decision_replay(features) == [1.0, 2.0, 4.0, 5.0]  # 4.5 merged into 5.0
    assert nar.decision_replay(features, boundary_cooldown_sec=5.0) == [1.0, 6.0]
    assert nar.decision_replay(features, boundary_cooldown_sec=0.0) == sorted(cuts)
