"""live_replay: play a recording into a running node graph and record what it answers.

The player of the live evaluation mode (`dispider_ros.eval.replay.run_live` starts it
beside the three node processes, which run with ``use_sim_time:=true``):
  - publishes each camera message of the bag with its original header stamp on
    ``<namespace><topic>`` (raw Image or CompressedImage, reliable), and ``/clock``
    (rosgraph_msgs/Clock) = the newest stamp published, paced at ``--rate`` times real
    time by the stamps;
  - publishes the annotation's queries on ``<namespace>/query`` just before the first frame
    at or after their time (header stamp = that camera time), recording each one;
  - records triggers and responses (`recorder_node.OutputRecorder`) to the run record,
    with ``emit_stamp`` = the camera clock when the final answer arrived;
  - after the last frame keeps ``/clock`` running and waits until perception has sent the
    feature of the last sampled frame, the decision node has processed it (its
    /diagnostics), and every trigger has its final answer (each wait bounded by a timeout);
  - ends the record with system figures from the nodes' /diagnostics.

    python -m dispider_ros.nodes.live_replay --bag B --annotations A --out run.jsonl \
        --namespace /ns --rate 2 [--camera-topic /camera/image_raw]

Why it lives in `nodes`, not `eval`: it is an rclpy process, installed as an executable
beside the nodes (lib/dispider_ros/live_replay), and it reuses the nodes' message
conversion and QoS; `eval` stays importable without rclpy (a test imports it with every
ROS module blocked) and only starts this player as a process.
"""
from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from typing import Dict, List, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image

from dispider_ros.core.sampler import FrameSampler, RejectedFrame, SamplerConfig
from dispider_ros.eval import annotations as ann
from dispider_ros.eval import bagio
from dispider_ros.eval.record import RunRecorder
from dispider_ros.eval.replay import (advance, camera_progress, recording_t0, schedule,
                                      select_recording)
from dispider_ros.msg import FrameFeature, Query
from dispider_ros.nodes.base import RELIABLE
from dispider_ros.nodes.convert import header, to_sec, to_time
from dispider_ros.nodes.recorder_node import OutputRecorder
from dispider_ros.spinning import stop_spinning

CAMERA_QOS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=10,
                        reliability=QoSReliabilityPolicy.RELIABLE,
                        durability=QoSDurabilityPolicy.VOLATILE)
NODES = ("perception_node", "decision_node", "reaction_node")
_DOT = np.zeros((1, 1, 3), np.uint8)  # stands in for an image when counting sampled frames


def to_ros_image(frame: bagio.SourceFrame):
    """A bag message (rosbags object or video frame) -> an rclpy Image/CompressedImage."""
    msg = frame.msg
    head = header(frame.stamp, frame.frame_id)
    if frame.kind == "compressed":
        return CompressedImage(header=head, format=msg.format, data=bytes(msg.data))
    return Image(header=head, height=int(msg.height), width=int(msg.width), encoding=msg.encoding,
                 is_bigendian=int(msg.is_bigendian), step=int(msg.step), data=bytes(msg.data))


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text


