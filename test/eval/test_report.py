"""Run record and report: JSON lines round trip, report.json/report.md/timeline.png (no models)."""
import json

import numpy as np
import pytest

from dispider_ros.eval import annotations as ann
from dispider_ros.eval import report
from dispider_ros.eval.record import ANNOTATIONS, PREDICTIONS, RunRecorder, read_run
from dispider_ros.eval.score_cli import load_predictions

T0 = 1_700_000_000.0
FRONT, BACK = "/front/image_raw", "/back/image_raw"


def _annotations():
    return ann.AnnotationSet([ann.Recording("lab", queries=[
        ann.AnnotatedQuery(1.0, "Tell me when the door opens.", "door", camera=FRONT,
                           windows=[ann.AnswerWindow(3.0, 4.0, "The door is open.")]),
        ann.AnnotatedQuery(0.5, "What is on the table?", "table", mode="now",
                           windows=[ann.AnswerWindow(0.5, 1.5)]),
        ann.AnnotatedQuery(0.0, "Tell me when a dog appears.", "dog", camera=BACK),  # silent
    ])])


def _write_run(folder, chunks=False):
    """A run record as the replay writes it: 2 cameras, a hit, a miss, a false alarm."""
    ann.save(_annotations(), folder / ANNOTATIONS)
    with RunRecorder(folder / PREDICTIONS, t0=T0, chunks=chunks) as rec:
        rec.run("start", mode="offline", bag="bags/lab", storage="mcap", recording_id="lab",
                t0=T0, cameras=[FRONT, BACK], preset="tiny")
        rec.query("dog", T0 + 0.0, "Tell me when a dog appears.", "auto", BACK)
        rec.query("table", T0 + 0.5, "What is on the table?", "now")
        rec.query("door", T0 + 1.0, "Tell me when the door opens.", "auto", FRONT)
        rec.trigger("t1", "table", T0 + 0.4, FRONT, "now", 1.0, 0, 0, T0, clock_abs=T0 + 0.5)
        rec.response("r1", "t1", "table", T0 + 0.4, FRONT, "A", False, sequence=0)
        rec.response("r1", "t1", "table", T0 + 0.4, FRONT, "A cup.", True, sequence=1,
                     ttft_sec=0.05, emit_abs_stamp=T0 + 0.6, token_count=3)
        rec.trigger("t2", "door", T0 + 3.2, FRONT, "match", 0.8, 6, 1, T0 + 3.0, clock_abs=T0 + 3.2)
        rec.response("r2", "t2", "door", T0 + 3.2, FRONT, "The door is open now.", True,
                     ttft_sec=float("nan"), emit_abs_stamp=T0 + 3.5, token_count=5)
        rec.trigger("t3", "dog", T0 + 2.0, BACK, "match", np.float32(0.7), 4, 0, T0,
                    clock_abs=T0 + 2.0)
        rec.response("r3", "t3", "dog", T0 + 2.0, BACK, "", True, error="RuntimeError: boom",
                     error_code=4, emit_abs_stamp=T0 + 2.1)
        rec.run("end", system={"camera_seconds": 5.0, "wall_seconds": 0.5, "speed_factor": 10.0,
                               "sampled_fps": {FRONT: 2.0, BACK: 2.0}, "dropped_frames": 0,
                               "peak_rss_mb": 400.0})


def test_record_lines_are_json_and_score_cli_reads_them(tmp_path):
    _write_run(tmp_path, chunks=True)
    lines = [json.loads(line) for line in (tmp_path / PREDICTIONS).read_text().splitlines()]
    assert [line["type"] for line in lines].count("run") == 2
    door = next(line for line in lines if line.get("response_id") == "r2")
    assert door["stamp"] == pytest.approx(3.2) and door["emit_stamp"] == pytest.approx(3.5)
    assert door["ttft_sec"] is None  # NaN is written as null, never as invalid JSON
    failed = next(line for line in lines if line.get("response_id") == "r3")
    assert (door["error_code"], failed["error_code"]) == (0, 4)  # Response.GENERATION_FAILED
    dog = next(line for line in lines if line.get("trigger_id") == "t3" and line["type"] == "trigger")
    assert isinstance(dog["score"], float) and dog["clock_stamp"] == pytest.approx(2.0)
    records = load_predictions(tmp_path / PREDICTIONS)  # "run" lines skipped
    assert sorted({r.type for r in records}) == ["query", "response", "trigger"]
    run = read_run(tmp_path)
    assert (len(run.queries), len(run.triggers), len(run.responses), len(run.chunks)) == (3, 3, 3, 1)
    assert run.run_info()["cameras"] == [FRONT, BACK] and run.system()["speed_factor"] == 10.0


