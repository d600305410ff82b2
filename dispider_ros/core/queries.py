"""Active queries: validation, rate limit, expiry, response counts and cancel.

Rules (each rejection raises `QueryRejected`, a ValueError whose `reason` is also counted):
  - text: a str ("TypeError" otherwise); after stripping surrounding whitespace it must be
    non-empty ("empty_text"), at most `max_query_chars` characters ("too_long"), and free
    of control characters other than tab/newline, surrogates and bidirectional-override
    characters, which can make a logged question read differently from what the model
    sees ("control_characters");
  - query_id: empty means "assign one" ("<id_prefix>-q1", "<id_prefix>-q2", ...; q1, q2, ...
    without a prefix); otherwise printable, at most `max_id_chars` ("bad_id");
  - duplicate id: `on_duplicate="replace"` (default; a UI re-sending an edited question
    keeps its id, and the old query's counts and state are dropped) or "reject"
    ("duplicate_id");
  - rate: at most `max_queries_per_sec` accepted queries per second of the `now` clock
    the caller passes (token bucket, burst max(1, rate); "rate_limited"); a clock that
    goes back refills the bucket;
  - size: at most `max_active_queries` at once ("too_many_queries");
  - threshold: None (policy default) or in (0, 1] ("bad_threshold").
Mode "auto" is resolved with `query_text.infer_mode` when the query is added. Response
limit: `max_responses`, 0 = the mode's default (now: 1, others: unlimited). A query ends
when it reaches its limit, when `expiry_sec` of camera time has passed since its stamp,
or on cancel. The registry is not thread-safe; DecisionCore serialises access.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import unicodedata
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from dispider_ros.core import schema
from dispider_ros.core.query_text import event_text, infer_mode
from dispider_ros.core.types import QuerySpec

LOG = logging.getLogger(__name__)

DEFAULT_MAX_RESPONSES = {"now": 1}  # other modes: unlimited (0)
ON_DUPLICATE = ("replace", "reject")
_ALLOWED_CONTROLS = {"\t", "\n"}
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


@dataclass
class RegistryConfig:
    """Args:
        max_query_chars: longest accepted question, >= 1.
        max_queries_per_sec: accepted queries per second (0 = unlimited).
        max_active_queries: queries held at once, >= 1.
        on_duplicate: "replace" or "reject" a query whose id is already active.
        max_id_chars: longest accepted query id.
    """

    max_query_chars: int = schema.default("decision_node", "max_query_chars")
    max_queries_per_sec: float = schema.default("decision_node", "max_queries_per_sec")
    max_active_queries: int = schema.default("decision_node", "max_active_queries")
    on_duplicate: str = "replace"
    max_id_chars: int = 128

    def __post_init__(self):
        for name in ("max_query_chars", "max_queries_per_sec", "max_active_queries"):
            setattr(self, name, schema.check("decision_node", name, getattr(self, name)))
        for name in ("max_id_chars",):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} {value!r} must be an int >= 1")
        rate = self.max_queries_per_sec
        if not isinstance(rate, (int, float)) or not (0.0 <= rate < math.inf):
            raise ValueError(f"max_queries_per_sec {rate!r} must be a finite number >= 0")
        if self.on_duplicate not in ON_DUPLICATE:
            raise ValueError(f"on_duplicate {self.on_duplicate!r} is not one of {ON_DUPLICATE}")


class QueryRejected(ValueError):
    """A query that was not accepted; `reason` names the rule (see the module docstring)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class ActiveQuery:
    """A registered query and everything the policies keep for it."""

    spec: QuerySpec  # mode resolved (never "auto"), stamp filled
    max_responses: int  # resolved; 0 = unlimited
    event_text: str  # the text the matchers embed (see query_text.event_text)
    responses: int = 0
    text_embedding: Optional[np.ndarray] = None  # (D,) float32, L2-normalised
    state: Dict[str, dict] = field(default_factory=dict)  # camera_id -> policy state
    loops: int = 0  # camera-time loops already applied to spec.stamp (DecisionCore)
    ended: str = ""  # why it left the registry: completed | expired | cancelled | replaced

    @property
    def query_id(self) -> str:
        return self.spec.query_id

    @property
    def mode(self) -> str:
        return self.spec.mode

    def watches(self, camera_id: str) -> bool:
        return not self.spec.cameras or camera_id in self.spec.cameras

    @property
    def exhausted(self) -> bool:
        return self.max_responses > 0 and self.responses >= self.max_responses


