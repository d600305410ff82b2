"""Ground truth for robot recordings: timed queries and their answer windows.

File format (JSON, or YAML when the name ends in .yaml/.yml)::

    version: 1
    recordings:
      - recording_id: lab_run_01        # unique in the file
        source: bags/lab_run_01         # optional: bag or video, relative to this file
        start_stamp: 1700000000.25      # optional: absolute time (s) of t = 0
        duration: 120.0                 # optional, seconds
        queries:
          - query_id: lab01_door        # optional; default "<recording_id>/q<index>"
            time: 12.5                  # when the query is asked
            text: Tell me when the door opens.
            mode: auto                  # one of dispider_ros.core.types.MODES
            camera: front               # camera_id; "" = every camera
            windows:                    # answer windows; empty = the system should stay silent
              - {start: 30.0, end: 34.0, text: The door is open.}   # text optional

Times: every time in the file (query ``time``, window ``start``/``end``) is in seconds
from the start of the recording (the first message of the bag, frame 0 of a video), not an
absolute stamp: the same file then fits a bag, its re-recording and the source video.
``start_stamp`` (absolute) lets a replay convert: ``relative = stamp - start_stamp``.
Times may also be written "H:MM:SS[.f]" or "MM:SS" as the benchmarks do.
A window must not end before its query is asked. Unknown keys are errors (typos).

``from_streamingbench`` maps one StreamingBench proactive clip entry onto a recording:
each question becomes a query at ``time_stamp`` with one zero-length window at
``ground_truth_time_stamp`` whose text is ``ground_truth_output``; matched with a 2 s
tolerance this is StreamingBench's own ±2 s rule.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import yaml

from dispider_ros.core.types import MODES
from dispider_ros.eval import datafile

SCHEMA_VERSION = 1
_CLOCK = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)$")


def parse_time(value: Any, what: str = "time") -> float:
    """Seconds from a number or an "H:MM:SS[.f]" / "MM:SS" string; ValueError naming `what`."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: {value!r} is not a time")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        match = _CLOCK.match(value.strip())
        if match is None:
            try:
                seconds = float(value)
            except ValueError:
                raise ValueError(f"{what}: {value!r} is neither seconds nor H:MM:SS") from None
        else:
            hours, minutes, secs = match.groups()
            seconds = int(hours or 0) * 3600 + int(minutes) * 60 + float(secs)
    else:
        raise ValueError(f"{what}: {value!r} is not a time")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what}: {value!r} must be finite and >= 0")
    return seconds


def _check_keys(data: Any, allowed: set, required: set, where: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
    missing = required - set(data)
    if missing:
        raise ValueError(f"{where}: missing keys {sorted(missing)}")


@dataclass
class AnswerWindow:
    """A span of recording time in which a response to the query is correct."""

    start: float
    end: float
    text: Optional[str] = None  # reference answer, where one exists

    def __post_init__(self):
        self.start = parse_time(self.start, "window start")
        self.end = parse_time(self.end, "window end")
        if self.start > self.end:
            raise ValueError(f"window start {self.start} > end {self.end}")
        if self.text is not None and not isinstance(self.text, str):
            raise ValueError(f"window [{self.start}, {self.end}] text {self.text!r} is not a string")

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"start": self.start, "end": self.end}
        if self.text is not None:
            out["text"] = self.text
        return out


@dataclass
class AnnotatedQuery:
    """A query asked at `time`, and when (and what) the system should answer."""

    time: float
    text: str
    query_id: str = ""  # filled by the recording when empty
    mode: str = "auto"
    camera: str = ""  # "" = every camera
    windows: List[AnswerWindow] = field(default_factory=list)

    def __post_init__(self):
        if not isinstance(self.query_id, str):
            raise ValueError(f"query_id {self.query_id!r} must be a string")
        name = self.query_id or (self.text[:40] if isinstance(self.text, str) else "?")
        self.time = parse_time(self.time, f"query {name!r} time")
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"query {name!r}: text {self.text!r} must be a non-empty string")
        if self.mode not in MODES:
            raise ValueError(f"query {name!r}: mode {self.mode!r} is not one of {MODES}")
        if not isinstance(self.camera, str):
            raise ValueError(f"query {name!r}: camera {self.camera!r} is not a string")
        if not isinstance(self.windows, list):
            raise ValueError(f"query {name!r}: windows must be a list, got {type(self.windows).__name__}")
        windows = []
        for i, window in enumerate(self.windows):
            try:
                windows.append(window if isinstance(window, AnswerWindow) else _window(window))
            except (ValueError, TypeError) as err:
                raise ValueError(f"query {name!r} window {i}: {err}") from None
            if windows[-1].end < self.time:
                raise ValueError(f"query {name!r} window {i}: ends at {windows[-1].end} "
                                 f"before the query is asked at {self.time}")
        self.windows = sorted(windows, key=lambda w: (w.start, w.end))

    def to_dict(self) -> Dict[str, Any]:
        return {"query_id": self.query_id, "time": self.time, "text": self.text, "mode": self.mode,
                "camera": self.camera, "windows": [w.to_dict() for w in self.windows]}


