"""The run record: every query, trigger and response of a replay, as JSON lines.

One JSON object per line, written and flushed as each event happens (`RunRecorder`).
The lines are exactly the prediction records `score_cli` reads (fields documented in
`dispider_ros.eval.score_cli`), so ``python -m dispider_ros.eval score --format dispider
--results <run>/predictions.jsonl`` re-scores a run without re-running any model. On top:

    type "query"     query_id, stamp (s from the recording start), text, mode, camera_id,
                     abs_stamp (camera clock)
    type "trigger"   query_id, trigger_id, stamp, camera_id, policy, score, frame_index,
                     clip_index, clip_start, abs_stamp, clock_stamp (the camera clock when
                     the trigger was made: later than stamp for a query answered at once),
                     retrieved_clips (older clips ranked relevant to a question about the
                     past: camera_id, clip_index, start, end (s from the recording start),
                     score; [] = none); a revision also has revises_trigger_id and
                     revision_reason
    type "response"  query_id, trigger_id, response_id, stamp (of the evidence), text,
                     final, sequence, ttft_sec, emit_stamp, token_count, error_code (the
                     Response.msg constant; 0 = answered), error, revises_response_id,
                     abs_stamp; final=false lines are streamed chunks (recorded when chunks
                     are asked for). What each final cost (COST_KEYS, from
                     `core.types`): prompt_tokens, reused_tokens (KV cache reused),
                     prefill_tokens, frames_in_prompt, history_span_sec (camera s from the
                     oldest frame of the trigger's camera in the prompt to the evidence;
                     null = none); 0/null for an answer that never reached the model;
                     retrieved_clips: its trigger's clips, each with `keyframes`, how many
                     of its keyframes were in the prompt (0: never started, or no longer
                     stored); a revision's final also has revision_reason (clip_boundary |
                     score_drop); a narration that replaced waiting ones, merged_trigger_ids
    type "run"       event "start" (mode, bag, annotations, t0, settings) or "end"
                     (system figures: sampled fps, drops, peak memory, speed); score_cli
                     skips these lines

Why JSON lines rather than a rosbag2 of the output topics:
  - greppable and diffable with standard tools (``grep '"type": "trigger"'``), readable
    without ROS or rosbags;
  - append-only and flushed per event: a run that crashes or is killed keeps every line
    written up to that moment, with no index to finalise;
  - re-scorable as is: it is score_cli's own input format, and the same file comes out of
    the offline evaluator, the live player and the on-robot recorder node;
  - stamps are stored relative to the recording start (what annotations use) next to the
    absolute camera stamps, which a bag of Response messages could not carry.
A rosbag2 remains the right container for the *input* camera stream.
"""
from __future__ import annotations

import dataclasses
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from dispider_ros.core.types import COST_KEYS  # noqa: F401 (re-exported: what a final cost)

