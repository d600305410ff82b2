"""P1/P2 through the graph (bench/graph_latency.py): its child processes.

    python -m bench.graph_processes camera TOPIC SECONDS
    python -m bench.graph_processes observe NAMESPACE PLAN_JSON
    python -m bench.graph_processes sequential NAMESPACE PLAN_JSON

Each prints JSON lines: {"ready": true} once it can start, then reads the camera's first
schedule point ({"wall0": t}, wall time) on stdin, and ends with its report: the camera's
counts and footage cuts, or the arm's Record (bench/graph_figures.py).
- camera: real footage as 640x480 rgb8 sensor_msgs/Image at CAMERA_FPS;
- observe (ours): watches the launched nodes' topics and asks the questions;
- sequential (baseline): the same stages in one StreamingGraph, each trigger answered
  before the next frame is taken.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Dict

from bench.graph_figures import NARRATION_ID, Record, windows

NODES = ("perception_node", "decision_node", "reaction_node")
CAMERA_FPS = 10.0
NARRATION = "Narrate what happens, step by step."
QUESTION = "Describe everything that is happening in the scene in detail."
ANSWER_TIMEOUT_SEC = 120.0  # the longest one answer may take (baseline: inline)


def _ros_record(record: Record, msg, wall: float) -> None:
    """A Response message into the record (chunk or final)."""
    stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
    if msg.final:
        record.final(trigger_id=msg.trigger_id, query_id=msg.query_id, stamp=stamp, wall=wall,
                     token_count=int(msg.token_count), error_code=int(msg.error_code),
                     prompt_tokens=int(msg.prompt_tokens), reused_tokens=int(msg.reused_tokens),
                     ttft_sec=float(msg.ttft_sec))
    else:
        record.chunk(msg.trigger_id, msg.query_id, int(msg.token_count), wall)


# ---- children ----------------------------------------------------------------------------------
def _emit(value: dict) -> None:
    print(json.dumps(value), flush=True)


def _read_start() -> float:
    """The camera's first schedule point (wall time), sent by the parent on stdin."""
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("parent closed stdin before the start")
    return float(json.loads(line)["wall0"])


