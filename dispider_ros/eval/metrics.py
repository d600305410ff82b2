"""Scoring functions for proactive answers (pure Python + numpy, no ROS).

Two families, each documented with its source:

* Robot timing metrics (ours, built on the event-detection convention of a tolerance
  collar around each reference event, as in sed_eval's event-based metrics, Mesaros et al.
  2016, and mir_eval.onset): `match_times`, `timing_scores`, `silence_scores`,
  `summary_stats` (latency, TTFT) and answer-text similarity (`token_f1` as in SQuAD v1.1's
  evaluate script, `rouge_l` as in Lin 2004 / Google's rouge-score).
* ET-Bench (Liu et al. 2024, its compute_metrics.py): `tvg_f1`, `tal_f1`, `dvc_f1`,
  `dvc_sim`, with the answer parsers `parse_windows` and `parse_dense_captions`.

Times are seconds on one clock (see annotations.py). A window is a pair (start, end).
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

Window = Tuple[float, float]
DEFAULT_TOLERANCES = (0.0, 1.0, 2.0, 5.0)
ETBENCH_THRESHOLDS = (0.1, 0.3, 0.5, 0.7)


# --------------------------------------------------------------------- timing ----------
def match_times(times: Sequence[float], windows: Sequence[Window],
                tolerance: float) -> List[Optional[int]]:
    """Match response times to ground-truth windows; return each time's window index or None.

    Rule: a time t may match window (s, e) when s - tolerance <= t <= e + tolerance; each
    window is matched at most once. Times are taken in increasing order (ties keep input
    order) and each takes the free window it may match that ends first (ties: the one
    listed first). For points against intervals this greedy choice yields a maximum
    matching (the earliest-deadline rule for convex bipartite graphs, Glover 1967), so no
    other one-to-one assignment has more true positives.
    """
    if not (tolerance >= 0):
        raise ValueError(f"tolerance {tolerance} must be >= 0")
    out: List[Optional[int]] = [None] * len(times)
    used = set()
    for i in sorted(range(len(times)), key=lambda k: times[k]):
        t, best = times[i], None
        for k, (start, end) in enumerate(windows):
            if k not in used and start - tolerance <= t <= end + tolerance:
                if best is None or end < windows[best][1]:
                    best = k
        if best is not None:
            used.add(best)
            out[i] = best
    return out


def _ratio(num: float, den: float) -> Optional[float]:
    return num / den if den else None


def prf(tp: int, n_pred: int, n_true: int) -> Dict[str, Optional[float]]:
    """Precision tp/n_pred, recall tp/n_true, F1 = 2 tp / (n_pred + n_true) (their harmonic
    mean where both exist, as sed_eval's event-based F-measure); None where undefined.

    A total miss (windows, no answers) has no precision but recall 0 and F1 0, and answers
    where none were due have F1 0: F1 is undefined only when nothing was due or given."""
    precision, recall = _ratio(tp, n_pred), _ratio(tp, n_true)
    return {"precision": precision, "recall": recall, "f1": _ratio(2 * tp, n_pred + n_true)}


def summary_stats(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """count, mean, median, p90 (linear interpolation, numpy's default), min, max; NaN dropped."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return {"count": 0, "mean": None, "median": None, "p90": None, "min": None, "max": None}
    return {"count": int(arr.size), "mean": float(arr.mean()), "median": float(np.median(arr)),
            "p90": float(np.percentile(arr, 90)), "min": float(arr.min()), "max": float(arr.max())}


QueryItem = Tuple[Sequence[float], Sequence[Window]]  # (response times, GT windows) of one query


def timing_scores(items: Sequence[QueryItem],
                  tolerances: Sequence[float] = DEFAULT_TOLERANCES) -> Dict[str, Dict]:
    """Micro-averaged timing precision/recall/F1 and latency per tolerance.

    Each query's responses are matched to that query's windows only (`match_times`).
    tp = matched responses, fp = the other responses, fn = unmatched windows. Latency of a
    matched response = its time - its window's start (negative when early, within the
    tolerance). Keys are the tolerances written with "%g" ("0", "2", "0.5").
    """
    out = {}
    for tol in tolerances:
        tp = n_pred = n_true = 0
        latencies: List[float] = []
        for times, windows in items:
            matched = match_times(times, windows, tol)
            n_pred += len(times)
            n_true += len(windows)
            for t, k in zip(times, matched):
                if k is not None:
                    tp += 1
                    latencies.append(t - windows[k][0])
        out[f"{tol:g}"] = {"tolerance": float(tol), "tp": tp, "fp": n_pred - tp, "fn": n_true - tp,
                           **prf(tp, n_pred, n_true), "latency": summary_stats(latencies)}
    return out


def silence_scores(items: Sequence[QueryItem]) -> Dict[str, Optional[float]]:
    """How well the system keeps quiet.

    outside_fraction: share of responses lying outside every window of their query (no
    tolerance); responses to a query with no windows are all outside.
    silent_queries_ok: share of queries without windows that got no response at all.
    """
    n_resp = outside = n_neg = neg_ok = 0
    for times, windows in items:
        n_resp += len(times)
        outside += sum(1 for t in times if not any(s <= t <= e for s, e in windows))
        if not windows:
            n_neg += 1
            neg_ok += not times
    return {"responses": n_resp, "outside": outside, "outside_fraction": _ratio(outside, n_resp),
            "silent_queries": n_neg, "silent_queries_ok": _ratio(neg_ok, n_neg)}


# ---------------------------------------------------------------- answer text ----------
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, drop punctuation and articles, squash spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD v1.1 token-level F1 over bags of normalised tokens (1.0 if both are empty)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1, as rouge-score): LCS of lower-cased alphanumeric tokens."""
    pred = re.sub(r"[^a-z0-9]+", " ", prediction.lower()).split()
    ref = re.sub(r"[^a-z0-9]+", " ", reference.lower()).split()
    if not pred or not ref:
        return 0.0
    row = [0] * (len(ref) + 1)  # LCS dynamic programme, one row at a time
    for p in pred:
        prev_diag = 0
        for j, r in enumerate(ref, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if p == r else max(row[j], row[j - 1])
    lcs = row[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def text_scores(pairs: Sequence[Tuple[str, str]]) -> Dict[str, Optional[float]]:
    """Mean token F1, ROUGE-L and `contains` (reference is a substring of the answer, the
    StreamingBench rule) over (answer, reference) pairs."""
    n = len(pairs)
    return {"pairs": n,
            "token_f1": _ratio(sum(token_f1(a, r) for a, r in pairs), n),
            "rouge_l": _ratio(sum(rouge_l(a, r) for a, r in pairs), n),
            "contains": _ratio(sum(r in a for a, r in pairs), n)}


# ------------------------------------------------------------------- ET-Bench ----------
def temporal_iou(a: Window, b: Window) -> float:
    """Intersection over union of two windows (0 when both have zero length)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


_RANGE = re.compile(r"(\d+\.?\d*)\s*-\s*(\d+\.?\d*)")
_TO = re.compile(r"(\d+\.?\d*)\s* to \s*(\d+\.?\d*)")
_FIRST_NUMBER = re.compile(r"\b(\d+\.\d+|\d+)\b")
_KEYWORDS = ("starts", "ends", "happens in", "start time", "end time", "start", "end", "happen")


def parse_windows(answer: str) -> Optional[List[Window]]:
    """Windows in a free-text answer, by ET-Bench's rules; None when there are none.

    In order: every "a - b" pair; else every "a to b" pair; else the first number of each
    sentence (split at ! ? newline) naming a start/end keyword, paired in order. Each
    window is put in (min, max) order.
    """
    text = answer.lower()
    pairs = _RANGE.findall(text) or _TO.findall(text)
    windows = [(float(a), float(b)) for a, b in pairs]
    if not windows:
        numbers = []
        for sentence in re.split(r"[!?\n]", text):
            if any(k in sentence for k in _KEYWORDS):
                found = _FIRST_NUMBER.search(sentence)
                if found:
                    numbers.append(float(found.group(1)))
        windows = list(zip(numbers[0::2], numbers[1::2]))
    return [(min(w), max(w)) for w in windows] or None


def _as_windows(prediction) -> Optional[List[Window]]:
    if prediction is None:
        return None
    if isinstance(prediction, str):
        return parse_windows(prediction)
    windows = [(float(s), float(e)) for s, e in prediction]
    return windows or None


def tvg_f1(predictions: Sequence[Union[str, Sequence[Window], None]], ground_truths: Sequence[Window],
           thresholds: Sequence[float] = ETBENCH_THRESHOLDS) -> Dict[str, float]:
    """ET-Bench TVG (and EPM) "F1": the first predicted window against the single GT window;
    a hit when IoU >= theta; F1@theta = hits / N (unparsed answers are misses); F1 = mean over
    theta. Predictions are answer strings (parsed) or window lists."""
    if len(predictions) != len(ground_truths) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truths)} ground truths")
    hits, failed, ious = [0] * len(thresholds), 0, []
    for pred, gt in zip(predictions, ground_truths):
        windows = _as_windows(pred)
        if windows is None:
            failed += 1
            continue
        iou = temporal_iou(windows[0], gt)
        ious.append(iou)
        hits = [h + (iou >= thr) for h, thr in zip(hits, thresholds)]
    n = len(ground_truths)
    out = {"total": n, "failed": failed, "miou": sum(ious) / n}
    out.update({f"F1@{thr:g}": h / n for h, thr in zip(hits, thresholds)})
    out["F1"] = sum(h / n for h in hits) / len(thresholds)
    return out


