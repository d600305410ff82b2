"""P6: offline replay time versus real time.

Real footage (the shared clips joined, 320x240 at the clips' own frame rate) is written as
a rosbag2 (sqlite3, raw rgb8 Image) with timed questions (a "now" question, a "match"
question and a "boundary" narration), then replayed offline with
`dispider_ros.eval.replay.run_offline` (the evaluation's own path: bag reading and
deserialisation, sampling on stamps, conversion of the sampled frames, then the
composition root the nodes' stages come from -- perception, on-arrival encoding into the
reaction's memory, decision, every trigger answered to completion) with the shipped
parameters (config/dispider.yaml) on the tiny models. Speed factor = camera seconds /
wall seconds of the replay loop (model loading excluded, reported apart). There is no
fallback path: if the replay fails, the benchmark fails.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from bench.common import REPO, footage

QUERIES = [
    {"time": 0.5, "text": "What is on the table now?", "mode": "now"},
    {"time": 1.0, "text": "Tell me when the rabbit comes out of its burrow.", "mode": "match"},
    {"time": 1.0, "text": "Narrate what happens, step by step.", "mode": "boundary"},
]


def _frames(seconds: float) -> Tuple[List[Tuple[float, np.ndarray]], float, str]:
    fps = 24.0
    foot = footage(fps=fps, segment_sec=seconds / 8, segments_per_clip=2, size=(320, 240))
    frames = [(i / fps, f) for i, f in enumerate(foot.frames)]
    return frames, fps, foot.source


def _via_replay(frames, workdir: Path, overrides: Optional[dict]) -> dict:
    from dispider_ros.eval import bagio
    from dispider_ros.eval.replay import ReplayOptions, run_offline

    bag = bagio.write_bag(frames, workdir / "bag", storage="sqlite3")
    annotations = {"version": 1, "recordings": [{
        "recording_id": "bench", "duration": frames[-1][0],
        "queries": [dict(q, query_id=f"q{i}", windows=[]) for i, q in enumerate(QUERIES)]}]}
    (workdir / "annotations.json").write_text(json.dumps(annotations))
    options = ReplayOptions(preset="tiny", progress=False, overrides=overrides or {})
    figures = run_offline(bag, workdir / "annotations.json", workdir / "run", options)
    return {"path": "dispider_ros.eval.replay.run_offline (rosbag2 sqlite3, shipped parameters)",
            "camera_seconds": figures["camera_seconds"], "wall_seconds": figures["wall_seconds"],
            "speed_factor": figures["speed_factor"], "model_load_seconds": figures["model_load_seconds"],
            "sampled_frames": sum(figures["sampled_frames"].values()),
            "triggers": figures["decision"].get("triggers"),
            "answers": figures["reaction"].get("answered")}


def replay_speed(seconds: float, overrides: Optional[dict] = None, log=print) -> dict:
    frames, fps, source = _frames(seconds)
    workdir = Path(tempfile.mkdtemp(prefix="p6-", dir=REPO / "build"))
    try:
        result = _via_replay(frames, workdir, overrides)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.update(footage=source, frame="320x240 rgb8", source_fps=fps)
    return result


def run(quick: bool, log=print, bench_models: Optional[dict] = None) -> dict:
    seconds = 12.0 if quick else 48.0
    (REPO / "build").mkdir(exist_ok=True)
    tiny = replay_speed(seconds, log=log)
    log(f"  P6 tiny models: {tiny['camera_seconds']:.1f} s of footage replayed in {tiny['wall_seconds']:.2f} s "
        f"= {tiny['speed_factor']:.1f}x real time ({tiny['triggers']} triggers, {tiny['answers']} answers)")
    out = {"protocol": {"threads": 1, "sample_fps": 2.0, "models": "tiny preset"}, "tiny": tiny}
    if bench_models and not quick:
        overrides = {"perception_node": {"vision_model": bench_models["siglip"]},
                     "decision_node": {"vision_model": bench_models["siglip"]},
                     "reaction_node": {"vlm_model": bench_models["qwen2_vl"]}}
        scaled = replay_speed(seconds, overrides, log=log)
        log(f"  P6 bench-scale models: {scaled['speed_factor']:.1f}x real time")
        out["bench_scale"] = scaled
    return out
