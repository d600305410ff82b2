"""Offline replay through the core, parameters from the nodes' YAML, and the eval CLI."""
import json
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, shared_file
from dispider_ros.eval import annotations as ann
from dispider_ros import settings
from dispider_ros.eval import bagio, replay
from dispider_ros.eval.record import PREDICTIONS, read_run
from dispider_ros.footage import video_frames

T0 = 1_700_000_000.0
# The end-to-end example: "tell me when"-style queries on the CC0 flower time-lapse (5 s).
FLOWER_ANNOTATIONS = {"version": 1, "recordings": [{
    "recording_id": "flower", "source": "flower_sqlite3", "queries": [
        {"query_id": "flower_open", "time": 0.2, "text": "Tell me when the flower has opened.",
         "windows": [{"start": 3.5, "end": 5.0, "text": "The flower has opened."}]},
        {"query_id": "flower_now", "time": 1.2, "text": "What is in front of the camera right now?",
         "mode": "now", "windows": [{"start": 1.2, "end": 2.2}]},
        {"query_id": "flower_steps", "time": 0.0, "text": "Narrate the flower opening step by step.",
         "camera": bagio.VIDEO_TOPIC},  # auto -> boundary; one shot, no cut: must stay silent
    ]}]}


def cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "dispider_ros.eval", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def flower(tmp_path_factory):
    """The flower clip as rosbag2 fixtures in both storages, and its annotation file."""
    folder = tmp_path_factory.mktemp("flower")
    frames = list(video_frames(shared_file("videos/mdn_cc0_flower.mp4"), size=(160, 120)))
    bags = {storage: bagio.write_bag(frames, folder / f"flower_{storage}", storage=storage,
                                     start_stamp=T0) for storage in bagio.STORAGES}
    annotations = folder / "flower.json"
    annotations.write_text(json.dumps(FLOWER_ANNOTATIONS))
    return {"bags": bags, "annotations": annotations, "folder": folder}


@pytest.fixture(scope="module")
def offline_runs(flower):
    """The same recording replayed offline from both storages."""
    runs = {}
    for storage, bag in flower["bags"].items():
        out = flower["folder"] / f"run_{storage}"
        figures = replay.run_offline(bag, flower["annotations"], out,
                                     replay.ReplayOptions(progress=False))
        runs[storage] = (out, figures)
    return runs


# ----------------------------------------------------------------- parameters ---------
@pytest.mark.parametrize("pattern, fqn, hit", [
    ("/**", "/perception_node", True), ("/**/perception_node", "/a/b/perception_node", True),
    ("/**/perception_node", "/perception_node", True), ("perception_node", "/perception_node", True),
    ("/ns/*", "/ns/decision_node", True), ("/ns/*", "/other/decision_node", False),
    ("/**/decision_node", "/perception_node", False), ("/*/reaction_node", "/reaction_node", False),
])
def test_node_name_wildcards(pattern, fqn, hit):
    assert settings.pattern_matches(pattern, fqn) is hit


def test_replay_settings_follow_the_yaml(tmp_path):
    perception = replay.ReplayOptions().settings("perception_node")  # config/dispider.yaml
    assert perception == settings.node_settings("perception_node", None, {"preset": "tiny"})
    assert perception["batch_size"] == 4 and perception["sample_fps"] == 2.0
    assert perception["autostart"] is True and perception["preset"] == "tiny"
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({
        "/**": {"ros__parameters": {"preset": "tiny"}},
        "/robot/decision_node": {"ros__parameters": {"cooldown_sec": 2.0}},
        "/**/decision_node": {"ros__parameters": {"trigger_threshold": 0.7}}}))
    decision = settings.node_settings("decision_node", params, {"smoothing": 0.2}, namespace="/robot")
    assert (decision["cooldown_sec"], decision["trigger_threshold"], decision["smoothing"]) == (2.0, 0.7, 0.2)
    assert settings.node_settings("decision_node", params)["cooldown_sec"] == 5.0  # other namespace
    options = replay.ReplayOptions(params_file=params, overrides={"decision_node": {"smoothing": 0.2}})
    assert options.settings("decision_node")["trigger_threshold"] == 0.7
    with pytest.raises(ValueError, match="not one of"):
        settings.node_settings("camera_node", params)


# ------------------------------------------------------------------ time ---------------
def test_annotation_times_map_to_bag_stamps(flower):
    bag = flower["bags"]["sqlite3"]
    with bagio.open_source(bag) as source:
        rec = ann.Recording("r", queries=[ann.AnnotatedQuery(0.25, "What is this?")])
        assert replay.recording_t0(rec, source) == pytest.approx(T0)  # first image stamp
        rec.start_stamp = T0 + 1.0  # the recording started one second into the bag
        assert replay.recording_t0(rec, source) == T0 + 1.0
        (item,) = replay.schedule(rec, replay.recording_t0(rec, source))
        assert item.abs_stamp == pytest.approx(T0 + 1.25)


