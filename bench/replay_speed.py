"""P6: offline replay time versus real time.

Real footage (the shared clips joined, 320x240 at the clips' own frame rate) is written as
a rosbag2 (sqlite3, raw rgb8 Image) with timed questions (a "now" question, a "match"
question and a "boundary" narration), then replayed offline with
`dispider_ros.eval.replay.run_offline` (the evaluation's own path: bag reading and
deserialisation, conversion, both samplers, perception, decision, on-arrival encoding,
every trigger answered to completion) on the tiny models. Speed factor = camera seconds /
wall seconds of the replay loop (model loading excluded, reported apart).
Where the evaluation's replay module is missing or fails, the same loop is run through the
core objects directly (the `path` field of the results says which, `replay_error` why).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
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
    return {"path": "dispider_ros.eval.replay.run_offline (rosbag2 sqlite3)",
            "camera_seconds": figures["camera_seconds"], "wall_seconds": figures["wall_seconds"],
            "speed_factor": figures["speed_factor"], "model_load_seconds": figures["model_load_seconds"],
            "sampled_frames": sum(figures["sampled_frames"].values()),
            "triggers": figures["decision"].get("triggers"),
            "answers": figures["reaction"].get("answered")}


def _via_core(frames, overrides: Optional[dict]) -> dict:
    """The offline replay loop through the core objects (used when eval.replay is absent)."""
    import torch

    from bench.common import ImageMsg
    from dispider_ros.core.decision import DecisionConfig, DecisionCore
    from dispider_ros.core.memory import MemoryConfig
    from dispider_ros.core.perception import PerceptionConfig, PerceptionPipeline
    from dispider_ros.core.reaction import ReactionConfig, ReactionEngine
    from dispider_ros.core.sampler import FrameSampler, SamplerConfig
    from dispider_ros.core.types import QuerySpec
    from dispider_ros.imaging import message_to_rgb8
    from dispider_ros.models.vision import VisionEncoder, VisionEncoderConfig
    from dispider_ros.models.registry import load_reaction_vlm
    from dispider_ros.models.vlm_config import ReactionVLMConfig

    overrides = overrides or {}
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    encoder = VisionEncoder(VisionEncoderConfig(
        model=overrides.get("perception_node", {}).get("vision_model", "tiny:siglip")))
    pipeline = PerceptionPipeline(encoder, PerceptionConfig(sampler=SamplerConfig(sample_fps=2.0)))
    decision = DecisionCore(DecisionConfig(), text_encoder=encoder.encode_texts,
                            match_calibration=encoder.match_calibration())
    answers = []
    vlm = load_reaction_vlm(ReactionVLMConfig(
        model=overrides.get("reaction_node", {}).get("vlm_model", "tiny:qwen2_vl"), max_new_tokens=48))
    engine = ReactionEngine(ReactionConfig(memory=MemoryConfig(max_tokens=4096), evidence_tolerance_sec=0.5),
                            lambda e: answers.append(e) if e.final else None, vlm)
    sampler = FrameSampler(SamplerConfig(sample_fps=2.0))
    load = time.perf_counter() - t0
    pending = sorted(QUERIES, key=lambda q: q["time"])
    wall0 = time.perf_counter()

    def react(triggers):
        for trigger in triggers:
            engine.submit(trigger)
            engine.wait_idle(300)

    for t, rgb in frames:
        while pending and pending[0]["time"] <= t:
            q = pending.pop(0)
            react(decision.add_query(QuerySpec(query_id=q["text"][:8], text=q["text"], mode=q["mode"],
                                               stamp=t), t)[1])
        image = message_to_rgb8(ImageMsg(rgb, "rgb8", t))
        kept = sampler.offer("cam", t, image)
        if kept is not None:
            engine.ingest(kept)
        sampled = pipeline.offer("cam", t, image)
        if sampled is not None:
            for feature in pipeline.process([sampled]):
                react(decision.on_feature(feature))
    engine.wait_idle(300)
    wall = time.perf_counter() - wall0
    engine.close()
    vlm.close()
    camera = frames[-1][0] - frames[0][0]
    return {"path": "core objects (dispider_ros.eval.replay not available)", "camera_seconds": camera,
            "wall_seconds": wall, "speed_factor": camera / wall, "model_load_seconds": load,
            "sampled_frames": pipeline.frames_processed, "triggers": decision.stats()["triggers"],
            "answers": len(answers)}


def replay_speed(seconds: float, overrides: Optional[dict] = None, log=print) -> dict:
    frames, fps, source = _frames(seconds)
    workdir = Path(tempfile.mkdtemp(prefix="p6-", dir=REPO / "build"))
    try:
        try:
            result = _via_replay(frames, workdir, overrides)
        except Exception as error:  # noqa: BLE001 -- the module is missing or its API moved
            log(f"  P6: evaluation replay unavailable ({type(error).__name__}: {error}); "
                "replaying through the core objects")
            result = _via_core(frames, overrides)
            result["replay_error"] = f"{type(error).__name__}: {error}"
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