def _window(data: Any) -> AnswerWindow:
    if isinstance(data, (list, tuple)) and len(data) == 2:  # bare [start, end]
        return AnswerWindow(data[0], data[1])
    _check_keys(data, {"start", "end", "text"}, {"start", "end"}, "window")
    return AnswerWindow(**data)


@dataclass
class Recording:
    """One recording (bag or video) and the queries asked during it."""

    recording_id: str
    queries: List[AnnotatedQuery] = field(default_factory=list)
    source: str = ""
    start_stamp: Optional[float] = None
    duration: Optional[float] = None

    def __post_init__(self):
        if not isinstance(self.recording_id, str) or not self.recording_id:
            raise ValueError(f"recording_id {self.recording_id!r} must be a non-empty string")
        where = f"recording {self.recording_id!r}"
        if self.start_stamp is not None and not (isinstance(self.start_stamp, (int, float))
                                                 and math.isfinite(self.start_stamp)):
            raise ValueError(f"{where}: start_stamp {self.start_stamp!r} is not a finite number")
        if self.duration is not None:
            self.duration = parse_time(self.duration, f"{where} duration")
        if not isinstance(self.queries, list):
            raise ValueError(f"{where}: queries must be a list, got {type(self.queries).__name__}")
        queries = []
        for i, query in enumerate(self.queries):
            try:
                if not isinstance(query, AnnotatedQuery):
                    _check_keys(query, {"query_id", "time", "text", "mode", "camera", "windows"},
                                {"time", "text"}, "query")
                    query = AnnotatedQuery(**query)
            except (ValueError, TypeError) as err:
                raise ValueError(f"{where} query {i}: {err}") from None
            if not query.query_id:
                query.query_id = f"{self.recording_id}/q{i}"
            queries.append(query)
        self.queries = queries

    def to_relative(self, stamp: float) -> float:
        """Absolute stamp -> seconds from the recording start (needs `start_stamp`)."""
        if self.start_stamp is None:
            raise ValueError(f"recording {self.recording_id!r} has no start_stamp")
        return stamp - self.start_stamp

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"recording_id": self.recording_id}
        for key in ("source", "start_stamp", "duration"):
            if getattr(self, key) not in ("", None):
                out[key] = getattr(self, key)
        out["queries"] = [q.to_dict() for q in self.queries]
        return out


@dataclass
class AnnotationSet:
    """All recordings of one annotation file; query ids are unique across it."""

    recordings: List[Recording] = field(default_factory=list)

    def __post_init__(self):
        recordings, seen_rec, seen_query = [], set(), {}
        for i, rec in enumerate(self.recordings):
            if not isinstance(rec, Recording):
                try:
                    _check_keys(rec, {"recording_id", "queries", "source", "start_stamp", "duration"},
                                {"recording_id"}, "recording")
                    rec = Recording(**rec)
                except (ValueError, TypeError) as err:
                    named = str(err).startswith("recording '")  # already names the recording
                    raise ValueError(str(err) if named else f"recording {i}: {err}") from None
            if rec.recording_id in seen_rec:
                raise ValueError(f"recording {i}: recording_id {rec.recording_id!r} is repeated")
            seen_rec.add(rec.recording_id)
            for query in rec.queries:
                if query.query_id in seen_query:
                    raise ValueError(f"recording {rec.recording_id!r}: query_id {query.query_id!r} "
                                     f"is already used in recording {seen_query[query.query_id]!r}")
                seen_query[query.query_id] = rec.recording_id
            recordings.append(rec)
        self.recordings = recordings

    def queries(self) -> Iterator[AnnotatedQuery]:
        for rec in self.recordings:
            yield from rec.queries

    def query(self, query_id: str) -> AnnotatedQuery:
        for query in self.queries():
            if query.query_id == query_id:
                return query
        raise KeyError(f"no query {query_id!r}")

    def recording_of(self, query_id: str) -> Recording:
        for rec in self.recordings:
            if any(q.query_id == query_id for q in rec.queries):
                return rec
        raise KeyError(f"no query {query_id!r}")

    def to_dict(self) -> Dict[str, Any]:
        return {"version": SCHEMA_VERSION, "recordings": [r.to_dict() for r in self.recordings]}