def validate_text(text, max_chars: int) -> str:
    """Return the stripped question text or raise QueryRejected naming the problem."""
    if not isinstance(text, str):
        raise TypeError(f"query text must be str, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise QueryRejected("empty_text", "query text is empty")
    if len(stripped) > max_chars:
        raise QueryRejected("too_long", f"query text has {len(stripped)} characters > "
                            f"max_query_chars {max_chars}")
    for position, char in enumerate(stripped):
        category = unicodedata.category(char)
        if (category == "Cc" and char not in _ALLOWED_CONTROLS) or category == "Cs" \
                or char in _BIDI_CONTROLS:
            raise QueryRejected("control_characters", f"query text has control character "
                                f"U+{ord(char):04X} at position {position}")
    return stripped


class QueryRegistry:
    """Holds active queries for the decision core.

    Args:
        config: limits and duplicate handling.
        id_prefix: assigned ids are "<id_prefix>-q<n>" ("q<n>" when empty); DecisionCore
            passes its own prefix so ids are unique across cores, robots and namespaces.
    """

    def __init__(self, config: Optional[RegistryConfig] = None, id_prefix: str = ""):
        self.config = config or RegistryConfig()
        self.id_prefix = id_prefix
        self._queries: Dict[str, ActiveQuery] = {}
        self._tokens = float("nan")  # rate-limit bucket, filled on first use
        self._last_now = -math.inf
        self._next_auto_id = 1
        self.counters: Dict[str, int] = {"added": 0, "replaced": 0, "cancelled": 0,
                                         "expired": 0, "completed": 0}
        self.rejected: Dict[str, int] = {}

    def add(self, spec: QuerySpec, now: float) -> ActiveQuery:
        """Validate and register a query.

        Args:
            spec: the question; mode "auto" is resolved here, stamp <= 0 becomes `now`.
            now: current time (camera/ROS clock, seconds) for the rate limit and stamp.
        Returns:
            The registered ActiveQuery.
        Raises:
            QueryRejected: see the module docstring; TypeError for a non-str text.
        """
        if not isinstance(now, (int, float)) or not math.isfinite(now):
            raise ValueError(f"now {now!r} must be a finite time in seconds")
        try:
            text = validate_text(spec.text, self.config.max_query_chars)
            query_id = self._check_id(spec.query_id)
            if spec.threshold is not None and not (0.0 < spec.threshold <= 1.0):
                raise QueryRejected("bad_threshold", f"query threshold {spec.threshold!r} must "
                                    "be in (0, 1] or None")
            replacing = query_id in self._queries
            if replacing and self.config.on_duplicate == "reject":
                raise QueryRejected("duplicate_id", f"query id {query_id!r} is already active")
            if not replacing and len(self._queries) >= self.config.max_active_queries:
                raise QueryRejected("too_many_queries", f"{len(self._queries)} queries active "
                                    f"= max_active_queries {self.config.max_active_queries}")
            self._take_token(float(now))
        except QueryRejected as error:
            self.rejected[error.reason] = self.rejected.get(error.reason, 0) + 1
            LOG.warning("query %r rejected (%s): %s", spec.query_id, error.reason, error)
            raise
        if not query_id:
            query_id = self.new_id()
        mode = infer_mode(text) if spec.mode == "auto" else spec.mode
        stamp = spec.stamp if spec.stamp > 0 else float(now)
        resolved = dataclasses.replace(spec, query_id=query_id, text=text, mode=mode, stamp=stamp)
        limit = spec.max_responses or DEFAULT_MAX_RESPONSES.get(mode, 0)
        entry = ActiveQuery(resolved, limit, event_text(text))
        if replacing:
            self._queries[query_id].ended = "replaced"
            self.counters["replaced"] += 1
            LOG.info("query %r replaced", query_id)
        self._queries[query_id] = entry
        self.counters["added"] += 1
        LOG.info("query %r added: mode %s, max_responses %s, expiry %.1f s: %r", query_id, mode,
                 limit or "unlimited", spec.expiry_sec, text[:80])
        return entry

    def cancel(self, query_id: str) -> bool:
        """Remove a query; False when no such query is active."""
        query = self._queries.pop(query_id, None)
        if query is None:
            LOG.info("cancel of unknown query %r ignored", query_id)
            return False
        query.ended = "cancelled"
        self.counters["cancelled"] += 1
        LOG.info("query %r cancelled", query_id)
        return True

    def get(self, query_id: str) -> Optional[ActiveQuery]:
        return self._queries.get(query_id)

    def active(self, camera_id: Optional[str] = None) -> List[ActiveQuery]:
        """Active queries (watching camera_id when given), oldest first."""
        return [q for q in self._queries.values() if camera_id is None or q.watches(camera_id)]

    def expire(self, stamp: float) -> List[ActiveQuery]:
        """Remove and return queries whose expiry_sec has passed at camera time stamp."""
        gone = [q for q in self._queries.values()
                if q.spec.expiry_sec > 0 and stamp - q.spec.stamp >= q.spec.expiry_sec]
        for query in gone:
            del self._queries[query.query_id]
            query.ended = "expired"
            self.counters["expired"] += 1
            LOG.info("query %r expired at %.3f", query.query_id, stamp)
        return gone

    def record_response(self, query_id: str) -> bool:
        """Count one trigger; returns True when that completed (and removed) the query."""
        query = self._queries.get(query_id)
        if query is None:
            return False
        query.responses += 1
        if query.exhausted:
            del self._queries[query_id]
            query.ended = "completed"
            self.counters["completed"] += 1
            LOG.info("query %r completed after %d response(s)", query_id, query.responses)
            return True
        return False

    def __len__(self) -> int:
        return len(self._queries)

    def _check_id(self, query_id) -> str:
        if not isinstance(query_id, str):
            raise QueryRejected("bad_id", f"query id {query_id!r} is not a string")
        if len(query_id) > self.config.max_id_chars or not (query_id == "" or query_id.isprintable()):
            raise QueryRejected("bad_id", f"query id {query_id[:40]!r} is longer than "
                                f"{self.config.max_id_chars} or not printable")
        return query_id

    def new_id(self) -> str:
        """The next assigned query id, never one that is active (a client may have chosen it)."""
        prefix = f"{self.id_prefix}-" if self.id_prefix else ""
        while f"{prefix}q{self._next_auto_id}" in self._queries:
            self._next_auto_id += 1
        self._next_auto_id += 1
        return f"{prefix}q{self._next_auto_id - 1}"

    def _take_token(self, now: float) -> None:
        rate = self.config.max_queries_per_sec
        if rate <= 0:
            return
        burst = max(1.0, rate)
        if math.isnan(self._tokens) or now < self._last_now:
            if now < self._last_now:  # bag loop, sim-time reset, wall clock set back
                LOG.warning("query rate limit: clock went back %.3f -> %.3f s; bucket refilled",
                            self._last_now, now)
            self._tokens = burst
        else:
            self._tokens = min(burst, self._tokens + (now - self._last_now) * rate)
        self._last_now = now
        if self._tokens < 1.0:
            raise QueryRejected("rate_limited", f"more than max_queries_per_sec {rate:g} queries")
        self._tokens -= 1.0
