"""Camera intake over DDS: real-size frames from another process into the launched perception node.

    python -m bench.intake [--quick]      the intake section alone (table + JSON)

A camera process (`drive`, a child of this module: as a driver would be, a process of its
own) publishes each case in turn into the installed perception_node, started with the
shipped config/dispider.yaml, and watches its features and /diagnostics. Per case: the
share of sample_fps grid points that produced a feature (`_case_result`), received
frames/s, the node's CPU. Both processes get the same DDS setting: ours (the shipped
Fast DDS profile), then plain defaults. `publish` (a camera alone) serves the DDS matrix
(bench/dds_matrix.py) and the intake node test.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from bench.common import REPO
from dispider_ros.processes import stop_group

# (width, height, fps): a VGA camera and a 720p one (the bench); 1080p for the DDS matrix.
STREAMS = {"640x480@10": (640, 480, 10.0), "1280x720@30": (1280, 720, 30.0),
           "1920x1080@30": (1920, 1080, 30.0)}
BENCH_STREAMS = ("640x480@10", "1280x720@30")
RELIABILITIES = ("reliable", "best_effort")


@dataclass
class Case:
    """One publisher run: a stream on a topic with a reliability, for warmup + seconds."""

    topic: str
    stream: str
    reliability: str
    seconds: float
    warmup: float = 2.0


# ---- child: camera publisher --------------------------------------------------------------
def _frames(width: int, height: int, n: int = 4):
    """n distinct bgr8 frames (a moving gradient with noise: content is not what we measure)."""
    import numpy as np

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    out = []
    for k in range(n):
        base = ((x + 40 * k) % 256).astype(np.uint8)
        noise = rng.integers(0, 32, (height, width), dtype=np.uint8)
        out.append(np.ascontiguousarray(np.stack([base, (y % 256).astype(np.uint8), noise], -1)))
    return out


def _publisher_qos(reliability: str):
    """What drivers offer: reliable keep-last 10 (rmw default) or the sensor-data profile."""
    from rclpy.qos import qos_profile_sensor_data, qos_profile_system_default  # noqa: F401
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    if reliability == "reliable":
        return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    return qos_profile_sensor_data


def _open_camera(node, case: Case, match_timeout: float):
    """A publisher of the case's stream and its frames, once a subscriber matched (or None)."""
    from sensor_msgs.msg import Image

    width, height, _ = STREAMS[case.stream]
    publisher = node.create_publisher(Image, case.topic, _publisher_qos(case.reliability))
    messages = [Image(height=height, width=width, encoding="bgr8", is_bigendian=0,
                      step=width * 3, data=f.tobytes()) for f in _frames(width, height)]
    deadline = time.monotonic() + match_timeout
    while publisher.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    if publisher.get_subscription_count() < 1:
        node.destroy_publisher(publisher)
        return None, messages
    return publisher, messages


def publish_main(cases: List[Case], match_timeout: float = 60.0) -> None:
    """Run each case in turn; print one JSON line per case (published stamps and counts)."""
    import rclpy

    rclpy.init()
    node = rclpy.create_node(f"intake_camera_{os.getpid()}")
    try:
        for case in cases:
            publisher, messages = _open_camera(node, case, match_timeout)
            report = {"topic": case.topic, "matched": publisher is not None, "published": 0}
            if publisher is not None:
                report.update(_run_stream(publisher, messages, STREAMS[case.stream][2], case))
                node.destroy_publisher(publisher)
            print(json.dumps(report), flush=True)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def _run_stream(publisher, messages, fps: float, case: Case) -> Dict:
    """Publish at fps on an absolute schedule; stamps = schedule points of the wall clock."""
    period = 1.0 / fps
    total = int(round((case.warmup + case.seconds) * fps))
    t0, wall0 = time.monotonic() + 0.05, time.time() + 0.05
    late = 0
    for k in range(total):
        target = t0 + k * period
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -period:
            late += 1
        msg = messages[k % len(messages)]
        stamp = wall0 + k * period
        msg.header.stamp.sec = int(stamp)
        msg.header.stamp.nanosec = int((stamp - int(stamp)) * 1e9)
        publisher.publish(msg)
    elapsed = time.monotonic() - t0
    return {"published": total, "late": late, "first_stamp": wall0,
            "window_start": wall0 + int(round(case.warmup * fps)) * period,
            "last_stamp": wall0 + (total - 1) * period, "publish_seconds": elapsed}