def from_dict(data: Any) -> AnnotationSet:
    """Build from the parsed file; a StreamingBench proactive list is converted."""
    if isinstance(data, list) and all(isinstance(e, dict) and "questions" in e for e in data):
        return AnnotationSet([from_streamingbench(e, i) for i, e in enumerate(data)])
    _check_keys(data, {"version", "recordings"}, {"recordings"}, "annotation file")
    if data.get("version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise ValueError(f"annotation file: version {data['version']!r} is not {SCHEMA_VERSION}")
    if not isinstance(data["recordings"], list):
        raise ValueError("annotation file: recordings must be a list")
    return AnnotationSet(data["recordings"])


def load(path: Union[str, Path]) -> AnnotationSet:
    """Read an annotation file (JSON or YAML, ours or StreamingBench proactive).

    Raises:
        ValueError: one line naming the file: a syntax error with its line and column
            (datafile.load), or what the schema check refused.
    """
    path = Path(path)
    try:
        data = datafile.load(path)
    except ValueError as err:
        raise ValueError(f"{err} (annotation schema: dispider_ros/eval/annotations.py)") from None
    try:
        return from_dict(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def save(annotations: AnnotationSet, path: Union[str, Path]) -> None:
    """Write JSON, or YAML when the name ends in .yaml/.yml."""
    path = Path(path)
    data = annotations.to_dict()
    if path.suffix in (".yaml", ".yml"):
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    else:
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def streamingbench_query_id(entry_index: int, question_index: int) -> str:
    """The query id given to question `question_index` of clip entry `entry_index`."""
    return f"sb{entry_index:03d}_q{question_index}"


def from_streamingbench(entry: Dict[str, Any], index: int = 0) -> Recording:
    """One clip entry of StreamingBench's questions_proactive.json -> a Recording.

    Args:
        entry: ``{"time": "[0:00:00 - 0:00:30]", "video_path": ..., "questions": [...]}``.
        index: the entry's position in the file; it makes the ids unique
            (``sb<index>`` and ``sb<index>_q<j>``, see `streamingbench_query_id`).
    """
    where = f"StreamingBench entry {index}"
    if not isinstance(entry, dict) or not isinstance(entry.get("questions"), list):
        raise ValueError(f"{where}: expected a mapping with a 'questions' list")
    queries = []
    for j, question in enumerate(entry["questions"]):
        missing = {"question", "time_stamp", "ground_truth_time_stamp", "ground_truth_output"} - set(question)
        if missing:
            raise ValueError(f"{where} question {j}: missing keys {sorted(missing)}")
        try:
            gt = parse_time(question["ground_truth_time_stamp"], "ground_truth_time_stamp")
            queries.append(AnnotatedQuery(
                time=parse_time(question["time_stamp"], "time_stamp"), text=question["question"],
                query_id=streamingbench_query_id(index, j),
                windows=[AnswerWindow(gt, gt, str(question["ground_truth_output"]))]))
        except ValueError as err:
            raise ValueError(f"{where} question {j}: {err}") from None
    stem = Path(str(entry.get("video_path", ""))).stem
    return Recording(recording_id=f"sb{index:03d}" + (f"_{stem}" if stem else ""),
                     queries=queries, source=str(entry.get("video_path", "")))


def from_streamingbench_file(entries: Sequence[Dict[str, Any]]) -> AnnotationSet:
    """The whole questions_proactive.json list -> an AnnotationSet."""
    return AnnotationSet([from_streamingbench(e, i) for i, e in enumerate(entries)])