def test_recording_is_chosen_by_id_or_source(flower):
    data = ann.from_dict({"recordings": [{"recording_id": "a", "source": "bags/flower_mcap"},
                                         {"recording_id": "b", "source": "bags/other"}]})
    assert replay.select_recording(data, flower["bags"]["mcap"]).recording_id == "a"
    assert replay.select_recording(data, "x", "b").recording_id == "b"
    with pytest.raises(ValueError, match="--recording"):
        replay.select_recording(data, "unknown_bag")


# ---------------------------------------------------------------- offline -------------
def test_offline_replay_records_and_is_fast(offline_runs):
    out, figures = offline_runs["sqlite3"]
    run = read_run(out)
    assert [q["query_id"] for q in run.queries] == ["flower_steps", "flower_open", "flower_now"]
    assert [q["stamp"] for q in run.queries] == pytest.approx([0.0, 0.2, 1.2], abs=1e-6)
    # The "now" query fires at once on the newest sampled frame before it: 1.001 s (2 fps grid
    # on 29.97 fps: 0, 0.5005, 1.001, ...). The step-by-step query has no cut to fire on.
    (trigger,) = [t for t in run.triggers if t["query_id"] == "flower_now"]
    assert trigger["stamp"] == pytest.approx(1.001, abs=1e-3) and trigger["frame_index"] == 2
    assert trigger["clock_stamp"] == pytest.approx(1.2, abs=1e-6)
    assert not [t for t in run.triggers if t["query_id"] == "flower_steps"]
    assert len(run.responses) == len(run.triggers)
    for response in run.responses:
        assert not response["error"] and response["ttft_sec"] > 0
        assert response["emit_stamp"] > response["stamp"]
        # What it cost, at the top level of each final record.
        assert response["prompt_tokens"] == response["prefill_tokens"] + response["reused_tokens"] > 0
    # The "now" answer saw the three sampled frames up to its evidence: 0 .. 1.001 s.
    (now,) = [r for r in run.responses if r["query_id"] == "flower_now"]
    assert now["frames_in_prompt"] == 3 and now["history_span_sec"] == pytest.approx(1.001, abs=1e-3)
    assert figures["sampled_frames"] == {bagio.VIDEO_TOPIC: 10}
    assert figures["speed_factor"] > 1.0, figures  # faster than real time
    print(f"offline replay speed on the tiny preset: {figures['speed_factor']:.1f}x real time")
    assert run.system()["peak_rss_mb"] > 0


def test_sqlite3_and_mcap_replays_are_identical(offline_runs):
    (a, _), (b, _) = offline_runs["sqlite3"], offline_runs["mcap"]
    key = lambda t: (t["query_id"], t["stamp"], t["frame_index"], t["policy"], t["score"])  # noqa: E731
    assert [key(t) for t in read_run(a).triggers] == [key(t) for t in read_run(b).triggers]
    # greedy decoding on the same memory: the same answers, token for token
    assert [r["text"] for r in read_run(a).responses] == [r["text"] for r in read_run(b).responses]


# -------------------------------------------------------------------- CLI -------------
def test_cli_run_on_a_video_file_score_and_report(flower, offline_runs, tmp_path):
    video = shared_file("videos/mdn_cc0_flower.mp4")
    out = tmp_path / "video_run"
    done = cli("run", "--bag", video, "--annotations", flower["annotations"], "--out", out)
    assert done.returncode == 0, done.stderr
    assert "x real time" in done.stderr and "offline: 100%" in done.stderr  # speed + tqdm bar
    bag_triggers = [(t["query_id"], round(t["stamp"], 3)) for t in read_run(offline_runs["mcap"][0]).triggers]
    video_triggers = [(t["query_id"], round(t["stamp"], 3)) for t in read_run(out).triggers]
    assert video_triggers == bag_triggers  # same relative times from a video and from its bag
    scored = cli("score", "--format", "dispider", "--annotations", flower["annotations"],
                 "--results", out)  # a run folder is accepted for --results
    assert scored.returncode == 0, scored.stderr
    scores = json.loads(scored.stdout)
    assert scores["timing"]["responses"]["1"]["tp"] == 1  # the "now" answer, within 1 s
    reported = cli("report", "--run", out)
    assert reported.returncode == 0, reported.stderr
    assert (out / "report.md").is_file() and (out / "timeline.png").stat().st_size > 10_000
    assert json.loads((out / "report.json").read_text())["run"]["storage"] == "video"