# ---- child: camera + observer of the launched perception node --------------------------------
class _Observer:
    """Features (camera id, stamp) and perception's frames_received from /diagnostics."""

    def __init__(self, node, namespace: str):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from dispider_ros.msg import FrameFeature

        self.lock = threading.Lock()
        self.features: List[Tuple[str, float]] = []
        self.received: List[Tuple[float, int]] = []  # (monotonic, frames_received)
        self.values: Dict[str, str] = {}  # the latest diagnostics of the node
        self.name = f"{namespace}/perception_node"
        node.create_subscription(FrameFeature, f"{namespace}/features", self._on_feature,
                                 QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)

    def _on_feature(self, msg) -> None:
        with self.lock:
            self.features.append((msg.camera_id, msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9))

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if not status.name.endswith(self.name):
                continue
            values = {kv.key: kv.value for kv in status.values}
            if "frames_received" in values:
                with self.lock:
                    self.received.append((time.monotonic(), int(float(values["frames_received"]))))
                    self.values = values


def drive_main(namespace: str, cases: List[Case], sample_fps: float, match_timeout: float) -> None:
    """Publish each case into the node's topic in turn; print one JSON result line per case."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init()
    node = rclpy.create_node(f"intake_camera_{os.getpid()}")
    observer = _Observer(node, namespace)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.1)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        for case in cases:
            fps = STREAMS[case.stream][2]
            publisher, messages = _open_camera(node, case, match_timeout)
            if publisher is None:
                print(json.dumps({"topic": case.topic, "matched": False}), flush=True)
                continue
            t_start = time.monotonic()
            report = _run_stream(publisher, messages, fps, case)
            t_window = t_start + 0.05 + case.warmup
            t_end = time.monotonic()
            period = 1.0 / sample_fps
            grid = int(case.seconds * sample_fps + 1e-9)
            window_end = report["window_start"] + grid * period
            # The last sampled frames are still being encoded: wait for them (bounded).
            drain = time.monotonic() + 3.0
            while time.monotonic() < drain and not any(
                    c == case.topic and s >= window_end - period - 1e-6 for c, s in observer.features):
                time.sleep(0.05)
            time.sleep(1.2)  # one more diagnostics period
            node.destroy_publisher(publisher)
            with observer.lock:
                features = [s for c, s in observer.features if c == case.topic]
                received = list(observer.received)
                values = dict(observer.values)
            report.update(_case_result(case, fps, sample_fps, features, received, report,
                                       window_end, t_window, t_end))
            report["window_monotonic"] = [t_window, t_end]  # for the node's CPU time
            # the node's own account of this camera (sampler counters, reliability, drops)
            report["node"] = {k.split("/")[-1] if k.startswith(case.topic + "/") else k: v
                              for k, v in values.items() if k.startswith(case.topic + "/") or k in (
                                  "frames_dropped_latest_policy", "frames_converted", "queue_lag_ms")}
            # where sampling skipped a grid point: gaps between features of 1.5 periods or more
            ordered = sorted(features)
            report["feature_gaps_sec"] = [
                (round(a - report["window_start"], 2), round(b - a, 2))
                for a, b in zip(ordered, ordered[1:]) if b - a >= 1.5 / sample_fps]
            print(json.dumps(report), flush=True)
    finally:
        stop.set()
        spinner.join(5.0)
        node.destroy_node()
        rclpy.try_shutdown()


def _case_result(case: Case, fps: float, sample_fps: float, features: List[float],
                 received: List[Tuple[float, int]], report: Dict, window_end: float,
                 t_window: float, t_end: float) -> Dict:
    """Features per grid point of sample_fps in the window, received frames/s."""
    grid = int(round((window_end - report["window_start"]) * sample_fps))
    in_window = [s for s in features if report["window_start"] - 1e-6 <= s < window_end - 1e-6]
    # frames_received rate between the diagnostics closest to the window's ends
    inside = [(t, n) for t, n in received if t_window <= t <= t_end + 0.2]
    received_rate = None
    if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
        received_rate = (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
    return {"stream": case.stream, "publisher": case.reliability, "published_per_sec": fps,
            "received_per_sec": None if received_rate is None else round(received_rate, 2),
            "features_in_window": len(in_window), "grid_points": grid,
            "features_per_sec": round(len(in_window) / (grid / sample_fps), 3) if grid else None,
            "sampled_ratio": round(len(in_window) / grid, 3) if grid else None,
            "features_total": len(features)}


# ---- DDS settings and child processes -----------------------------------------------------------------------
CONFIG = REPO / "config"
PROFILE = CONFIG / "fastdds_large_images.xml"


UNSET = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "", "FASTDDS_BUILTIN_TRANSPORTS": "",
          "FASTDDS_DEFAULT_PROFILES_FILE": "", "FASTRTPS_DEFAULT_PROFILES_FILE": "",
          "RMW_FASTRTPS_USE_QOS_FROM_XML": ""}


def installed_profile() -> Path:
    """The shipped Fast DDS profile: installed share/dispider_ros/config, else the source's."""
    from dispider_ros.paths import share_dir

    share = share_dir()
    installed = share / "config" / PROFILE.name if share else None
    return installed if installed and installed.is_file() else PROFILE


