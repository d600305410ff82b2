"""The `overlay` image: a sampled frame with the questions, the last trigger and the answer
drawn on it, so RViz and Foxglove users see what the assistant sees and says.

Two parts, no ROS: `OverlayState` follows queries, triggers, answers and cancels as the
reaction node hears them (thread-safe: they arrive on different threads) and hands out an
immutable `OverlayView`; `draw(rgb, view)` renders a view onto a copy of a frame. Text goes in
a darkened band at the top (questions, trigger) and one at the bottom (answer, as subtitles);
the rest of the frame is left untouched. OpenCV's Hershey fonts draw printable ASCII only,
so other text is folded to ASCII where Unicode allows (é -> e) and shown as '?' otherwise.

What "the questions" are, seen from the reaction node: every query it saw a trigger for,
and the queries published on `query`/`query_text` (the node subscribes to those only while
the overlay is on). A question leaves the overlay when canceled (`query_cancel`), when its
`max_responses` answers are final (`now`: its one answer), or when its `expiry_sec` has
passed (camera time) where the overlay saw the query itself. An `ask` goal shows from its
first trigger; a query the decision node rejected shows until newer questions push it out.
"""
from __future__ import annotations

import functools
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional, Tuple

import cv2
import numpy as np

from dispider_ros.core.query_text import infer_mode
from dispider_ros.core.types import ErrorCode, ResponseEvent, TriggerEvent

FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, YELLOW, CYAN = (255, 255, 255), (255, 230, 0), (120, 230, 255)  # RGB


@dataclass(frozen=True)
class OverlayConfig:
    """Args:
        max_questions: questions drawn at most (newest first; "+N more" after them).
        max_answer_lines: answer lines drawn at most (a long answer shows its end).
        max_answer_chars: answer text kept per answer (the tail of a longer one).
        max_tracked: questions remembered at most (the oldest are forgotten).
    """

    max_questions: int = 3
    max_answer_lines: int = 4
    max_answer_chars: int = 2000
    max_tracked: int = 32

    def __post_init__(self):
        for name in ("max_questions", "max_answer_lines", "max_answer_chars", "max_tracked"):
            if getattr(self, name) < 1:
                raise ValueError(f"overlay {name} {getattr(self, name)!r} must be >= 1")


@dataclass(frozen=True)
class OverlayView:
    """What one overlay frame shows (already plain strings)."""

    questions: Tuple[str, ...] = ()  # "[mode] text", newest first
    more_questions: int = 0  # questions beyond those listed
    trigger: str = ""  # the last trigger: policy, score, camera time, camera; "" = none yet
    answer: str = ""  # the current answer as far as it streamed; "" = none yet
    answer_state: str = ""  # "streaming", "" (final OK) or the error code's name


@dataclass
class _Question:
    text: str
    mode: str
    limit: int = 0  # finals after which it ends; 0 = until canceled/expired
    deadline: Optional[float] = None  # camera time it expires; None = never (or unknown)
    finals: int = 0


@dataclass
class _Answer:
    response_id: str
    text: str = ""
    state: str = "streaming"


