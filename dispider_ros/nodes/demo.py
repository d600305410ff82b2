"""The main demo: the three nodes as separate processes on real footage, trained tiny preset.

    make demo            # or: .venv/bin/python -m dispider_ros.nodes.demo [--preset NAME]

Publishes real photographs as a camera stream (shots panned and zoomed, hard cuts between
them; `--footage clips` plays the CC0 clips of ../shared/data instead), asks a
present-tense question, a proactive one ("Tell me when the rocket appears.") and a
narration, and prints triggers and streamed responses as they arrive. With the default
`tiny_trained` preset the models know these photographs (dispider_ros.world), so the
answers name what is in view and the rocket trigger fires when the rocket shot begins.

Times: the bracket of each line is the camera time when it was printed; triggers and
answers also name their evidence time (the frame they are about), which for a `now`
question is the newest frame already seen, so earlier than the question. A node that
fails to configure (no CUDA, a missing checkpoint) stops the demo at once with the node's
own error; Ctrl-C stops it cleanly (exit status 130).
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from dispider_ros import world
from dispider_ros.footage import photo_frames, video_frames
from dispider_ros.paths import executable
from dispider_ros.processes import stop_groups
from dispider_ros.spinning import stop_spinning

REPO_SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
NODES = ("perception_node", "decision_node", "reaction_node")
NAMESPACE = "/dispider_demo"
CLIPS = ("mdn_cc0_flower.mp4", "mdn_stream-of-water.mp4", "mdn_cc0_friday.mp4")
# The demo's shots (scene, seconds): the rocket comes third, so its trigger has a right time.
SHOTS = (("coffee", 5.0), ("chelsea", 4.5), ("rocket", 5.0), ("astronaut", 4.5), ("clock", 5.0),
         ("moon", 6.0))
PROACTIVE = "rocket"


def shots(seconds: float = 0.0) -> List[world.Shot]:
    """SHOTS from 0 s, played again from the start until `seconds` are covered."""
    plan, t = [], 0.0
    while not plan or t < seconds:
        for name, length in SHOTS:
            plan.append(world.Shot(world.scene(name), t, t + length))
            t += length
    return plan


def photographs(seconds: float, size=(320, 240)) -> Tuple[str, Iterator[Tuple[float, np.ndarray]]]:
    """The demo's shots of real photographs, 10 frames/s, for `seconds`."""
    plan = shots(seconds)
    listing = ", ".join(f"{s.start:.1f}s {s.scene.word}" for s in plan if s.start < seconds)
    frames = ((t, rgb) for t, rgb, _ in world.shot_frames(plan, fps=10.0, size=size, seed=7))
    return f"scikit-image photographs, panned and zoomed, cuts at: {listing}", frames


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


class StartupError(RuntimeError):
    """A node failed to configure or activate, or exited, before the graph was active."""


def node_of(logger_name: str) -> Optional[str]:
    """'dispider_demo.perception_node' -> 'perception_node' (one of NODES), else None."""
    prefix = NAMESPACE.strip("/").replace("/", ".") + "."
    name = logger_name[len(prefix):] if logger_name.startswith(prefix) else ""
    return name if name in NODES else None


class Console:
    """Subscribes to the graph's outputs and prints them as they arrive."""

    def __init__(self, node, t0: float):
        from rcl_interfaces.msg import Log
        from rclpy.qos import qos_profile_rosout_default

        from dispider_ros.msg import FrameFeature, Response, Trigger
        from dispider_ros.nodes.base import RELIABLE

        self.t0 = t0
        self.stream_start: Optional[float] = None  # monotonic time of camera time 0
        self.startup_errors: Dict[str, str] = {}  # node -> its "configure failed: ..." line
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
        # the nodes' own error lines (rosout keeps them for late joiners, 10 s)
        node.create_subscription(Log, "/rosout", self._on_log, qos_profile_rosout_default)

    def _on_log(self, msg):
        name = node_of(msg.name)
        if name and msg.level >= msg.ERROR and ("configure failed" in msg.msg
                                                or "activate failed" in msg.msg):
            with self.lock:
                self.startup_errors.setdefault(name, msg.msg)

    def now(self) -> str:
        """Camera time of the stream now (the bracket of every printed line)."""
        if self.stream_start is None:
            return f"{0.0:7.2f}s"
        return f"{time.monotonic() - self.stream_start:7.2f}s"

    def evidence(self, header) -> str:
        return f"evidence {header.stamp.sec + header.stamp.nanosec * 1e-9:.2f}s"

    def stamp(self, header) -> str:
        return f"{header.stamp.sec + header.stamp.nanosec * 1e-9:7.2f}s"

    def _on_feature(self, msg):
        with self.lock:
            self.features += 1
            if msg.clip_boundary:
                print(f"  [{self.now()}] perception: new clip {msg.clip_index} at frame "
                      f"{self.stamp(msg.header).strip()} (similarity {msg.clip_similarity:.2f})",
                      flush=True)

    def _lag(self, header) -> float:
        stamp = header.stamp.sec + header.stamp.nanosec * 1e-9
        sent = min(self.published, key=lambda s: abs(s - stamp), default=None)
        return time.monotonic() - self.published[sent] if sent is not None else float("nan")

    def _on_trigger(self, msg):
        with self.lock:
            self.triggers.append(msg)
            if msg.policy != "now":  # a now-trigger's evidence predates its question
                self.trigger_lag.append(self._lag(msg.header))
        print(f"  [{self.now()}] TRIGGER {msg.trigger_id} for {msg.query_id} "
              f"policy={msg.policy} score={msg.score:.2f} clip={msg.clip_index} "
              f"({self.evidence(msg.header)})", flush=True)

    def _on_chunk(self, msg):
        with self.lock:
            self.chunks[msg.response_id] = self.chunks.get(msg.response_id, "") + msg.text
            if msg.sequence == 0 and msg.query_id != "q-now":
                self.first_token_lag.append(self._lag(msg.header))
        if msg.sequence == 0:
            print(f"  [{self.now()}] stream {msg.response_id}: {msg.text!r} ... "
                  f"({self.evidence(msg.header)})", flush=True)

    def _on_final(self, msg):
        with self.lock:
            self.finals.append(msg)
        revises = f" (revises {msg.revises_response_id})" if msg.revises_response_id else ""
        error = f" ERROR {msg.error_code}: {msg.error}" if msg.error_code != msg.OK else ""
        print(f"  [{self.now()}] RESPONSE {msg.response_id} to {msg.query_id} via "
              f"{msg.trigger_id}{revises}: {msg.text!r} ({msg.token_count} tokens, TTFT "
              f"{msg.ttft_sec * 1000:.0f} ms, {self.evidence(msg.header)}){error}", flush=True)


