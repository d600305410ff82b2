"""Which DDS settings get camera-size messages across, measured: `python -m bench.dds_matrix`.

A camera process (bench.intake's `publish`) and a plain depth-1 subscriber process (`count`,
a child of this module) under one DDS setting each; received msg/s for every setting x
discovery range (default / ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) x stream x (publisher,
subscriber) reliability. Settings: default, large_data (FASTDDS_BUILTIN_TRANSPORTS=
LARGE_DATA), xml:<profile file>. The table is in the README ("Large camera images over DDS").
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional

from bench.common import REPO
from bench.intake import BENCH_STREAMS, PROFILE, STREAMS, UNSET, Case, child_env, module
from dispider_ros.processes import stop_group


# ---- child: a plain counting subscriber ----------------------------------------------------
def count_main(topic: str, reliability: str) -> None:
    """Count Image messages until stdin closes; print the received stamps as JSON."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node(f"intake_counter_{os.getpid()}")
    stamps: List[float] = []
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable"
                     else ReliabilityPolicy.BEST_EFFORT)
    node.create_subscription(Image, topic, lambda m: stamps.append(
        m.header.stamp.sec + m.header.stamp.nanosec * 1e-9), qos)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    while not done.is_set():
        executor.spin_once(timeout_sec=0.05)
    print(json.dumps({"stamps": stamps}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def dds_env(name: str, localhost: bool) -> Dict[str, str]:
    """Environment of one DDS setting (both publisher and subscriber get it)."""
    env = {**UNSET, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST" if localhost else "SUBNET"}
    if name == "large_data":
        env["FASTDDS_BUILTIN_TRANSPORTS"] = "LARGE_DATA"
    elif name.startswith("xml:"):
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = name[4:]
    elif name != "default":
        raise ValueError(f"unknown DDS setting {name!r}")
    return env


def count_once(setting: str, localhost: bool, stream: str, pub_rel: str, sub_rel: str,
               seconds: float, domain: int, sub_setting: Optional[str] = None) -> Dict:
    """One matrix cell: received msg/s of a plain depth-1 subscriber (sub_setting: the
    subscriber's own DDS setting when it differs from the publisher's)."""
    env = child_env(dds_env(setting, localhost), domain)
    sub_env = child_env(dds_env(sub_setting or setting, localhost), domain)
    topic = f"/intake_{uuid.uuid4().hex[:8]}/image"
    counter = subprocess.Popen(module("dds_matrix", "count", topic, sub_rel), env=sub_env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, start_new_session=True, cwd=REPO)
    case = Case(topic=topic, stream=stream, reliability=pub_rel, seconds=seconds, warmup=1.0)
    try:
        pub = subprocess.run(module("intake", "publish", "--match-timeout", "15",
                                    json.dumps([asdict(case)])),
                             env=env, capture_output=True, text=True, timeout=seconds + 60, cwd=REPO)
        lines = [line for line in pub.stdout.splitlines() if line.startswith("{")]
        report = json.loads(lines[-1]) if lines else {"matched": False, "error": pub.stderr[-500:]}
        time.sleep(0.5)
        out, _ = counter.communicate("", timeout=20)
        stamps = json.loads(out.strip().splitlines()[-1])["stamps"] if out.strip() else []
    finally:
        stop_group(counter)
    if not report.get("matched"):
        return {"received_per_sec": None, "note": "no match", **report}
    window = [s for s in stamps if report["window_start"] - 1e-6 <= s <= report["last_stamp"] + 1e-6]
    span = report["last_stamp"] - report["window_start"] + 1.0 / STREAMS[stream][2]
    return {"received_per_sec": round(len(window) / span, 2), "published_per_sec":
            round(STREAMS[stream][2], 2), "late": report.get("late", 0)}


def dds_matrix(settings: List[str], seconds: float = 5.0, repeats: int = 1,
               streams=BENCH_STREAMS) -> List[Dict]:
    """Every setting x discovery range x stream x (publisher, subscriber) reliability."""
    rows = []
    domain = 150 + random.randrange(60)
    combos = [("reliable", "reliable"), ("reliable", "best_effort"), ("best_effort", "best_effort")]
    for setting in settings:
        for localhost in (False, True):
            for stream in streams:
                for pub_rel, sub_rel in combos:
                    rates = [count_once(setting, localhost, stream, pub_rel, sub_rel, seconds,
                                        domain)["received_per_sec"] for _ in range(repeats)]
                    row = {"setting": setting, "localhost": localhost, "stream": stream,
                           "publisher": pub_rel, "subscriber": sub_rel, "received_per_sec": rates,
                           "load": round(os.getloadavg()[0], 2)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["count"]:  # the child: python -m bench.dds_matrix count TOPIC RELIABILITY
        count_main(argv[1], argv[2])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.dds_matrix",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="*", default=["default", "large_data", f"xml:{PROFILE}"],
                        help="default | large_data | xml:<Fast DDS profile file>")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--streams", nargs="+", default=list(BENCH_STREAMS), choices=list(STREAMS))
    args = parser.parse_args(argv)
    rows = dds_matrix(args.settings, args.seconds, args.repeats, args.streams)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