class OverlayState:
    """The questions, last trigger and current answer, fed from the node's callbacks."""

    def __init__(self, config: Optional[OverlayConfig] = None):
        self.config = config or OverlayConfig()
        self._lock = threading.Lock()
        # Newest last; keys are query ids, or "text:<text>" for a topic query without an id
        # (the decision node assigns one; its first trigger carries that id and the text).
        self._questions: "OrderedDict[str, _Question]" = OrderedDict()
        self._trigger = ""
        self._answer: Optional[_Answer] = None
        self._latest_stamp = 0.0

    def on_query(self, query_id: str, text: str, mode: str = "", stamp: float = 0.0,
                 expiry_sec: float = 0.0, max_responses: int = 0) -> None:
        """A question published on `query`/`query_text` (mode "" or auto: inferred as the
        decision node does; stamp 0: the latest frame's camera time)."""
        mode = infer_mode(text) if mode in ("", "auto") else mode
        limit = max_responses or (1 if mode == "now" else 0)
        with self._lock:
            start = stamp if stamp > 0 else self._latest_stamp
            deadline = start + expiry_sec if expiry_sec > 0 else None
            self._remember(query_id or f"text:{text}", _Question(text, mode, limit, deadline))

    def on_cancel(self, query_id: str) -> None:
        with self._lock:
            self._questions.pop(query_id, None)

    def on_trigger(self, trigger: TriggerEvent) -> None:
        with self._lock:
            question = self._questions.pop(trigger.query_id, None) or \
                self._questions.pop(f"text:{trigger.query_text}", None) or \
                _Question(trigger.query_text, trigger.policy, 1 if trigger.policy == "now" else 0)
            self._remember(trigger.query_id, question)
            # The details first: a long question is cut at the end of the line.
            self._trigger = (f"trigger {trigger.policy} score {trigger.score:.2f} at "
                             f"t={trigger.stamp:.2f}s {trigger.camera_id}: {trigger.query_text}")

    def on_response(self, event: ResponseEvent) -> None:
        """A chunk (appended to its answer) or a final (the whole answer)."""
        with self._lock:
            current = self._answer
            if not event.final:
                if current is None or current.response_id != event.response_id:
                    current = self._answer = _Answer(event.response_id)
                current.text = (current.text + event.text)[-self.config.max_answer_chars:]
                return
            # A final that never streamed (dropped, superseded) leaves a streaming answer be.
            if current is None or current.response_id == event.response_id or \
                    current.state != "streaming":
                code = ErrorCode(event.error_code)
                self._answer = _Answer(event.response_id, event.text[-self.config.max_answer_chars:],
                                       "" if code == ErrorCode.OK else code.name)
            question = self._questions.get(event.query_id)
            if question is not None:
                question.finals += 1
                if question.limit and question.finals >= question.limit:
                    del self._questions[event.query_id]

    def view(self, stamp: float) -> OverlayView:
        """What a frame at camera time `stamp` shows; drops questions expired by then."""
        with self._lock:
            self._latest_stamp = max(self._latest_stamp, stamp)
            for key in [k for k, q in self._questions.items()
                        if q.deadline is not None and stamp >= q.deadline]:
                del self._questions[key]
            newest = list(reversed(self._questions.values()))
            shown = newest[:self.config.max_questions]
            answer = self._answer
            return OverlayView(
                questions=tuple(f"[{q.mode}] {q.text}" for q in shown),
                more_questions=len(newest) - len(shown), trigger=self._trigger,
                answer=answer.text if answer else "", answer_state=answer.state if answer else "")

    def _remember(self, key: str, question: _Question) -> None:
        self._questions.pop(key, None)
        self._questions[key] = question
        while len(self._questions) > self.config.max_tracked:
            self._questions.popitem(last=False)


# Punctuation that NFKD leaves non-ASCII but has a plain look-alike.
_PUNCTUATION = str.maketrans({"\u2013": "-", "\u2014": "-", "\u2212": "-", "\u2018": "'",
                              "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00ab": '"',
                              "\u00bb": '"', "\u2022": "*", "\u00b0": " deg"})

_ASCII_CONTROLS = {code: " " for code in (*range(32), 127)}


def printable(text: str) -> str:
    """Text OpenCV can draw: ASCII-folded where Unicode allows, '?' for the rest, one line."""
    text = text.translate(_ASCII_CONTROLS)
    if text.isascii():  # the common case, without a look at each character
        return " ".join(text.split())
    out = []
    for char in unicodedata.normalize("NFKD", text.translate(_PUNCTUATION)):
        if unicodedata.combining(char):
            continue  # the accent of a decomposed letter
        if char.isspace():
            out.append(" ")
        elif " " <= char <= "~":
            out.append(char)
        elif unicodedata.category(char)[0] != "C":  # a visible non-ASCII character
            out.append("?")
    return " ".join("".join(out).split())


@functools.lru_cache(maxsize=16)
def _style(width: int) -> Tuple[float, int, int, int]:
    """Font scale, thickness, line height and narrowest glyph advance (pixels) for a width."""
    scale = max(0.35, width / 1280.0)
    thickness = 1 if scale < 0.9 else 2
    (_, height), baseline = cv2.getTextSize("Ag", FONT, scale, thickness)
    narrowest = (_width("." * 11, scale, thickness) - _width(".", scale, thickness)) // 10
    return scale, thickness, height + baseline + max(2, int(4 * scale)), max(1, narrowest)


@functools.lru_cache(maxsize=4096)
def _width(text: str, scale: float, thickness: int) -> int:
    """Pixel width of one line (cached: an answer's words are measured again every frame)."""
    return cv2.getTextSize(text, FONT, scale, thickness)[0][0]


def _cut(text: str, scale: float, thickness: int, width: int) -> str:
    """One line: text, or its head with "..." when it is too wide."""
    if _width(text, scale, thickness) <= width:
        return text
    low, high = 0, len(text)  # longest head that fits with "..."
    while low < high:
        middle = (low + high + 1) // 2
        if _width(text[:middle] + "...", scale, thickness) <= width:
            low = middle
        else:
            high = middle - 1
    return text[:low] + "..."