PREDICTIONS = "predictions.jsonl"
ANNOTATIONS = "annotations.json"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python numbers, recursively."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class RunRecorder:
    """Appends records to a JSON-lines file; thread-safe; flushed per line.

    Args:
        path: the file (created, or appended to when it exists).
        t0: absolute camera stamp of the recording start: stamp = abs_stamp - t0.
        chunks: also record streamed chunks (final=false responses).
    """

    def __init__(self, path: Union[str, Path], t0: float = 0.0, chunks: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = float(t0)
        self.chunks = chunks
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")
        self.counts = {"query": 0, "trigger": 0, "response": 0, "chunk": 0, "run": 0}

    def write(self, record: Dict[str, Any]) -> None:
        line = json.dumps(_clean(record), ensure_ascii=False, allow_nan=False)
        with self._lock:
            if self._file.closed:
                return
            self._file.write(line + "\n")
            self._file.flush()

    def rel(self, abs_stamp: float) -> float:
        return float(abs_stamp) - self.t0

    def query(self, query_id: str, abs_stamp: float, text: str, mode: str = "auto",
              camera_id: str = "", **extras) -> None:
        self.counts["query"] += 1
        self.write({"type": "query", "query_id": query_id, "stamp": self.rel(abs_stamp),
                    "text": text, "mode": mode, "camera_id": camera_id, "abs_stamp": abs_stamp,
                    **extras})

    def clips(self, clips) -> List[dict]:
        """Retrieved clips (RetrievedClip records or their dicts) with start and end relative
        to the recording start, as every other stamp of the record."""
        out = []
        for clip in clips:
            row = dict(clip) if isinstance(clip, dict) else dataclasses.asdict(clip)
            row.update(start=self.rel(row["start"]), end=self.rel(row["end"]))
            out.append(row)
        return out

    def trigger(self, trigger_id: str, query_id: str, abs_stamp: float, camera_id: str,
                policy: str, score: float, frame_index: int, clip_index: int,
                clip_start: float, clock_abs: Optional[float] = None, retrieved_clips=(),
                **extras) -> None:
        """A trigger; `clock_abs` = the camera clock when it was made (>= its evidence stamp)."""
        self.counts["trigger"] += 1
        extras["retrieved_clips"] = self.clips(retrieved_clips)
        if clock_abs is not None:
            extras["clock_stamp"] = self.rel(clock_abs)
        self.write({"type": "trigger", "query_id": query_id, "trigger_id": trigger_id,
                    "stamp": self.rel(abs_stamp), "camera_id": camera_id, "policy": policy,
                    "score": score, "frame_index": int(frame_index), "clip_index": int(clip_index),
                    "clip_start": self.rel(clip_start), "abs_stamp": abs_stamp, **extras})

    def response(self, response_id: str, trigger_id: str, query_id: str, abs_stamp: float,
                 camera_id: str, text: str, final: bool, sequence: int = 0,
                 ttft_sec: Optional[float] = None, emit_abs_stamp: Optional[float] = None,
                 token_count: int = 0, error: str = "", revises_response_id: str = "",
                 error_code: int = 0, prompt_tokens: int = 0, reused_tokens: int = 0,
                 prefill_tokens: int = 0, frames_in_prompt: int = 0,
                 history_span_sec: Optional[float] = None, retrieved_clips=(), **extras) -> None:
        """One final answer, or a chunk (final=False; skipped unless `chunks`).

        A final carries what it cost (COST_KEYS; the defaults: it never reached the model).
        """
        if not final and not self.chunks:
            return
        self.counts["response" if final else "chunk"] += 1
        record = {"type": "response", "query_id": query_id, "trigger_id": trigger_id,
                  "response_id": response_id, "stamp": self.rel(abs_stamp), "camera_id": camera_id,
                  "text": text, "final": bool(final), "sequence": int(sequence)}
        if final:
            record.update(ttft_sec=ttft_sec, token_count=int(token_count),
                          error_code=int(error_code), error=error,
                          revises_response_id=revises_response_id,
                          emit_stamp=None if emit_abs_stamp is None else self.rel(emit_abs_stamp),
                          prompt_tokens=int(prompt_tokens), reused_tokens=int(reused_tokens),
                          prefill_tokens=int(prefill_tokens), frames_in_prompt=int(frames_in_prompt),
                          history_span_sec=history_span_sec,
                          retrieved_clips=self.clips(retrieved_clips))
        record["abs_stamp"] = abs_stamp
        record.update(extras)
        self.write(record)

    def run(self, event: str, **fields) -> None:
        self.counts["run"] += 1
        self.write({"type": "run", "event": event, **fields})

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class RunData:
    """A run record read back, grouped by type."""

    queries: List[dict] = field(default_factory=list)
    triggers: List[dict] = field(default_factory=list)
    responses: List[dict] = field(default_factory=list)  # finals
    chunks: List[dict] = field(default_factory=list)
    runs: List[dict] = field(default_factory=list)

    def run_info(self) -> Dict[str, Any]:
        """The "start" record's fields (mode, bag, t0, ...)."""
        return next((r for r in self.runs if r.get("event") == "start"), {})

    def system(self) -> Dict[str, Any]:
        """System figures of every "end" record, merged in file order."""
        merged: Dict[str, Any] = {}
        for r in self.runs:
            if r.get("event") != "start":
                merged.update(r.get("system", {}))
        return merged


def read_run(path: Union[str, Path]) -> RunData:
    """Read a run record (a file, or a run folder holding predictions.jsonl)."""
    path = Path(path)
    if path.is_dir():
        path = path / PREDICTIONS
    data = RunData()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number}: {error}") from None
        kind = record.get("type")
        if kind == "query":
            data.queries.append(record)
        elif kind == "trigger":
            data.triggers.append(record)
        elif kind == "response":
            (data.responses if record.get("final", True) else data.chunks).append(record)
        elif kind == "run":
            data.runs.append(record)
    return data
