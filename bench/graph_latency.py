"""P1/P2 through the graph that ships: the three node processes over DDS, measured from outside.

    python -m bench.graph_latency [--quick]     this section alone (JSON on stdout)

Ours: perception_node, decision_node and reaction_node started as a user starts them (the
installed executables, `--params-file` the shipped config/dispider.yaml, then a second
parameter file with only this benchmark's overrides, OVERRIDES, each with its reason in
DEVIATIONS; a unique namespace; the shipped Fast DDS profile in every process, as
dispider.launch.py sets it). The models are the bench-scale ones (bench/models.py) through
the nodes' own `vision_model` / `vlm_model` parameters; the preset stays the shipped tiny
(device cpu, float32). Three more processes (bench/graph_processes.py):
- `camera`: real footage (bench.common.footage: single-shot clips cut into 1.5 s segments,
  hard cuts at known times) as 640x480 rgb8 sensor_msgs/Image at 10 fps, reliable
  keep-last 10, stamped with the wall clock at its schedule point;
- `observe` (ours): watches features, trigger, response_stream, response and /diagnostics,
  and asks the questions on `query`: nothing while idle; at busy start a `boundary`
  narration query, and "now" questions kept BUSY_OUTSTANDING unanswered until busy ends, so
  the reaction decodes long answers (min_new_tokens = max_new_tokens) back to back; after
  the camera stops, ALONE answers one at a time (the reaction with nothing beside it);
- `sequential` (baseline): one process, the same stages from the same settings
  (dispider_ros.compose.build_graph) as a StreamingGraph with answer_timeout_sec, so each
  trigger is answered before the next frame is taken, subscribed to the same camera over
  DDS (stamp-first sampling in the callback, latest due frame parked, as perception_node
  does), asking the same questions at the same times as ours asked them (one per loop
  step, between frames): a loop that generates only when triggered, on ours' schedule.
Both arms see the same camera schedule (fresh camera process each) and phases: warm-up,
idle, busy, tail. Figures (bench/graph_figures.py; one host: the camera's stamps and every
receipt are wall time):
- P1 = sampled rate while busy / idle: features (ours) or processed frames (baseline) with
  stamps in each window, windows shifted half a camera period off the frame times;
- P2 trigger = narration trigger receipt (ours: at the observer, one DDS hop; baseline: its
  emit) minus its evidence stamp, p95 over the busy window, in sampled periods;
- P2 first token = the trigger's first response_stream chunk minus its evidence stamp;
- cut -> trigger / first token: from each footage cut in the busy window to the first
  narration trigger (first token) whose evidence shows it (missed cuts count to the run end);
- decode tokens/s = (tokens at an answer's last chunk - at its first) / (seconds between
  those chunks), summed over answers of >= MIN_TOKENS: busy answers (their chunks from busy
  start until the camera stops: perception and on-arrival encoding running) vs the ALONE
  answers (camera stopped). Decode
  slows with context, so the busy answers compared are those whose prompt_tokens (on the
  final Response) are within CONTEXT_BAND of the alone answers'; all busy ones if none is.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

from bench.common import REPO
from bench.graph_figures import (CONTEXT_BAND, MIN_TOKENS, NARRATION_ID, camera_seconds, span,
                                 summarize_arm, windows)
from bench.graph_processes import ANSWER_TIMEOUT_SEC, CAMERA_FPS, NARRATION, NODES, QUESTION

ANSWER_TOKENS = 256
# Ours: unanswered "now" questions while busy. One: the next is asked when an answer's final
# arrives (the reaction idles for one DDS round trip, ~ms), so a narration trigger waits for
# at most the running answer, as it would beside one user asking; more would queue it behind
# questions asked before it.
BUSY_OUTSTANDING = 1
PHASES = {True: dict(warmup=2.0, idle=6.0, busy=15.0, tail=1.5, alone=2),  # quick
          False: dict(warmup=5.0, idle=20.0, busy=45.0, tail=3.0, alone=4)}

# Only what the benchmark needs on top of config/dispider.yaml (the model folders are added
# by node_overrides()).
OVERRIDES: Dict[str, Dict[str, object]] = {
    "perception_node": {"torch_threads": 1, "clip_similarity_threshold": 0.97},
    "decision_node": {"torch_threads": 1, "cooldown_sec": 0.0},
    "reaction_node": {"torch_threads": 1, "max_new_tokens": ANSWER_TOKENS,
                      "min_new_tokens": ANSWER_TOKENS},
}
DEVIATIONS = {
    "torch_threads": "1 in each of the three processes, as config/dispider.yaml advises when "
        "three nodes share a small CPU: on 2 cores torch's default gives every process 2 "
        "intra-op threads and oversubscribes them",
    "clip_similarity_threshold": "the random-weight bench encoder maps all real images close "
        "together (>= 0.978 inside a segment of the footage, <= 0.95 across its cuts), so "
        "the cut threshold sits between; a trained SigLIP separates scenes far more",
    "cooldown_sec": "the footage cuts every 1.5 s; the shipped 5 s cooldown would fire on "
        "about one cut in three and leave P2 few samples",
    "max_new_tokens": "long answers (shipped 48): the reaction is always decoding while busy",
    "min_new_tokens": "= max_new_tokens (shipped 0), so no answer ends early at the "
        "end-of-answer token: a steady, known decode load",
    "vision_model": "the bench-scale SigLIP (bench/models.py) instead of the tiny preset's, "
        "for a realistic share of encoder cost",
    "vlm_model": "the bench-scale Qwen2-VL (bench/models.py) instead of the tiny preset's, "
        "for a realistic share of decode cost",
}


def node_overrides() -> Dict[str, Dict[str, object]]:
    """{node: overrides}: OVERRIDES plus the bench-scale model folder as the node's model."""
    from bench import models
    from dispider_ros.core import schema

    return {node: {schema.MODEL_PARAM[node]: models.model_path(models.NODE_MODEL[node]),
                   **OVERRIDES[node]} for node in NODES}


