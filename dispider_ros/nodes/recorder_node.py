"""recorder_node: write a live graph's queries, triggers and responses to a JSON-lines run record.

On a robot, run it beside the graph (same namespace) to keep every question, decision and
answer of a session, re-scorable later with ``python -m dispider_ros.eval score``:

    ros2 run dispider_ros recorder_node --ros-args -r __ns:=/robot \
        -p output:=/data/session.jsonl -p t0:=1700000000.0 -p record_chunks:=false

Parameters: ``output`` (file, appended to), ``t0`` (camera stamp of "time 0": record stamps
are seconds after it, as annotation files use; 0 = absolute stamps), ``record_chunks``
(also streamed chunks), ``record_queries`` (the ``query`` topic). The format and why it is
JSON lines: `dispider_ros.eval.record`.

`OutputRecorder` is the reusable part: the live replay player records with it too.
"""
from __future__ import annotations

import threading
from typing import Callable, Dict, Optional

import rclpy
from rclpy.node import Node

from dispider_ros.eval.record import RunRecorder
from dispider_ros.msg import Query, Response, Trigger
from dispider_ros.nodes.base import RELIABLE, spin
from dispider_ros.nodes.convert import clip_from_msg, response_cost, to_sec


class OutputRecorder:
    """Subscribes to `<namespace>/{query,trigger,response,response_stream}` and records them.

    Args:
        node: the node that owns the subscriptions.
        recorder: where the records go.
        namespace: the graph's namespace ("" = the node's own, relative names).
        camera_prefix: removed from camera ids before recording (a replay's private namespace).
        clock: camera time now, for `emit_stamp` of answers (default: the node's clock).
        queries: record the `query` topic (off when the caller records its own queries).
        chunks: subscribe to `response_stream` too.
    """

    def __init__(self, node: Node, recorder: RunRecorder, namespace: str = "",
                 camera_prefix: str = "", clock: Optional[Callable[[], float]] = None,
                 queries: bool = True, chunks: bool = False):
        self.node = node
        self.recorder = recorder
        self.camera_prefix = camera_prefix
        self.clock = clock or (lambda: node.get_clock().now().nanoseconds * 1e-9)
        self.lock = threading.Lock()
        self.triggers: Dict[str, float] = {}  # trigger id -> abs stamp
        self.revisions: Dict[str, str] = {}  # revision trigger id -> its revision_reason
        self.answered: Dict[str, str] = {}  # trigger id -> response id (finals only)
        self.rejected = 0

        def topic(name: str) -> str:
            return f"{namespace.rstrip('/')}/{name}" if namespace else name

        self.subscriptions = [
            node.create_subscription(Trigger, topic("trigger"), self._on_trigger, RELIABLE),
            node.create_subscription(Response, topic("response"), self._on_response, RELIABLE),
        ]
        if chunks:
            self.subscriptions.append(node.create_subscription(
                Response, topic("response_stream"), self._on_response, RELIABLE))
        if queries:
            self.subscriptions.append(node.create_subscription(
                Query, topic("query"), self._on_query, RELIABLE))

    def camera(self, camera_id: str) -> str:
        if self.camera_prefix and camera_id.startswith(self.camera_prefix + "/"):
            return camera_id[len(self.camera_prefix):]
        return camera_id

    def pending(self) -> int:
        """Triggers recorded without a final answer yet."""
        with self.lock:
            return sum(1 for t in self.triggers if t not in self.answered)

    def _on_query(self, msg: Query) -> None:
        if msg.cancel:
            self.recorder.write({"type": "cancel", "query_id": msg.query_id,
                                 "abs_stamp": to_sec(msg.header.stamp)})
            return
        stamp = to_sec(msg.header.stamp) or self.clock()
        self.recorder.query(msg.query_id or "(assigned by decision_node)", stamp, msg.text,
                            msg.mode or "auto", ",".join(self.camera(c) for c in msg.cameras))

    def _on_trigger(self, msg: Trigger) -> None:
        stamp = to_sec(msg.header.stamp)
        revision = {"revises_trigger_id": msg.revises_trigger_id,
                    "revision_reason": msg.revision_reason} if msg.revises_trigger_id else {}
        with self.lock:
            self.triggers[msg.trigger_id] = stamp
            if revision:
                self.revisions[msg.trigger_id] = msg.revision_reason
        self.recorder.trigger(msg.trigger_id, msg.query_id, stamp, self.camera(msg.camera_id),
                              msg.policy, float(msg.score), msg.frame_index, msg.clip_index,
                              to_sec(msg.clip_start), clock_abs=self.clock(),
                              retrieved_clips=[clip_from_msg(c) for c in msg.retrieved_clips], **revision)

    def _on_response(self, msg: Response) -> None:
        if msg.final:
            with self.lock:
                if msg.trigger_id:
                    self.answered[msg.trigger_id] = msg.response_id
                elif msg.error_code == Response.QUERY_REJECTED:
                    self.rejected += 1
        ttft = float(msg.ttft_sec) if msg.final and msg.ttft_sec > 0 else None
        with self.lock:
            reason = self.revisions.get(msg.trigger_id, "") if msg.final else ""
        self.recorder.response(
            msg.response_id, msg.trigger_id, msg.query_id, to_sec(msg.header.stamp),
            self.camera(msg.camera_id), msg.text, msg.final, sequence=msg.sequence,
            ttft_sec=ttft, emit_abs_stamp=self.clock() if msg.final else None,
            token_count=msg.token_count, error_code=msg.error_code, error=msg.error,
            revises_response_id=msg.revises_response_id, **response_cost(msg),
            **({"revision_reason": reason} if reason else {}))


class RecorderNode(Node):
    """A plain node: records its namespace's graph outputs to `output`."""

    def __init__(self, **kwargs):
        super().__init__("recorder_node", **kwargs)
        output = self.declare_parameter("output", "dispider_run.jsonl").value
        t0 = self.declare_parameter("t0", 0.0).value
        chunks = self.declare_parameter("record_chunks", False).value
        queries = self.declare_parameter("record_queries", True).value
        self.recorder = RunRecorder(output, t0=t0, chunks=chunks)
        self.recorder.run("start", mode="recorder", node=self.get_fully_qualified_name(), t0=t0)
        self.outputs = OutputRecorder(self, self.recorder, queries=queries, chunks=chunks)
        self.get_logger().info(f"recording queries, triggers and responses to {output}")

    def release(self) -> None:
        """Write the closing record (called once by nodes.base.spin on shutdown)."""
        self.recorder.run("end", system={"recorded": dict(self.recorder.counts)})
        self.recorder.close()


def main(args=None) -> None:
    rclpy.init(args=args)
    spin([RecorderNode()], num_threads=1)


if __name__ == "__main__":
    main()
