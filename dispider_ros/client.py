"""A small Python client for the assistant's `ask` action (action/Ask.action), in the
spirit of nav2_simple_commander: no ids to match, no topics to echo.

    from dispider_ros.client import AskClient

    with AskClient(namespace="/assistant") as assistant:
        assistant.wait_for_server(timeout=30)
        print(assistant.ask("What is on the table now?", timeout=60).text)   # blocking
        for chunk in assistant.stream("Describe the scene"):                 # chunk by chunk
            print(chunk.text, end="", flush=True)
        watch = assistant.ask_async("Tell me when the person picks up the red cup",
                                    on_answer=lambda r: print("->", r.text))  # proactive
        ...
        watch.cancel()

By default the client runs its own ROS context and spins it on a background thread, so
its blocking calls work from any plain script. Pass `node=` to use a node you spin
yourself (a MultiThreadedExecutor, or a thread other than the one that blocks).
Callbacks run on the spinning thread: keep them short and never block in them.

Revisions: when the evidence changes shortly after an answer (a scene cut; a match that
stops matching), the assistant answers again; that answer's chunks and final carry
`revises_response_id` (the answer it replaces), `AskResult.text` is the newest complete
answer (the revision when there is one) and `AskResult.revisions` lists them. A `now`
question with revision on therefore ends the decision node's `revise_window_sec` after
its answer (camera or wall clock, whichever first); pass `revise=False` to end it at the
answer, or take the answer from `on_answer`/`stream()` as soon as it arrives.
"""
from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence

from dispider_ros.core.asks import Outcome
from dispider_ros.core.types import ErrorCode

_STATUS = {4: "succeeded", 5: "canceled", 6: "aborted"}  # action_msgs/GoalStatus values
_REVISE = {None: 0, True: 1, False: 2}  # Query.REVISE_DEFAULT / REVISE_ON / REVISE_OFF


class AskError(RuntimeError):
    """A question that did not end well: refused, failed, canceled or timed out.

    Branch on `outcome` (core.asks.Outcome) and `error_code` (core.types.ErrorCode, the
    Response constants), never on the message text. `result` holds what came back, if
    anything (answers given before a failure, partial text of a stopped one)."""

    def __init__(self, outcome: Outcome, error_code: ErrorCode, error: str,
                 result: Optional["AskResult"] = None):
        super().__init__(f"{outcome.name.lower()} ({error_code.name}): {error}")
        self.outcome, self.error_code, self.error, self.result = outcome, error_code, error, result


class AskTimeout(AskError, TimeoutError):
    """No end within the caller's timeout (the goal was canceled)."""


@dataclass(frozen=True)
class Chunk:
    """A streamed piece of an answer."""

    text: str  # new text since the previous chunk of this answer
    text_so_far: str  # the answer up to and including this chunk
    response_id: str
    trigger_id: str
    query_id: str
    sequence: int  # chunk number of this answer, from 0
    token_count: int  # tokens generated so far
    ttft_sec: float  # trigger receipt -> first token, seconds
    revises_response_id: str = ""  # a revision's chunk: the answer it replaces


@dataclass
class AskResult:
    """How a question ended (Ask.Result, typed)."""

    status: str  # succeeded | aborted | canceled (the goal's final status)
    outcome: Outcome
    query_id: str
    responses: List = field(default_factory=list)  # dispider_ros/Response finals, in order
    error_code: ErrorCode = ErrorCode.OK
    error: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def answers(self) -> List[str]:
        """The texts of the complete answers (finals with error_code OK), in order."""
        return [r.text for r in self.responses if r.error_code == ErrorCode.OK]

    @property
    def text(self) -> str:
        """The latest complete answer ("" when there is none): a revision when there is one."""
        answers = self.answers
        return answers[-1] if answers else ""

    @property
    def revisions(self) -> List:
        """The finals that revise an earlier answer (revises_response_id names it), in order."""
        return [r for r in self.responses if r.revises_response_id]