def wrap(text: str, scale: float, thickness: int, width: int) -> List[str]:
    """Word-wrap to lines at most `width` pixels wide (a word too long is cut).

    One measurement per word: the width of "a b" is at most that of "a" plus that of " b"
    (each measured string carries its own side bearings), so the sum never overflows."""
    lines: List[str] = []
    line, used = "", 0
    for word in text.split():
        if line:
            extra = _width(" " + word, scale, thickness)
            if used + extra <= width:
                line, used = f"{line} {word}", used + extra
                continue
            lines.append(line)
        line = _cut(word, scale, thickness, width)
        used = _width(line, scale, thickness)
    if line:
        lines.append(line)
    return lines


def answer_lines(view: OverlayView, keep: int, scale: float, thickness: int, width: int,
                  narrowest: int) -> List[str]:
    """The answer's label and text wrapped into at most `keep` lines; a longer answer shows
    its end after "..." (while it streams, the newest words matter)."""
    state = view.answer_state
    label = "A:" if not state else ("A (streaming):" if state == "streaming" else f"A [{state}]:")
    budget = (keep + 1) * (width // narrowest + 1)  # more characters than keep lines hold
    text = printable(view.answer[-2 * budget:])
    clipped = len(view.answer) > 2 * budget or len(text) > budget
    if clipped:
        text = text[-budget:].split(" ", 1)[-1]  # from the first whole word
    lines = wrap(f"{label} {'... ' if clipped else ''}{text}", scale, thickness, width)
    if len(lines) <= keep:
        return lines
    # Fewest words dropped from the front so that label, "..." and the rest fit in keep
    # lines (greedy wrapping never needs more lines for fewer words: a binary search).
    words = " ".join(lines[-keep:]).split()
    shown = lambda drop: wrap(f"{label} ... {' '.join(words[drop:])}", scale, thickness, width)  # noqa: E731
    low, high = 0, len(words)
    while low < high:
        middle = (low + high) // 2
        if len(shown(middle)) <= keep:
            high = middle
        else:
            low = middle + 1
    return shown(low)[-keep:]


def _band(image: np.ndarray, top: int, bottom: int) -> None:
    """Darken rows [top, bottom) to half, in place, so the text reads on any scene."""
    band = image[max(0, top):max(0, bottom)]
    np.right_shift(band, 1, out=band)


def _write(image: np.ndarray, lines: List[Tuple[str, Tuple[int, int, int]]], top: int,
           scale: float, thickness: int, step: int, margin: int) -> None:
    baseline = cv2.getTextSize("Ag", FONT, scale, thickness)[1]
    for row, (text, colour) in enumerate(lines):
        y = top + (row + 1) * step - baseline - max(1, step // 8)
        cv2.putText(image, text, (margin, y), FONT, scale, colour, thickness, cv2.LINE_AA)


def draw(rgb: np.ndarray, view: OverlayView, config: Optional[OverlayConfig] = None) -> np.ndarray:
    """A copy of rgb ((H, W, 3) uint8) with the view drawn on it; rgb itself is not changed."""
    config = config or OverlayConfig()
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"overlay needs an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    image = np.array(rgb, copy=True, order="C")
    height, width = image.shape[:2]
    scale, thickness, step, narrowest = _style(width)
    margin = max(2, step // 3)
    text_width = width - 2 * margin
    line_chars = text_width // narrowest + 1  # more characters than one line holds
    cut = lambda text: _cut(printable(text[:line_chars]), scale, thickness, text_width)  # noqa: E731

    top: List[Tuple[str, Tuple[int, int, int]]] = [(cut("Q " + q), WHITE) for q in view.questions]
    if view.more_questions:
        top.append((f"+{view.more_questions} more", WHITE))
    if not top:
        top.append(("no questions", WHITE))
    if view.trigger:
        top.append((cut(view.trigger), YELLOW))
    bottom: List[Tuple[str, Tuple[int, int, int]]] = []
    # Each band takes at most half the frame, whole lines only.
    fit = max(1, (height // 2 - margin) // step)
    if view.answer or view.answer_state:
        bottom = [(line, CYAN) for line in answer_lines(
            view, min(fit, config.max_answer_lines), scale, thickness, text_width, narrowest)]
    top = top[:fit]
    top_end = len(top) * step + margin
    bottom_start = height - len(bottom) * step - margin if bottom else height
    _band(image, 0, top_end)
    _write(image, top, margin // 2, scale, thickness, step, margin)
    if bottom:
        _band(image, bottom_start, height)
        _write(image, bottom, bottom_start + margin // 2, scale, thickness, step, margin)
    return image