def settings(profile: Optional[Path] = None) -> Dict[str, Dict[str, str]]:
    """The DDS settings the intake section compares (for publisher AND node): ours (the
    shipped profile, nothing else set), and plain defaults (nothing set at all)."""
    profile = profile or installed_profile()
    return {"ours": {**UNSET, "FASTDDS_DEFAULT_PROFILES_FILE": str(profile)},
            "defaults": dict(UNSET)}


def child_env(overrides: Dict[str, str], domain: int) -> Dict[str, str]:
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "PYTHONUNBUFFERED": "1"}
    for key, value in overrides.items():
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    return env


def module(name: str, *args: str) -> List[str]:
    """Command line of `python -m bench.<name> ...`."""
    return [sys.executable, "-m", f"bench.{name}", *args]


# ---- the bench section: the launched perception node ----------------------------------------
def shipped_params() -> Path:
    """The installed config/dispider.yaml (what ships), else the source tree's."""
    from dispider_ros.paths import share_dir

    share = share_dir()
    installed = share / "config" / "dispider.yaml" if share else None
    return installed if installed and installed.is_file() else CONFIG / "dispider.yaml"


def _perception_param(params: Path, name: str):
    import yaml

    data = yaml.safe_load(params.read_text()) or {}
    for key in ("/**/perception_node", "/**"):
        value = (data.get(key) or {}).get("ros__parameters", {}).get(name)
        if value is not None:
            return value
    raise KeyError(f"{name} not in {params}")


