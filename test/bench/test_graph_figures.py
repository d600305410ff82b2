"""bench/graph_figures.py on a synthetic record: no processes, no timing."""
import pytest

from bench.graph_figures import NARRATION_ID, rate_at, span, summarize_arm, windows

PLAN = {"wall0": 1000.0, "warmup": 2.0, "idle": 6.0, "busy": 15.0, "tail": 1.5,
        "sample_fps": 2.0, "camera_fps": 10.0, "cuts": [1010.0, 1011.5, 1013.0]}


def _answer(query_id, first_wall, tokens, seconds):
    """Chunks of an answer: its first token, then `tokens` more over `seconds`, evenly."""
    steps = 4
    return {"query_id": query_id, "walls": [first_wall + seconds * i / steps for i in range(steps + 1)],
            "tokens": [1 + tokens * i // steps for i in range(steps + 1)]}


def _record():
    features = [1000.0 + 0.5 * k for k in range(49)]  # every grid point up to the camera's end
    features.remove(1012.0)  # two sampled frames missing while busy
    features.remove(1012.5)
    triggers = [{"trigger_id": "t0", "query_id": NARRATION_ID, "policy": "boundary",
                 "stamp": 1010.0, "wall": 1010.1},
                {"trigger_id": "t1", "query_id": NARRATION_ID, "policy": "boundary",
                 "stamp": 1011.5, "wall": 1011.8},
                {"trigger_id": "n0", "query_id": "busy-0", "policy": "now", "stamp": 1009.0,
                 "wall": 1009.05}]  # the cut at 1013.0 never triggers
    chunks = {"t0": {"query_id": NARRATION_ID, "walls": [1010.5], "tokens": [1]},  # preempted
              "n0": _answer("busy-0", 1012.0, 100, 2.0),  # 50 tokens/s, prompt 4000
              "n1": _answer("busy-1", 1015.0, 100, 1.0),  # 100 tokens/s, prompt 1000
              # 40 tokens/s across the camera's end (1024.5): its chunks at 1023.5 and 1024.0
              # count as busy (20 tokens in 0.5 s), the later ones not
              "n2": _answer("busy-2", 1023.5, 80, 2.0),
              "a0": _answer("alone-0", 1030.0, 120, 2.0)}  # 60 tokens/s, prompt 4200
    finals = [{"trigger_id": t, "query_id": q, "prompt_tokens": p, "wall": w, "error_code": 0}
              for t, q, p, w in (("n0", "busy-0", 4000, 1014.0), ("n1", "busy-1", 1000, 1016.0),
                                 ("n2", "busy-2", 1500, 1025.5), ("a0", "alone-0", 4200, 1032.0))]
    return {"features": features, "triggers": triggers, "chunks": chunks, "finals": finals,
            "asks": [["busy-0", 1009.0]], "end_wall": 1030.0}


def test_windows_are_half_a_camera_period_off_the_frame_stamps():
    win = windows(PLAN)
    assert win["idle"] == pytest.approx((1002.05, 1008.05))
    assert win["busy"] == pytest.approx((1008.05, 1023.05))
    assert win["camera_end"] == pytest.approx(1024.5)


def test_rates_latencies_and_decode_figures():
    out = summarize_arm(_record(), PLAN)
    assert (out["sampled_idle"], out["sampled_busy"]) == (12, 28)
    assert out["ratio"] == pytest.approx(28 / 30, abs=1e-3)
    # narration triggers only: 0.1 and 0.3 s after their evidence, in 0.5 s periods
    assert out["narration_triggers_busy"] == 2
    assert out["trigger_p95_periods"] == pytest.approx((0.1 + 0.95 * 0.2) / 0.5, abs=1e-3)
    assert out["first_token_sec_p95"] == pytest.approx(0.5)
    assert out["narration_answered_busy"] == 1
    # cuts: 0.1 s and 0.3 s to their triggers; the third never seen counts to the run end (17 s)
    assert (out["cuts_busy"], out["cuts_detected"]) == (3, 2)
    assert out["cut_to_trigger_p95_periods"] == pytest.approx(
        (0.3 + 0.9 * (17.0 - 0.3)) / 0.5, abs=1e-3)
    # the busy answer with a prompt near the alone one's is compared; the short-prompt one not
    assert out["decode_context"] == "matched"
    assert out["decode_answers_with_perception"] == 1
    assert out["decode_tps_with_perception"] == pytest.approx(50.0)
    assert out["decode_tps_alone"] == pytest.approx(60.0)
    assert out["decode_answers_busy_all"] == 3
    assert out["decode_tps_busy_all"] == pytest.approx((100 + 100 + 20) / 3.5, abs=0.1)


def test_no_matching_context_reads_a_line_or_takes_every_busy_answer():
    record = _record()
    record["finals"][0]["prompt_tokens"] = 2000  # no busy prompt near the alone one's now
    out = summarize_arm(record, PLAN)
    # seconds per token 0.02 @ 2000, 0.01 @ 1000, 0.025 @ 1500 (weights 100, 100, 20 tokens):
    # the line has its weighted mean 3.5/220 at 1500 and slope 1e-5, read at 4200
    assert out["decode_context"] == "fit"
    assert out["decode_tps_with_perception"] == pytest.approx(1 / (3.5 / 220 + 2700e-5), abs=0.1)
    record["chunks"].pop("n2")
    out = summarize_arm(record, PLAN)
    assert out["decode_context"] == "not matched"  # two answers: too few for a line
    assert out["decode_answers_with_perception"] == 2
    assert out["decode_tps_with_perception"] == pytest.approx(200 / 3, abs=0.1)


def test_rate_read_off_a_line_of_seconds_per_token_against_prompt_tokens():
    # seconds per token = 0.01 + 2e-6 * prompt tokens, exactly
    answers = [dict(span(_answer("busy", 0.0, 100, 100 * (0.01 + 2e-6 * p))), prompt_tokens=p)
               for p in (1000, 2000, 3000)]
    assert rate_at(answers, 4200) == pytest.approx(1 / (0.01 + 2e-6 * 4200))
    assert rate_at(answers[:2], 4200) is None  # too few
    assert rate_at(answers, 20000) is None  # spread under 20 % of the size read at


def test_a_question_counts_as_answered_once_and_not_while_preempted():
    """The asker keeps BUSY_OUTSTANDING questions unanswered: a revision's final (or a
    pre-empted one before it) must not make it ask more (it once asked 537 in a quick run)."""
    from bench.graph_figures import Record
    from dispider_ros.core.types import ErrorCode

    record = Record()
    record.final(trigger_id="t1", query_id="busy-0", error_code=int(ErrorCode.PREEMPTED))
    assert record.answered_of("busy-") == 0  # its revision is still to come
    record.final(trigger_id="t2", query_id="busy-0", error_code=0)  # the revision
    record.final(trigger_id="t3", query_id="busy-1", error_code=0)
    record.final(trigger_id="t4", query_id="busy-1", error_code=0)  # busy-1's revision
    record.final(trigger_id="t5", query_id="busy-2", error_code=int(ErrorCode.QUERY_REJECTED))
    assert record.answered_of("busy-") == 3 and record.finals_of("busy-") == 5
