"""The main demo: the three nodes as separate processes on real footage, tiny preset.

    make demo            # or: .venv/bin/python -m dispider_ros.nodes.demo [--preset NAME]

Publishes real clips as a camera stream, asks one present-tense and one proactive
question, and prints triggers and streamed responses as they arrive.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np

from dispider_ros.footage import photo_frames, video_frames
from dispider_ros.paths import executable

REPO_SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
NODES = ("perception_node", "decision_node", "reaction_node")
NAMESPACE = "/dispider_demo"
CLIPS = ("mdn_cc0_flower.mp4", "mdn_stream-of-water.mp4", "mdn_cc0_friday.mp4")


def footage(shared: Path, size=(320, 240)) -> Tuple[str, Iterator[Tuple[float, np.ndarray]]]:
    """Real clips back to back (scene changes between them), else real photographs."""
    videos = [shared / "videos" / name for name in CLIPS if (shared / "videos" / name).is_file()]
    if not videos:
        return ("scikit-image sample photographs played with pans and cuts (no ../shared/data)",
                photo_frames(size=size))

    def chained():
        offset = 0.0
        for video in videos:
            last = 0.0
            for t, rgb in video_frames(video, size=size):
                last = t
                yield offset + t, rgb
            offset += last + 1 / 30
    return " + ".join(v.name for v in videos) + " (CC0, ../shared/data/videos)", chained()


def start_nodes(preset: str, params_file: Path, log_dir: Path) -> List[subprocess.Popen]:
    processes = []
    for name in NODES:
        log = open(log_dir / f"{name}.log", "wb")
        processes.append(subprocess.Popen(
            [str(executable(name)), "--ros-args", "-r", f"__ns:={NAMESPACE}",
             "--params-file", str(params_file), "-p", f"preset:={preset}",
             # three processes on a small CPU: one torch thread each avoids oversubscription
             "-p", f"torch_threads:={1 if (os.cpu_count() or 1) <= 4 else 0}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return processes


def rss_mib(pid: int) -> float:
    """Resident set size of a running process (Linux /proc), MiB; NaN if unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def stop_nodes(processes: List[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


class Console:
    """Subscribes to the graph's outputs and prints them as they arrive."""

    def __init__(self, node, t0: float):
        from std_msgs.msg import String  # noqa: F401

        from dispider_ros.msg import FrameFeature, Response, Trigger
        from dispider_ros.nodes.base import RELIABLE

        self.t0 = t0
        self.features = 0
        self.triggers: List = []
        self.finals: List = []
        self.chunks: Dict[str, str] = {}
        self.published: Dict[float, float] = {}  # camera stamp -> wall time it was published
        self.trigger_lag: List[float] = []  # evidence frame published -> trigger received (s)
        self.first_token_lag: List[float] = []  # evidence frame published -> first chunk (s)
        self.lock = threading.Lock()
        node.create_subscription(FrameFeature, f"{NAMESPACE}/features", self._on_feature, RELIABLE)
        node.create_subscription(Trigger, f"{NAMESPACE}/trigger", self._on_trigger, RELIABLE)
        node.create_subscription(Response, f"{NAMESPACE}/response_stream", self._on_chunk, RELIABLE)
        node.create_subscription(Response, f"{NAMESPACE}/response", self._on_final, RELIABLE)

    def stamp(self, header) -> str:
        return f"{header.stamp.sec + header.stamp.nanosec * 1e-9:7.2f}s"

    def _on_feature(self, msg):
        with self.lock:
            self.features += 1
            if msg.clip_boundary:
                print(f"  [{self.stamp(msg.header)}] perception: new clip {msg.clip_index} "
                      f"(similarity {msg.clip_similarity:.2f})", flush=True)

    def _lag(self, header) -> float:
        stamp = header.stamp.sec + header.stamp.nanosec * 1e-9
        sent = min(self.published, key=lambda s: abs(s - stamp), default=None)
        return time.monotonic() - self.published[sent] if sent is not None else float("nan")

    def _on_trigger(self, msg):
        with self.lock:
            self.triggers.append(msg)
            if msg.policy != "now":  # a now-trigger's evidence predates its question
                self.trigger_lag.append(self._lag(msg.header))
        print(f"  [{self.stamp(msg.header)}] TRIGGER {msg.trigger_id} for {msg.query_id} "
              f"policy={msg.policy} score={msg.score:.2f} clip={msg.clip_index}", flush=True)

    def _on_chunk(self, msg):
        with self.lock:
            self.chunks[msg.response_id] = self.chunks.get(msg.response_id, "") + msg.text
            if msg.sequence == 0 and msg.query_id != "q-now":
                self.first_token_lag.append(self._lag(msg.header))
        if msg.sequence == 0:
            print(f"  [{self.stamp(msg.header)}] stream {msg.response_id}: {msg.text!r} ...",
                  flush=True)

    def _on_final(self, msg):
        with self.lock:
            self.finals.append(msg)
        revises = f" (revises {msg.revises_response_id})" if msg.revises_response_id else ""
        error = f" ERROR {msg.error_code}: {msg.error}" if msg.error_code != msg.OK else ""
        print(f"  [{self.stamp(msg.header)}] RESPONSE {msg.response_id} to {msg.query_id} via "
              f"{msg.trigger_id}{revises}: {msg.text!r} ({msg.token_count} tokens, TTFT "
              f"{msg.ttft_sec * 1000:.0f} ms){error}", flush=True)


def wait_active(node, timeout: float) -> None:
    """Block until every node reports the lifecycle state `active`."""
    from lifecycle_msgs.srv import GetState

    deadline = time.monotonic() + timeout
    for name in NODES:
        client = node.create_client(GetState, f"{NAMESPACE}/{name}/get_state")
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not become active within {timeout:.0f} s "
                                   "(see its log)")
            if client.wait_for_service(timeout_sec=0.5):
                future = client.call_async(GetState.Request())
                while not future.done() and time.monotonic() < deadline:
                    time.sleep(0.05)
                if future.done() and future.result().current_state.label == "active":
                    break
            time.sleep(0.2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="model preset (config/presets)")
    parser.add_argument("--params-file", type=Path, default=None, help="node parameter YAML")
    parser.add_argument("--shared-data", type=Path, default=REPO_SHARED)
    parser.add_argument("--seconds", type=float, default=30.0, help="stream length at most")
    parser.add_argument("--logs", type=Path, default=Path("build/demo-logs"))
    args = parser.parse_args(argv)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from dispider_ros.models.presets import config_file, load_preset
    from dispider_ros.msg import Query
    from dispider_ros.nodes.base import RELIABLE
    from dispider_ros.nodes.camera_player import rgb_to_image

    preset = load_preset(args.preset)
    params_file = args.params_file or config_file("dispider.yaml")
    args.logs.mkdir(parents=True, exist_ok=True)
    description, frames = footage(args.shared_data)
    print(f"dispider_ros demo - preset {args.preset!r}: {preset.get('description', '')}")
    if args.preset == "tiny":
        print("NOTE: the tiny preset's models have random, untrained weights: the answers are "
              "noise. They prove the graph (timing, streaming, ids). For real answers run on a "
              "GPU with `--preset qwen2vl_2b` (checkpoints in the HF cache) - see README.")
    print(f"footage: {description}")
    wall0 = time.monotonic()
    processes = start_nodes(args.preset, params_file, args.logs)
    rclpy.init()
    node = rclpy.create_node("dispider_demo_console")
    console = Console(node, wall0)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    camera = node.create_publisher(Image, f"{NAMESPACE}/image", 5)
    queries = node.create_publisher(Query, f"{NAMESPACE}/query", RELIABLE)
    status = 0
    try:
        print(f"starting {', '.join(NODES)} (logs in {args.logs}/) ...")
        wait_active(node, timeout=180)
        print(f"graph active after {time.monotonic() - wall0:.1f} s; streaming in real time")
        asked = [
            (1.0, Query(query_id="q-now", text="What is in front of the camera right now?")),
            (2.0, Query(query_id="q-scene", text="Tell me every time the scene changes.",
                        mode=Query.MODE_BOUNDARY, max_responses=3)),
        ]
        start = time.monotonic()
        for stamp, rgb in frames:  # stamp: camera time of the frame (the footage's own)
            if stamp > args.seconds:
                break
            delay = start + stamp - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            camera.publish(rgb_to_image(rgb, stamp, "demo_camera"))
            with console.lock:
                console.published[stamp] = time.monotonic()
            while asked and asked[0][0] <= stamp:
                _, query = asked.pop(0)
                query.header.stamp.sec, query.header.stamp.nanosec = int(stamp), int(stamp % 1 * 1e9)
                print(f"  [{stamp:7.2f}s] QUERY {query.query_id} ({query.mode or 'auto'}): {query.text!r}")
                queries.publish(query)
        deadline = time.monotonic() + 30
        while len(console.finals) < len(console.triggers) and time.monotonic() < deadline:
            time.sleep(0.1)
    except (TimeoutError, KeyboardInterrupt) as error:
        print(f"demo stopped: {error}", file=sys.stderr)
        status = 1
    finally:
        rss = {name: rss_mib(process.pid) for name, process in zip(NODES, processes)}
        stop_nodes(processes)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    ttfts = [m.ttft_sec for m in console.finals if m.error_code == m.OK]
    print("\nsummary:")
    print(f"  wall time {time.monotonic() - wall0:.1f} s; features {console.features}; "
          f"triggers {len(console.triggers)}; responses {len(console.finals)}")
    if ttfts:
        print(f"  time to first token (trigger received -> first token): median "
              f"{np.median(ttfts) * 1000:.0f} ms")
    if console.trigger_lag:
        print(f"  proactive: evidence frame published -> trigger received: median "
              f"{np.nanmedian(console.trigger_lag) * 1000:.0f} ms; -> first streamed token: "
              f"median {np.nanmedian(console.first_token_lag or [np.nan]) * 1000:.0f} ms")
    print("  RSS per node: " + ", ".join(f"{name} {mib:.0f} MiB" for name, mib in rss.items()))
    answered = {m.query_id for m in console.finals}
    if status == 0 and "q-now" not in answered:
        print("  the present-tense question was not answered: see the node logs", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