class _Child:
    """A child process in its own session, JSON lines on stdout, stdin for the start time."""

    def __init__(self, argv: List[str], env: dict, log: Path, cwd: Path = REPO):
        self.log = log
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=open(log, "wb"), env=env, cwd=cwd, text=True,
                                        start_new_session=True)
        self.lines: "queue.Queue[Optional[dict]]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith("{"):
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def send(self, value: dict) -> None:
        self.process.stdin.write(json.dumps(value) + "\n")
        self.process.stdin.flush()

    def expect(self, key: str, timeout: float, watch: Dict[str, subprocess.Popen] = None) -> dict:
        """The next JSON line holding `key`; raises when the child or a watched process ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in (watch or {}).items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({process.returncode}) while waiting for "
                                       f"{key!r} from {self.log.stem}")
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.log.stem} exited ({self.process.wait()}) before {key!r}; "
                                   f"its log ends:\n{_tail(self.log)}")
            if key in line:
                return line
        raise TimeoutError(f"no {key!r} from {self.log.stem} in {timeout:.0f} s; log:\n{_tail(self.log)}")


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _exited(children: List[_Child], timeout: float = 15.0) -> None:
    """Let children that said everything end on their own (stop_groups then has nothing to do)."""
    for child in children:
        try:
            child.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


def _module(*args: str) -> List[str]:
    return [sys.executable, "-m", "bench.graph_processes", *args]


def _plan_file(plan: dict, path: Path) -> str:
    path.write_text(json.dumps(plan))
    return str(path)


def _start(children: list, wall_lead: float = 1.0) -> float:
    """Send every ready child the same start time; return it."""
    wall0 = time.time() + wall_lead
    for child in children:
        child.send({"wall0": wall0})
    return wall0


def run_ours(plan: dict, env: dict, log_dir: Path, params: Path, timing: dict) -> tuple:
    """The launched node processes + camera + observer; (record, camera report, wall0)."""
    from dispider_ros.paths import executable
    from dispider_ros.processes import stop_groups

    namespace = plan["namespace"]
    overrides = log_dir / "overrides.yaml"  # a second file: `-p` loses to the file's node keys
    overrides.write_text(json.dumps({f"/**/{node}": {"ros__parameters": values}
                                     for node, values in node_overrides().items()}, indent=1))
    nodes: Dict[str, subprocess.Popen] = {}
    children: List[_Child] = []
    started = time.monotonic()
    try:
        for name in NODES:
            nodes[name] = subprocess.Popen(
                [str(executable(name)), "--ros-args", "--params-file", str(params),
                 "--params-file", str(overrides), "-r", f"__ns:={namespace}"],
                stdout=open(log_dir / f"{name}.log", "wb"), stderr=subprocess.STDOUT, env=env,
                cwd=log_dir, start_new_session=True)  # cwd outside the source tree
        observer = _Child(_module("observe", namespace, _plan_file(plan, log_dir / "plan_ours.json")), env,
                          log_dir / "observer.log")
        camera = _Child(_module("camera", f"{namespace}/image", str(camera_seconds(plan))), env,
                        log_dir / "camera_ours.log")
        children += [observer, camera]
        observer.expect("ready", 300, watch=nodes)
        camera.expect("ready", 60, watch=nodes)
        timing["ours_startup"] = round(time.monotonic() - started, 1)
        wall0 = _start([observer, camera])
        report = camera.expect("published", camera_seconds(plan) + 30, watch=nodes)
        record = observer.expect("features", 240 + plan["alone"] * ANSWER_TIMEOUT_SEC, watch=nodes)
        _exited(children)
        return record, report, wall0
    finally:
        stop_groups([c.process for c in children] + list(nodes.values()))


def run_sequential(plan: dict, env: dict, log_dir: Path, timing: dict) -> tuple:
    """The baseline process + camera; (record, camera report, wall0)."""
    from dispider_ros.processes import stop_groups

    children: List[_Child] = []
    started = time.monotonic()
    try:
        baseline = _Child(_module("sequential", plan["namespace"],
                                  _plan_file(plan, log_dir / "plan_sequential.json")), env, log_dir / "sequential.log")
        children.append(baseline)
        baseline.expect("ready", 300)
        camera = _Child(_module("camera", f"{plan['namespace']}/image", str(camera_seconds(plan))),
                        env, log_dir / "camera_sequential.log")
        children.append(camera)
        camera.expect("ready", 60)
        timing["sequential_startup"] = round(time.monotonic() - started, 1)
        wall0 = _start([baseline, camera])
        report = camera.expect("published", camera_seconds(plan) + 30)
        record = baseline.expect("features", 120 + ANSWER_TIMEOUT_SEC * 2)
        _exited(children)
        return record, report, wall0
    finally:
        stop_groups([c.process for c in children])


def _raw(record: dict) -> dict:
    """Per answer [query_id, prompt tokens, tokens decoded after the first, their seconds,
    first-chunk wall time], and every narration trigger's [stamp, receipt] (wall time)."""
    prompts = {f["trigger_id"]: f.get("prompt_tokens") for f in record["finals"]}
    spans = [(t, span(c)) for t, c in record["chunks"].items()]
    return {"answers": [[c["query_id"], prompts.get(t), c["last_tokens"] - c["first_tokens"],
                         round(c["last_wall"] - c["first_wall"], 3), round(c["first_wall"], 3)]
                        for t, c in spans if c is not None],
            "narration_triggers": [[round(t["stamp"], 3), round(t["wall"], 3)]
                                   for t in record["triggers"] if t["query_id"] == NARRATION_ID]}


def _shipped(node: str, name: str):
    """A parameter's value in config/dispider.yaml over the schema; a model parameter left
    empty there is shown with what the preset fills in."""
    from dispider_ros import settings

    values = settings.node_settings(node)
    if name in ("vision_model", "vlm_model") and not values[name]:
        return f"'' (preset {values['preset']}: {settings.resolve_models(node, values)['model']})"
    return values[name]


def _settings_value(node: str, name: str):
    from bench import models

    return models.node_settings(node, node_overrides()[node])[name]


def run(quick: bool, log=print, log_dir: Optional[Path] = None) -> dict:
    """Both arms; the p1_p2_graph section of the results."""
    from bench import intake

    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="bench_graph_"))
    phases = PHASES[quick]
    sample_fps = float(_settings_value("perception_node", "sample_fps"))
    dds = intake.settings()["ours"]  # the shipped Fast DDS profile, nothing else set
    env = intake.child_env(dds, 150 + random.randrange(60))
    params = intake.shipped_params()
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:4]}"
    plan = dict(phases, sample_fps=sample_fps, camera_fps=CAMERA_FPS, outstanding=BUSY_OUTSTANDING)
    log(f"  ours: 3 node processes + camera + observer; warm-up {phases['warmup']} s, idle "
        f"{phases['idle']} s, busy {phases['busy']} s, tail {phases['tail']} s, then "
        f"{phases['alone']} answers alone (logs {log_dir})")
    ours_plan = dict(plan, namespace=f"/bench_graph_{tag}")
    started, arm_sec = time.monotonic(), {}
    ours_record, ours_camera, wall0 = run_ours(ours_plan, env, log_dir, params, arm_sec)
    arm_sec["ours"] = round(time.monotonic() - started, 1)
    ours_plan.update(wall0=wall0, cuts=ours_camera["cuts"])
    ours = summarize_arm(ours_record, ours_plan)
    # The baseline asks what ours asked, at the same offsets from busy start.
    busy_start = windows(ours_plan)["busy"][0]
    asks = [[0.0, NARRATION_ID, "boundary", NARRATION]] + [
        [wall - busy_start, query_id, "now", QUESTION] for query_id, wall in ours_record["asks"]
        if query_id.startswith("busy-")]
    log(f"  ours: P1 {ours['ratio']}, trigger p95 {ours['trigger_p95_periods']} periods, first "
        f"token p95 {ours['first_token_sec_p95']} s; decode {ours['decode_tps_with_perception']} "
        f"tokens/s with perception vs {ours['decode_tps_alone']} alone")
    log(f"  sequential: one process, the same settings, {len(asks)} questions on ours' schedule ...")
    seq_plan = dict(plan, namespace=f"/bench_graph_seq_{tag}", asks=asks,
                    overrides=node_overrides())
    started = time.monotonic()
    seq_record, seq_camera, seq_wall0 = run_sequential(seq_plan, env, log_dir, arm_sec)
    arm_sec["sequential"] = round(time.monotonic() - started, 1)
    seq_plan.update(wall0=seq_wall0, cuts=seq_camera["cuts"])
    seq = summarize_arm(seq_record, seq_plan)
    seq["not_asked"] = seq_record.get("not_asked")
    seq["due_overwritten"] = seq_record.get("due_overwritten")
    log(f"  sequential: P1 {seq['ratio']}, trigger p95 {seq['trigger_p95_periods']} periods, "
        f"first token p95 {seq['first_token_sec_p95']} s")
    ours["diagnostics"] = ours_record.get("diagnostics")
    overrides = {f"{node}.{k}": {"value": v, "shipped": _shipped(node, k), "why": DEVIATIONS[k]}
                 for node, values in node_overrides().items() for k, v in values.items()}
    period = 1.0 / sample_fps
    return {
        "p1_graph_ratio": ours["ratio"], "p1_graph_ratio_sequential": seq["ratio"],
        "p2_graph_trigger_p95_periods": ours["trigger_p95_periods"],
        "p2_graph_trigger_p95_periods_sequential": seq["trigger_p95_periods"],
        "p2_graph_first_token_p95_sec": ours["first_token_sec_p95"],
        "p2_graph_first_token_p95_sec_sequential": seq["first_token_sec_p95"],
        "p2_graph_cut_to_trigger_p95_periods": ours["cut_to_trigger_p95_periods"],
        "p2_graph_cut_to_trigger_p95_periods_sequential": seq["cut_to_trigger_p95_periods"],
        "decode_tps_alone": ours["decode_tps_alone"],
        "decode_tps_with_perception": ours["decode_tps_with_perception"],
        "decode_tps_sequential": seq["decode_tps_all"],
        "protocol": {
            "ours": "installed perception_node, decision_node, reaction_node (dispider_ros.paths."
                    "executable), `--params-file` the shipped config/dispider.yaml then a second "
                    "file with the overrides below, namespace "
                    f"{ours_plan['namespace']}, cwd outside the source tree",
            "models": "bench-scale SigLIP and Qwen2-VL (bench/models.py) through the nodes' "
                      "vision_model / vlm_model parameters; preset tiny as shipped (cpu, float32)",
            "sequential": "one process: dispider_ros.compose.build_graph of the same settings "
                          f"(answer_timeout_sec {ANSWER_TIMEOUT_SEC:g}: each trigger answered "
                          "before the loop goes on), subscribed to the same kind of camera "
                          "process over DDS (graph.take on the stamp in the callback, latest due "
                          "message parked); the narration at busy start and ours' 'now' questions "
                          "at ours' offsets from busy start, one per loop step",
            "overrides": overrides,
            "dds": {k: v for k, v in dds.items() if v} or "nothing set",
            "camera": f"another process: 640x480 rgb8 at {CAMERA_FPS:g} fps, reliable keep-last "
                      f"10, wall-clock stamps; footage {ours_camera['source']}",
            "phases_sec": phases, "sample_fps": sample_fps, "period_sec": period,
            "answer_tokens": ANSWER_TOKENS, "busy_outstanding": BUSY_OUTSTANDING,
            "busy_load": "a boundary narration query asked at busy start and one 'now' question "
                         "at a time (the next asked when the previous final arrives); with the "
                         "shipped preempt_same_query each cut's narration trigger stops the "
                         "running narration answer (final PREEMPTED) and goes ahead of the "
                         "waiting question, so with cuts every 1.5 s much of the busy decoding "
                         "is narration revisions; the reaction decodes throughout",
            "p1": "features (ours, on `features`) or processed frames (baseline) with stamps in "
                  "the busy window / in the idle window, per second",
            "p2_trigger": "narration (boundary) trigger receipt at the observer (ours: one DDS "
                          "hop after decision_node published it; baseline: in-process emit) "
                          "minus its evidence stamp, busy window, p95 / period",
            "p2_first_token": "first response_stream chunk of a busy-window narration trigger's "
                              "answer minus its evidence stamp (answers superseded before "
                              "they started have none), p95 seconds; it includes waiting for "
                              f"the running answer (up to {ANSWER_TOKENS} tokens) and the "
                              "prompt's prefill",
            "decode": "measured from outside on response_stream, decode only: (tokens at an "
                      "answer's last chunk - at its first) / seconds between them, over answers "
                      f"of >= {MIN_TOKENS} tokens. alone = {phases['alone']} 'now' answers one at "
                      "a time after the camera stopped (nothing else running); with perception = "
                      "each answer's chunks from busy start until the camera stopped, "
                      f"only those whose prompt is within {CONTEXT_BAND:.0%} of the alone answers' "
                      "mean (decode slows with context: each token attends to the whole prompt); "
                      "when none is (the memory still filling, as in the quick run), read off a "
                      "token-weighted least-squares line of the busy answers' seconds per token "
                      "against their prompt tokens at the alone answers' mean (decode_context "
                      "'fit'), else all busy answers ('not matched'); "
                      "sequential = every baseline answer (perception waits while it decodes)",
            "clocks": "one host; camera stamps and receipts are time.time()",
            "logs": str(log_dir)},
        "ours": ours, "sequential": seq,
        "arm_seconds": arm_sec,
        "raw": {"ours": _raw(ours_record), "sequential": _raw(seq_record)},
        "camera": {"ours": {k: ours_camera[k] for k in ("published", "late")},
                   "sequential": {k: seq_camera[k] for k in ("published", "late")}},
    }

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.graph_latency",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases (~90 s)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DISPIDER_CACHE", str(REPO / "build" / "bench-cache"))  # as python -m bench
    print(json.dumps(run(args.quick, log=lambda s: print(s, file=sys.stderr, flush=True)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
