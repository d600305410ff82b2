"""StreamingBench "Proactive Output" scoring (THUNLP-MT/StreamingBench, src/data/count.py).

Rules (from the benchmark's scorer): a question is **time correct** when
|answer time - ground_truth_time_stamp| <= 2 s, and **answer correct** when it is time
correct and ``ground_truth_output`` is a (case-sensitive) substring of the answer. Both are
divided by the number of questions. A question never answered fails both.

Accepted results:

* The benchmark's own output: its questions_proactive.json list with, on each question,
  ``question[<model name>] = {"answered": <time or false>, "dialog_history": [{"role",
  "content", "time", "cost"}, ...]}`` (StreamingBenchProactive.py). As count.py does, the
  answer is the last dialog turn: its ``time`` and ``content``. (A model that never said
  "yes" was polled until ground truth + 4 s, so that last turn fails the 2 s rule.)
* Our own system's answers: ``{query_id: (time, text)}`` with the first final response of
  each query (see `first_responses`), query ids as `annotations.streamingbench_query_id`
  gives them. Our system answers by itself, unpolled; its first answer is scored.

Departure from count.py: count.py leaves out of the denominator a question that has no
entry for the model; here every question of the annotation file counts (EVALUATION.md:
"divided by the total number of questions"), the missing ones as failures, and
``missing`` reports how many there were. With complete results both agree.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from dispider_ros.eval import datafile
from dispider_ros.eval.annotations import parse_time, streamingbench_query_id

TIME_TOLERANCE_SEC = 2.0
QUESTION_KEYS = {"task_type", "question", "time_stamp", "ground_truth_time_stamp",
                 "ground_truth_output", "required_ability"}


def load_questions(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """The benchmark's questions (or output) file: a list of clip entries."""
    data = datafile.load(path, yaml_ok=False)  # one-line syntax errors
    if not isinstance(data, list) or not all(isinstance(e, dict) and "questions" in e for e in data):
        raise ValueError(f"{path}: not a StreamingBench proactive file (a list of entries with 'questions')")
    return data


def time_correct(answer_time: Optional[float], ground_truth_time: float) -> bool:
    """|answer time - ground-truth time| <= 2 s; no answer is wrong."""
    return answer_time is not None and abs(answer_time - ground_truth_time) <= TIME_TOLERANCE_SEC


def answer_correct(answer_time: Optional[float], answer: Optional[str], ground_truth_time: float,
                   ground_truth_output: str) -> bool:
    """Time correct and the ground-truth output is a substring of the answer."""
    return (time_correct(answer_time, ground_truth_time) and answer is not None
            and ground_truth_output in answer)


def _questions(entries: Sequence[Dict[str, Any]]) -> Iterable[Tuple[str, Dict[str, Any]]]:
    for i, entry in enumerate(entries):
        for j, question in enumerate(entry["questions"]):
            yield streamingbench_query_id(i, j), question


def _tally(rows: Sequence[Tuple[Dict[str, Any], Optional[float], Optional[str], bool]]) -> Dict[str, Any]:
    n = n_time = n_answer = n_missing = 0
    for question, when, text, present in rows:
        gt = parse_time(question["ground_truth_time_stamp"], "ground_truth_time_stamp")
        n += 1
        n_missing += not present
        n_time += time_correct(when, gt)
        n_answer += answer_correct(when, text, gt, str(question["ground_truth_output"]))
    if n == 0:
        raise ValueError("no questions to score")
    return {"time_correct": n_time / n, "answer_correct": n_answer / n, "questions": n,
            "time_correct_count": n_time, "answer_correct_count": n_answer, "missing": n_missing}


def model_names(entries: Sequence[Dict[str, Any]]) -> List[str]:
    """Keys of questions that hold a model's record ({"dialog_history": ...})."""
    names = set()
    for _, question in _questions(entries):
        names.update(k for k, v in question.items()
                     if k not in QUESTION_KEYS and isinstance(v, dict) and "dialog_history" in v)
    return sorted(names)


def score_benchmark_output(entries: Sequence[Dict[str, Any]], model: Optional[str] = None) -> Dict[str, Any]:
    """Score the benchmark's own output file (see the module docstring).

    Args:
        entries: the output list, as `load_questions` reads it.
        model: the model's key on each question; found by itself when only one is there.
    """
    if model is None:
        names = model_names(entries)
        if len(names) != 1:
            raise ValueError(f"results hold model records {names}; name one with model=")
        model = names[0]
    rows = []
    for qid, question in _questions(entries):
        record = question.get(model)
        history = record.get("dialog_history") if isinstance(record, dict) else None
        if not history:
            rows.append((question, None, None, False))
            continue
        last = history[-1]
        try:
            rows.append((question, float(last["time"]), str(last["content"]), True))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"question {qid}: last dialog turn {last!r} lacks a time/content") from None
    return {"model": model, **_tally(rows)}


def score_first_responses(entries: Sequence[Dict[str, Any]],
                          answers: Dict[str, Tuple[float, str]]) -> Dict[str, Any]:
    """Score our system's first answer per question: ``answers[query_id] = (time, text)``."""
    rows = []
    for qid, question in _questions(entries):
        when, text = answers.get(qid, (None, None))
        rows.append((question, when, text, qid in answers))
    return _tally(rows)


def first_responses(responses: Iterable[Tuple[str, float, str]]) -> Dict[str, Tuple[float, str]]:
    """(query_id, time, text) of final responses -> the earliest one per query."""
    first: Dict[str, Tuple[float, str]] = {}
    for qid, when, text in responses:
        if qid not in first or when < first[qid][0]:
            first[qid] = (when, text)
    return first