class Player:
    """Publishes the recording, watches the graph, records outputs."""

    def __init__(self, node, args, source: bagio.CameraSource, topics: List[bagio.TopicInfo],
                 recorder: RunRecorder):
        self.node = node
        self.args = args
        self.ns = args.namespace.rstrip("/")
        self.source = source
        self.topics = topics
        self.recorder = recorder
        self.clock_now = 0.0
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # notified on features and diagnostics
        self.images = {
            t.topic: node.create_publisher(CompressedImage if t.kind == "compressed" else Image,
                                           self.ns + t.topic, CAMERA_QOS) for t in topics}
        self.clock_pub = node.create_publisher(Clock, "/clock", 10)
        self.query_pub = node.create_publisher(Query, f"{self.ns}/query", RELIABLE)
        self.outputs = OutputRecorder(node, recorder, self.ns, camera_prefix=self.ns,
                                      clock=lambda: self.clock_now, queries=False,
                                      chunks=args.chunks)
        self.features: Dict[str, float] = {}  # camera -> newest feature stamp
        self.feature_count = 0
        self.feature_sub = node.create_subscription(FrameFeature, f"{self.ns}/features",
                                                    self._on_feature, RELIABLE)
        self.diagnostics: Dict[str, Dict[str, object]] = {}  # node name -> latest values
        self.diagnostics_at: Dict[str, float] = {}  # node name -> monotonic time of arrival
        self.features_by_camera: Dict[str, int] = {}
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)

    # -- callbacks -----------------------------------------------------------------------
    def _on_feature(self, msg) -> None:
        camera = self.outputs.camera(msg.camera_id)
        with self.lock:
            self.feature_count += 1
            self.features_by_camera[camera] = self.features_by_camera.get(camera, 0) + 1
            self.features[camera] = max(self.features.get(camera, -math.inf), to_sec(msg.header.stamp))
            self.changed.notify_all()

    def _on_diagnostics(self, msg) -> None:
        prefix = f"dispider_ros: {self.ns}/"
        for status in msg.status:
            if status.name.startswith(prefix):
                name = status.name[len(prefix):]
                with self.lock:
                    self.diagnostics[name] = {kv.key: _number(kv.value) for kv in status.values}
                    self.diagnostics_at[name] = time.monotonic()
                    self.changed.notify_all()

    # -- helpers -------------------------------------------------------------------------
    def publish_clock(self, stamp: float) -> None:
        self.clock_now = max(self.clock_now, stamp)
        self.clock_pub.publish(Clock(clock=to_time(self.clock_now)))

    def wait(self, condition, timeout: float, what: str, tick=None) -> bool:
        """Block until condition() holds (checked on every feature/diagnostics message and
        every 50 ms); False, with a message on stderr, after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not condition():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    print(f"[live] timed out after {timeout:.0f} s waiting for {what}",
                          file=sys.stderr, flush=True)
                    return False
                self.changed.wait(min(0.05, remaining))
                if tick is not None:
                    tick()
        return True

    def missing(self) -> List[str]:
        """What the graph still lacks before playback can start (empty = ready)."""
        trigger_sub, response_sub = self.outputs.subscriptions[:2]
        checks = [(f"{topic} subscribed by perception", pub.get_subscription_count() >= 1)
                   for topic, pub in self.images.items()]
        checks += [("sampled_image subscribed by reaction_node",
                    self.node.count_subscribers(f"{self.ns}/sampled_image") >= 1),
                   ("trigger subscribed by reaction_node",
                    self.node.count_subscribers(f"{self.ns}/trigger") >= 2),  # + our recorder
                   ("query subscribed by decision_node", self.query_pub.get_subscription_count() >= 1),
                   ("/clock subscribed by the 3 nodes (use_sim_time)",
                    self.clock_pub.get_subscription_count() >= 3),
                   ("trigger published by decision_node", trigger_sub.get_publisher_count() >= 1),
                   ("response published by decision and reaction", response_sub.get_publisher_count() >= 2),
                   ("features published by perception", self.feature_sub.get_publisher_count() >= 1)]
        return [what for what, ok in checks if not ok]

    def ask(self, item) -> None:
        q = item.query
        cameras = [self.ns + q.camera] if q.camera else []
        self.recorder.query(q.query_id, item.abs_stamp, q.text, q.mode, q.camera)
        self.query_pub.publish(Query(header=header(item.abs_stamp), query_id=q.query_id,
                                     text=q.text, mode=q.mode, cameras=cameras))

    # -- the run -------------------------------------------------------------------------
    def play(self, queue, t0: float, duration: float) -> Dict[str, object]:
        args = self.args
        sampler = FrameSampler(SamplerConfig(sample_fps=args.sample_fps))
        expected: Dict[str, float] = {}  # camera -> stamp of its last frame perception samples
        progress = camera_progress("live", duration, not args.quiet)
        cameras = [t.topic for t in self.topics]
        first = None
        published = 0
        wall0 = started = time.monotonic()
        for frame in self.source.frames(cameras):
            if first is None:
                first = frame.stamp
                self.publish_clock(frame.stamp)
            delay = wall0 + (frame.stamp - first) / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing to the recording's own timing
            while queue and queue[0].abs_stamp <= frame.stamp:
                self.ask(queue.pop(0))
            self.publish_clock(frame.stamp)
            self.images[frame.topic].publish(to_ros_image(frame))
            published += 1
            try:
                due = sampler.offer(frame.topic, frame.stamp, _DOT) is not None
            except RejectedFrame:
                due = False
            if due:
                expected[frame.topic] = frame.stamp
                if args.sync:  # pause the recording (and its clock) until perception has it
                    paused = time.monotonic()
                    self.wait(lambda: self.features.get(frame.topic, -math.inf) >= frame.stamp - 1e-6,
                              args.sync_timeout, f"the feature of {frame.topic} at {frame.stamp:.3f}")
                    wall0 += time.monotonic() - paused
            advance(progress, frame.stamp - t0, f"features {self.feature_count} triggers "
                    f"{len(self.outputs.triggers)} answers {len(self.outputs.answered)}")
        for item in queue:
            self.ask(item)
        wall = time.monotonic() - started
        last = self.clock_now
        end = time.monotonic()

        def tick():  # sim time keeps running after the recording, at the same rate
            self.publish_clock(last + (time.monotonic() - end) * args.rate)

        self.wait(lambda: all(self.features.get(cam, -math.inf) >= stamp - 1e-6
                              for cam, stamp in expected.items()),
                  args.drain_timeout, "the features of the last sampled frames", tick)
        with self.lock:
            seen, mark = self.feature_count, time.monotonic()

        def reported() -> bool:  # fresh /diagnostics from every node, decision past every feature
            decision = self.diagnostics.get("decision_node", {})
            return float(decision.get("features", -1)) >= seen and \
                all(self.diagnostics_at.get(name, -math.inf) > mark for name in NODES)

        self.wait(reported, min(10.0, args.drain_timeout),
                  "fresh diagnostics, decision_node past every feature", tick)
        self.wait(lambda: self.outputs.pending() == 0, args.drain_timeout,
                  "a final answer to every trigger", tick)
        advance(progress, last - t0, f"done: triggers {len(self.outputs.triggers)} answers "
                f"{len(self.outputs.answered)}", final=True)
        return self.figures(first, last, wall, published, expected)

    def figures(self, first, last, wall, published, expected) -> Dict[str, object]:
        with self.lock:
            diag = {k: dict(v) for k, v in self.diagnostics.items()}
        perception = diag.get("perception_node", {})
        camera_sec = (last - first) if first is not None else 0.0
        sampled = {}
        for t in self.topics:
            value = perception.get(f"{self.ns}{t.topic}/sampled")
            sampled[t.topic] = int(value) if isinstance(value, float) else \
                self.features_by_camera.get(t.topic, 0)
        dropped = {name: int(values["frames_dropped_latest_policy"]) for name, values in diag.items()
                   if isinstance(values.get("frames_dropped_latest_policy"), float)}
        return {
            "mode": "live", "rate": self.args.rate, "frames": published,
            "camera_seconds": camera_sec, "wall_seconds": wall,
            "speed_factor": camera_sec / wall if wall > 0 else None,
            "sampled_frames": sampled,
            "sampled_fps": {cam: (n / camera_sec if n is not None and camera_sec > 0 else None)
                            for cam, n in sampled.items()},
            "expected_sampled_frames_last_stamp": {cam: s - self.recorder.t0 for cam, s in expected.items()},
            "features_received": self.feature_count,
            "dropped_frames": sum(dropped.values()) if dropped else None,
            "dropped_frames_by_node": dropped,
            "perception_processed_fps": perception.get("processed_fps"),
            "perception_ms_per_frame": perception.get("process_ms_per_frame"),
            "queue_lag_ms": perception.get("queue_lag_ms"),
            "triggers": len(self.outputs.triggers), "answered": len(self.outputs.answered),
            "rejected_queries": self.outputs.rejected,
            "diagnostics": diag,
        }


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bag", required=True, help="rosbag2 folder/file, ROS 1 bag or video")
    parser.add_argument("--annotations", required=True, help="annotation file")
    parser.add_argument("--recording", default=None, help="recording id in the annotation file")
    parser.add_argument("--out", required=True, help="run record (JSON lines, appended)")
    parser.add_argument("--namespace", required=True, help="the graph's namespace, e.g. /eval")
    parser.add_argument("--camera-topic", action="append", default=[], help="topic(s) to play")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed (1 = real time)")
    parser.add_argument("--sample-fps", type=float, default=2.0, help="perception's sample_fps")
    parser.add_argument("--preset", default="", help="recorded in the run record")
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--sync", action="store_true",
                        help="after each frame perception samples, pause until its feature is out")
    parser.add_argument("--sync-timeout", type=float, default=30.0,
                        help="--sync: longest pause for one feature (s)")
    parser.add_argument("--chunks", action="store_true", help="record streamed chunks too")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if not (args.rate > 0 and math.isfinite(args.rate)):
        parser.error(f"--rate {args.rate} must be > 0")
    if not args.namespace.startswith("/"):
        parser.error(f"--namespace {args.namespace!r} must be absolute")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse(argv)
    source = bagio.open_source(args.bag)
    topics = source.select(args.camera_topic or None)
    cameras = [t.topic for t in topics]
    recording = select_recording(ann.load(args.annotations), args.bag, args.recording)
    t0 = recording_t0(recording, source, cameras)
    duration = recording.duration or source.duration_hint()
    rclpy.init(args=["--ros-args", "-p", "use_sim_time:=false"])
    node = rclpy.create_node("dispider_live_replay")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=lambda: _spin(executor), daemon=True)
    spinner.start()
    status = 0
    with RunRecorder(args.out, t0=t0, chunks=args.chunks) as recorder:
        player = Player(node, args, source, topics, recorder)
        try:
            if not args.quiet:
                print(f"[live] waiting for the graph in {args.namespace} ...", file=sys.stderr, flush=True)
            if not player.wait(lambda: not player.missing(), args.startup_timeout,
                               f"the three nodes to be active in {args.namespace}"):
                print(f"[live] still missing: {'; '.join(player.missing())}", file=sys.stderr)
                return 3
            recorder.run("start", mode="live", bag=str(args.bag), storage=source.storage,
                         recording_id=recording.recording_id, t0=t0, cameras=cameras,
                         rate=args.rate, sync=args.sync, namespace=args.namespace,
                         preset=args.preset)
            figures = player.play(schedule(recording, t0), t0, duration)
            recorder.run("end", system=figures)
            if not args.quiet:
                print(f"[live] {figures['camera_seconds']:.2f} s of camera time played in "
                      f"{figures['wall_seconds']:.2f} s ({figures['speed_factor']:.2f}x); "
                      f"{figures['triggers']} triggers, {figures['answered']} answered",
                      file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            status = 130
        finally:
            if stop_spinning(executor, spinner):
                node.destroy_node()
                rclpy.try_shutdown()
            source.close()
    return status


def _spin(executor) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass


if __name__ == "__main__":
    sys.exit(main())
