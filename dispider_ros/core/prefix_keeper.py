"""KV on arrival with double buffering: the reaction model's prefix caches kept current with
the memory, so a trigger prefills only its question.

The reaction model keeps two prefix caches (slots; ReactionVLM.prefill). `PrefixKeeper`
runs on the reaction worker in its idle time, one bounded step (`step_tokens`) at a time,
so a trigger that arrives waits for one step at most:
- appends (new frames, dialogue turns): the foreground slot is extended (each new frame's
  tokens prefilled once, when it enters memory);
- a compression batch (pooled or dropped frames) changes the prefix from the first changed
  item on. A small change near the end is fixed in the foreground slot directly; otherwise
  the new prefix is built in the other slot while triggers are answered from the
  foreground one over the *view* it holds (the items as they were before the compression)
  plus the items that arrived since, and the slots swap when the rebuild has caught up
  with the memory (appends included). Such a prompt exceeds the budget by its arrivals, at
  most `slack_tokens`; beyond that a trigger prompts the current memory and pays the
  re-prefill (then the foreground holds the current memory and the rebuild is moot).
Everything here runs on the worker thread except invalidate() (a camera's memory cleared).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from dispider_ros.core.memory import FrameTokens, MemoryBuffer, MemoryItem
from dispider_ros.core.protocols import ReactionVLM

LOG = logging.getLogger(__name__)


def _cost(item: MemoryItem) -> int:
    return item.n_tokens + (item.overhead if isinstance(item, FrameTokens) else 0)


def arrivals_since(view: Sequence[MemoryItem], current: Sequence[MemoryItem]) -> List[MemoryItem]:
    """Items of current that arrived after everything in view (pooled copies of view's frames
    keep their arrival number, so they are not new)."""
    last = max((it.arrival for it in view), default=-1)
    return [it for it in current if it.arrival > last]


def first_difference(view: Sequence[MemoryItem], current: Sequence[MemoryItem]) -> int:
    for i, (a, b) in enumerate(zip(view, current)):
        if a.key != b.key:
            return i
    return min(len(view), len(current))


@dataclass(frozen=True)
class PromptPlan:
    """What a trigger's prompt is built from, and how to tell the keeper afterwards."""

    items: List[MemoryItem]
    slot: int
    version: Tuple[int, int]  # memory.version() of the snapshot
    clears: int
    is_current: bool  # items == the memory as it is (not an older view plus arrivals)
    filtered: bool  # frames of other cameras were left out (prompt_cameras "trigger")


class PrefixKeeper:
    """See the module docstring.

    Args:
        memory: the reaction's memory.
        vlm: its model (prefill() returning (0, 0) turns the keeper off: no cache to keep).
        step_tokens: tokens one idle-time step prefills at most.
        slack_tokens: most tokens of arrivals a trigger's prompt may add to an older view.
    """

    def __init__(self, memory: MemoryBuffer, vlm: ReactionVLM, step_tokens: int, slack_tokens: int):
        self.memory, self.vlm = memory, vlm
        self.step_tokens, self.slack_tokens = step_tokens, slack_tokens
        self.enabled = True
        self._lock = threading.Lock()
        self._fg = 0
        self._view: Optional[List[MemoryItem]] = None  # items slot fg holds whole
        self._view_epoch = -1
        self._clears = 0
        self._done: Optional[Tuple[int, int]] = None  # memory.version() when all was cached
        self.counts = {"warm_steps": 0, "rebuild_steps": 0, "swaps": 0,
                       "stale_view_prompts": 0}

    # ---- worker side ---------------------------------------------------------------------
    def pending(self) -> bool:
        """True while the caches lag behind the memory."""
        return self.enabled and self.memory.version() != self._done

    def step(self) -> None:
        """One bounded prefill step towards the current memory."""
        version = self.memory.version()
        current = self.memory.snapshot()
        with self._lock:
            view, fg, clears, epoch = self._view, self._fg, self._clears, self._view_epoch
        target, slot, rebuild = current, fg, False
        if view is not None and version[1] != epoch:  # stored items changed, not only grew
            behind = sum(_cost(it) for it in view[first_difference(view, current):])
            if behind > self.step_tokens:  # rebuild in the other slot; fg keeps answering
                slot, rebuild = 1 - fg, True
        try:
            cached, total = self.vlm.prefill(target, slot, self.step_tokens)
        except Exception:  # noqa: BLE001 -- a failed warm-up costs the next trigger a prefill
            LOG.exception("prefix prefill failed; the next trigger prefills what it needs")
            with self._lock:
                self._view, self._done = None, version
            return
        if total == 0:
            self.enabled = False
            return
        self.counts["rebuild_steps" if rebuild else "warm_steps"] += 1
        with self._lock:
            if self._clears != clears or cached < total:
                return
            if slot != self._fg:
                self.counts["swaps"] += 1
            self._fg, self._view, self._view_epoch, self._done = slot, current, version[1], version

    # ---- trigger side ----------------------------------------------------------------------
    def plan(self, cameras: Optional[Sequence[str]] = None) -> PromptPlan:
        """The items a trigger's prompt is built from and the slot it uses."""
        version = self.memory.version()
        current = self.memory.snapshot()
        with self._lock:
            view, fg, clears, epoch = self._view, self._fg, self._clears, self._view_epoch
        items, is_current = current, True
        if self.enabled and view is not None and version[1] != epoch:
            arrivals = arrivals_since(view, current)
            if sum(_cost(it) for it in arrivals) <= self.slack_tokens:
                items, is_current = view + arrivals, False
                self.counts["stale_view_prompts"] += 1
        everything = len(items)
        if cameras is not None:
            keep = set(cameras)
            items = [it for it in items if not isinstance(it, FrameTokens) or it.camera_id in keep]
        return PromptPlan(items, fg, version, clears, is_current, filtered=len(items) < everything)

    def answered(self, plan: PromptPlan) -> None:
        """After generate() over plan.items: its slot now holds their prefix."""
        with self._lock:
            if self._clears != plan.clears or plan.slot != self._fg:
                return
            if plan.filtered:
                self._view = None  # the slot holds a filtered prefix: rebuild when idle
            elif plan.is_current:
                self._view, self._view_epoch = plan.items, plan.version[1]
            else:
                self._view = plan.items

    def invalidate(self) -> None:
        """The memory was cleared under the views (a camera's clock jumped back)."""
        with self._lock:
            self._view, self._done, self._clears = None, None, self._clears + 1

    def stats(self) -> dict:
        with self._lock:
            return dict(self.counts, kv_slot=self._fg,
                        kv_view_items=len(self._view) if self._view is not None else 0)


__all__ = ["PrefixKeeper", "PromptPlan", "arrivals_since", "first_difference"]