FAILED_TRANSITION = re.compile(r"\]: ((?:configure|activate) failed: .*)$")


def startup_errors(console: Console, log_dir: Path) -> Dict[str, str]:
    """node -> its own "configure failed: ..." line, from /rosout or else its log file
    (rosout can miss a line logged before discovery; the file has every one)."""
    with console.lock:
        errors = dict(console.startup_errors)
    for name in NODES:
        if name in errors:
            continue
        try:
            text = (log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            match = FAILED_TRANSITION.search(line)
            if match and line.startswith("[ERROR]"):
                errors[name] = match.group(1)
                break
    return errors


def wait_active(node, console: Console, processes: List[subprocess.Popen], log_dir: Path,
                timeout: float) -> None:
    """Block until every node reports the lifecycle state `active`.

    Raises:
        StartupError: at once when a node logs a failed configure/activate (its own line)
            or exits, instead of waiting out `timeout`.
        TimeoutError: a node is still not active after `timeout`.
    """
    from lifecycle_msgs.srv import GetState

    deadline = time.monotonic() + timeout
    clients = {name: node.create_client(GetState, f"{NAMESPACE}/{name}/get_state") for name in NODES}
    pending: Dict[str, object] = {}
    active: set = set()
    while len(active) < len(NODES):
        failed = startup_errors(console, log_dir)
        for name, process in zip(NODES, processes):
            if name not in failed and process.poll() is not None:
                failed[name] = f"exited with status {process.returncode}"
        if failed:
            grace = time.monotonic() + 2.0  # the other nodes' errors (often the same cause)
            while len(failed) < len(NODES) and time.monotonic() < grace:
                _pause(0.1)
                failed = {**startup_errors(console, log_dir), **failed}
            raise StartupError("; ".join(f"{name} {error}" for name, error in failed.items())
                               + f" (logs in {log_dir}/)")
        if time.monotonic() > deadline:
            late = ", ".join(name for name in NODES if name not in active)
            raise TimeoutError(f"{late} did not become active within {timeout:.0f} s "
                               f"(logs in {log_dir}/)")
        for name in NODES:
            if name in active:
                continue
            future = pending.get(name)
            if future is None and clients[name].service_is_ready():
                pending[name] = clients[name].call_async(GetState.Request())
            elif future is not None and future.done():
                del pending[name]
                if future.result() is not None and future.result().current_state.label == "active":
                    active.add(name)
        _pause(0.1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny_trained", help="model preset (config/presets)")
    parser.add_argument("--footage", choices=("photos", "clips"), default="photos",
                        help="photos: the photographs the tiny models were trained on; clips: "
                             "the CC0 clips of ../shared/data (unknown to the tiny models)")
    parser.add_argument("--params-file", type=Path, default=None, help="node parameter YAML")
    parser.add_argument("--shared-data", type=Path, default=REPO_SHARED)
    parser.add_argument("--seconds", type=float, default=30.0, help="stream length at most")
    parser.add_argument("--logs", type=Path, default=Path("build/demo-logs"))
    args = parser.parse_args(argv)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image

    from dispider_ros.models.presets import config_file, load_preset
    from dispider_ros.msg import Query
    from dispider_ros.nodes.base import RELIABLE
    from dispider_ros.nodes.camera_player import rgb_to_image

    preset = load_preset(args.preset)
    params_file = args.params_file or config_file("dispider.yaml")
    args.logs.mkdir(parents=True, exist_ok=True)
    description, frames = footage(args.shared_data) if args.footage == "clips" else photographs(args.seconds)
    print(f"dispider_ros demo - preset {args.preset!r}: {preset.get('description', '')}")
    if args.preset == "tiny":
        print("NOTE: the tiny preset's models have random, untrained weights: the answers are "
              "noise. They prove the graph (timing, streaming, ids). For real answers run on a "
              "GPU with `--preset qwen2vl_2b` (checkpoints in the HF cache) - see README.")
    elif args.preset.startswith("tiny"):
        print("NOTE: the tiny models were trained here in seconds on 16 photographs and know only "
              "those (dispider_ros/world.py): they show that what the camera sees reaches the "
              "answer. Real checkpoints on a GPU (`--preset qwen2vl_2b`, see README) answer about "
              "the open world.")
    print(f"footage: {description}")
    wall0 = time.monotonic()
    # Ctrl-C is ours, not rclpy's: its handler would shut the context down under the spinning
    # thread (an ExternalShutdownException traceback) and leave no reason. Ours only sets a
    # flag that the main thread's waits turn into KeyboardInterrupt: raised at any bytecode,
    # it could leave the console's lock held and its callbacks (and the executor's shutdown)
    # waiting on it forever.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, lambda *_: _INTERRUPTED.set())
    node = rclpy.create_node("dispider_demo_console")
    console = Console(node, wall0)  # listening (rosout too) before the nodes start
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=_spin, args=(executor,), daemon=True)
    spinner.start()
    camera = node.create_publisher(Image, f"{NAMESPACE}/image", 5)
    queries = node.create_publisher(Query, f"{NAMESPACE}/query", RELIABLE)
    processes: List[subprocess.Popen] = []
    status, streamed = 0, False
    try:
        processes = start_nodes(args.preset, params_file, args.logs)
        print(f"starting {', '.join(NODES)} (logs in {args.logs}/) ...")
        wait_active(node, console, processes, args.logs, timeout=180)
        print(f"graph active after {time.monotonic() - wall0:.1f} s; streaming in real time")
        print("  [t] = camera time when the line is printed; evidence t = camera time of the "
              "frame a trigger or answer is about (for a `now` question the newest frame already "
              "seen, so before the question)")
        target = world.scene(PROACTIVE)
        asked = [
            (1.0, Query(query_id="q-now", text=world.NOW_QUESTION)),
            (1.5, Query(query_id=f"q-{target.word}", text=world.match_question(target),
                        mode=Query.MODE_MATCH, max_responses=1)),
            (2.0, Query(query_id="q-scene", text="Tell me every time the scene changes.",
                        mode=Query.MODE_BOUNDARY, max_responses=3)),
        ]
        start = console.stream_start = time.monotonic()
        streamed = True
        for stamp, rgb in frames:  # stamp: camera time of the frame (the footage's own)
            if stamp > args.seconds:
                break
            _pause(start + stamp - time.monotonic())  # real time; Ctrl-C checked every frame
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
            _pause(0.1)
    except StartupError as error:
        print(f"demo stopped: {error}", file=sys.stderr)
        print("fix the parameter named above (a GPU preset needs CUDA and its checkpoints, see "
              "README), or run `make demo` (tiny preset, CPU)", file=sys.stderr)
        status = 1
    except TimeoutError as error:
        print(f"demo stopped: {error}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("\ndemo stopped: interrupted (Ctrl-C); stopping the nodes ...", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        rss = {name: rss_mib(process.pid) for name, process in zip(NODES, processes)}
        stop_groups(processes)
        if stop_spinning(executor, spinner):  # out of rclpy before node and context go
            node.destroy_node()
            rclpy.try_shutdown()
    if not streamed:
        return status
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
    if args.footage == "photos":
        report_proactive(console, world.scene(PROACTIVE))
    answered = {m.query_id for m in console.finals}
    if status == 0 and "q-now" not in answered:
        print("  the present-tense question was not answered: see the node logs", file=sys.stderr)
        status = 1
    return status


def report_proactive(console: Console, target: world.Scene) -> None:
    """When the proactive question fired against when its scene came into view."""
    shot = next(s for s in shots() if s.scene == target)
    fired = [t for t in console.triggers if t.query_id == f"q-{target.word}"]
    if not fired:
        print(f"  {target.word}: in view from {shot.start:.2f}s; its trigger did not fire")
        return
    stamp = fired[0].header.stamp.sec + fired[0].header.stamp.nanosec * 1e-9
    print(f"  {target.word}: in view from {shot.start:.2f}s; its trigger fired on the frame of "
          f"{stamp:.2f}s ({stamp - shot.start:+.2f} s)")


_INTERRUPTED = threading.Event()


def _pause(seconds: float) -> None:
    """Sleep; raise KeyboardInterrupt here if Ctrl-C came before or during it."""
    if _INTERRUPTED.wait(max(seconds, 0.0)):
        raise KeyboardInterrupt


def _spin(executor) -> None:
    from rclpy.executors import ExternalShutdownException

    try:
        executor.spin()
    except ExternalShutdownException:  # the context went down first: nothing left to do
        pass


if __name__ == "__main__":
    sys.exit(main())
