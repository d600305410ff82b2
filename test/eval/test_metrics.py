"""Each metric on hand-made cases whose answers are worked out in the comments."""
import math

import pytest

from dispider_ros.eval import metrics as m


# ----------------------------------------------------------------- matching / timing ----
def test_match_times_each_window_once_and_tolerance():
    windows = [(10, 20), (30, 40)]
    times = [5, 12, 15, 31, 50]
    # tol 0: 12 -> w0, 15 finds w0 taken, 31 -> w1, 5 and 50 lie outside.
    assert m.match_times(times, windows, 0.0) == [None, 0, None, 1, None]
    # tol 5: w0 becomes [5, 25] so 5 (earliest) takes it; 12 and 15 find it taken and
    # [25, 45] does not hold them; 31 -> w1; 50 is outside [25, 45].
    assert m.match_times(times, windows, 5.0) == [0, None, None, 1, None]


def test_match_times_prefers_the_window_ending_first():
    # 5 lies in both; taking (4, 6) leaves (0, 10) for 8, so both windows are matched.
    assert m.match_times([5, 8], [(0, 10), (4, 6)], 0.0) == [1, 0]
    # Input order does not matter: times are handled in time order.
    assert m.match_times([8, 5], [(0, 10), (4, 6)], 0.0) == [0, 1]


def test_match_times_rejects_negative_tolerance():
    with pytest.raises(ValueError, match="tolerance -1"):
        m.match_times([1], [(0, 2)], -1)


def test_timing_scores_counts_precision_recall_latency():
    items = [([12, 15, 31], [(10, 20), (30, 40)]),  # q1: 12 -> w0, 31 -> w1, 15 is extra
             ([3], [])]                                # q2 should be silent, but answered
    out = m.timing_scores(items, [0.0, 2.0])
    at0 = out["0"]
    # tp 2, responses 4, windows 2: P = 2/4, R = 2/2, F1 = 2*.5*1/1.5 = 2/3
    assert (at0["tp"], at0["fp"], at0["fn"]) == (2, 2, 0)
    assert at0["precision"] == 0.5 and at0["recall"] == 1.0
    assert at0["f1"] == pytest.approx(2 / 3)
    # latencies 12-10 = 2 and 31-30 = 1: mean 1.5, p90 = 1 + 0.9*(2-1) = 1.9
    assert at0["latency"]["mean"] == 1.5 and at0["latency"]["p90"] == pytest.approx(1.9)
    assert out["2"]["tp"] == 2 and out["2"]["tolerance"] == 2.0


def test_timing_scores_early_response_needs_tolerance_and_has_negative_latency():
    items = [([9.0], [(10, 20)])]
    assert m.timing_scores(items, [0])["0"]["tp"] == 0          # 9 < 10
    at1 = m.timing_scores(items, [1])["1"]
    assert at1["tp"] == 1 and at1["latency"]["mean"] == -1.0    # 9 - 10


def test_prf_undefined_parts_are_none():
    assert m.prf(0, 0, 3) == {"precision": None, "recall": 0.0, "f1": 0.0}  # a total miss
    assert m.prf(0, 2, 0) == {"precision": 0.0, "recall": None, "f1": 0.0}  # only false alarms
    assert m.prf(0, 0, 0) == {"precision": None, "recall": None, "f1": None}  # nothing due or said
    assert m.prf(0, 2, 2) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert m.prf(1, 3, 2)["f1"] == pytest.approx(0.4)  # the harmonic mean of 1/3 and 1/2


def test_silence_scores():
    items = [([12, 15, 25], [(10, 20)]),  # 25 is outside
             ([], []),                     # silent as it should be
             ([5], [])]                    # should be silent: 5 is outside
    out = m.silence_scores(items)
    # 2 of 4 responses outside; 1 of 2 windowless queries kept silent
    assert out["outside"] == 2 and out["outside_fraction"] == 0.5
    assert out["silent_queries"] == 2 and out["silent_queries_ok"] == 0.5


def test_summary_stats_drops_nan():
    out = m.summary_stats([1, 2, 3, 4, float("nan")])
    # four values: mean 2.5, median 2.5, p90 at position 0.9*3 = 2.7 -> 3 + 0.7 = 3.7
    assert out["count"] == 4 and out["mean"] == 2.5 and out["median"] == 2.5
    assert out["p90"] == pytest.approx(3.7) and (out["min"], out["max"]) == (1.0, 4.0)
    assert m.summary_stats([])["mean"] is None


# ----------------------------------------------------------------------- text ----------
def test_token_f1_squad():
    # "cat sat on mat" vs "cat on mat" after dropping articles/punctuation: 3 shared,
    # P = 3/4, R = 3/3, F1 = 1.5/1.75 = 6/7
    assert m.token_f1("The cat sat on the mat.", "a cat on a mat") == pytest.approx(6 / 7)
    assert m.token_f1("the", "a") == 1.0   # both normalise to nothing
    assert m.token_f1("", "door") == 0.0
    assert m.token_f1("blue", "red") == 0.0


def test_rouge_l():
    # LCS "door is open" = 3: P = 3/5, R = 3/3, F = 1.2/1.6 = 0.75
    assert m.rouge_l("the door is open now", "door is open") == pytest.approx(0.75)
    # reversed order: LCS 1, P = R = 1/3
    assert m.rouge_l("open is door", "door is open") == pytest.approx(1 / 3)
    assert m.rouge_l("", "x") == 0.0