class _Ros:
    """An rclpy node in its own context, spinning on a thread."""

    def __init__(self, name: str):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"{name}_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def close(self) -> None:
        import rclpy

        from dispider_ros.spinning import stop_spinning

        if stop_spinning(self.executor, self.thread):
            self.node.destroy_node()
            rclpy.try_shutdown(context=self.context)


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def camera_main(topic: str, seconds: float, match_timeout: float = 240.0) -> None:
    """Publish the footage at CAMERA_FPS from the parent's start time for `seconds`."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from bench.common import SINGLE_SHOT_CLIPS, footage
    from dispider_ros.nodes.camera_player import rgb_to_image

    stream = footage(fps=CAMERA_FPS, clips=SINGLE_SHOT_CLIPS)
    ros = _Ros("graph_bench_camera")
    try:
        # What most drivers offer (rmw default): reliable, keep-last 10.
        publisher = ros.node.create_publisher(Image, topic, QoSProfile(
            depth=10, reliability=ReliabilityPolicy.RELIABLE))
        messages = [rgb_to_image(f, 0.0, "camera") for f in stream.frames]
        _wait(lambda: publisher.get_subscription_count() >= 1, match_timeout, f"a subscriber on {topic}")
        _emit({"ready": True})
        wall0 = _read_start()
        total, late = int(round(seconds * CAMERA_FPS)), 0
        for k in range(total):
            stamp = wall0 + k / CAMERA_FPS
            delay = stamp - time.time()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0 / CAMERA_FPS:
                late += 1
            msg = messages[k % len(messages)]
            msg.header.stamp.sec = int(stamp)
            msg.header.stamp.nanosec = int((stamp - int(stamp)) * 1e9)
            publisher.publish(msg)
        _emit({"published": total, "late": late, "source": stream.source,
               "cuts": [wall0 + c for c in stream.cuts_between(0.0, seconds)]})
    finally:
        ros.close()


def observe_main(namespace: str, plan: dict) -> None:
    """Ours: watch the launched graph's topics and ask the questions; print the record."""
    from diagnostic_msgs.msg import DiagnosticArray

    from dispider_ros.msg import FrameFeature, Query, Response, Trigger
    from dispider_ros.nodes.base import RELIABLE_INPUT
    from dispider_ros.nodes.convert import header

    record = Record()
    diagnostics: Dict[str, dict] = {}
    ros = _Ros("graph_bench_observer")
    node = ros.node

    def stamp_of(msg) -> float:
        return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9

    def on_trigger(msg) -> None:
        record.trigger(msg.trigger_id, msg.query_id, msg.policy, stamp_of(msg), time.time())

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            for name in NODES:
                if status.name.endswith(f"{namespace}/{name}"):
                    diagnostics[name] = {kv.key: kv.value for kv in status.values}

    def topic(name: str) -> str:
        return f"{namespace}/{name}"

    def subscribed(name: str, node_name: str) -> bool:
        return any(info.node_name == node_name for info in node.get_subscriptions_info_by_topic(topic(name)))

    node.create_subscription(FrameFeature, topic("features"), lambda m: record.feature(stamp_of(m)),
                             RELIABLE_INPUT)
    node.create_subscription(Trigger, topic("trigger"), on_trigger, RELIABLE_INPUT)
    for name in ("response", "response_stream"):
        node.create_subscription(Response, topic(name),
                                 lambda m: _ros_record(record, m, time.time()), RELIABLE_INPUT)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 50)
    query_pub = node.create_publisher(Query, topic("query"), RELIABLE_INPUT)
    try:
        # Every node active: each creates these subscriptions when it activates.
        _wait(lambda: (subscribed("image", "perception_node") and subscribed("features", "decision_node")
                       and subscribed("trigger", "reaction_node")
                       and subscribed("sampled_image", "reaction_node")
                       and query_pub.get_subscription_count() >= 1), 300, "the three nodes active")
        _emit({"ready": True})
        plan = dict(plan, wall0=_read_start())
        win = windows(plan)
        asked = 0

        def ask(query_id: str, text: str, mode: str, cancel: bool = False) -> None:
            query_pub.publish(Query(header=header(0.0), query_id=query_id, text=text, mode=mode,
                                    cancel=cancel))  # zero stamp: "now" = the latest frame
            if not cancel:
                record.ask(query_id, time.time())

        _sleep_until(win["busy"][0])
        ask(NARRATION_ID, NARRATION, "boundary")
        while time.time() < win["busy"][1]:
            if asked - record.answered_of("busy-") < plan["outstanding"]:
                ask(f"busy-{asked}", QUESTION, "now")
                asked += 1
            time.sleep(0.01)
        _sleep_until(win["camera_end"] + 0.5)
        # Camera stopped, so no new triggers: the waiting ones (a narration trigger of the last
        # seconds) are answered before the narration ends.
        with record.lock:
            pending = {t["trigger_id"] for t in record.triggers}
        _wait(lambda: pending <= {f["trigger_id"] for f in record.to_json()["finals"]},
              2 * ANSWER_TIMEOUT_SEC, "finals of every busy trigger")
        record.extra["end_wall"] = time.time()  # cuts never spoken of count to here
        ask(NARRATION_ID, "", "", cancel=True)
        # The reaction alone: camera stopped, nothing else running, one answer at a time.
        for i in range(plan["alone"]):
            ask(f"alone-{i}", QUESTION, "now")
            _wait(lambda: record.answered_of(f"alone-{i}") >= 1, ANSWER_TIMEOUT_SEC, f"answer alone-{i}")
        time.sleep(1.2)  # one more diagnostics period
        record.extra["diagnostics"] = {name: {k: v for k, v in values.items() if k.startswith((
            "frames_", "processed_fps", "queue_lag", "fault.", "sampled", "dropped", "queue",
            "memory", f"{topic('image')}/"))} for name, values in diagnostics.items()}
        _emit(record.to_json())
    finally:
        ros.close()


def _sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        time.sleep(delay)


