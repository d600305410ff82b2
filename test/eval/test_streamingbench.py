"""StreamingBench proactive scorer on real questions with made-up answers."""
import copy
import json
from pathlib import Path

import pytest

from dispider_ros.eval import annotations, metrics, streamingbench as sb

PROACTIVE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "annotations" / \
    "streamingbench_questions_proactive.json"


@pytest.fixture(scope="module")
def subset():
    """Real entries 0, 1, 5 and 205 (two questions); ids sb000_q0 .. sb003_q1 by position."""
    if not PROACTIVE.exists():
        pytest.skip(f"{PROACTIVE} is absent on this machine")
    entries = sb.load_questions(PROACTIVE)
    picked = [entries[i] for i in (0, 1, 5, 205)]
    truth = [(q["ground_truth_time_stamp"], q["ground_truth_output"]) for e in picked for q in e["questions"]]
    assert truth == [("00:00:29", "3"), ("00:02:58", "20"), ("00:00:16", "four of hearts"),
                     ("00:00:13", "Red nine"), ("00:00:58", "Red four")]
    return picked


def test_first_responses_rules(subset):
    answers = {
        "sb000_q0": (31.0, "The score is 3"),    # |31-29| = 2: time ok; "3" in it: answer ok
        "sb001_q0": (175.0, "20"),              # |175-178| = 3: both wrong
        "sb002_q0": (16.5, "Four of hearts"),   # time ok; substring is case-sensitive: wrong
        "sb003_q0": (12.0, "Red nine"),         # both ok
    }                                           # sb003_q1 unanswered: both wrong
    out = sb.score_first_responses(subset, answers)
    # time 3/5, answer 2/5
    assert (out["time_correct"], out["answer_correct"]) == (0.6, 0.4)
    assert (out["time_correct_count"], out["answer_correct_count"], out["questions"], out["missing"]) == (3, 2, 5, 1)


def test_benchmark_output_uses_the_last_dialog_turn(subset):
    entries = copy.deepcopy(subset)

    def record(answered, turns):
        history = []
        for t, content in turns:
            history += [{"role": "user", "content": "q", "time": t, "cost": 0.1},
                        {"role": "assistant", "content": content, "time": t, "cost": 0.1}]
        return {"answered": answered, "dialog_history": history}

    q = [question for e in entries for question in e["questions"]]
    q[0]["MyModel"] = record(29, [(21, "no"), (29, "yes"), (29, "3")])    # exact: ok, ok
    q[1]["MyModel"] = record(False, [(t, "no") for t in range(171, 183)])  # polled to 178+4: wrong
    q[2]["MyModel"] = record(14, [(14, "yes"), (14, "I see the four of hearts")])  # |14-16| = 2: ok, ok
    # q[3] has no record: counted as a failure (count.py would leave it out)
    q[4]["MyModel"] = record(60, [(60, "yes"), (60, "Red four")])          # |60-58| = 2: ok, ok
    out = sb.score_benchmark_output(entries)
    assert out["model"] == "MyModel"
    assert (out["time_correct"], out["answer_correct"], out["missing"]) == (0.6, 0.6, 1)
    q[0]["Other"] = record(29, [(29, "3")])
    with pytest.raises(ValueError, match=r"\['MyModel', 'Other'\]"):
        sb.score_benchmark_output(entries)
    assert sb.score_benchmark_output(entries, model="Other")["time_correct"] == 0.2


def test_first_responses_keeps_the_earliest():
    first = sb.first_responses([("a", 5.0, "late"), ("a", 3.0, "early"), ("b", 1.0, "x")])
    assert first == {"a": (3.0, "early"), "b": (1.0, "x")}


def test_same_verdicts_as_our_timing_metric_at_two_seconds(subset):
    # Converted to our schema, each question has one zero-length window at the ground-truth
    # time; the first answer matched with a 2 s tolerance is exactly "time correct".
    answers = {"sb000_q0": (31.0, "3"), "sb001_q0": (175.0, "20"), "sb003_q0": (12.0, "Red nine")}
    ann = annotations.from_streamingbench_file(subset)
    items = [([answers[q.query_id][0]] if q.query_id in answers else [],
              [(w.start, w.end) for w in q.windows]) for q in ann.queries()]
    recall = metrics.timing_scores(items, [2.0])["2"]["recall"]
    assert recall == sb.score_first_responses(subset, answers)["time_correct"] == 0.4


def test_load_questions_rejects_other_files(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"questions": []}))
    with pytest.raises(ValueError, match="not a StreamingBench proactive file"):
        sb.load_questions(path)