def test_cli_run_answers_with_the_tiny_qwen3_vl_preset(flower, tmp_path):
    """The Qwen3-VL backend end to end: its preset composes a Qwen3VLBackend, and the eval CLI
    answers on the real clip with it."""
    from dispider_ros import compose
    from dispider_ros.models.qwen3_vl import Qwen3VLBackend

    reaction = settings.node_settings("reaction_node", None, {"preset": "tiny_qwen3_vl"})
    assert settings.resolve_models("reaction_node", reaction)["model"] == "tiny:qwen3_vl"
    vlm = compose.load_reaction_vlm(reaction)
    try:
        assert isinstance(vlm, Qwen3VLBackend) and vlm.model_type == "qwen3_vl"
    finally:
        vlm.close()
    out = tmp_path / "qwen3_run"
    done = cli("run", "--bag", shared_file("videos/mdn_cc0_flower.mp4"), "--annotations", flower["annotations"],
               "--out", out, "--preset", "tiny_qwen3_vl", "--quiet")
    assert done.returncode == 0, done.stderr
    run = read_run(out)
    assert run.run_info()["preset"] == "tiny_qwen3_vl"
    (now,) = [r for r in run.responses if r["query_id"] == "flower_now"]
    assert not now["error"] and now["text"] and now["frames_in_prompt"] == 3
    assert now["prompt_tokens"] == now["prefill_tokens"] + now["reused_tokens"] > 3 * 12  # 12 per frame


def test_cli_run_with_the_tiny_smolvlm_preset_answers(flower, offline_runs, tmp_path):
    """The CPU-robot backend through the whole offline replay: same triggers as the tiny
    (Qwen2-VL) preset, the "now" query answered with SmolVLM's 16-token frames and KV reuse."""
    video = shared_file("videos/mdn_cc0_flower.mp4")
    out = tmp_path / "smolvlm_run"
    done = cli("run", "--bag", video, "--annotations", flower["annotations"], "--out", out,
               "--preset", "tiny_smolvlm")
    assert done.returncode == 0, done.stderr
    run = read_run(out)
    assert run.run_info()["preset"] == "tiny_smolvlm"
    bag_triggers = [(t["query_id"], round(t["stamp"], 3)) for t in read_run(offline_runs["mcap"][0]).triggers]
    assert [(t["query_id"], round(t["stamp"], 3)) for t in run.triggers] == bag_triggers
    (now,) = [r for r in run.responses if r["query_id"] == "flower_now" and r["final"]]
    assert now["error_code"] == 0 and now["token_count"] > 0 and now["text"]
    assert now["prompt_tokens"] > 16 * now["frames_in_prompt"] and now["reused_tokens"] > 0


@pytest.mark.parametrize("name", ["rosbag2_talker_sqlite3", "rosbag2_talker_mcap"])
def test_cli_bag_without_images_fails_clearly(flower, tmp_path, name):
    bag = shared_file(f"bags/{name}/metadata.yaml").parent
    done = cli("run", "--bag", bag, "--annotations", flower["annotations"], "--out", tmp_path / "r")
    assert done.returncode == 2
    assert "no sensor_msgs/msg/Image or CompressedImage topic" in done.stderr
    assert "/topic (std_msgs/msg/String" in done.stderr and "/rosout" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_score_delegates_to_the_benchmark_scorers(tmp_path):
    ovo = cli("score", "--format", "ovo",
              "--annotations", shared_file("annotations/ovo_bench_new.json"),
              "--results", shared_file("annotations/ovo_results_Gemini/Gemini_ASI_offline.json").parent)
    assert ovo.returncode == 0, ovo.stderr
    assert round(json.loads(ovo.stdout)["total"], 2) == 63.00
    questions = shared_file("annotations/streamingbench_questions_proactive.json")
    first = json.loads(questions.read_text())[0]["questions"][0]
    gt = ann.parse_time(first["ground_truth_time_stamp"])
    predictions = tmp_path / PREDICTIONS
    predictions.write_text(json.dumps({"type": "response", "query_id": "sb000_q0", "stamp": gt + 1.0,
                                       "text": f"Now: {first['ground_truth_output']}"}) + "\n")
    sb = cli("score", "--format", "streamingbench", "--annotations", questions, "--results", predictions)
    assert sb.returncode == 0, sb.stderr
    result = json.loads(sb.stdout)
    assert result["format"] == "streamingbench"
    assert (result["time_correct_count"], result["answer_correct_count"]) == (1, 1)
