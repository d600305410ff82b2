"""Bookkeeping of the `ask` action (action/Ask.action): which answers each goal waits on,
when it is over and how it ended. ROS-free; decision_node's ask server feeds it.

A goal holds one query of the decision core. It waits on every trigger that query fires
(pending from the trigger until its final answer) and ends when nothing is pending and
the query is over:
  - the query completed: OUTCOME_ANSWERED for a `now` question, else MAX_RESPONSES;
  - it expired (camera time): EXPIRED;
  - the client canceled the goal: CANCELED (the caller cancels the query, which stops the
    reaction's running answer; its final, CANCELED, still arrives and is listed);
  - the query was canceled or replaced by someone else on the `query` topic: CANCELED.
A goal whose query completed while one of its answers may still be revised (revision on:
the decision core gave the trigger a deadline, see core.decision) stays open until that
answer's revision window is over - its camera's time (the newest feature stamp the node
saw) reached the deadline, or as many wall-clock seconds as the window passed since the
answer's final, whichever comes first, so a stopped camera never holds a goal - or until
the revision's own final arrived: the revision is reported as feedback and listed in the
result after the answer it revises (which stays OK, or PREEMPTED if it was still
generating: neither is a failure).
A goal whose waited-on finals include a failure (an error code other than OK, CANCELED, or
PREEMPTED/TRIGGER_SUPERSEDED, which a later answer revises) ends ABORTED with the first
failure's code. A goal with a pending answer that shows no progress for
`answer_timeout_sec` - no chunk or final of that answer, and nothing at all heard from the
reaction side since it was due - ends ABORTED with ANSWER_TIMEOUT, so no client waits
forever on a reaction node that died, is unreachable or stalled; progress of other
answers counts (a trigger queued behind a long answer is not late while that one streams).
Thread-safe: every method takes the tracker's lock.
"""
from __future__ import annotations

import dataclasses
import enum
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Hashable, List, Optional, Tuple

from dispider_ros.core import schema
from dispider_ros.core.queries import ActiveQuery
from dispider_ros.core.types import ErrorCode

# Finals that do not fail a goal: a later answer of the same query revises them, or the
# query was canceled on purpose.
NOT_FAILURES = (ErrorCode.OK, ErrorCode.PREEMPTED, ErrorCode.TRIGGER_SUPERSEDED, ErrorCode.CANCELED)


class Outcome(enum.IntEnum):
    """How a goal ended; the values are Ask.Result's OUTCOME_* constants (a test checks)."""

    ANSWERED = 0
    MAX_RESPONSES = 1
    EXPIRED = 2
    CANCELED = 3
    ABORTED = 4
    REJECTED = 5


@dataclass
class AskConfig:
    """Args:
        answer_timeout_sec: a pending answer with no progress for this long aborts its goal.
    """

    answer_timeout_sec: float = schema.default("decision_node", "answer_timeout_sec")

    def __post_init__(self):
        self.answer_timeout_sec = schema.check("decision_node", "answer_timeout_sec",
                                               self.answer_timeout_sec)


@dataclass(frozen=True)
class AskEnd:
    """How a goal ended: the result's outcome, error_code and error, its query and finals.

    `succeeded`: the goal's status is SUCCEEDED (else ABORTED, or CANCELED when
    `by_client`); `cancel_query`: the query may still be active in the decision core and the
    caller must cancel it (timeouts and shutdowns)."""

    outcome: Outcome
    error_code: ErrorCode = ErrorCode.OK
    error: str = ""
    by_client: bool = False
    cancel_query: bool = False
    query_id: str = ""
    finals: Tuple[Any, ...] = ()

    @property
    def succeeded(self) -> bool:
        return self.error_code == ErrorCode.OK


@dataclass
class _Window:
    """The revision window of one of a goal's answers."""

    camera_id: str
    until: float  # camera time of camera_id at which it closes
    window_sec: float  # its length, also the wall-clock fallback after the final
    final_at: Optional[float] = None  # when the answer's final arrived (caller's clock)
    revised: bool = False  # a revision of it was triggered (the goal waits on that instead)


@dataclass
class _Goal:
    key: Hashable
    query_id: str
    query: Optional[ActiveQuery] = None  # None until the core accepted it
    pending: Dict[str, float] = field(default_factory=dict)  # trigger_id -> last progress
    texts: Dict[str, str] = field(default_factory=dict)  # response_id -> text so far
    chunks: Dict[str, int] = field(default_factory=dict)  # response_id -> chunks seen
    finished: set = field(default_factory=set)  # response ids whose final arrived
    finals: List[Any] = field(default_factory=list)  # the caller's final payloads, in order
    failure: Optional[Tuple[ErrorCode, str]] = None  # the first failed final
    canceled_by_client: bool = False
    windows: Dict[str, _Window] = field(default_factory=dict)  # trigger_id -> revision window