def tal_f1(predictions: Sequence[Union[str, Sequence[Window], None]],
           ground_truths: Sequence[Sequence[Window]],
           thresholds: Sequence[float] = ETBENCH_THRESHOLDS) -> Dict[str, float]:
    """ET-Bench TAL F1: per sample the IoU matrix (GT x predictions); at theta, recall = share
    of GT windows whose best IoU >= theta, precision = share of predictions whose best IoU >=
    theta, F1 = 2PR/(P+R), 0 when the best IoU overall is below theta or the answer is
    unparsed; mean over samples, then over theta."""
    if len(predictions) != len(ground_truths) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truths)} ground truths")
    sums, failed = [0.0] * len(thresholds), 0
    for pred, gts in zip(predictions, ground_truths):
        windows = _as_windows(pred)
        if windows is None:
            failed += 1
            continue
        iou = np.array([[temporal_iou(g, p) for p in windows] for g in gts])  # (G, P)
        for i, thr in enumerate(thresholds):
            if iou.max() < thr:
                continue
            rec = float((iou.max(axis=1) >= thr).mean())
            prc = float((iou.max(axis=0) >= thr).mean())
            sums[i] += 2 * prc * rec / (prc + rec)
    n = len(ground_truths)
    out: Dict[str, float] = {"total": n, "failed": failed}
    out.update({f"F1@{thr:g}": s / n for s, thr in zip(sums, thresholds)})
    out["F1"] = sum(s / n for s in sums) / len(thresholds)
    return out


