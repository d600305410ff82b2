"""`score`: score saved answers against ground truth and print one JSON object.

    score --format dispider       --annotations ann.yaml  --results run/predictions.jsonl
    score --format streamingbench --annotations questions_proactive.json --results out.json|predictions.jsonl
    score --format ovo            --annotations ovo_bench_new.json --results results/Gemini/

Prediction records (format dispider, and streamingbench from our own runs): JSON lines,
one object per line; blank lines and records of other types (a replay may add its own)
are skipped. Fields:

    type         "query" | "trigger" | "response"                        (required)
    query_id     the annotation's query id                               (required)
    stamp        seconds from the recording start, as in the annotation: (required)
                 query = when asked; trigger and response = camera time of the evidence frame
    camera_id    camera of the evidence ("" for a query to every camera)
    text         query text / answer text ("" for triggers)
    final        responses: true for the complete answer, false for a streamed chunk (default true)
    trigger_id   trigger that caused the response / the trigger's own id
    response_id  the response's id
    ttft_sec     responses: seconds from trigger to first token (null/NaN if unknown)
    emit_stamp   responses: recording time at which the final text came out (optional;
                 the answer is scored at this time, see `PredictionRecord.answer_time`)
    error        responses: non-empty when the answer is not a complete one (failed, stopped,
                 dropped, rejected); such a response is not scored. Run records also carry
                 `error_code` (Response.msg's constants), kept in `extras`
    mode, score, policy, ...   anything else is kept in `extras` and not scored

Scoring (format dispider) uses final, error-free responses; see `score_dispider`.
Which time is scored: an answer at its `emit_stamp` (when the user got it; its evidence
`stamp` where a record has no emit_stamp), a trigger at its `stamp` (the evidence frame).
So the answer table says "did the robot speak inside the window", the trigger table "did it
notice the right frame", and the report's timeline draws each at the same time.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from dispider_ros.eval import annotations as ann
from dispider_ros.eval import datafile, metrics, ovo, streamingbench

RECORD_TYPES = ("query", "trigger", "response")


@dataclass
class PredictionRecord:
    """One line of a predictions file (see the module docstring)."""

    type: str
    query_id: str
    stamp: float
    camera_id: str = ""
    text: str = ""
    final: bool = True
    trigger_id: str = ""
    response_id: str = ""
    ttft_sec: Optional[float] = None
    emit_stamp: Optional[float] = None
    error: str = ""
    extras: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.type not in RECORD_TYPES:
            raise ValueError(f"type {self.type!r} is not one of {RECORD_TYPES}")
        if not isinstance(self.query_id, str) or not self.query_id:
            raise ValueError(f"query_id {self.query_id!r} must be a non-empty string")
        if isinstance(self.stamp, bool) or not isinstance(self.stamp, (int, float)) or not math.isfinite(self.stamp):
            raise ValueError(f"stamp {self.stamp!r} must be a finite number of seconds")
        self.stamp = float(self.stamp)
        if not isinstance(self.final, bool):
            raise ValueError(f"final {self.final!r} must be true or false")
        for name in ("camera_id", "text", "trigger_id", "response_id", "error"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} {getattr(self, name)!r} must be a string")
        for name in ("ttft_sec", "emit_stamp"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{name} {value!r} must be a number or null")
            if value is not None and math.isnan(value):
                setattr(self, name, None)

    @property
    def answer_time(self) -> float:
        """The time a response is scored at: when it came out (emit_stamp), else its evidence
        stamp (prediction files from elsewhere may not have emit_stamp)."""
        return self.emit_stamp if self.emit_stamp is not None else self.stamp

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PredictionRecord":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "extras"}
        extras = {k: v for k, v in data.items() if k not in known}
        return cls(**known, extras=extras)


def load_predictions(path: Union[str, Path]) -> List[PredictionRecord]:
    """Read a JSON-lines predictions file; ValueError naming the bad line."""
    records = []
    for number, line in enumerate(datafile.read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(datafile.json_error(path, err, number - 1)) from None
        try:
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if data.get("type") not in RECORD_TYPES:
                continue
            records.append(PredictionRecord.from_dict(data))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path} line {number}: {err}") from None
    return records


def mode_of(query: ann.AnnotatedQuery) -> str:
    """The mode the system uses for a query: its declared mode, "auto" resolved by
    query_text.infer_mode (the decision node's rule)."""
    from dispider_ros.core.query_text import infer_mode

    return infer_mode(query.text) if query.mode == "auto" else query.mode


def score_dispider(annotations: ann.AnnotationSet, records: Sequence[PredictionRecord],
                   tolerances: Sequence[float] = metrics.DEFAULT_TOLERANCES,
                   text_tolerance: float = 2.0) -> Dict[str, Any]:
    """Our robot metrics (metrics.py) for one run.

    timing.responses / timing.triggers: precision, recall, F1 and latency at each tolerance
    (metrics.timing_scores), answers at their `answer_time` (emit time), triggers at their
    evidence stamp; silence: metrics.silence_scores on answer times; ttft: stats of
    ttft_sec; response_delay: emit_stamp - stamp; text: similarity of each response matched
    (at `text_tolerance`) to a window with reference text; by_camera / by_mode: response
    timing per query camera ("*" = every camera) and per mode the system used (`mode_of`:
    "auto" resolved as the decision node resolves it).
    """
    queries = list(annotations.queries())
    known = {q.query_id for q in queries}
    responses: Dict[str, List[PredictionRecord]] = {qid: [] for qid in known}
    triggers: Dict[str, List[float]] = {qid: [] for qid in known}
    counts = {"query": 0, "trigger": 0, "response_final": 0, "response_partial": 0, "errors": 0,
              "unknown_query": 0}
    asked = set()
    for rec in records:
        if rec.query_id not in known:
            counts["unknown_query"] += 1
            continue
        if rec.type == "query":
            counts["query"] += 1
            asked.add(rec.query_id)
        elif rec.type == "trigger":
            counts["trigger"] += 1
            triggers[rec.query_id].append(rec.stamp)
        elif not rec.final:
            counts["response_partial"] += 1
        elif rec.error:
            counts["errors"] += 1
        else:
            counts["response_final"] += 1
            responses[rec.query_id].append(rec)
    counts["queries_not_asked"] = len(known - asked) if asked else None

    def items(subset):
        return [([r.answer_time for r in responses[q.query_id]],
                 [(w.start, w.end) for w in q.windows]) for q in subset]

    final = [r for rs in responses.values() for r in rs]
    out: Dict[str, Any] = {
        "queries": len(queries), "windows": sum(len(q.windows) for q in queries),
        "timing": {"responses": metrics.timing_scores(items(queries), tolerances),
                   "triggers": metrics.timing_scores(
                       [(triggers[q.query_id], [(w.start, w.end) for w in q.windows]) for q in queries],
                       tolerances)},
        "silence": metrics.silence_scores(items(queries)),
        "ttft": metrics.summary_stats([r.ttft_sec for r in final if r.ttft_sec is not None]),
        "response_delay": metrics.summary_stats([r.emit_stamp - r.stamp for r in final
                                                 if r.emit_stamp is not None]),
    }
    pairs = []
    for q in queries:
        rs = responses[q.query_id]
        windows = [(w.start, w.end) for w in q.windows]
        for r, k in zip(rs, metrics.match_times([r.answer_time for r in rs], windows, text_tolerance)):
            if k is not None and q.windows[k].text is not None:
                pairs.append((r.text, q.windows[k].text))
    out["text"] = {"tolerance": text_tolerance,
                   "references": sum(w.text is not None for q in queries for w in q.windows),
                   **metrics.text_scores(pairs)}
    for key, group_of in (("by_camera", lambda q: q.camera or "*"), ("by_mode", mode_of)):
        groups: Dict[str, list] = {}
        for q in queries:
            groups.setdefault(group_of(q), []).append(q)
        out[key] = {name: metrics.timing_scores(items(subset), tolerances)
                    for name, subset in sorted(groups.items())}
    out["records"] = counts
    return out


def _is_jsonl(path: Path) -> bool:
    if path.suffix == ".jsonl":
        return True
    first = datafile.read_text(path).lstrip()[:1]
    return first == "{"


def score(fmt: str, annotations: Union[str, Path], results: Union[str, Path],
          tolerances: Sequence[float] = metrics.DEFAULT_TOLERANCES, text_tolerance: float = 2.0,
          model: Optional[str] = None) -> Dict[str, Any]:
    """The JSON object `score` prints, as a dict."""
    results = Path(results)
    if fmt == "ovo":
        return {"format": "ovo", **ovo.score(ovo.load_results(results), ovo.load_annotations(annotations))}
    if fmt == "streamingbench":
        entries = streamingbench.load_questions(annotations)
        if _is_jsonl(results):
            first = streamingbench.first_responses(
                (r.query_id, r.answer_time, r.text) for r in load_predictions(results)
                if r.type == "response" and r.final and not r.error)
            return {"format": "streamingbench", **streamingbench.score_first_responses(entries, first)}
        scored = streamingbench.score_benchmark_output(streamingbench.load_questions(results), model)
        return {"format": "streamingbench", **scored}
    if fmt == "dispider":
        return {"format": "dispider", **score_dispider(ann.load(annotations), load_predictions(results),
                                                       tolerances, text_tolerance)}
    raise ValueError(f"format {fmt!r} is not one of dispider, streamingbench, ovo")


def _tolerances(text: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"tolerances {text!r} must be comma-separated seconds") from None
    if not values or any(not (v >= 0) or math.isinf(v) for v in values):
        raise argparse.ArgumentTypeError(f"tolerances {text!r} must be finite seconds >= 0")
    return values


def score_main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse `argv`, print the scores as one JSON object; exit status 0, or 2 on bad input."""
    parser = argparse.ArgumentParser(
        prog="python -m dispider_ros.eval score",
        description="Score saved answers against ground truth; prints one JSON object.")
    parser.add_argument("--format", required=True, choices=("dispider", "streamingbench", "ovo"),
                        help="dispider: our annotation file + predictions JSON lines; streamingbench: "
                             "questions_proactive.json + its output file or our predictions; ovo: "
                             "ovo_bench_new.json + a folder of OVO-Bench result files")
    parser.add_argument("--annotations", required=True, type=Path, help="ground-truth file")
    parser.add_argument("--results", required=True, type=Path, help="results file or folder")
    parser.add_argument("--tolerances", type=_tolerances, default=list(metrics.DEFAULT_TOLERANCES),
                        help="dispider: timing tolerances in seconds, comma-separated (default 0,1,2,5)")
    parser.add_argument("--text-tolerance", type=float, default=2.0,
                        help="dispider: tolerance (s) for pairing answers with reference text (default 2)")
    parser.add_argument("--model", default=None,
                        help="streamingbench output: the model's key on each question (default: the only one)")
    args = parser.parse_args(argv)
    for path in (args.annotations, args.results):
        if not path.exists():
            print(f"score: {path} does not exist", file=sys.stderr)
            return 2
    try:
        result = score(args.format, args.annotations, args.results, args.tolerances,
                       args.text_tolerance, args.model)
    except (ValueError, KeyError) as err:
        print(f"score: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(score_main())
