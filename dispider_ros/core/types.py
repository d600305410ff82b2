"""Plain records passed between the parts of the streaming core (no ROS types)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

# What an answer cost: the final's extras, the Response fields and the run record's
# top-level keys (prompt/reused/prefill tokens, frames in the prompt, history span seconds).
COST_KEYS = ("prompt_tokens", "reused_tokens", "prefill_tokens", "frames_in_prompt",
             "history_span_sec")
MODES = ("auto", "now", "match", "boundary", "activation")


@dataclass(frozen=True)
class Frame:
    """A sampled camera frame."""

    camera_id: str
    stamp: float  # camera time of the frame, seconds (never wall clock)
    index: int  # per-camera index of sampled frames, from 0
    image: np.ndarray  # (H, W, 3) uint8 RGB
    frame_id: str = ""  # the source's coordinate frame name, passed through to outputs


@dataclass(frozen=True)
class FrameFeature:
    """Perception's output for one sampled frame."""

    camera_id: str
    stamp: float
    frame_index: int
    clip_index: int
    clip_boundary: bool  # this frame starts a new clip
    clip_similarity: float  # cosine similarity to the running clip mean
    clip_start: float  # camera time of the first frame of this frame's clip
    embedding: np.ndarray  # (D,) float32, L2-normalised
    frame_id: str = ""


@dataclass
class QuerySpec:
    """A question as the decision core sees it."""

    query_id: str
    text: str
    mode: str = "auto"
    cameras: Tuple[str, ...] = ()  # empty = every camera
    max_responses: int = 0  # 0 = mode default
    expiry_sec: float = 0.0  # 0 = never
    threshold: Optional[float] = None  # None = policy default
    stamp: float = 0.0  # camera time the question was asked
    revise: Optional[bool] = None  # revise its answers when the evidence changes; None = node parameter

    def __post_init__(self):
        if self.mode == "":
            self.mode = "auto"
        if self.mode not in MODES:
            raise ValueError(f"query {self.query_id!r}: mode {self.mode!r} is not one of {MODES}")
        if self.max_responses < 0:
            raise ValueError(f"query {self.query_id!r}: max_responses {self.max_responses} < 0")
        if not (self.expiry_sec >= 0.0):  # also rejects NaN
            raise ValueError(f"query {self.query_id!r}: expiry_sec {self.expiry_sec} must be >= 0")
        self.cameras = tuple(self.cameras)


@dataclass(frozen=True)
class RetrievedClip:
    """A stored clip ranked relevant to a question (Dispider's question-relevant clips)."""

    camera_id: str
    clip_index: int
    start: float  # camera time of the clip's first frame
    end: float  # camera time of its last frame
    score: float  # relevance: the match probability of the question and the clip feature


@dataclass(frozen=True)
class TriggerEvent:
    """A decision to respond, with its evidence."""

    trigger_id: str
    query_id: str
    query_text: str
    camera_id: str
    policy: str  # now | match | boundary | activation
    score: float
    stamp: float  # camera time of the evidence frame
    frame_index: int
    clip_index: int
    clip_start: float
    clip_end: float
    frame_id: str = ""
    retrieved: Tuple[RetrievedClip, ...] = ()  # older clips whose keyframes go into the prompt
    revises_trigger_id: str = ""  # a revision: the trigger whose answer this one replaces
    revision_reason: str = ""  # why: clip_boundary | score_drop ("" = not a revision)


class ErrorCode(enum.IntEnum):
    """Why a final answer is not a complete answer; the values are Response.msg's constants
    (a test checks both directions). Clients branch on these, never on the error text."""

    OK = 0  # answered (final) or streaming (chunk)
    QUERY_REJECTED = 1  # the decision node refused the query (length, rate, duplicate id, mode)
    TRIGGER_DROPPED = 2  # the reaction queue was full: this trigger was never answered
    TRIGGER_SUPERSEDED = 3  # a newer trigger of the same query replaced it before it started
    GENERATION_FAILED = 4  # the model raised while answering
    OUT_OF_MEMORY = 5  # the device ran out of memory while answering
    SHUTDOWN = 6  # the reaction engine closed before this answer ended
    NOT_STARTED = 7  # never started for another reason, e.g. the node could not queue it
    PREEMPTED = 8  # stopped while answering: a newer trigger of the same query revises it
    CANCELED = 9  # the query was canceled before or while this answer ran
    ANSWER_TIMEOUT = 10  # ask action only: no progress for answer_timeout_sec (reaction node down or stalled)


@dataclass
class ResponseEvent:
    """A streamed chunk (final=False) or a complete answer (final=True)."""

    response_id: str
    trigger_id: str
    query_id: str
    camera_id: str
    stamp: float  # camera time of the trigger's evidence
    text: str
    final: bool
    sequence: int
    revises_response_id: str = ""
    ttft_sec: float = float("nan")
    token_count: int = 0  # chunk: tokens generated so far; final: in total
    error_code: ErrorCode = ErrorCode.OK
    error: str = ""  # human-readable reason when error_code != OK
    frame_id: str = ""
    extras: dict = field(default_factory=dict)  # timings for diagnostics/eval (not in the message)
