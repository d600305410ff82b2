"""Message <-> core record conversion (the only place both worlds meet)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from builtin_interfaces.msg import Time
from std_msgs.msg import Header

from dispider_ros.core.types import FrameFeature, QuerySpec, ResponseEvent, RetrievedClip, TriggerEvent
from dispider_ros.msg import FrameFeature as FrameFeatureMsg
from dispider_ros.msg import Query, Response, Trigger
from dispider_ros.msg import RetrievedClip as RetrievedClipMsg


def to_sec(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def to_time(seconds: float) -> Time:
    if not math.isfinite(seconds) or seconds < 0:
        seconds = 0.0
    sec = int(seconds)
    nanosec = min(int(round((seconds - sec) * 1e9)), 999_999_999)
    return Time(sec=sec, nanosec=nanosec)


def header(stamp: float, frame_id: str = "") -> Header:
    return Header(stamp=to_time(stamp), frame_id=frame_id)


def query_from_msg(msg: Query, assigned_id: str) -> QuerySpec:
    """Query message -> QuerySpec (ValueError naming the problem when invalid)."""
    threshold = float(msg.threshold)
    return QuerySpec(
        query_id=msg.query_id or assigned_id, text=msg.text, mode=msg.mode or "auto",
        cameras=tuple(msg.cameras), max_responses=int(msg.max_responses),
        expiry_sec=float(msg.expiry_sec),
        threshold=threshold if math.isfinite(threshold) and threshold > 0 else None,
        stamp=to_sec(msg.header.stamp), revise=revise_from_msg(int(msg.revise)))


def revise_from_msg(value: int):
    """Query.revise -> QuerySpec.revise (None = the node parameter); ValueError if unknown."""
    choices = {Query.REVISE_DEFAULT: None, Query.REVISE_ON: True, Query.REVISE_OFF: False}
    if value not in choices:
        raise ValueError(f"revise {value} is not one of REVISE_DEFAULT/ON/OFF (0, 1, 2)")
    return choices[value]


def clip_to_msg(clip) -> RetrievedClipMsg:
    """A RetrievedClip, or a final's dict of one with `keyframes`, -> RetrievedClip message."""
    row = dict(clip) if isinstance(clip, dict) else dataclasses.asdict(clip)
    return RetrievedClipMsg(camera_id=row["camera_id"], clip_index=int(row["clip_index"]),
                            start=to_time(row["start"]), end=to_time(row["end"]),
                            score=float(row["score"]), keyframes=int(row.get("keyframes", 0)))


def clip_from_msg(msg: RetrievedClipMsg) -> RetrievedClip:
    return RetrievedClip(camera_id=msg.camera_id, clip_index=int(msg.clip_index),
                         start=to_sec(msg.start), end=to_sec(msg.end), score=float(msg.score))


def clip_record(msg: RetrievedClipMsg) -> dict:
    """A final's RetrievedClip message as its run-record dict (with `keyframes`)."""
    return dict(dataclasses.asdict(clip_from_msg(msg)), keyframes=int(msg.keyframes))


def feature_to_msg(feature: FrameFeature, encoder: str) -> FrameFeatureMsg:
    return FrameFeatureMsg(
        header=header(feature.stamp, feature.frame_id), camera_id=feature.camera_id,
        frame_index=int(feature.frame_index), clip_index=int(feature.clip_index),
        clip_boundary=bool(feature.clip_boundary), clip_start=to_time(feature.clip_start),
        clip_similarity=float(feature.clip_similarity), encoder=encoder, embedding=np.asarray(feature.embedding, dtype=np.float32))


def feature_from_msg(msg: FrameFeatureMsg) -> FrameFeature:
    return FrameFeature(
        camera_id=msg.camera_id, stamp=to_sec(msg.header.stamp), frame_index=int(msg.frame_index),
        clip_index=int(msg.clip_index), clip_boundary=bool(msg.clip_boundary),
        clip_similarity=float(msg.clip_similarity), clip_start=to_sec(msg.clip_start),
        embedding=np.asarray(msg.embedding, dtype=np.float32), frame_id=msg.header.frame_id)


def trigger_to_msg(event: TriggerEvent) -> Trigger:
    return Trigger(
        header=header(event.stamp, event.frame_id), trigger_id=event.trigger_id,
        query_id=event.query_id, query_text=event.query_text, camera_id=event.camera_id,
        policy=event.policy, score=float(event.score), frame_index=int(event.frame_index),
        clip_index=int(event.clip_index), clip_start=to_time(event.clip_start),
        clip_end=to_time(event.clip_end), retrieved_clips=[clip_to_msg(c) for c in event.retrieved],
        revises_trigger_id=event.revises_trigger_id, revision_reason=event.revision_reason)


def trigger_from_msg(msg: Trigger) -> TriggerEvent:
    return TriggerEvent(
        trigger_id=msg.trigger_id, query_id=msg.query_id, query_text=msg.query_text,
        camera_id=msg.camera_id, policy=msg.policy, score=float(msg.score),
        stamp=to_sec(msg.header.stamp), frame_index=int(msg.frame_index),
        clip_index=int(msg.clip_index), clip_start=to_sec(msg.clip_start),
        clip_end=to_sec(msg.clip_end), frame_id=msg.header.frame_id,
        retrieved=tuple(clip_from_msg(c) for c in msg.retrieved_clips),
        revises_trigger_id=msg.revises_trigger_id, revision_reason=msg.revision_reason)


def response_to_msg(event: ResponseEvent) -> Response:
    """The message of a chunk or a final; a final carries what it cost (from its extras)."""
    cost = event.extras
    return Response(
        header=header(event.stamp, event.frame_id), response_id=event.response_id,
        trigger_id=event.trigger_id, query_id=event.query_id, camera_id=event.camera_id,
        text=event.text, final=bool(event.final), sequence=int(event.sequence),
        revises_response_id=event.revises_response_id, ttft_sec=float(event.ttft_sec),
        token_count=int(event.token_count), error_code=int(event.error_code), error=event.error,
        prompt_tokens=int(cost.get("prompt_tokens", 0)), reused_tokens=int(cost.get("reused_tokens", 0)),
        prefill_tokens=int(cost.get("prefill_tokens", 0)),
        frames_in_prompt=int(cost.get("frames_in_prompt", 0)),
        history_span_sec=float(cost.get("history_span_sec", math.nan)),
        retrieved_clips=[clip_to_msg(c) for c in cost.get("retrieved_clips", ())],
        merged_trigger_ids=list(cost.get("merged_trigger_ids", ())))


def response_cost(msg: Response) -> dict:
    """What a final Response cost, keyed as the run record's COST_KEYS (NaN span = none), the
    clips its trigger retrieved and, for a narration that stands for others, their triggers."""
    merged = {"merged_trigger_ids": list(msg.merged_trigger_ids)} if msg.merged_trigger_ids else {}
    return {"prompt_tokens": int(msg.prompt_tokens), "reused_tokens": int(msg.reused_tokens),
            "prefill_tokens": int(msg.prefill_tokens), "frames_in_prompt": int(msg.frames_in_prompt),
            "history_span_sec": float(msg.history_span_sec),
            "retrieved_clips": [clip_record(c) for c in msg.retrieved_clips], **merged}