def sequential_main(namespace: str, plan: dict) -> None:
    """The baseline: the same stages in one StreamingGraph, each trigger answered inline."""
    from sensor_msgs.msg import Image

    from bench import models
    from bench.common import set_threads
    from dispider_ros import compose
    from dispider_ros.core.queries import QueryRejected
    from dispider_ros.core.sampler import LatestSlot, RejectedFrame
    from dispider_ros.core.types import QuerySpec
    from dispider_ros.imaging import message_to_rgb8
    from dispider_ros.nodes.camera_input import camera_qos
    from rclpy.qos import QoSReliabilityPolicy

    settings = {node: models.node_settings(node, plan["overrides"][node]) for node in NODES}
    set_threads(settings["perception_node"]["torch_threads"])
    record = Record()

    def on_response(event) -> None:
        wall = time.time()
        if event.final:
            record.final(trigger_id=event.trigger_id, query_id=event.query_id, stamp=event.stamp,
                         wall=wall, token_count=int(event.token_count),
                         error_code=int(event.error_code),
                         prompt_tokens=int(event.extras.get("prompt_tokens", 0) or 0),
                         reused_tokens=int(event.extras.get("reused_tokens", 0) or 0),
                         ttft_sec=float(event.ttft_sec))
        else:
            record.chunk(event.trigger_id, event.query_id, int(event.token_count), wall)

    def on_trigger(trigger) -> None:
        record.trigger(trigger.trigger_id, trigger.query_id, trigger.policy, trigger.stamp, time.time())

    composition = compose.build_graph(settings, on_response, answer_timeout_sec=ANSWER_TIMEOUT_SEC,
                                      on_trigger=on_trigger, id_prefix="seq")
    graph = composition.graph
    camera_id = f"{namespace}/image"  # the camera id perception_node gives this topic
    slot: LatestSlot = LatestSlot()

    def on_image(msg) -> None:  # stamp-first sampling; only due messages are kept
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        try:
            index = graph.take(camera_id, stamp)
        except RejectedFrame:
            return
        if index is not None:
            slot.put((msg, stamp, index))

    ros = _Ros("graph_bench_sequential")
    try:
        ros.node.create_subscription(Image, camera_id, on_image, camera_qos(QoSReliabilityPolicy.RELIABLE))
        _emit({"ready": True})
        plan = dict(plan, wall0=_read_start())
        win = windows(plan)
        pending = sorted((win["busy"][0] + offset, query_id, mode, text)
                         for offset, query_id, mode, text in plan["asks"])
        latest, rejected = None, 0
        while time.time() < win["camera_end"] + 1.0:
            item = slot.get(timeout=0.05)
            if item is not None:
                msg, stamp, index = item
                frame = graph.frame(camera_id, stamp, index, message_to_rgb8(msg), msg.header.frame_id)
                graph.process([frame])  # triggers answered before it returns
                record.feature(stamp)
                latest = stamp
            if pending and latest is not None and pending[0][0] <= time.time():
                _, query_id, mode, text = pending.pop(0)  # one question per loop step
                record.ask(query_id, time.time())
                try:
                    graph.ask(QuerySpec(query_id=query_id, text=text, mode=mode, stamp=latest), latest)
                except QueryRejected:
                    rejected += 1
        record.extra.update(end_wall=time.time(), not_asked=len(pending), rejected=rejected,
                            due_overwritten=slot.overwritten)
        graph.wait_idle(ANSWER_TIMEOUT_SEC)
        _emit(record.to_json())
    finally:
        ros.close()
        composition.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.graph_processes",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("camera")
    c.add_argument("topic")
    c.add_argument("seconds", type=float)
    for name in ("observe", "sequential"):
        p = sub.add_parser(name)
        p.add_argument("namespace")
        p.add_argument("plan", type=Path, help="a JSON file (a full run's plan is over the "
                       "128 KB that Linux allows one argument)")
    args = parser.parse_args(argv)
    if args.command == "camera":
        camera_main(args.topic, args.seconds)
    elif args.command == "observe":
        observe_main(args.namespace, json.loads(args.plan.read_text()))
    else:
        sequential_main(args.namespace, json.loads(args.plan.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
