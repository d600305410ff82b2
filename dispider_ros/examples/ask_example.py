"""Ask the assistant through the `ask` action with `dispider_ros.client`.

    .venv/bin/python -m dispider_ros.examples.ask_example
        starts the demo graph itself (the three installed node executables, tiny preset, a
        private namespace) and plays real footage as its camera: ../shared/data/videos when
        present, else scikit-image's photographs. Runs from a fresh clone after `make setup`.
    .venv/bin/python -m dispider_ros.examples.ask_example --namespace /assistant --no-start
        asks a graph that is already running (ros2 launch dispider_ros dispider.launch.py
        namespace:=assistant ...), which has its own camera.

It asks a present question (blocking), streams another, asks a proactive one that is
answered at the next scene changes (callbacks), cancels an answer mid-stream and a
proactive question that is still waiting.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List

from dispider_ros.client import AskClient, AskError
from dispider_ros.core.types import ErrorCode
from dispider_ros.footage import photo_frames, video_frames
from dispider_ros.paths import executable, share_dir
from dispider_ros.processes import stop_groups

NODES = ("perception_node", "decision_node", "reaction_node")
SHARED_VIDEOS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "videos"
CLIPS = ("mdn_cc0_flower.mp4", "mdn_stream-of-water.mp4", "mdn_cc0_friday.mp4")


def start_graph(namespace: str, log_dir: Path) -> List[subprocess.Popen]:
    """The three node executables, as `ros2 launch dispider_ros dispider.launch.py` starts them."""
    params = share_dir() / "config" / "dispider.yaml"
    processes = []
    for name in NODES:
        log = open(log_dir / f"{name}.log", "wb")
        processes.append(subprocess.Popen(
            [str(executable(name)), "--ros-args", "-r", f"__ns:={namespace}",
             "--params-file", str(params), "-p", "torch_threads:=1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return processes


def play_camera(node, topic: str, stop: threading.Event) -> None:
    """Publish real footage on topic at real time, clips back to back (scene changes)."""
    from sensor_msgs.msg import Image

    from dispider_ros.nodes.camera_player import rgb_to_image

    publisher = node.create_publisher(Image, topic, 10)
    videos = [SHARED_VIDEOS / name for name in CLIPS if (SHARED_VIDEOS / name).is_file()]
    clock, wall = 0.0, time.monotonic()
    while not stop.is_set():
        for video in videos or [None]:
            frames = video_frames(video, size=(320, 240)) if video else photo_frames(size=(320, 240))
            start = clock
            for t, rgb in frames:
                if stop.is_set():
                    return
                clock = start + t
                publisher.publish(rgb_to_image(rgb, clock, "camera"))
                stop.wait(max(0.0, wall + clock - time.monotonic()))
            clock += 1 / 30


def wait_active(node, namespace: str, timeout: float) -> None:
    """Wait until the three nodes report the lifecycle state `active`."""
    from lifecycle_msgs.srv import GetState

    deadline = time.monotonic() + timeout
    for name in NODES:
        client = node.create_client(GetState, f"{namespace}/{name}/get_state")
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{namespace}/{name} not active after {timeout:.0f} s")
            if client.wait_for_service(timeout_sec=1.0):
                future = client.call_async(GetState.Request())
                while not future.done() and time.monotonic() < deadline:
                    time.sleep(0.05)
                if future.done() and future.result().current_state.label == "active":
                    break
            time.sleep(0.2)
        node.destroy_client(client)


def show(assistant: AskClient) -> None:
    # 1. A present question, blocking: the final answer (or AskError saying why not). With
    #    revision on (the default) it ends revise_window_sec after the answer, reporting a
    #    revision if the scene changed meanwhile (revise=False: at the answer).
    t0 = time.monotonic()
    result = assistant.ask("What is on the screen right now?", mode="now", timeout=60)
    final = result.responses[-1]
    print(f"[ask] {result.text!r}\n      {result.outcome.name}, query {result.query_id}, "
          f"first token {final.ttft_sec:.2f} s, {final.token_count} tokens, "
          f"{time.monotonic() - t0:.2f} s in all")
    for revision in result.revisions:  # the scene changed just after: answered again
        print(f"      revises {revision.revises_response_id}: {revision.text!r}")

    # 2. The same kind of question, streamed chunk by chunk.
    print("[stream] ", end="", flush=True)
    for chunk in assistant.stream("Describe what you see.", mode="now", timeout=60):
        if chunk.revises_response_id and chunk.sequence == 0:
            print(" [revised] ", end="")
        print(chunk.text, end="", flush=True)
    print()

    # 3. A proactive question: silent until the next scene changes, answered twice.
    print("[proactive] waiting for two scene changes ...", flush=True)
    narration = assistant.ask_async(
        "Narrate each new scene as it happens.", mode="boundary", max_responses=2, expiry_sec=120,
        on_trigger=lambda t: print(f"  trigger {t.trigger_id} ({t.policy}) at "
                                   f"{t.header.stamp.sec + t.header.stamp.nanosec * 1e-9:.1f} s"),
        on_answer=lambda r: print(f"  answer: {r.text!r}"))
    result = narration.result(timeout=180)
    print(f"  ended: {result.outcome.name} with {len(result.answers)} answer(s)")

    # 4. Cancel an answer while it streams: it stops within one decode step (an answer of
    #    the tiny model takes tens of milliseconds, so it may be complete before the cancel).
    first_chunk = threading.Event()
    handle = assistant.ask_async("Describe everything you see in detail.", mode="now",
                                 on_chunk=lambda c: first_chunk.set())
    if first_chunk.wait(60):
        canceled_at = time.monotonic()
        result = handle.cancel(timeout=30)
        stopped = result.responses[-1] if result and result.responses else None
        print(f"[cancel streaming] {result.status if result else 'no result'}: "
              f"{ErrorCode(stopped.error_code).name if stopped else '-'} after "
              f"{stopped.token_count if stopped else 0} tokens, "
              f"{time.monotonic() - canceled_at:.3f} s from cancel to result")

    # 5. Cancel a proactive question that is still waiting for its event.
    waiting = assistant.ask_async("Tell me when a red car drives by.", mode="match", expiry_sec=600)
    result = waiting.cancel(timeout=30)
    print(f"[cancel waiting] {result.status}: {result.outcome.name}, "
          f"{ErrorCode(result.error_code).name}, {len(result.responses)} answer(s)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--namespace", default="", help="the assistant's namespace (default: "
                        "a private one when starting the graph, else the root)")
    parser.add_argument("--no-start", dest="start", action="store_false",
                        help="ask a graph that is already running (with its own camera)")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds to wait for the graph to come up")
    args = parser.parse_args(argv)
    namespace = args.namespace or (f"/ask_example_{os.getpid()}" if args.start else "")
    processes: List[subprocess.Popen] = []
    stop = threading.Event()
    log_dir = Path(tempfile.mkdtemp(prefix="ask_example_"))
    try:
        if args.start:
            print(f"starting the graph in {namespace} (logs in {log_dir}) ...", flush=True)
            processes = start_graph(namespace, log_dir)
        with AskClient(namespace=namespace) as assistant:
            if args.start:
                camera = threading.Thread(target=play_camera, daemon=True,
                                          args=(assistant.node, f"{namespace}/image", stop))
                camera.start()
                wait_active(assistant.node, namespace, args.timeout)
            if not assistant.wait_for_server(timeout=args.timeout):
                print(f"no ask server at {assistant.action_name}", file=sys.stderr)
                return 1
            show(assistant)
            stop.set()
    except AskError as error:
        print(f"question failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        stop.set()
        stop_groups(processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