class AskHandle:
    """One question in flight (returned by AskClient.ask_async)."""

    def __init__(self, client: "AskClient", on_trigger, on_chunk, on_answer, on_feedback, on_done):
        self._client = client
        self._callbacks = (on_trigger, on_chunk, on_answer, on_feedback)
        self._on_done = on_done
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._goal_handle = None
        self._cancel_wanted = False
        self._result: Optional[AskResult] = None
        self._failure: Optional[AskError] = None
        self._finals_seen: set = set()  # response ids whose final feedback came through
        self._streamed: dict = {}  # response id -> text of its chunks seen
        self._finished = False
        self.query_id = ""  # known from the first feedback (or the result)
        self.sent_at = time.monotonic()
        self.first_feedback_at: Optional[float] = None  # monotonic time of the first feedback

    # -- public ----------------------------------------------------------------------------
    @property
    def accepted(self) -> Optional[bool]:
        """Whether the server accepted the goal; None until it answered."""
        if self._goal_handle is not None:
            return True
        return False if self._failure is not None and self._result is None else None

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the question ended or timeout (seconds); True when it ended."""
        return self._done.wait(timeout)

    def result(self, timeout: Optional[float] = None) -> AskResult:
        """The result once the question ended (whatever its status); AskTimeout if it has
        not ended within timeout (the goal keeps running), AskError if it never started."""
        if not self._done.wait(timeout):
            raise AskTimeout(Outcome.ABORTED, ErrorCode.ANSWER_TIMEOUT,
                             f"no result within {timeout} s (the question is still active)")
        if self._failure is not None:
            raise self._failure
        return self._result

    def cancel(self, wait: bool = True, timeout: float = 30.0) -> Optional[AskResult]:
        """Cancel the question (its running answer stops within one decode step); with
        wait, return its result (status canceled, the stopped answer's final listed)."""
        with self._lock:
            self._cancel_wanted = True
            goal_handle = self._goal_handle
        if goal_handle is not None and not self.done():
            goal_handle.cancel_goal_async()
        if not wait:
            return None
        try:
            return self.result(timeout)
        except AskTimeout:
            raise
        except AskError as error:
            return error.result

    # -- rclpy callbacks (spinning thread) -------------------------------------------------
    def _on_goal_response(self, future) -> None:
        try:
            goal_handle = future.result()
        except Exception as error:  # noqa: BLE001 -- the server went away mid-request
            return self._fail(AskError(Outcome.ABORTED, ErrorCode.NOT_STARTED, f"goal not sent: {error}"))
        if not goal_handle.accepted:
            return self._fail(AskError(Outcome.REJECTED, ErrorCode.QUERY_REJECTED,
                                       "the ask server rejected the goal"))
        with self._lock:
            self._goal_handle = goal_handle
            cancel = self._cancel_wanted
        goal_handle.get_result_async().add_done_callback(self._on_result)
        if cancel:
            goal_handle.cancel_goal_async()

    def _on_feedback(self, message) -> None:
        feedback = message.feedback
        if self.first_feedback_at is None:
            self.first_feedback_at = time.monotonic()
        self.query_id = feedback.query_id
        on_trigger, on_chunk, on_answer, on_feedback = self._callbacks
        if on_feedback is not None:
            on_feedback(feedback)
        if feedback.kind == feedback.KIND_TRIGGER and on_trigger is not None:
            on_trigger(feedback.trigger)
        elif feedback.kind == feedback.KIND_CHUNK:
            r = feedback.response
            with self._lock:
                self._streamed[r.response_id] = feedback.text_so_far
            if on_chunk is not None:
                on_chunk(Chunk(r.text, feedback.text_so_far, r.response_id, r.trigger_id,
                               r.query_id, r.sequence, r.token_count, r.ttft_sec,
                               r.revises_response_id))
        elif feedback.kind == feedback.KIND_FINAL:
            with self._lock:
                self._finals_seen.add(feedback.response.response_id)
            if on_answer is not None:
                on_answer(feedback.response)

    def _on_result(self, future) -> None:
        try:
            response = future.result()
        except Exception as error:  # noqa: BLE001
            return self._fail(AskError(Outcome.ABORTED, ErrorCode.NOT_STARTED, f"no result: {error}"))
        raw = response.result
        result = AskResult(status=_STATUS.get(response.status, f"status {response.status}"),
                           outcome=_enum(Outcome, raw.outcome, Outcome.ABORTED),
                           query_id=raw.query_id, responses=list(raw.responses),
                           error_code=_enum(ErrorCode, raw.error_code, ErrorCode.GENERATION_FAILED),
                           error=raw.error)
        self.query_id = self.query_id or raw.query_id
        with self._lock:
            self._result = result
            if not result.succeeded:
                self._failure = AskError(result.outcome, result.error_code, result.error, result)
        self._complete_from(result)
        self._finish()

    def _complete_from(self, result: AskResult) -> None:
        """rclpy drops feedback that comes after the result (a topic and a service do not
        keep order): each final the result lists that was not seen as feedback still reaches
        the callbacks, after a chunk with the rest of its text."""
        _, on_chunk, on_answer, _ = self._callbacks
        for final in result.responses:
            with self._lock:
                if final.response_id in self._finals_seen:
                    continue
                self._finals_seen.add(final.response_id)
                streamed = self._streamed.get(final.response_id, "")
            if on_chunk is not None and len(final.text) > len(streamed) \
                    and final.text.startswith(streamed):
                on_chunk(Chunk(final.text[len(streamed):], final.text, final.response_id,
                               final.trigger_id, final.query_id, final.sequence,
                               final.token_count, final.ttft_sec, final.revises_response_id))
            if on_answer is not None:
                on_answer(final)

    def _fail(self, error: AskError) -> None:
        self._failure = error
        self._finish()

    def _finish(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        self._done.set()
        if self._on_done is not None:
            self._on_done(self)


class AskClient:
    """Client of the `ask` action of one assistant.

    Args:
        namespace: the assistant's namespace ("" = root); the action is `<namespace>/ask`.
        node: an rclpy node to use (you spin it); None = a private context, node and
            background spinning thread, closed by close().
        action_name: the action's name relative to the namespace.
    """

    def __init__(self, namespace: str = "", node=None, action_name: str = "ask"):
        from rclpy.action import ActionClient

        from dispider_ros.action import Ask

        self._own = node is None
        self._context = self._executor = self._thread = None
        if self._own:
            import rclpy
            from rclpy.executors import SingleThreadedExecutor

            self._context = rclpy.Context()
            rclpy.init(context=self._context)
            node = rclpy.create_node(f"ask_client_{uuid.uuid4().hex[:8]}", context=self._context)
            self._executor = SingleThreadedExecutor(context=self._context)
            self._executor.add_node(node)
            self._thread = threading.Thread(target=self._spin, name="ask-client", daemon=True)
            self._thread.start()
        self.node = node
        self.action_name = f"{namespace.rstrip('/')}/{action_name}" if namespace else action_name
        self._goal_type = Ask.Goal
        self._action = ActionClient(node, Ask, self.action_name)

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self._executor.spin()
        except ExternalShutdownException:
            pass

    def close(self) -> None:
        """Destroy the action client (and the private node and context)."""
        if not self._own:
            self._action.destroy()
            return
        import rclpy

        from dispider_ros.spinning import stop_spinning

        if stop_spinning(self._executor, self._thread):
            self._action.destroy()
            self.node.destroy_node()
            rclpy.try_shutdown(context=self._context)

    def __enter__(self) -> "AskClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_for_server(self, timeout: Optional[float] = None) -> bool:
        """Block until the ask server is discovered or timeout (seconds); True when found."""
        return self._action.wait_for_server(timeout_sec=timeout)

    # -- asking ----------------------------------------------------------------------------
    def ask_async(self, text: str, mode: str = "", cameras: Sequence[str] = (),
                  max_responses: int = 0, expiry_sec: float = 0.0, threshold: float = 0.0,
                  revise: Optional[bool] = None, on_trigger: Optional[Callable] = None, on_chunk: Optional[Callable[[Chunk], None]] = None,
                  on_answer: Optional[Callable] = None, on_feedback: Optional[Callable] = None,
                  on_done: Optional[Callable[[AskHandle], None]] = None) -> AskHandle:
        """Send a question and return at once.

        Args:
            text, mode, cameras, max_responses, expiry_sec, threshold: the goal (Ask.action;
                mode "" = inferred from the text, see the README).
            revise: revise answers when the evidence changes (True/False); None = the
                decision node's revise_answers parameter.
            on_trigger: called with each dispider_ros/Trigger of the question (an answer is
                coming; a revision's names the trigger it revises in revises_trigger_id).
            on_chunk: called with each streamed Chunk.
            on_answer: called with each final dispider_ros/Response (a proactive question
                gives several).
            on_feedback: called with every raw Ask.Feedback.
            on_done: called with the handle when the question ended.
        """
        goal = self._goal_type(text=text, mode=mode, cameras=list(cameras),
                               max_responses=int(max_responses), expiry_sec=float(expiry_sec),
                               threshold=float(threshold), revise=_revise_field(revise))
        handle = AskHandle(self, on_trigger, on_chunk, on_answer, on_feedback, on_done)
        future = self._action.send_goal_async(goal, feedback_callback=handle._on_feedback)
        future.add_done_callback(handle._on_goal_response)
        return handle

    def ask(self, text: str, timeout: float = 60.0, **goal) -> AskResult:
        """Ask and block until the question ends; its result when it succeeded.

        Raises:
            AskTimeout: no end within timeout seconds (the question is canceled).
            AskError: refused, failed or canceled (outcome, error_code, result).
        """
        handle = self.ask_async(text, **goal)
        if not handle.wait(timeout):
            try:
                handle.cancel(wait=True, timeout=10.0)
            except AskError:  # the server did not confirm the cancel either
                pass
            raise AskTimeout(Outcome.ABORTED, ErrorCode.ANSWER_TIMEOUT,
                             f"no answer within {timeout} s; the question was canceled",
                             handle._result)
        return handle.result(0)

    def stream(self, text: str, timeout: float = 60.0, **goal) -> Iterator[Chunk]:
        """Ask and yield each streamed chunk as it arrives, until the question ends.

        Leaving the loop early cancels the question. Raises AskError / AskTimeout like ask()
        once the chunks are through."""
        items: "queue.Queue" = queue.Queue()
        end = object()
        handle = self.ask_async(text, on_chunk=items.put, on_done=lambda _: items.put(end), **goal)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    item = items.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise AskTimeout(Outcome.ABORTED, ErrorCode.ANSWER_TIMEOUT,
                                     f"the question did not end within {timeout} s; it was canceled") from None
                if item is end:
                    break
                yield item
            handle.result(0)  # raises for a question that did not succeed
        finally:
            if not handle.done():
                handle.cancel(wait=False)

    def cancel(self, handle: AskHandle, wait: bool = True, timeout: float = 30.0) -> Optional[AskResult]:
        """Cancel a question sent with ask_async (see AskHandle.cancel)."""
        return handle.cancel(wait=wait, timeout=timeout)


def _revise_field(revise: Optional[bool]) -> int:
    if revise is not None and not isinstance(revise, bool):
        raise ValueError(f"revise {revise!r} must be True, False or None")
    return _REVISE[revise]


def _enum(kind, value, fallback):
    try:
        return kind(value)
    except ValueError:
        return fallback


__all__ = ["AskClient", "AskHandle", "AskResult", "AskError", "AskTimeout", "Chunk"]