def test_text_scores_contains_is_case_sensitive_substring():
    out = m.text_scores([("Red nine!", "Red nine"), ("black 5", "red 3")])
    assert out["pairs"] == 2 and out["contains"] == 0.5
    assert out["token_f1"] == pytest.approx(0.5)   # 1.0 and 0.0
    assert m.text_scores([])["token_f1"] is None


# ------------------------------------------------------------------- ET-Bench ----------
def test_temporal_iou():
    assert m.temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert m.temporal_iou((3, 3), (3, 3)) == 0.0
    assert m.temporal_iou((0, 1), (2, 3)) == 0.0


def test_parse_windows():
    assert m.parse_windows("The event happens in 12.5 - 20 seconds.") == [(12.5, 20.0)]
    assert m.parse_windows("from 30 to 10") == [(10.0, 30.0)]
    assert m.parse_windows("It starts at 4 s.\nIt ends at 9 s.") == [(4.0, 9.0)]
    assert m.parse_windows("no idea") is None


def test_tvg_f1():
    gts = [(0, 10)] * 4
    # IoUs: 1, 5/15 = 1/3, 2/10 = 0.2, unparsed
    preds = ["0 - 10", "It happens in 5 - 15 seconds", [(0, 2)], "no idea"]
    out = m.tvg_f1(preds, gts)
    # hits at 0.1: 3, 0.3: 2, 0.5: 1, 0.7: 1 (of 4) -> mean (.75+.5+.25+.25)/4 = 0.4375
    assert [out[f"F1@{t}"] for t in ("0.1", "0.3", "0.5", "0.7")] == [0.75, 0.5, 0.25, 0.25]
    assert out["F1"] == pytest.approx(0.4375) and out["failed"] == 1
    assert out["miou"] == pytest.approx((1 + 1 / 3 + 0.2) / 4)


def test_tal_f1():
    gts = [[(0, 10), (20, 30)], [(0, 10)], [(0, 10)]]
    preds = [[(0, 10), (40, 50)],   # IoU [[1, 0], [0, 0]]: R = 1/2, P = 1/2, F1 = .5 at every theta
             "5 - 15",              # IoU 1/3: F1 1 at 0.1 and 0.3; best IoU < 0.5, 0.7 -> 0
             None]                  # unparsed -> 0
    out = m.tal_f1(preds, gts)
    # F1@0.1 = F1@0.3 = 1.5/3 = .5; F1@0.5 = F1@0.7 = .5/3
    assert out["F1@0.1"] == pytest.approx(0.5) and out["F1@0.3"] == pytest.approx(0.5)
    assert out["F1@0.5"] == pytest.approx(1 / 6) and out["F1@0.7"] == pytest.approx(1 / 6)
    assert out["F1"] == pytest.approx(1 / 3) and out["failed"] == 1


def test_parse_dense_captions():
    text = "0 - 10 seconds, a man opens the door. 20 - 30 seconds, he sits down."
    assert m.parse_dense_captions(text) == [((0.0, 10.0), "a man opens the door."),
                                           ((20.0, 30.0), "he sits down.")]
    assert m.parse_dense_captions("nothing timed here") is None


def test_dvc_f1_strict_iou_and_parsed_scale():
    gts = [[(0, 10), (20, 30)], [(0, 10)], [(0, 10)]]
    preds = [
        # IoU p0-g0 = 1, p2-g1 = 8/10 = 0.8, p1 none: P = 2/3, R = 1 at every theta
        [((0, 10), "a"), ((40, 50), "b"), ((21, 29), "c")],
        None,                      # unparsed: scale = 2/3
        [((0, 5), "x")],           # IoU 5/10 = 0.5: counts at 0.1, 0.3; not at 0.5 (strict >)
    ]
    out = m.dvc_f1(preds, gts)
    # theta 0.1/0.3: P = (2/3+1)/2 * 2/3 = 5/9, R = 1 * 2/3 -> F1 = 20/33
    assert out["F1@0.1"] == pytest.approx(20 / 33) and out["F1@0.3"] == pytest.approx(20 / 33)
    # theta 0.5/0.7: P = (2/3+0)/2 * 2/3 = 2/9, R = (1+0)/2 * 2/3 = 1/3 -> F1 = 4/15
    assert out["F1@0.5"] == pytest.approx(4 / 15) and out["F1@0.7"] == pytest.approx(4 / 15)
    assert out["F1"] == pytest.approx((20 / 33 + 4 / 15) / 2) and out["failed"] == 1
    assert m.dvc_f1([None], [[(0, 1)]])["F1"] == 0.0


def test_dvc_sim_pairs_matched_captions():
    same = lambda a, b: 1.0 if a == b else 0.0  # noqa: E731
    gts = [[((0, 10), "open"), ((20, 30), "sit")], [((0, 10), "x")]]
    preds = [[((0, 10), "open"), ((40, 50), "run")], None]
    # video 1: "open" pairs with "open" (1), "run" is unmatched (0) -> 0.5 at every theta;
    # the unparsed video is left out.
    assert m.dvc_sim(preds, gts, same) == pytest.approx(0.5)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="1 predictions for 2"):
        m.tvg_f1(["0 - 1"], [(0, 1), (0, 2)])
    assert math.isclose(m.tvg_f1(["0 - 1"], [(0, 1)])["F1"], 1.0)