def dvc_iou(a: Window, b: Window) -> float:
    """The IoU of ET-Bench's dense-captioning evaluator (ActivityNet-captions style)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = min(max(a[1], b[1]) - min(a[0], b[0]), (a[1] - a[0]) + (b[1] - b[0]))
    return inter / (union + 1e-8)


def parse_dense_captions(answer: str) -> Optional[List[Tuple[Window, str]]]:
    """(window, caption) pairs from "s - e [seconds], caption" text, by ET-Bench's main rule:
    windows are the "a - b" pairs, captions the text pieces between them longer than 5
    characters, both cut to the shorter list. None when nothing parses. (The official
    parser has further fallbacks for other phrasings; they are not reproduced.)"""
    text = answer.lower()
    pairs = _RANGE.findall(text)
    if not pairs:
        return None
    pieces = _RANGE.sub("\n", text).replace("seconds", "").split("\n")
    captions = [c.strip().strip(", ").rstrip() for c in pieces if len(c) > 5]
    n = min(len(pairs), len(captions))
    out = [((min(float(a), float(b)), max(float(a), float(b))), c)
           for (a, b), c in zip(pairs[:n], captions[:n])]
    return out or None


def _as_captions(prediction) -> Optional[List[Tuple[Window, str]]]:
    if prediction is None:
        return None
    if isinstance(prediction, str):
        return parse_dense_captions(prediction)
    return [((float(w[0]), float(w[1])), str(c)) for w, c in prediction] or None


def dvc_f1(predictions: Sequence[Union[str, Sequence[Tuple[Window, str]], None]],
           ground_truths: Sequence[Sequence[Window]],
           thresholds: Sequence[float] = ETBENCH_THRESHOLDS, max_proposals: int = 1000) -> Dict:
    """ET-Bench DVC/SLC F1: over the parsed videos, precision = share of a video's
    predictions (first `max_proposals`) with IoU > theta (strict) to some GT window,
    recall = share of its GT windows with IoU > theta to some prediction; both averaged
    over parsed videos and scaled by parsed/total; F1@theta = 2PR/(P+R); F1 = mean over theta.
    Samples are kept apart by position (the official keys them by video name)."""
    if len(predictions) != len(ground_truths) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truths)} ground truths")
    parsed = []
    for i, (pred, gts) in enumerate(zip(predictions, ground_truths)):
        caps = _as_captions(pred)
        if caps is not None:
            if not gts:
                raise ValueError(f"sample {i}: no ground-truth windows")
            parsed.append(([w for w, _ in caps[:max_proposals]], list(gts)))
    scale = len(parsed) / len(predictions)
    out: Dict = {"total": len(predictions), "failed": len(predictions) - len(parsed)}
    f1s = []
    for thr in thresholds:
        prec = rec = 0.0
        for windows, gts in parsed:
            hit = np.array([[dvc_iou(p, g) > thr for g in gts] for p in windows])  # (P, G)
            prec += hit.any(axis=1).mean()
            rec += hit.any(axis=0).mean()
        prec = scale * prec / len(parsed) if parsed else 0.0
        rec = scale * rec / len(parsed) if parsed else 0.0
        f1 = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
        out[f"F1@{thr:g}"] = f1
        f1s.append(f1)
    out["F1"] = sum(f1s) / len(f1s)
    return out


def dvc_sim(predictions: Sequence[Union[str, Sequence[Tuple[Window, str]], None]],
            ground_truths: Sequence[Sequence[Tuple[Window, str]]],
            similarity: Callable[[str, str], float],
            thresholds: Sequence[float] = ETBENCH_THRESHOLDS) -> float:
    """ET-Bench DVC/SLC "Sim": every predicted caption is paired with each GT caption whose
    window has IoU >= theta; a video's score is the mean `similarity` of its pairs; mean
    over parsed videos (not scaled), then over theta. ET-Bench's similarity is the dot
    product of all-MiniLM-L6-v2 sentence embeddings; pass it in. It pairs an unmatched
    prediction with a random string; here that pair scores 0."""
    videos = [(caps, gts) for caps, gts in ((_as_captions(p), g) for p, g in
                                            zip(predictions, ground_truths)) if caps is not None]
    if not videos:
        return 0.0
    per_thr = []
    for thr in thresholds:
        total = 0.0
        for caps, gts in videos:
            scores = []
            for window, caption in caps:
                matched = [similarity(caption, ref) for gw, ref in gts if dvc_iou(window, gw) >= thr]
                scores.extend(matched or [0.0])
            total += sum(scores) / len(scores)
        per_thr.append(total / len(videos))
    return sum(per_thr) / len(per_thr)
