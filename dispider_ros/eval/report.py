"""Report of one run folder: report.json, report.md and timeline.png.

Scores come from `score_cli.score_dispider` on the run's own record and annotations
(metrics defined in `dispider_ros.eval.metrics`: timing precision/recall/F1 and latency
at each tolerance for responses and for triggers, silence, time to first token, answer
text similarity), plus the system figures of the run ("run" records: sampled fps, dropped
frames, peak memory, replay speed).

The timeline has one panel per camera and one row per query (a query to every camera
appears in every panel): ground-truth windows (shaded; a zero-length window is drawn as a
narrow bar), the moment the query was asked (triangle), triggers (vertical ticks at the
evidence stamp), final answers (dots at their emit time, joined to their evidence stamp) and
first-token marks (x at the trigger's camera clock + TTFT x replay rate). Times are seconds
from the recording start.

Which time is scored (the tables and the plot agree): an answer at its emit time (when it
came out; its evidence stamp where the record has none), a trigger at its evidence stamp
(the frame it fired on). A `now` question fires on the newest frame already seen, so its
trigger's evidence can be earlier than the moment the question was asked.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from dispider_ros.eval import annotations as ann
from dispider_ros.eval import metrics, score_cli
from dispider_ros.eval.record import ANNOTATIONS, PREDICTIONS, RunData, read_run

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
TIMELINE_PNG = "timeline.png"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def answer_time(response: Dict[str, Any]) -> float:
    """When an answer is scored and drawn: its emit time, else its evidence stamp
    (score_cli.PredictionRecord.answer_time on a run record's dict)."""
    emit = response.get("emit_stamp")
    return emit if emit is not None else response["stamp"]


def per_query(annotations: ann.AnnotationSet, run: RunData) -> List[Dict[str, Any]]:
    """One row per annotated query: when asked, windows, triggers, answers, first latency."""
    rows = []
    for q in annotations.queries():
        triggers = sorted(t["stamp"] for t in run.triggers if t["query_id"] == q.query_id)
        answers = [r for r in run.responses if r["query_id"] == q.query_id and not r.get("error")]
        asked = [r["stamp"] for r in run.queries if r["query_id"] == q.query_id]
        windows = [(w.start, w.end) for w in q.windows]
        times = [answer_time(r) for r in answers]
        matched = metrics.match_times(times, windows, 2.0)
        latencies = [t - windows[k][0] for t, k in zip(times, matched) if k is not None]
        rows.append({
            "query_id": q.query_id, "text": q.text, "mode": score_cli.mode_of(q),
            "declared_mode": q.mode, "camera": q.camera or "*",
            "asked": asked[0] if asked else None, "windows": windows,
            "triggers": triggers, "answers": len(answers),
            "errors": sum(1 for r in run.responses if r["query_id"] == q.query_id and r.get("error")),
            "matched_at_2s": sum(k is not None for k in matched),
            "first_latency_at_2s": min(latencies) if latencies else None,
        })
    return rows


def check_run_dir(run_dir: Union[str, Path]) -> Path:
    """`run_dir` if it is a run folder (holds predictions.jsonl); FileNotFoundError naming it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist (`dispider-eval run "
                                f"--out {run_dir}` writes one)")
    if not (run_dir / PREDICTIONS).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: it holds no {PREDICTIONS} "
                                "(a run that failed or is still going leaves none)")
    return run_dir


def build(run_dir: Union[str, Path], annotations_path: Optional[Union[str, Path]] = None,
          tolerances: Sequence[float] = metrics.DEFAULT_TOLERANCES) -> Dict[str, Any]:
    """The report as a dict (what report.json holds)."""
    run_dir = check_run_dir(run_dir)
    annotations_path = Path(annotations_path) if annotations_path else run_dir / ANNOTATIONS
    if not annotations_path.is_file():
        raise FileNotFoundError(f"annotation file {annotations_path} does not exist"
                                + ("" if annotations_path.parent != run_dir else
                                   " (the run saves it; pass --annotations <file>)"))
    annotations = ann.load(annotations_path)
    run = read_run(run_dir)
    records = score_cli.load_predictions(run_dir / PREDICTIONS)
    scores = score_cli.score_dispider(annotations, records, tolerances)
    info = {k: v for k, v in run.run_info().items() if k not in ("type", "event", "settings")}
    return {"run": info, "scores": scores, "system": run.system(),
            "queries": per_query(annotations, run),
            "counts": {"queries": len(run.queries), "triggers": len(run.triggers),
                       "responses": len(run.responses), "chunks": len(run.chunks)}}


def _timing_table(title: str, timing: Dict[str, Dict]) -> List[str]:
    lines = [f"### {title}", "", "| tolerance (s) | TP | FP | FN | precision | recall | F1 | "
             "latency median (s) | latency p90 (s) |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in timing.values():
        lat = row["latency"]
        lines.append(f"| {row['tolerance']:g} | {row['tp']} | {row['fp']} | {row['fn']} | "
                     f"{_fmt(row['precision'])} | {_fmt(row['recall'])} | {_fmt(row['f1'])} | "
                     f"{_fmt(lat['median'])} | {_fmt(lat['p90'])} |")
    return lines + [""]


def _flat(prefix: str, value: Any, out: Dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value


SYSTEM_KEYS = ("mode", "rate", "frames", "camera_seconds", "wall_seconds", "speed_factor",
               "model_load_seconds", "sampled_frames", "sampled_fps", "dropped_frames",
               "dropped_frames_by_node", "rejected_frames", "perception_ms_per_frame",
               "encode_ms_per_frame", "perception_processed_fps", "queue_lag_ms", "peak_rss_mb",
               "node_peak_rss_mb", "live_total_wall_seconds")


def markdown(report: Dict[str, Any]) -> str:
    """report.md text."""
    run, scores, system = report["run"], report["scores"], report["system"]
    lines = [f"# Replay report: {run.get('recording_id', '?')} ({run.get('mode', '?')})", "",
             f"- input: `{run.get('bag', '?')}` ({run.get('storage', '?')}), cameras "
             f"{', '.join(run.get('cameras', [])) or '?'}",
             f"- preset: {run.get('preset', '?')}; t0 (camera stamp of time 0): {_fmt(run.get('t0'), 3)}",
             f"- records: {report['counts']['queries']} queries, {report['counts']['triggers']} "
             f"triggers, {report['counts']['responses']} answers", "",
             f"![timeline]({TIMELINE_PNG})", "", "## Timing (metrics.timing_scores)", ""]
    lines += ["Answers are scored when they came out (emit time, the dots of the timeline); "
              "triggers at their evidence frame (the ticks). Latency = scored time - window "
              "start.", ""]
    lines += _timing_table("Answers (final responses, at emit time)", scores["timing"]["responses"])
    lines += _timing_table("Triggers (at the evidence frame)", scores["timing"]["triggers"])
    silence, ttft, text = scores["silence"], scores["ttft"], scores["text"]
    delay = scores["response_delay"]
    lines += ["## Answers", "", "| metric | value |", "|---|---:|",
              f"| answers outside every window (share) | {_fmt(silence.get('outside_fraction'))} |",
              f"| silent queries kept silent (share) | {_fmt(silence.get('silent_queries_ok'))} |",
              f"| TTFT median / p90 (s) | {_fmt(ttft['median'])} / {_fmt(ttft['p90'])} |",
              f"| answer delay after evidence median (s) | {_fmt(delay['median'])} |",
              f"| text pairs scored (of {text['references']} references) | {text.get('pairs', text.get('count', '–'))} |",
              f"| token F1 mean | {_fmt(text.get('token_f1'))} |",
              f"| ROUGE-L mean | {_fmt(text.get('rouge_l'))} |", ""]
    if scores.get("by_mode"):
        lines += ["## F1 by query mode (answers; `auto` counted as the mode it resolved to)", "",
                  "A miss scores 0; – = undefined (no window was due and nothing was said).", "",
                  "| mode | " + " | ".join(
            f"F1@{k}s" for k in scores["timing"]["responses"]) + " |",
                  "|---|" + "---:|" * len(scores["timing"]["responses"])]
        for mode, timing in scores["by_mode"].items():
            lines.append(f"| {mode} | " + " | ".join(_fmt(r["f1"]) for r in timing.values()) + " |")
        lines.append("")
    lines += ["## Queries", "", "Triggers (s): the evidence frame each fired on; a `now` "
              "question answers from the newest frame already seen, so it can precede `asked`. "
              "First latency: first matched answer's emit time - its window start.", "",
              "| query | mode | camera | asked (s) | windows (s) | triggers (s) | "
              "answers | matched @2 s | first latency (s) |", "|---|---|---|---:|---|---|---:|---:|---:|"]
    for row in report["queries"]:
        windows = ", ".join(f"[{s:g}, {e:g}]" for s, e in row["windows"]) or "silent"
        triggers = ", ".join(f"{t:.2f}" for t in row["triggers"]) or "–"
        mode = row["mode"] if row.get("declared_mode", row["mode"]) == row["mode"] else \
            f"{row['declared_mode']} → {row['mode']}"
        lines.append(f"| `{row['query_id']}` {row['text']} | {mode} | {row['camera']} | "
                     f"{_fmt(row['asked'], 2)} | {windows} | {triggers} | {row['answers']} | "
                     f"{row['matched_at_2s']} | {_fmt(row['first_latency_at_2s'], 2)} |")
    lines += ["", "## System", "", "| figure | value |", "|---|---:|"]
    for key in SYSTEM_KEYS:
        if key in system:
            flat: Dict[str, Any] = {}
            _flat(key, system[key], flat)
            for name, value in flat.items():
                lines.append(f"| {name} | {_fmt(value, 2)} |")
    lines.append("")
    return "\n".join(lines)


def first_token_stamp(response: Dict[str, Any], clocks: Dict[str, float],
                      rate: float = 1.0) -> Optional[float]:
    """Recording time of an answer's first token: the camera clock when its trigger was
    made + TTFT (wall seconds) x the replay rate (camera seconds per wall second)."""
    ttft = response.get("ttft_sec")
    if ttft is None:
        return None
    return clocks.get(response.get("trigger_id"), response["stamp"]) + ttft * rate


def timeline(report: Dict[str, Any], run: RunData, annotations: ann.AnnotationSet,
             path: Union[str, Path]) -> Path:
    """Draw timeline.png (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    queries = list(annotations.queries())
    cameras = sorted({t["camera_id"] for t in run.triggers if t.get("camera_id")}
                     | {q.camera for q in queries if q.camera}
                     | set(report["run"].get("cameras") or [])) or ["*"]
    end = max([0.0] + [e for q in queries for _, e in [(w.start, w.end) for w in q.windows]]
              + [q.time for q in queries] + [t["stamp"] for t in run.triggers]
              + [answer_time(r) for r in run.responses]
              + [report["system"].get("camera_seconds") or 0.0])
    rows = max(1, len(queries))
    clocks = {t["trigger_id"]: t.get("clock_stamp", t["stamp"]) for t in run.triggers}
    rate = float(report["run"].get("rate") or 1.0)
    fig, axes = plt.subplots(len(cameras), 1, figsize=(10, 1.2 + 0.55 * rows * len(cameras)),
                             squeeze=False, sharex=True)
    min_width = max(end, 1.0) / 300.0
    for ax, camera in zip(axes[:, 0], cameras):
        for y, q in enumerate(queries):
            if q.camera and q.camera != camera and camera != "*":
                continue
            for w in q.windows:
                ax.barh(y, max(w.end - w.start, min_width), left=w.start, height=0.6,
                        color="tab:green", alpha=0.3, label="ground-truth window")
            asked = [r["stamp"] for r in run.queries if r["query_id"] == q.query_id]
            ax.plot(asked or [q.time], [y] * len(asked or [q.time]), marker=">", linestyle="",
                    color="black", markersize=8, label="query asked")
            trig = [t for t in run.triggers if t["query_id"] == q.query_id
                    and (t.get("camera_id", camera) == camera or camera == "*")]
            ax.plot([t["stamp"] for t in trig], [y] * len(trig), marker="|", linestyle="",
                    color="tab:orange", markersize=18, markeredgewidth=2,
                    label="trigger (evidence frame)")
            for r in run.responses:
                if r["query_id"] != q.query_id or (camera != "*" and r.get("camera_id") not in ("", camera)):
                    continue
                at = answer_time(r)  # the time the tables score it at
                color = "tab:red" if r.get("error") else "tab:blue"
                ax.plot([r["stamp"], at], [y - 0.18] * 2, color=color, linewidth=1)
                ax.plot([at], [y - 0.18], marker="o", color=color, linestyle="",
                        label="answer (error)" if r.get("error") else "answer (scored here)")
                first = first_token_stamp(r, clocks, rate)
                if first is not None:
                    ax.plot([first], [y - 0.18], marker="x", color="tab:purple",
                            linestyle="", label="first token")
        ax.set_yticks(range(rows))
        ax.set_yticklabels([q.query_id for q in queries], fontsize=8)
        ax.set_ylim(-0.7, rows - 0.3)
        ax.invert_yaxis()
        ax.set_title(f"camera {camera}", fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("seconds from the recording start")
    axes[-1, 0].set_xlim(-0.02 * max(end, 1.0), end * 1.03 + 0.1)
    handles = {}
    for ax in axes[:, 0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="upper right", fontsize=7, ncol=3)
    fig.suptitle(f"{report['run'].get('recording_id', '')} — {report['run'].get('mode', '')} replay",
                 fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(run_dir: Union[str, Path], annotations_path: Optional[Union[str, Path]] = None,
          out: Optional[Union[str, Path]] = None,
          tolerances: Sequence[float] = metrics.DEFAULT_TOLERANCES) -> Dict[str, Path]:
    """Write report.json, report.md and timeline.png (into `out`, default the run folder)."""
    run_dir = check_run_dir(run_dir)
    annotations_path = Path(annotations_path) if annotations_path else run_dir / ANNOTATIONS
    report = build(run_dir, annotations_path, tolerances)  # checks every input: then write
    out = Path(out) if out else run_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / REPORT_JSON, "markdown": out / REPORT_MD, "timeline": out / TIMELINE_PNG}
    paths["json"].write_text(json.dumps(report, indent=2, allow_nan=False, default=str) + "\n")
    paths["markdown"].write_text(markdown(report))
    timeline(report, read_run(run_dir), ann.load(annotations_path), paths["timeline"])
    return paths
