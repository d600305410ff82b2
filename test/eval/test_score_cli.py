"""`score` CLI: one JSON object on stdout for each format, on the real files where they exist."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dispider_ros.eval.score_cli import PredictionRecord, load_predictions, score_main

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "annotations"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent on this machine")
    return path


def _run(capsys, *argv):
    code = score_main(list(argv))
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else None), out.err


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_ovo_subprocess_prints_the_official_total():
    proc = subprocess.run(
        [sys.executable, "-m", "dispider_ros.eval.score_cli", "--format", "ovo",
         "--annotations", str(_need(DATA / "ovo_bench_new.json")),
         "--results", str(_need(DATA / "ovo_results_Gemini"))],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert round(out["total"], 2) == 63.00
    tasks = {"EPM", "ASI", "HLD", "STU", "OJR", "ATR", "ACR", "OCR", "FPD", "REC", "SSR", "CRR"}
    assert tasks <= set(out) and round(out["REC"], 2) == 35.53


def test_streamingbench_with_our_predictions(capsys, tmp_path):
    questions = _need(DATA / "streamingbench_questions_proactive.json")
    preds = _jsonl(tmp_path / "p.jsonl", [
        # entry 0: gt 00:00:29 "3" -> time ok (|30-29| <= 2), answer ok
        {"type": "response", "query_id": "sb000_q0", "stamp": 30.0, "text": "USA has 3", "final": True},
        {"type": "response", "query_id": "sb000_q0", "stamp": 45.0, "text": "later", "final": True},
        # entry 1: gt 00:02:58 = 178 "20" -> a partial chunk is not an answer; final at 181: wrong time
        {"type": "response", "query_id": "sb001_q0", "stamp": 178.0, "text": "2", "final": False},
        {"type": "response", "query_id": "sb001_q0", "stamp": 181.0, "text": "20", "final": True},
        # entry 205 q1: gt 00:00:58 "Red four" -> time ok, text lacks it
        {"type": "response", "query_id": "sb205_q1", "stamp": 57.0, "text": "red four", "final": True},
        {"type": "trigger", "query_id": "sb205_q1", "stamp": 57.0},
    ])
    code, out, _ = _run(capsys, "--format", "streamingbench", "--annotations", str(questions),
                        "--results", str(preds))
    assert code == 0
    # time correct 2 of 250 questions, answer correct 1; 247 questions have no answer
    assert (out["time_correct_count"], out["answer_correct_count"], out["questions"]) == (2, 1, 250)
    assert out["time_correct"] == 2 / 250 and out["answer_correct"] == 1 / 250
    assert out["missing"] == 247


def test_streamingbench_with_benchmark_output(capsys, tmp_path):
    entries = json.loads(_need(DATA / "streamingbench_questions_proactive.json").read_text())
    output = copy.deepcopy(entries)
    # entry 0 (gt 29, "3") answered at 28 with "3"; entry 5 (gt 16) last turn at 20: too late
    output[0]["questions"][0]["M"] = {"answered": 28, "dialog_history": [
        {"role": "assistant", "content": "yes", "time": 28, "cost": 0.1},
        {"role": "assistant", "content": "3", "time": 28, "cost": 0.1}]}
    output[5]["questions"][0]["M"] = {"answered": False, "dialog_history": [
        {"role": "assistant", "content": "no", "time": 20, "cost": 0.1}]}
    path = tmp_path / "proactive_output_M.json"
    path.write_text(json.dumps(output))
    code, out, _ = _run(capsys, "--format", "streamingbench", "--annotations",
                        str(DATA / "streamingbench_questions_proactive.json"), "--results", str(path))
    assert code == 0
    assert (out["model"], out["time_correct_count"], out["answer_correct_count"], out["missing"]) == ("M", 1, 1, 248)


def _dispider_case(tmp_path):
    (tmp_path / "ann.yaml").write_text(
        "recordings:\n"
        "  - recording_id: r1\n"
        "    queries:\n"
        "      - {query_id: door, time: 5, text: Tell me when the door opens., camera: front,\n"
        "         windows: [{start: 10, end: 12, text: The door is open}, {start: 30, end: 35}]}\n"
        "      - {query_id: quiet, time: 0, text: Only speak about fire., camera: back, mode: match}\n")
    _jsonl(tmp_path / "pred.jsonl", [
        {"type": "run", "note": "ignored record type"},
        {"type": "query", "query_id": "door", "stamp": 5, "camera_id": "front", "text": "Tell me..."},
        {"type": "query", "query_id": "quiet", "stamp": 0, "camera_id": "", "text": "Only..."},
        {"type": "trigger", "query_id": "door", "trigger_id": "t1", "stamp": 10.5, "camera_id": "front"},
        {"type": "response", "query_id": "door", "trigger_id": "t1", "stamp": 10.5, "text": "the door",
         "final": False, "ttft_sec": 0.4},
        {"type": "response", "query_id": "door", "trigger_id": "t1", "response_id": "r1", "stamp": 10.5,
         "camera_id": "front", "text": "the door is open now", "final": True, "ttft_sec": 0.4, "emit_stamp": 11.0},
        {"type": "trigger", "query_id": "door", "trigger_id": "t2", "stamp": 20, "camera_id": "front"},
        {"type": "response", "query_id": "door", "trigger_id": "t2", "stamp": 20, "text": "door", "final": True,
         "ttft_sec": 0.6},
        {"type": "response", "query_id": "quiet", "stamp": 7, "text": "x", "final": True, "ttft_sec": 0.5},
        {"type": "response", "query_id": "door", "stamp": 31, "text": "", "final": True, "error": "oom"},
        {"type": "response", "query_id": "elsewhere", "stamp": 1, "text": "?", "final": True},
    ])
    return tmp_path / "ann.yaml", tmp_path / "pred.jsonl"


def test_dispider_metrics_on_a_hand_made_run(capsys, tmp_path):
    annotations, preds = _dispider_case(tmp_path)
    code, out, _ = _run(capsys, "--format", "dispider", "--annotations", str(annotations),
                        "--results", str(preds), "--tolerances", "0,5")
    assert code == 0 and out["queries"] == 2 and out["windows"] == 2
    # final error-free responses, scored when they came out: door emitted at 11.0 (evidence
    # 10.5; in [10, 12]) and 20 (no emit_stamp: its evidence stamp; in no window), quiet 7.
    # tp 1 of 3 responses and 2 windows: P 1/3, R 1/2, F1 = (1/3)/(5/6) = 0.4, latency 11 - 10
    # (at 5 s, 20 still misses: [5, 17] is taken and [25, 40] does not hold it)
    for tol in ("0", "5"):
        r = out["timing"]["responses"][tol]
        assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 1)
        assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == 0.5 and r["f1"] == pytest.approx(0.4)
        assert r["latency"]["mean"] == 1.0
    # triggers 10.5 and 20 for door only: P 1/2, R 1/2
    t = out["timing"]["triggers"]["0"]
    assert (t["precision"], t["recall"], t["f1"]) == (0.5, 0.5, 0.5)
    # outside every window: 20 and 7 of 3; the one windowless query was not kept silent
    assert out["silence"]["outside_fraction"] == pytest.approx(2 / 3)
    assert out["silence"]["silent_queries_ok"] == 0.0
    assert out["ttft"]["count"] == 3 and out["ttft"]["mean"] == pytest.approx(0.5)
    assert out["response_delay"] == {"count": 1, "mean": 0.5, "median": 0.5, "p90": 0.5, "min": 0.5, "max": 0.5}
    # text: "the door is open now" vs "The door is open": token F1 6/7 (the dropped),
    # ROUGE-L 2*(4/5)/(9/5) = 8/9, not a case-sensitive substring
    text = out["text"]
    assert (text["pairs"], text["references"]) == (1, 1)
    assert text["token_f1"] == pytest.approx(6 / 7) and text["rouge_l"] == pytest.approx(8 / 9)
    assert text["contains"] == 0.0
    assert out["by_camera"]["front"]["0"]["precision"] == 0.5
    assert out["by_camera"]["back"]["0"]["recall"] is None       # no windows there
    # by the mode the system used: "Tell me when the door opens." (auto) is a match query
    assert set(out["by_mode"]) == {"match"} and out["by_mode"]["match"]["0"]["tp"] == 1
    assert out["records"] == {"query": 2, "trigger": 2, "response_final": 3, "response_partial": 1,
                              "errors": 1, "unknown_query": 1, "queries_not_asked": 0}


def test_answers_are_scored_when_they_came_out(capsys, tmp_path):
    """Evidence before the window, answer out inside it: a hit at 0 s tolerance (the time
    the timeline draws); the trigger, scored at its evidence, is early."""
    (tmp_path / "ann.yaml").write_text(
        "recordings:\n  - recording_id: r\n    queries:\n"
        "      - {query_id: now, time: 1.2, text: 'What is here?', mode: now,"
        " windows: [{start: 1.2, end: 2.2}]}\n"
        "      - {query_id: miss, time: 0, text: Tell me when the door opens.,"
        " windows: [{start: 3, end: 4}]}\n")
    preds = _jsonl(tmp_path / "p.jsonl", [
        {"type": "trigger", "query_id": "now", "stamp": 1.001},
        {"type": "response", "query_id": "now", "stamp": 1.001, "emit_stamp": 1.34, "text": "a"}])
    code, out, err = _run(capsys, "--format", "dispider", "--annotations", str(tmp_path / "ann.yaml"),
                          "--results", str(preds), "--tolerances", "0")
    assert code == 0, err
    answers, triggers = out["timing"]["responses"]["0"], out["timing"]["triggers"]["0"]
    assert (answers["tp"], answers["fp"], answers["fn"]) == (1, 0, 1)
    assert answers["latency"]["mean"] == pytest.approx(0.14)
    assert (triggers["tp"], triggers["fp"]) == (0, 1)
    assert out["by_mode"]["match"]["0"]["f1"] == 0.0  # a total miss scores 0, not "undefined"
    assert out["by_mode"]["now"]["0"]["f1"] == 1.0


def test_bad_inputs_exit_2_with_a_message(capsys, tmp_path):
    annotations, preds = _dispider_case(tmp_path)
    code, _, err = _run(capsys, "--format", "dispider", "--annotations", str(annotations),
                        "--results", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "missing.jsonl does not exist" in err
    preds.write_text('{"type": "response", "query_id": "door", "stamp": "soon"}\n')
    code, _, err = _run(capsys, "--format", "dispider", "--annotations", str(annotations), "--results", str(preds))
    assert code == 2 and "line 1: stamp 'soon' must be a finite number" in err
    with pytest.raises(SystemExit):
        score_main(["--format", "mystery", "--annotations", "a", "--results", "b"])
    with pytest.raises(SystemExit):
        score_main(["--format", "dispider", "--annotations", "a", "--results", "b", "--tolerances", "-1"])


@pytest.mark.parametrize("fmt", ["dispider", "streamingbench", "ovo"])
def test_syntax_errors_are_one_line_naming_file_line_and_column(capsys, tmp_path, fmt):
    (tmp_path / "ann.yaml").write_text(
        "recordings:\n  - recording_id: r\n    queries: [{time: 1, text: x}\n  - y\n")
    (tmp_path / "ann.json").write_text('[\n  {"questions": [],,}\n]')
    annotations = tmp_path / ("ann.yaml" if fmt == "dispider" else "ann.json")
    where = "ann.yaml:4:3: not valid YAML" if fmt == "dispider" else "ann.json:2:20: not valid JSON"
    code, _, err = _run(capsys, "--format", fmt, "--annotations", str(annotations),
                        "--results", str(annotations))
    assert code == 2 and where in err and err.count("\n") == 1, err


def test_a_broken_prediction_line_is_named_with_its_column(capsys, tmp_path):
    annotations, preds = _dispider_case(tmp_path)
    preds.write_text('{"type": "query", "query_id": "door", "stamp": 5}\n{"type": oops}\n')
    code, _, err = _run(capsys, "--format", "dispider", "--annotations", str(annotations),
                        "--results", str(preds))
    assert code == 2 and "pred.jsonl:2:10: not valid JSON: Expecting value" in err


def test_prediction_record_fields(tmp_path):
    rec = PredictionRecord.from_dict({"type": "response", "query_id": "q", "stamp": 3, "ttft_sec": float("nan"),
                                      "policy": "match"})
    assert rec.stamp == 3.0 and rec.ttft_sec is None and rec.final is True and rec.extras == {"policy": "match"}
    with pytest.raises(ValueError, match="final 'yes' must be true or false"):
        PredictionRecord(type="response", query_id="q", stamp=1, final="yes")
    path = _jsonl(tmp_path / "p.jsonl", [{"type": "trigger", "query_id": "q", "stamp": 2}])
    assert [r.type for r in load_predictions(path)] == ["trigger"]
