"""decision_node's `ask` action server (action/Ask.action) over the decision core.

The server exists in every lifecycle state, so a goal sent to an inactive or unconfigured
node is refused with a reason (ABORTED, OUTCOME_REJECTED, QUERY_REJECTED: ROS 2's goal
response has no field for a reason). An accepted goal registers its query in the decision
core like a Query on `query` (same validation, rate limit and assigned id), then follows
its triggers (published by the node) and their answers (the reaction node's `response`
and `response_stream`) as feedback; core/asks.py decides when it is over and how. Cancel
cancels the query through the node, which tells the reaction node on `query_cancel`.
A revision (a trigger naming the one it revises, and its answer) reaches the goal like any
trigger of its query; a goal whose query completed waits out its answers' revision
windows (core/asks.py) on the camera times the node reports with `camera_time`.

Execute callbacks are coroutines that await a Future completed when the goal ends, so a
long proactive goal holds no executor thread.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.task import Future

from dispider_ros.action import Ask
from dispider_ros.core.asks import AskConfig, AskEnd, AskTracker, Outcome
from dispider_ros.core.types import ErrorCode
from dispider_ros.msg import Query, Response, Trigger
from dispider_ros.nodes.base import RELIABLE_INPUT
from dispider_ros.nodes.convert import query_from_msg, to_sec

POLL_SEC = 0.05  # answer timeouts and ended queries are noticed within this (steady clock)
CANCEL_STATE_WAIT_SEC = 1.0  # see _await_canceling


@dataclass
class _Goal:
    handle: object  # rclpy ServerGoalHandle
    done: Future  # set to the AskEnd when the goal is over
    query_id: str


class AskServer:
    """The `ask` action of a DecisionNode (node: its core, state, clock, trigger publishing,
    cancel_query)."""

    def __init__(self, node, callback_group):
        self.node = node
        self.group = callback_group
        self.tracker = AskTracker()
        self.goals: Dict[bytes, _Goal] = {}
        self.outcomes: Counter = Counter()
        self._inputs: List = []
        # Chunks and finals one at a time, chunks first when both wait (rclpy takes ready
        # subscriptions in creation order): feedback keeps the order the reaction sent.
        self._answers_group = MutuallyExclusiveCallbackGroup()
        self._timer = None
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)  # not sim time: a paused bag must not hide a dead node
        self.server = ActionServer(node, Ask, "ask", execute_callback=self._execute,
                                   goal_callback=lambda goal: GoalResponse.ACCEPT,
                                   cancel_callback=self._on_cancel, callback_group=callback_group)

    # -- lifecycle (called by the node) ---------------------------------------------------
    def configure(self, answer_timeout_sec: float) -> None:
        self.tracker.config = AskConfig(answer_timeout_sec=answer_timeout_sec)

    def activate(self) -> None:
        node = self.node
        self._inputs = [
            node.create_subscription(Response, "response_stream", self._on_chunk, RELIABLE_INPUT,
                                     callback_group=self._answers_group),
            node.create_subscription(Response, "response", self._on_final, RELIABLE_INPUT,
                                     callback_group=self._answers_group),
        ]
        self._timer = node.create_timer(POLL_SEC, self.update, callback_group=self.group,
                                        clock=self._steady)

    def deactivate(self, reason: str) -> None:
        """End every goal (ABORTED with SHUTDOWN, or CANCELED if its client asked) and stop."""
        for subscription in self._inputs:
            self.node.destroy_subscription(subscription)
        self._inputs = []
        if self._timer is not None:
            self._timer.cancel()
            self.node.destroy_timer(self._timer)
            self._timer = None
        for key, end in self.tracker.end_all(ErrorCode.SHUTDOWN, reason):
            self._finish(key, end)

    def destroy(self) -> None:
        self.deactivate("decision node shut down")
        self.server.destroy()

    def stats(self) -> Dict[str, int]:
        values = {"ask_goals_active": len(self.tracker)}
        values.update({f"ask_{outcome.name.lower()}": self.outcomes[outcome] for outcome in Outcome})
        return values

    # -- events from the node --------------------------------------------------------------
    def on_trigger(self, msg: Trigger) -> None:
        """A trigger the node is about to publish (call before publishing it)."""
        core = self.node.core
        until = core.revision_deadline(msg.trigger_id) if core is not None else None
        key = self.tracker.trigger(msg.query_id, msg.trigger_id, time.monotonic(),
                                   camera_id=msg.camera_id, stamp=to_sec(msg.header.stamp),
                                   revisable_until=until, revises_trigger_id=msg.revises_trigger_id)
        if key is not None:
            self._feedback(key, Ask.Feedback(kind=Ask.Feedback.KIND_TRIGGER, query_id=msg.query_id,
                                             trigger=msg))

    def camera_time(self, camera_id: str, stamp: float) -> None:
        """The node scored a feature of camera_id at stamp (before publishing its triggers)."""
        self.tracker.camera_time(camera_id, stamp)

    def update(self) -> None:
        """End the goals that are over (timer, and after each feature and final)."""
        for key, end in self.tracker.ended(time.monotonic()):
            self._finish(key, end)

    # -- answers from the reaction node ----------------------------------------------------
    def _on_chunk(self, msg: Response) -> None:
        hit = self.tracker.chunk(msg.query_id, msg.trigger_id, msg.response_id, msg.text,
                                 time.monotonic())
        if hit is not None:
            key, text = hit
            self._feedback(key, Ask.Feedback(kind=Ask.Feedback.KIND_CHUNK, query_id=msg.query_id,
                                             response=msg, text_so_far=text))

    def _on_final(self, msg: Response) -> None:
        hit = self.tracker.final(msg.query_id, msg.trigger_id, msg.response_id, msg.error_code,
                                 msg.error, msg, time.monotonic())
        if hit is None:
            return
        key, streamed, chunks = hit
        if len(msg.text) > len(streamed) and msg.text.startswith(streamed):
            # Its last chunks are still on their way (`response_stream` and `response` are two
            # topics): one chunk stands in for them, so feedback chunks add up to the final.
            tail = Response(header=msg.header, response_id=msg.response_id,
                            trigger_id=msg.trigger_id, query_id=msg.query_id,
                            camera_id=msg.camera_id, text=msg.text[len(streamed):], final=False,
                            sequence=chunks, revises_response_id=msg.revises_response_id,
                            ttft_sec=msg.ttft_sec, token_count=msg.token_count)
            self._feedback(key, Ask.Feedback(kind=Ask.Feedback.KIND_CHUNK, query_id=msg.query_id,
                                             response=tail, text_so_far=msg.text))
        self._feedback(key, Ask.Feedback(kind=Ask.Feedback.KIND_FINAL, query_id=msg.query_id,
                                         response=msg, text_so_far=msg.text))
        self.update()

    # -- the action ------------------------------------------------------------------------
    def _refusal(self) -> Optional[str]:
        node = self.node
        if node.state_label != "active" or node.core is None:
            name = node.get_fully_qualified_name()
            steps = "activate" if node.state_label == "inactive" else "configure, then activate"
            return (f"{name} is {node.state_label}, not active: {steps} it "
                    f"(ros2 lifecycle set {name} ...) or start it with autostart:=true")
        return None

    async def _execute(self, handle):
        key = bytes(handle.goal_id.uuid)
        if handle.is_cancel_requested:  # canceled before it started
            self.outcomes[Outcome.CANCELED] += 1
            handle.canceled()
            return self._result(AskEnd(Outcome.CANCELED, ErrorCode.CANCELED, "canceled before it started"))
        query_id, refusal = "", self._refusal()
        core = self.node.core
        if refusal is None:
            query_id = core.new_query_id()
            done = Future(executor=self.node.executor)
            done.add_done_callback(lambda _: None)  # completion wakes the executor to resume us
            self.goals[key] = _Goal(handle, done, query_id)
            self.tracker.expect(key, query_id)
            refusal = self._add_query(key, handle.request, query_id)
        if refusal is not None:
            self.goals.pop(key, None)
            self.tracker.forget(key)
            self.outcomes[Outcome.REJECTED] += 1
            self.node.get_logger().warning(f"ask goal refused: {refusal}")
            handle.abort()
            return self._result(AskEnd(Outcome.REJECTED, ErrorCode.QUERY_REJECTED,
                                       f"query rejected: {refusal}", query_id=query_id))
        if handle.is_cancel_requested:  # a cancel that came while the query was being added
            self._on_cancel(handle)
        end: AskEnd = await done
        if end.by_client:
            self._await_canceling(handle)
            handle.canceled()
        elif end.succeeded:
            handle.succeed()
        else:
            handle.abort()
        return self._result(end)

    def _add_query(self, key: bytes, goal, query_id: str) -> Optional[str]:
        """Register the goal's query in the core and publish what fires at once; the
        refusal's reason, or None."""
        node = self.node
        message = Query(text=goal.text, mode=goal.mode, cameras=list(goal.cameras),
                        max_responses=goal.max_responses, expiry_sec=goal.expiry_sec,
                        threshold=goal.threshold, revise=goal.revise)
        try:
            spec = query_from_msg(message, query_id)
            spec.stamp = node.latest_stamp  # asked now, in camera time
            query, triggers = node.core.add_query(spec, node.get_clock().now().nanoseconds * 1e-9)
        except (ValueError, TypeError) as error:
            kind = getattr(error, "reason", "invalid")
            node.health.fault(f"query_{kind}", f"ask goal {query_id!r} rejected: {error}")
            return str(error)
        node.get_logger().info(f"ask goal: query {query_id!r} mode={query.mode}: {query.spec.text!r}")
        # Its immediate triggers become pending first: a `now` query has already left the
        # core (completed), and the goal must not end before its answer does.
        node.publish_triggers(triggers)
        self.tracker.started(key, query)
        return None

    def _on_cancel(self, handle) -> CancelResponse:
        """Cancel the goal's query (the reaction node stops its answer); the goal ends
        CANCELED once the stopped answer's final arrives (or answer_timeout_sec passes)."""
        query_id = self.tracker.cancel(bytes(handle.goal_id.uuid))
        if query_id is not None:
            self.node.cancel_query(query_id, "canceled by its ask client")
            self.update()
        return CancelResponse.ACCEPT

    @staticmethod
    def _await_canceling(handle) -> None:
        """rclpy moves a goal to CANCELING right after the cancel callback returns, on the
        thread that ran it; a goal that ended in between waits for that (microseconds) so
        that `canceled()` is a valid transition."""
        deadline = time.monotonic() + CANCEL_STATE_WAIT_SEC
        while not handle.is_cancel_requested and time.monotonic() < deadline:
            time.sleep(0.001)

    def _finish(self, key: bytes, end: AskEnd) -> None:
        goal = self.goals.pop(key, None)
        if goal is None:
            return
        goal.done.set_result(end)  # first: whatever follows, the client gets its result
        self.outcomes[end.outcome] += 1
        if end.cancel_query:
            self.node.cancel_query(goal.query_id, end.error)
        line = f"ask goal {goal.query_id!r} ended: {end.outcome.name.lower()}" + \
            (f" ({end.error_code.name}: {end.error})" if end.error_code else "")
        if end.succeeded or end.by_client:  # rclpy: one severity per logging call site
            self.node.get_logger().info(line)
        else:
            self.node.get_logger().warning(line)

    def _feedback(self, key: bytes, feedback) -> None:
        goal = self.goals.get(key)
        if goal is not None:
            goal.handle.publish_feedback(feedback)

    @staticmethod
    def _result(end: AskEnd):
        return Ask.Result(outcome=int(end.outcome), query_id=end.query_id,
                          responses=list(end.finals), error_code=int(end.error_code), error=end.error)