def test_chunks_are_skipped_unless_asked(tmp_path):
    with RunRecorder(tmp_path / "a.jsonl", t0=T0) as rec:
        rec.response("r", "t", "q", T0, FRONT, "chunk", False)
        rec.response("r", "t", "q", T0, FRONT, "final", True)
    assert [json.loads(x)["text"] for x in (tmp_path / "a.jsonl").read_text().splitlines()] == ["final"]


def test_report_files(tmp_path):
    _write_run(tmp_path)
    paths = report.write(tmp_path)
    assert set(paths) == {"json", "markdown", "timeline"}
    data = json.loads(paths["json"].read_text())
    at1 = data["scores"]["timing"]["responses"]["1"]
    # table: 0.4 is within 1 s of [0.5, 1.5]; door: 3.2 in [3, 4]; the dog answer is an error.
    assert (at1["tp"], at1["fp"], at1["fn"]) == (2, 0, 0)
    assert data["scores"]["timing"]["triggers"]["0"]["fp"] == 2  # table early at 0 s, dog silent
    assert data["scores"]["text"]["pairs"] == 1
    rows = {row["query_id"]: row for row in data["queries"]}
    assert rows["door"]["triggers"] == [pytest.approx(3.2)] and rows["dog"]["errors"] == 1
    assert data["system"]["peak_rss_mb"] == 400.0
    text = paths["markdown"].read_text()
    for needle in ("| tolerance (s) |", "### Triggers", "`door` Tell me when the door opens.",
                   "| speed_factor | 10.00 |", "sampled_fps./front/image_raw", "timeline.png"):
        assert needle in text
    png = paths["timeline"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    import matplotlib.image

    image = matplotlib.image.imread(paths["timeline"])
    assert image.shape[0] > 300 and image.shape[1] > 800  # one panel per camera
    assert image[..., :3].std() > 0.05  # something is drawn


def test_table_scores_answers_where_the_timeline_draws_them(tmp_path):
    """The "table" answer's evidence (0.4) precedes its window [0.5, 1.5]; it came out at 0.6,
    where the timeline draws it: a hit at 0 s tolerance with latency +0.1, not a false
    alarm at -0.1. Its trigger, scored at the evidence, is early."""
    _write_run(tmp_path)
    paths = report.write(tmp_path)
    data = json.loads(paths["json"].read_text())
    at0 = data["scores"]["timing"]["responses"]["0"]
    assert (at0["tp"], at0["fp"], at0["fn"]) == (2, 0, 0)
    assert sorted([at0["latency"]["min"], at0["latency"]["max"]]) == pytest.approx([0.1, 0.5])
    rows = {row["query_id"]: row for row in data["queries"]}
    assert rows["table"]["first_latency_at_2s"] == pytest.approx(0.1)
    run = read_run(tmp_path)
    assert [report.answer_time(r) for r in run.responses][:2] == pytest.approx([0.6, 3.5])
    assert report.answer_time({"stamp": 2.0, "emit_stamp": None}) == 2.0
    # modes: "Tell me when the door opens." was declared auto and runs as match
    assert (rows["door"]["declared_mode"], rows["door"]["mode"]) == ("auto", "match")
    assert set(data["scores"]["by_mode"]) == {"match", "now"}
    text = paths["markdown"].read_text()
    for needle in ("Answers (final responses, at emit time)", "Triggers (at the evidence frame)",
                   "| auto → match |", "can precede `asked`"):
        assert needle in text


def test_a_total_miss_scores_zero_not_undefined(tmp_path):
    ann.save(_annotations(), tmp_path / ANNOTATIONS)
    with RunRecorder(tmp_path / PREDICTIONS, t0=T0) as rec:
        rec.run("start", mode="offline", recording_id="lab", t0=T0, cameras=[FRONT])
    data = report.build(tmp_path)
    assert data["scores"]["by_mode"]["match"]["2"]["f1"] == 0.0  # door and dog: no answers
    assert "| match | 0.000 | 0.000 | 0.000 | 0.000 |" in report.markdown(data)


def test_first_token_uses_the_trigger_clock_and_rate():
    response = {"trigger_id": "t", "stamp": 1.0, "ttft_sec": 0.1}
    assert report.first_token_stamp(response, {"t": 1.5}, rate=2.0) == pytest.approx(1.7)
    assert report.first_token_stamp(response, {}, rate=1.0) == pytest.approx(1.1)
    assert report.first_token_stamp({"stamp": 1.0, "ttft_sec": None}, {}) is None


def test_report_of_an_empty_run(tmp_path):
    ann.save(_annotations(), tmp_path / ANNOTATIONS)
    with RunRecorder(tmp_path / PREDICTIONS, t0=T0) as rec:
        rec.run("start", mode="live", recording_id="lab", t0=T0, cameras=[FRONT])
    paths = report.write(tmp_path, out=tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["scores"]["timing"]["responses"]["2"]["recall"] == 0.0
    assert paths["timeline"].stat().st_size > 5_000
