"""OVO-Bench scoring, as JoeLeelyf/OVO-Bench's score.py + utils/OVOBenchScore.py compute it.

Results (the benchmark's own format): a folder of JSON files, each
``{"backward": [...], "realtime": [...], "forward": [...]}``; every ``*.json`` in it is
pooled (in name order) before scoring. The list an item sits in decides its mode.

* backward / realtime items (multiple choice) carry ``task``, ``response`` and
  ``ground_truth`` (a letter): correct when the letter is a substring of the response;
  a missing (null) response scores 0.
* forward items are annotation entries whose ``test_info`` probes each carry a
  ``response``. REC probe: the digits of the response, joined, equal ``str(count)``.
  SSR/CRR probe: the response is exactly "N" (type 0) / "Y" (type 1), or contains "No"
  (type 0) / "Yes" (type 1), case-sensitive.

Accuracy of a task = correct / items (probes for forward tasks); a mode's average is the
mean of its tasks' accuracies; total = mean of the modes' averages. Values are percent,
unrounded (the official prints them with 2 decimals).

Departures, where the official would crash instead: a mode with no items is left out of
the total (the official needs all three); a task with no probes gets no accuracy.

The annotation file is only checked against, never used to score (the official reads
results alone): ids absent from it, ids scored more than once, multiple-choice ground
truths that differ from its ``gt`` index, and annotation entries with no result are
reported under ``checks``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from dispider_ros.eval import datafile

MODE_TASKS = {
    "backward": ("EPM", "ASI", "HLD"),
    "realtime": ("STU", "OJR", "ATR", "ACR", "OCR", "FPD"),
    "forward": ("REC", "SSR", "CRR"),
}
MODES = tuple(MODE_TASKS)


def load_results(folder: Union[str, Path]) -> Dict[str, List[Dict[str, Any]]]:
    """Pool every result file of `folder` into one {"backward", "realtime", "forward"} dict."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json")) if folder.is_dir() else [folder]
    if not files:
        raise ValueError(f"{folder}: no *.json result files")
    pooled: Dict[str, List[Dict[str, Any]]] = {mode: [] for mode in MODES}
    for path in files:
        data = datafile.load(path, yaml_ok=False)  # one-line syntax errors
        if not isinstance(data, dict) or not set(MODES) <= set(data):
            raise ValueError(f"{path}: a result file needs the keys {list(MODES)}")
        for mode in MODES:
            pooled[mode].extend(data[mode])
    return pooled


def multiple_choice_correct(response: Optional[str], ground_truth: str) -> int:
    """1 when the ground-truth letter occurs in the response; a null response scores 0."""
    if response is None:
        return 0
    return int(ground_truth in response)


def rec_correct(response: Optional[str], count: Any) -> int:
    """REC probe: all digits of the response, joined, equal str(count)."""
    if response is None:
        return 0
    return int("".join(re.findall(r"\d+", response)) == str(count))


def yes_no_correct(response: Optional[str], probe_type: int) -> int:
    """SSR/CRR probe: exactly "N"/"Y", or containing "No" (type 0) / "Yes" (any other type)."""
    if response is None:
        return 0
    if (response == "N" and probe_type == 0) or (response == "Y" and probe_type == 1):
        return 1
    return int(("No" if probe_type == 0 else "Yes") in response)


def _score_item(mode: str, item: Dict[str, Any]) -> List[int]:
    """The 0/1 scores of one result item (one per probe for forward items)."""
    where = f"{mode} item id={item.get('id')!r} task={item.get('task')!r}"
    try:
        if mode != "forward":
            return [multiple_choice_correct(item["response"], item["ground_truth"])]
        task, probes = item["task"], item["test_info"]
        if task == "REC":
            return [rec_correct(p["response"], p["count"]) for p in probes]
        if task in ("SSR", "CRR"):
            return [yes_no_correct(p["response"], p["type"]) for p in probes]
        return []  # the official scores only REC, SSR and CRR in the forward mode
    except KeyError as err:
        raise ValueError(f"{where}: missing key {err}") from None
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from None


def score(results: Dict[str, Sequence[Dict[str, Any]]],
          annotations: Optional[Sequence[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Per-task accuracy, per-mode averages and the total, in percent.

    Returns ``{<task>: acc, ..., "backward": avg, "realtime": avg, "forward": avg,
    "total": t, "counts": {<task>: {"correct", "total"}}, "checks": {...}}`` with only the
    tasks and modes present in `results`.
    """
    out: Dict[str, Any] = {}
    counts: Dict[str, Dict[str, int]] = {}
    mode_avgs = []
    for mode in MODES:
        per_task: Dict[str, List[int]] = {}
        for item in results.get(mode, []):
            per_task.setdefault(item.get("task"), []).extend(_score_item(mode, item))
        accs = []
        for task, marks in per_task.items():
            if not marks:
                continue
            acc = 100.0 * sum(marks) / len(marks)
            out[task] = acc
            counts[task] = {"correct": sum(marks), "total": len(marks)}
            accs.append(acc)
        if accs:
            out[mode] = sum(accs) / len(accs)
            mode_avgs.append(out[mode])
    if not mode_avgs:
        raise ValueError("no scorable OVO-Bench results")
    out["total"] = sum(mode_avgs) / len(mode_avgs)
    out["counts"] = counts
    if annotations is not None:
        out["checks"] = check_against(results, annotations)
    return out


def check_against(results: Dict[str, Sequence[Dict[str, Any]]],
                  annotations: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Compare results with the annotation file (ovo_bench_new.json); scores are unaffected."""
    by_id = {entry["id"]: entry for entry in annotations}
    seen, unknown, mismatched, repeated = set(), [], [], []
    for mode in MODES:
        for item in results.get(mode, []):
            entry = by_id.get(item.get("id"))
            if entry is None or entry.get("task") != item.get("task"):
                unknown.append(item.get("id"))
                continue
            if entry["id"] in seen:
                repeated.append(entry["id"])
            seen.add(entry["id"])
            if mode != "forward" and "gt" in entry and item.get("ground_truth") != chr(ord("A") + entry["gt"]):
                mismatched.append(entry["id"])
    missing: Dict[str, int] = {}
    for entry in annotations:
        if entry["id"] not in seen:
            missing[entry["task"]] = missing.get(entry["task"], 0) + 1
    return {"unknown_ids": unknown, "repeated_ids": repeated, "ground_truth_mismatches": mismatched,
            "missing": missing}


def load_annotations(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """ovo_bench_new.json: a list of entries with id and task."""
    data = datafile.load(path, yaml_ok=False)  # one-line syntax errors
    if not isinstance(data, list) or not all(isinstance(e, dict) and "id" in e and "task" in e for e in data):
        raise ValueError(f"{path}: not an OVO-Bench annotation list (entries with id and task)")
    return data