class _CpuSampler:
    """The node process's CPU time (user + system, all threads) sampled every 0.25 s."""

    def __init__(self, pid: int):
        self.path = Path(f"/proc/{pid}/stat")
        self.samples: List[Tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.wait(0.25):
            try:
                fields = self.path.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                return
            self.samples.append((time.monotonic(), (int(fields[11]) + int(fields[12])) / tick))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def percent(self, start: float, end: float) -> Optional[float]:
        """Mean CPU % of one core between two time.monotonic() points (None if unknown)."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return round(100 * (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]), 1)


def run_setting(label: str, overrides: Dict[str, str], seconds: float, warmup: float,
                log_dir: Path, node_source: Optional[Path] = None) -> Dict:
    """Launch perception_node + the camera process under one DDS setting; all four cases.

    node_source: run the node from this source tree (e.g. a `git worktree` of an older
    commit, with its own config/dispider.yaml) instead of the installed executable.
    """
    from dispider_ros.paths import executable

    params = node_source / "config" / "dispider.yaml" if node_source else shipped_params()
    sample_fps = float(_perception_param(params, "sample_fps"))
    namespace = f"/bench_intake_{os.getpid()}_{uuid.uuid4().hex[:4]}"
    pairs = [(stream, rel) for stream in BENCH_STREAMS for rel in RELIABILITIES]
    topics = [f"camera_{i}" for i in range(len(pairs))]
    cases = [Case(topic=f"{namespace}/{t}", stream=stream, reliability=rel, seconds=seconds,
                  warmup=warmup) for t, (stream, rel) in zip(topics, pairs)]
    env = child_env(overrides, 150 + random.randrange(60))
    command = [str(executable("perception_node"))]
    if node_source:
        command = [sys.executable, "-m", "dispider_ros.nodes.perception_node"]
        env["PYTHONPATH"] = str(node_source)
    # The one change to the shipped file: a topic per case. A second parameter file, since
    # `-p` loses to the file's node-specific /**/perception_node key.
    topics_file = log_dir / f"topics_{label}.yaml"
    topics_file.write_text(json.dumps({"/**/perception_node": {"ros__parameters": {
        "image_topics": topics}}}))
    log = open(log_dir / f"perception_{label}.log", "wb")
    # cwd outside the source tree: `python -m` would otherwise import the working tree.
    node = subprocess.Popen(command + ["--ros-args", "--params-file", str(params), "--params-file",
                                       str(topics_file), "-r", f"__ns:={namespace}"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=log_dir,
                            start_new_session=True)
    results = []
    cpu = _CpuSampler(node.pid)
    try:
        drive = subprocess.run(
            module("intake", "drive", namespace, json.dumps([asdict(c) for c in cases]),
                    "--sample-fps", str(sample_fps)),
            env=env, capture_output=True, text=True, cwd=REPO,
            timeout=180 + len(cases) * (seconds + warmup + 10))
        results = [json.loads(l) for l in drive.stdout.splitlines() if l.startswith("{")]
        if len(results) != len(cases):
            raise RuntimeError(f"intake ({label}): {len(results)} of {len(cases)} cases came back; "
                               f"camera process stderr ends:\n{drive.stderr[-2000:]}")
    finally:
        cpu.stop()
        stop_group(node)
        log.close()
    for r in results:
        r.pop("topic", None)
        r["node_cpu_percent"] = cpu.percent(*r.pop("window_monotonic"))
    return {"env": {k: v for k, v in overrides.items() if v}, "sample_fps": sample_fps,
            "cases": results, "sampled_ratio_min": min((r.get("sampled_ratio") or 0.0) for r in results)}


def run(quick: bool, log_dir: Optional[Path] = None, node_source: Optional[Path] = None,
        only: Optional[List[str]] = None, profile: Optional[Path] = None) -> Dict:
    """Both DDS settings (ours, then plain defaults) x the four cases."""
    # 20 grid points at 2 fps in the quick window: the 95 % bar is one missed sample (with 16
    # it could only be met by missing none); 60 in the full one.
    seconds, warmup = (10.0, 2.0) if quick else (30.0, 3.0)
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="bench_intake_"))
    out = {"protocol": {
        "streams": {k: {"width": w, "height": h, "fps": f} for k, (w, h, f) in STREAMS.items()},
        "publishers": {"reliable": "reliable keep-last 10", "best_effort": "sensor-data profile "
                       "(best effort keep-last 5)"},
        "node": "installed perception_node, shipped config/dispider.yaml (image_topics set to "
                "one topic per case), autostart", "window_sec": seconds, "warmup_sec": warmup,
        "sampled_ratio": "features with stamps in the window / sample_fps grid points in it",
        "received_per_sec": "perception's frames_received (/diagnostics) over the window",
        "logs": str(log_dir)}}
    for label, overrides in settings(profile).items():
        if only and label not in only:
            continue
        env = " ".join(f"{k}={v}" for k, v in overrides.items() if v) or "nothing set"
        print(f"  {label}: {env} (camera process and node)", flush=True)
        out[label] = run_setting(label, overrides, seconds, warmup, log_dir, node_source)
        for case in out[label]["cases"]:
            print(f"  {label:8s} {case['stream']:12s} {case['publisher']:11s} received "
                  f"{case['received_per_sec']}/{case['published_per_sec']:g} per s, features "
                  f"{case['features_per_sec']}/s = {case['sampled_ratio']} of sample_fps, node CPU "
                  f"{case['node_cpu_percent']} %", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.intake", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s windows instead of 30 s")
    parser.add_argument("--node-source", type=Path, help="run perception_node from this source "
                        "tree (PYTHONPATH) instead of the installed executable")
    parser.add_argument("--profile", type=Path, help="Fast DDS profile of 'ours' (default: the "
                        "shipped config/fastdds_large_images.xml)")
    parser.add_argument("--settings", nargs="+", choices=["ours", "defaults"],
                        help="DDS settings to run (default both)")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("publish")
    p.add_argument("cases", help="JSON list of Case fields")
    p.add_argument("--match-timeout", type=float, default=60.0)
    r = sub.add_parser("drive")
    r.add_argument("namespace")
    r.add_argument("cases", help="JSON list of Case fields")
    r.add_argument("--sample-fps", type=float, required=True)
    r.add_argument("--match-timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    if args.command == "publish":
        publish_main([Case(**c) for c in json.loads(args.cases)], args.match_timeout)
    elif args.command == "drive":
        drive_main(args.namespace, [Case(**c) for c in json.loads(args.cases)], args.sample_fps,
                   args.match_timeout)
    else:
        print(json.dumps(run(args.quick, node_source=args.node_source, only=args.settings,
                             profile=args.profile), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
