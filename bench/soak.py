"""Soak run: a simulated hour of camera feed through the three node processes, accelerated.

    .venv/bin/python -m bench.soak            # `make soak`: 3600 s of camera time, ~6-7 min
    .venv/bin/python -m bench.soak --camera-sec 600 --out /tmp/soak   # a shorter look

What runs: perception_node, decision_node and reaction_node as separate processes (the
installed executables, tiny preset, `use_sim_time`), fed by this driver like a bag player:
a /clock that follows the camera stamps, and real footage (the CC0 clips of ../shared/data,
else scikit-image's photographs) published as sensor_msgs/Image at `--frame-fps` of camera
time, `--speed` times faster than real time. Every `--query-every-sec` of camera time a
question is asked, rotating through a present-tense one (answered at once), a narration
(boundary, 3 answers, expires) and a "tell me when" one (match, expires).

Recorded every `--sample-sec` of wall time: the resident set size of each node process
(VmRSS from /proc/<pid>/status; the executables exec python, so the pid is the node's),
the node's own /diagnostics (sampled frames, processed fps, memory tokens, fault counters),
and every response. Results: bench/results/soak.json and soak.png (RSS and sampled rate
against camera time).
- rss_growth: per node, (mean RSS over the last tenth of the run - mean over the first
  tenth) / mean over the first tenth; the headline is the largest of the three. Target <= 0.10.
- errors: every fault.* counter on /diagnostics of the three nodes at the end, plus every
  final response with `error` set. Target 0. Frames the latest-frame policy skipped are no
  error (that is the policy); they are reported as frames_dropped_latest_policy.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
NODES = ("perception_node", "decision_node", "reaction_node")
QUESTIONS = [  # (mode, text, max_responses, expiry_sec of camera time)
    ("now", "What is on the screen right now?", 0, 0.0),
    ("boundary", "Narrate each new scene as it happens.", 3, 120.0),
    ("match", "Tell me when the water flows over the rocks.", 2, 60.0),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--camera-sec", type=float, default=3600.0, help="camera time to stream, s")
    parser.add_argument("--frame-fps", type=float, default=2.0,
                        help="raw camera frames per second of camera time (= sample_fps: every frame sampled)")
    parser.add_argument("--speed", type=float, default=10.0, help="camera seconds per wall second")
    parser.add_argument("--query-every-sec", type=float, default=300.0, help="camera seconds between questions")
    parser.add_argument("--sample-sec", type=float, default=2.0, help="wall seconds between RSS samples")
    parser.add_argument("--size", type=int, nargs=2, default=(160, 120), metavar=("W", "H"),
                        help="camera frame size (the tiny models see <= 112x112 px anyway)")
    parser.add_argument("--max-rss-mb", type=float, default=4000.0,
                        help="abort when a node's RSS passes this (a leak), MiB")
    parser.add_argument("--replot", action="store_true", help="only redraw soak.png from soak.json")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for soak.json and soak.png (default: build/bench-results/, "
                             "or bench/results/ with --record)")
    parser.add_argument("--record", action="store_true",
                        help="write the committed reference results in bench/results/ (make soak RECORD=1)")
    return parser.parse_args(argv)


def footage(size) -> List[np.ndarray]:
    """Real frames at 2 fps of their own time, looped by the player."""
    from dispider_ros.footage import photo_frames, video_frames

    frames = []
    folder = SHARED_DATA / "videos"
    videos = sorted(folder.glob("*.mp4")) + sorted(folder.glob("*bunny*.webm")) if folder.is_dir() else []
    for video in videos:
        last = -1.0
        for t, rgb in video_frames(video, size=tuple(size)):
            if t - last >= 0.5:
                frames.append(np.ascontiguousarray(rgb))
                last = t
    source = ", ".join(v.name for v in videos)
    if not frames:
        frames = [np.ascontiguousarray(rgb) for t, rgb in photo_frames(fps=2.0, size=tuple(size))]
        source = "scikit-image sample photographs"
    return frames, source


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def start_nodes(namespace: str, log_dir: Path, env: dict) -> Dict[str, subprocess.Popen]:
    from dispider_ros.paths import executable

    common = ["-p", "autostart:=true", "-p", "preset:=tiny", "-p", "use_sim_time:=true",
              "-p", "diagnostics_period_sec:=10.0", "-r", f"__ns:={namespace}",
              "-r", f"/clock:={namespace}/clock"]
    extra = {"perception_node": [], "decision_node": ["-p", "cooldown_sec:=30.0"],
             "reaction_node": ["-p", "max_new_tokens:=32"]}
    processes = {}
    for name in NODES:
        log = open(log_dir / f"{name}.log", "wb")
        processes[name] = subprocess.Popen(
            [str(executable(name)), "--ros-args", *common, *extra[name]], stdout=log,
            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return processes


def stop_nodes(processes: Dict[str, subprocess.Popen]) -> Dict[str, int]:
    for process in processes.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
    codes = {}
    for name, process in processes.items():
        try:
            codes[name] = process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            codes[name] = process.wait(5)
    return codes


class Driver:
    """The soak's rclpy side: /clock + camera publisher, query publisher, listeners."""

    def __init__(self, namespace: str):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image

        from dispider_ros.msg import Query, Response, Trigger

        self.namespace = namespace
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("soak_driver", namespace=namespace, context=self.context)
        reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.clock_pub = self.node.create_publisher(Clock, "clock", 10)
        self.image_pub = self.node.create_publisher(Image, "image", reliable)
        self.query_pub = self.node.create_publisher(Query, "query", reliable)
        self.lock = threading.Lock()
        self.diagnostics: Dict[str, dict] = {}
        self.responses, self.triggers = [], []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self.node.create_subscription(Response, "response", self._on_response, reliable)
        self.node.create_subscription(Trigger, "trigger", self._on_trigger, reliable)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def _on_diagnostics(self, msg):
        for status in msg.status:
            for name in NODES:
                if status.name.endswith(f"{self.namespace}/{name}"):
                    with self.lock:
                        self.diagnostics[name] = {kv.key: kv.value for kv in status.values}

    def _on_response(self, msg):
        with self.lock:
            self.responses.append({"query_id": msg.query_id, "trigger_id": msg.trigger_id,
                                   "error_code": msg.error_code, "error": msg.error,
                                   "ttft_sec": msg.ttft_sec,
                                   "token_count": msg.token_count,
                                   "stamp": msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9})

    def _on_trigger(self, msg):
        with self.lock:
            self.triggers.append({"query_id": msg.query_id, "policy": msg.policy,
                                  "stamp": msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9})

    def values(self, node: str) -> dict:
        with self.lock:
            return dict(self.diagnostics.get(node, {}))

    def tick(self, stamp: float, rgb=None):
        from builtin_interfaces.msg import Time
        from rosgraph_msgs.msg import Clock

        from dispider_ros.nodes.camera_player import rgb_to_image

        self.clock_pub.publish(Clock(clock=Time(sec=int(stamp), nanosec=int(stamp % 1 * 1e9))))
        if rgb is not None:
            self.image_pub.publish(rgb_to_image(rgb, stamp, "camera"))

    def ask(self, query_id: str, mode: str, text: str, max_responses: int, expiry: float, stamp: float):
        from dispider_ros.msg import Query
        from dispider_ros.nodes.convert import header

        self.query_pub.publish(Query(header=header(stamp), query_id=query_id, text=text, mode=mode,
                                     max_responses=max_responses, expiry_sec=expiry))

    def close(self):
        import rclpy

        self.executor.shutdown(timeout_sec=2)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def faults(values: dict) -> Dict[str, int]:
    return {k: int(float(v)) for k, v in values.items() if k.startswith("fault.") and float(v) > 0}