class AskTracker:
    """The goals of one ask server (see the module docstring for the rules).

    Args:
        config: the answer timeout.
    """

    def __init__(self, config: Optional[AskConfig] = None):
        self.config = config or AskConfig()
        self._lock = threading.Lock()
        self._goals: Dict[Hashable, _Goal] = {}
        self._by_query: Dict[str, _Goal] = {}
        self._heard = -math.inf  # last time anything came from the reaction side
        self._camera_now: Dict[str, float] = {}  # camera_id -> newest feature stamp seen

    # ---- goals ---------------------------------------------------------------------------
    def expect(self, key: Hashable, query_id: str) -> None:
        """Register a goal before its query is added, so no trigger of it goes unseen."""
        with self._lock:
            if key in self._goals or query_id in self._by_query:
                raise ValueError(f"goal {key!r} or query {query_id!r} is already tracked")
            goal = _Goal(key, query_id)
            self._goals[key] = goal
            self._by_query[query_id] = goal

    def started(self, key: Hashable, query: ActiveQuery) -> None:
        """The decision core accepted the goal's query (the object it holds). Call it after
        the triggers add_query fired at once went through trigger(): until then the goal
        cannot end (a `now` query has left the core by the time add_query returns)."""
        with self._lock:
            goal = self._goals.get(key)
            if goal is not None:  # else ended meanwhile (end_all)
                goal.query = query

    def forget(self, key: Hashable) -> None:
        """Drop a goal that never started (its query was refused)."""
        with self._lock:
            goal = self._goals.pop(key, None)
            if goal is not None:
                self._by_query.pop(goal.query_id, None)

    def query_id(self, key: Hashable) -> Optional[str]:
        with self._lock:
            goal = self._goals.get(key)
            return goal.query_id if goal else None

    def finals(self, key: Hashable) -> List[Any]:
        with self._lock:
            goal = self._goals.get(key)
            return list(goal.finals) if goal else []

    def __len__(self) -> int:
        with self._lock:
            return len(self._goals)

    # ---- events --------------------------------------------------------------------------
    def trigger(self, query_id: str, trigger_id: str, now: float, camera_id: str = "",
                stamp: float = math.nan, revisable_until: Optional[float] = None,
                revises_trigger_id: str = "") -> Optional[Hashable]:
        """A trigger of query_id fired; returns the goal waiting on it (None: not a goal's).

        Args:
            camera_id, stamp: the trigger's camera and evidence stamp (camera time).
            revisable_until: camera time until which its answer may be revised (the
                decision core's revision_deadline); None = it will not be.
            revises_trigger_id: a revision: the trigger whose answer it revises.
        """
        with self._lock:
            goal = self._by_query.get(query_id)
            if goal is None:
                return None
            goal.pending[trigger_id] = now
            if revisable_until is not None and math.isfinite(stamp):
                goal.windows[trigger_id] = _Window(camera_id, revisable_until,
                                                   max(0.0, revisable_until - stamp))
            revised = goal.windows.get(revises_trigger_id) if revises_trigger_id else None
            if revised is not None:
                revised.revised = True
            return goal.key

    def camera_time(self, camera_id: str, stamp: float) -> None:
        """The decision node saw a feature of camera_id at stamp (revision windows close)."""
        with self._lock:
            self._camera_now[camera_id] = stamp

    def chunk(self, query_id: str, trigger_id: str, response_id: str, text: str,
              now: float) -> Optional[Tuple[Hashable, str]]:
        """A streamed chunk; returns (goal, the answer's text so far) or None."""
        with self._lock:
            self._heard = now
            goal = self._by_query.get(query_id)
            if goal is None or response_id in goal.finished:  # a late chunk after its final
                return None
            if trigger_id in goal.pending:
                goal.pending[trigger_id] = now
            goal.texts[response_id] = goal.texts.get(response_id, "") + text
            goal.chunks[response_id] = goal.chunks.get(response_id, 0) + 1
            return goal.key, goal.texts[response_id]

    def final(self, query_id: str, trigger_id: str, response_id: str, error_code: int,
              error: str, payload: Any, now: float) -> Optional[Tuple[Hashable, str, int]]:
        """A final answer (payload: what the result lists, e.g. the Response message);
        returns (its goal, the text and the number of its chunks seen before it) or None.
        Chunks and finals travel on two topics: a chunk that comes after its final is
        dropped (the final holds the whole text)."""
        with self._lock:
            if trigger_id:  # the decision node's own refusals carry no trigger
                self._heard = now
            goal = self._by_query.get(query_id)
            if goal is None or response_id in goal.finished:
                return None
            goal.finished.add(response_id)
            before = goal.texts.pop(response_id, ""), goal.chunks.pop(response_id, 0)
            goal.pending.pop(trigger_id, None)
            window = goal.windows.get(trigger_id)
            if window is not None:
                window.final_at = now
            goal.finals.append(payload)
            try:
                code = ErrorCode(error_code)
            except ValueError:  # a code this side does not know is a failure all the same
                code = ErrorCode.GENERATION_FAILED
            if code not in NOT_FAILURES and goal.failure is None:
                goal.failure = (code, f"answer {response_id} failed: {error}")
            return (goal.key,) + before

    def heard(self, now: float) -> None:
        """Something came from the reaction side (it is alive and making progress)."""
        with self._lock:
            self._heard = now

    def cancel(self, key: Hashable) -> Optional[str]:
        """The client canceled the goal; returns its query id to cancel (None: unknown)."""
        with self._lock:
            goal = self._goals.get(key)
            if goal is None:
                return None
            goal.canceled_by_client = True
            return goal.query_id

    # ---- endings -------------------------------------------------------------------------
    def ended(self, now: float) -> List[Tuple[Hashable, AskEnd]]:
        """Remove and return the goals that are over, with how each ended."""
        out = []
        with self._lock:
            for goal in list(self._goals.values()):
                end = self._end_of(goal, now)
                if end is not None:
                    self._remove(goal)
                    out.append((goal.key, dataclasses.replace(
                        end, query_id=goal.query_id, finals=tuple(goal.finals))))
        return out

    def end_all(self, error_code: ErrorCode, error: str) -> List[Tuple[Hashable, AskEnd]]:
        """End every goal at once (the server deactivates or shuts down)."""
        with self._lock:
            goals = list(self._goals.values())
            for goal in goals:
                self._remove(goal)
        return [(g.key, AskEnd(Outcome.CANCELED if g.canceled_by_client else Outcome.ABORTED,
                               ErrorCode.CANCELED if g.canceled_by_client else error_code,
                               error, by_client=g.canceled_by_client, cancel_query=True,
                               query_id=g.query_id, finals=tuple(g.finals)))
                for g in goals]

    def _remove(self, goal: _Goal) -> None:
        del self._goals[goal.key]
        if self._by_query.get(goal.query_id) is goal:
            del self._by_query[goal.query_id]

    def _window_over(self, window: _Window, now: float) -> bool:
        return window.revised or self._camera_now.get(window.camera_id, -math.inf) >= window.until \
            or (window.final_at is not None and now - window.final_at >= window.window_sec)

    def _end_of(self, goal: _Goal, now: float) -> Optional[AskEnd]:
        if goal.query is None:  # not started yet
            return None
        timeout = self.config.answer_timeout_sec
        late = [t for t, last in goal.pending.items() if now - max(last, self._heard) > timeout]
        if late:
            if goal.canceled_by_client:  # canceled: the missing confirmation is no failure
                return AskEnd(Outcome.CANCELED, ErrorCode.CANCELED, "canceled by the client; the "
                              f"reaction node did not confirm within {timeout:g} s", by_client=True,
                              cancel_query=True)
            return AskEnd(Outcome.ABORTED, ErrorCode.ANSWER_TIMEOUT,
                          f"no progress of the answer to trigger {late[0]} for answer_timeout_sec "
                          f"{timeout:g} s: is the reaction node running and reachable?",
                          cancel_query=True)
        if goal.pending:
            return None
        if goal.canceled_by_client:
            return AskEnd(Outcome.CANCELED, ErrorCode.CANCELED, "canceled by the client",
                          by_client=True)
        reason = goal.query.ended
        if not reason:
            return None
        if goal.failure is not None:
            return AskEnd(Outcome.ABORTED, *goal.failure)
        if reason == "completed":
            if any(not self._window_over(window, now) for window in goal.windows.values()):
                return None  # a revision may still come
            return AskEnd(Outcome.ANSWERED if goal.query.mode == "now" else Outcome.MAX_RESPONSES)
        if reason == "expired":
            return AskEnd(Outcome.EXPIRED)
        what = "replaced by a query with the same id" if reason == "replaced" else \
            "canceled by a Query with cancel=true"
        return AskEnd(Outcome.CANCELED, ErrorCode.CANCELED, f"query {goal.query_id} {what} on `query`")


__all__ = ["AskConfig", "AskEnd", "AskTracker", "Outcome", "NOT_FAILURES"]
