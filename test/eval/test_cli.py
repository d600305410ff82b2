"""`dispider-eval` as a user meets it: wrong inputs give one clear line, exit status 2, and
leave nothing behind (convert, run, report); a good run says what to run next."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

from conftest import REPO
from dispider_ros.eval import bagio, cli as eval_cli, replay
from dispider_ros.eval.record import ANNOTATIONS, PREDICTIONS

ANNOTATION_FILE = {"version": 1, "recordings": [{"recording_id": "clip", "queries": [
    {"query_id": "now", "time": 0.6, "text": "What is in front of the camera right now?",
     "mode": "now", "windows": [{"start": 0.6, "end": 2.0}]}]}]}


def run_cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "dispider_ros.eval", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(done, *needles):
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 2 s, 10 fps MJPG video (moving gradient) and an annotation file for it."""
    folder = tmp_path_factory.mktemp("clip")
    video = folder / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(20):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, :, 1] = (np.arange(64)[None, :] * 4 + i * 10) % 256
        writer.write(frame)
    writer.release()
    annotations = folder / "clip.yaml"
    annotations.write_text(yaml.safe_dump(ANNOTATION_FILE))
    return {"video": video, "annotations": annotations}


# ------------------------------------------------------------------ convert ------------
def test_convert_refuses_an_existing_folder_and_overwrites_on_request(clip, tmp_path):
    out = tmp_path / "bag"
    first = run_cli("convert", "--video", clip["video"], "--out", out, "--quiet")
    assert first.returncode == 0, first.stderr
    again = run_cli("convert", "--video", clip["video"], "--out", out, "--quiet")
    one_line_error(again, f"{out} exists", "--overwrite")
    replaced = run_cli("convert", "--video", clip["video"], "--out", out, "--storage", "sqlite3",
                       "--overwrite", "--quiet")
    assert replaced.returncode == 0, replaced.stderr
    with bagio.open_source(out) as source:
        assert source.storage == "sqlite3" and source.topics()[0].count == 20


def test_a_failed_convert_leaves_nothing_behind(tmp_path):
    missing = run_cli("convert", "--video", tmp_path / "nope.mp4", "--out", tmp_path / "b")
    one_line_error(missing, "nope.mp4 does not exist")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    junk = run_cli("convert", "--video", tmp_path / "junk.mp4", "--out", tmp_path / "b")
    assert junk.returncode == 2 and "junk.mp4: OpenCV cannot open this video" in junk.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.mp4"]
    # and the next try works (nothing half-written in the way)
    assert eval_cli.main(["convert", "--video", str(REPO.parent / "missing.mp4"),
                          "--out", str(tmp_path / "b")]) == 2


def test_convert_shows_a_tqdm_bar(clip, tmp_path):
    done = run_cli("convert", "--video", clip["video"], "--out", tmp_path / "bag")
    assert done.returncode == 0, done.stderr
    assert "convert: 100%" in done.stderr and "20/20" in done.stderr


# ---------------------------------------------------------------------- run ------------
def test_run_with_bad_input_creates_nothing(clip, tmp_path):
    out = tmp_path / "run"
    one_line_error(run_cli("run", "--bag", tmp_path / "nobag", "--annotations",
                           clip["annotations"], "--out", out), "nobag does not exist")
    one_line_error(run_cli("run", "--bag", clip["video"], "--annotations", clip["annotations"],
                           "--out", out, "--camera-topic", "/front"), "/front")
    assert not out.exists()


def test_a_run_that_fails_after_starting_removes_its_files(clip, tmp_path):
    """The models fail to load after the run folder was made: the folder goes again, and a
    folder that was there before keeps what it held."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"/**/perception_node": {"ros__parameters": {
        "vision_model": str(tmp_path / "no_such_model")}}}))
    out = tmp_path / "run"
    done = run_cli("run", "--bag", clip["video"], "--annotations", clip["annotations"],
                   "--out", out, "--params-file", params, "--quiet")
    assert done.returncode in (1, 2) and "no_such_model" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    done = run_cli("run", "--bag", clip["video"], "--annotations", clip["annotations"],
                   "--out", out, "--params-file", params, "--quiet")
    assert done.returncode in (1, 2)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_undo_on_failure_keeps_what_it_is_told_to(tmp_path):
    out = tmp_path / "live"
    with pytest.raises(RuntimeError), replay.undo_on_failure(out, keep=("logs",)):
        out.mkdir()
        (out / "logs").mkdir()
        (out / "logs" / "reaction_node.log").write_text("configure failed: ...")
        for name in (ANNOTATIONS, PREDICTIONS, "live_params.yaml", "other.txt"):
            (out / name).write_text("x")
        raise RuntimeError("reaction_node exited")
    assert [p.name for p in out.iterdir()] == ["logs"]
    with replay.undo_on_failure(out):  # success: untouched
        (out / PREDICTIONS).write_text("x")
    assert (out / PREDICTIONS).exists()


def test_a_good_run_names_the_interpreter_for_the_next_step(clip, tmp_path):
    out = tmp_path / "run"
    done = run_cli("run", "--bag", clip["video"], "--annotations", clip["annotations"],
                   "--out", out)
    assert done.returncode == 0, done.stderr
    assert f"next: {sys.executable} -m dispider_ros.eval report --run {out}" in done.stdout
    assert "offline: 100%" in done.stderr  # the tqdm bar, camera seconds of the recording
    reported = run_cli("report", "--run", out)
    assert reported.returncode == 0, reported.stderr
    assert json.loads((out / "report.json").read_text())["queries"][0]["query_id"] == "now"


def test_peak_memory_is_printed_with_units():
    text = eval_cli.peak_memory({"perception_node": 812.34, "reaction_node": None})
    assert text == "perception_node 812 MiB, reaction_node unknown"
    assert eval_cli.peak_memory(None) == "unknown"


# ------------------------------------------------------------------- report ------------
def test_report_of_a_missing_run_names_it_and_creates_nothing(tmp_path):
    missing = tmp_path / "runs" / "r9"
    one_line_error(run_cli("report", "--run", missing, "--out", tmp_path / "rep"),
                   f"run folder {missing} does not exist")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "empty").mkdir()
    one_line_error(run_cli("report", "--run", tmp_path / "empty"),
                   "is not a run folder", PREDICTIONS)
    assert list((tmp_path / "empty").iterdir()) == []