def growth(series: List[float]) -> float:
    tenth = max(1, len(series) // 10)
    first, last = statistics.fmean(series[:tenth]), statistics.fmean(series[-tenth:])
    return (last - first) / first


def run(args) -> dict:
    run_id = os.getpid()
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + run_id % 80))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ROS_HOME", str(REPO / "build" / "soak-ros-home"))
    log_dir = REPO / "build" / "soak-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    namespace = f"/soak_{run_id}"
    frames, source = footage(args.size)
    print(f"soak: {args.camera_sec:.0f} s of camera time at {args.frame_fps:g} fps, {args.speed:g}x "
          f"real time (~{args.camera_sec / args.speed / 60:.1f} min); footage: {source} "
          f"({len(frames)} frames, looped); logs in {log_dir}", flush=True)
    processes = start_nodes(namespace, log_dir, dict(os.environ))
    driver = Driver(namespace)
    samples: List[dict] = []
    asked: List[dict] = []
    camera = f"{namespace}/image"
    start_stamp = 1_000_000.0  # any epoch works: stamps are camera time
    try:
        # Start-up: /clock runs (10x, ending before the first frame) so the nodes' sim-time
        # timers fire, until every node reports itself active on /diagnostics.
        t0 = time.monotonic()

        def ready():
            driver.tick(min(start_stamp - 1.0, start_stamp - 3000.0 + 10.0 * (time.monotonic() - t0)))
            return all(driver.values(n).get("lifecycle_state") == "active" for n in NODES) \
                and driver.image_pub.get_subscription_count() >= 1 \
                and driver.node.count_subscribers(f"{namespace}/sampled_image") >= 1
        wait(ready, 180, "the three nodes to be active")
        startup_sec = time.monotonic() - t0
        period = 1.0 / args.frame_fps
        count = int(args.camera_sec * args.frame_fps)
        wall_start = time.monotonic()
        next_sample = wall_start
        next_query = start_stamp + 30.0
        for i in range(count):
            stamp = start_stamp + i * period
            due = wall_start + i * period / args.speed
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            driver.tick(stamp, frames[i % len(frames)])
            if stamp >= next_query:
                mode, text, max_responses, expiry = QUESTIONS[len(asked) % len(QUESTIONS)]
                query_id = f"soak-{len(asked)}-{mode}"
                driver.ask(query_id, mode, text, max_responses, expiry, stamp)
                asked.append({"query_id": query_id, "mode": mode, "stamp": stamp - start_stamp})
                next_query += args.query_every_sec
            now = time.monotonic()
            if now >= next_sample:
                sample = {"wall_sec": now - wall_start, "camera_sec": stamp - start_stamp}
                for name, process in processes.items():
                    if process.poll() is not None:
                        raise RuntimeError(f"{name} exited with {process.returncode}; see {log_dir}")
                    sample[f"rss_mb.{name}"] = rss_mb(process.pid)
                    if sample[f"rss_mb.{name}"] > args.max_rss_mb:  # stop before the machine swaps
                        raise RuntimeError(f"{name} RSS {sample[f'rss_mb.{name}']:.0f} MiB > "
                                           f"--max-rss-mb {args.max_rss_mb:.0f}: a leak")
                perception, reaction = driver.values("perception_node"), driver.values("reaction_node")
                sample["sampled_frames"] = float(perception.get(f"{camera}/sampled", "nan"))
                sample["processed_fps"] = float(perception.get("processed_fps", "nan"))
                sample["memory_tokens"] = float(reaction.get("memory_tokens", "nan"))
                sample["frames_ingested"] = float(reaction.get("frames_ingested", "nan"))
                samples.append(sample)
                next_sample += args.sample_sec
                if len(samples) % 30 == 0:
                    print(f"  camera {sample['camera_sec']:6.0f} s  wall {sample['wall_sec']:5.0f} s  "
                          + "  ".join(f"{n.split('_')[0]} {sample[f'rss_mb.{n}']:.0f} MiB" for n in NODES),
                          flush=True)
        stream_wall = time.monotonic() - wall_start
        # Let the last answers and a last diagnostics round (10 s of sim time) arrive.
        end = start_stamp + count * period
        for k in range(40):
            driver.tick(end + k * 0.5)
            time.sleep(0.05)
        time.sleep(1.0)
        final = {name: driver.values(name) for name in NODES}
    finally:
        driver.close()
        codes = stop_nodes(processes)

    node_faults = {name: faults(final[name]) for name in NODES}
    with driver.lock:
        responses, triggers = list(driver.responses), list(driver.triggers)
    error_responses = [r for r in responses if r["error_code"]]
    errors = sum(sum(f.values()) for f in node_faults.values()) + len(error_responses)
    rss = {name: [s[f"rss_mb.{name}"] for s in samples] for name in NODES}
    growths = {name: round(growth(series), 4) for name, series in rss.items()}
    sampled = float(final["perception_node"].get(f"{camera}/sampled", "nan"))
    ttfts = [r["ttft_sec"] for r in responses if not r["error_code"] and r["ttft_sec"] > 0]
    result = {
        "simulated_hours": round(args.camera_sec / 3600.0, 4),
        "rss_growth": max(growths.values()),
        "errors": errors,
        "rss_growth_by_node": growths,
        "rss_mb_first_tenth": {n: round(statistics.fmean(s[:max(1, len(s) // 10)]), 1) for n, s in rss.items()},
        "rss_mb_last_tenth": {n: round(statistics.fmean(s[-max(1, len(s) // 10):]), 1) for n, s in rss.items()},
        "rss_mb_peak": {n: round(max(s), 1) for n, s in rss.items()},
        "error_counters": node_faults, "error_responses": error_responses[:20],
        "camera_sec": args.camera_sec, "speed": args.speed, "frame_fps": args.frame_fps,
        "wall_sec_streaming": round(stream_wall, 1), "wall_sec_startup": round(startup_sec, 1),
        "frames_published": count,
        "frames_sampled_perception": sampled,
        # Published but never offered to the sampler: overwritten in the depth-1 best-effort
        # camera subscription while the node was busy (the latest-frame policy at the DDS level).
        "frames_lost_before_sampler": count - float(final["perception_node"].get(f"{camera}/offered", "nan")),
        "perception_sampler": {k: float(final["perception_node"].get(f"{camera}/{k}", "nan"))
                               for k in ("offered", "sampled", "dropped", "rejected", "resets")},
        "sampled_fps_camera_time": round(sampled / args.camera_sec, 4),
        "sampled_fps_wall": round(sampled / stream_wall, 2),
        "frames_ingested_reaction": float(final["reaction_node"].get("frames_ingested", "nan")),
        "frames_dropped_latest_policy": {n: float(final[n].get("frames_dropped_latest_policy", 0))
                                         for n in ("perception_node", "reaction_node")},
        "memory_tokens_end": float(final["reaction_node"].get("memory_tokens", "nan")),
        "max_tokens": float(final["reaction_node"].get("max_tokens", "nan")),
        "queries": len(asked), "triggers": len(triggers), "final_responses": len(responses),
        "ttft_sec_median": round(statistics.median(ttfts), 4) if ttfts else None,
        "exit_codes": codes, "footage": source,
        "machine": {"cores": os.cpu_count(), "load_average_end": [round(x, 2) for x in os.getloadavg()],
                    "python": sys.version.split()[0]},
        "samples": samples,
    }
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    minutes = [s["camera_sec"] / 60.0 for s in samples]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for name in NODES:
        top.plot(minutes, [s[f"rss_mb.{name}"] for s in samples],
                 label=f"{name} (growth {100 * result['rss_growth_by_node'][name]:+.1f} %)")
    tenth = result["camera_sec"] / 600.0
    for edge in (tenth, result["camera_sec"] / 60.0 - tenth):
        top.axvline(edge, color="grey", linewidth=0.6, linestyle=":")
    top.set_ylabel("RSS (MiB)")
    top.set_title(f"Soak: {result['simulated_hours']:g} h of camera time at {result['speed']:g}x, "
                  f"{result['errors']} errors")
    top.legend(loc="center right", fontsize=8)
    rates, xs = [], []
    window = 30  # samples: diagnostics arrive once per ~wall second, so single steps jitter
    for a, b in zip(samples, samples[window:]):
        if b["camera_sec"] > a["camera_sec"] and not np.isnan(b["sampled_frames"] - a["sampled_frames"]):
            rates.append((b["sampled_frames"] - a["sampled_frames"]) / (b["camera_sec"] - a["camera_sec"]))
            xs.append((a["camera_sec"] + b["camera_sec"]) / 120.0)
    bottom.plot(xs, rates, label=f"sampled frames per camera second (perception, {window}-sample mean)",
                color="tab:green")
    bottom.axhline(result["frame_fps"], color="grey", linewidth=0.6, linestyle="--", label="target")
    bottom.set_ylabel("sampled fps")
    bottom.set_xlabel("camera time (min)")
    twin = bottom.twinx()
    twin.plot(minutes, [s["memory_tokens"] for s in samples], color="tab:purple", alpha=0.6,
              label="reaction memory tokens")
    twin.set_ylabel("memory tokens")
    lines = bottom.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    bottom.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right", fontsize=8)
    bottom.set_ylim(0, max(rates + [result["frame_fps"]]) * 1.3 if rates else None)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.out is None:
        from bench.common import results_dir

        args.out = results_dir(args.record)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        plot(json.loads((args.out / "soak.json").read_text()), args.out / "soak.png")
        return 0
    result = run(args)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / "soak.png")
    print(f"soak: {result['simulated_hours']:g} simulated h in {result['wall_sec_streaming']:.0f} s, "
          f"rss_growth {result['rss_growth']:+.3f} (by node {result['rss_growth_by_node']}), "
          f"errors {result['errors']}, sampled {result['sampled_fps_camera_time']:.3f} fps of camera "
          f"time, {result['triggers']} triggers, {result['final_responses']} answers -> "
          f"{args.out / 'soak.json'}")
    ok = result["rss_growth"] <= 0.10 and result["errors"] == 0
    print("soak: PASS (rss_growth <= 0.10, errors == 0)" if ok else "soak: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
