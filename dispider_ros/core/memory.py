"""Memory buffer of per-frame visual tokens and dialogue turns, with round-decayed compression.

The buffer follows StreamBridge (arXiv 2505.05467, Algorithm 1 and "round-decayed
compression"): frames are encoded one by one as they arrive and stored as visual tokens,
interleaved by time with the dialogue (questions and answers). A *round* is the run of
frames between two consecutive dialogue turns. When the buffer holds more than
`max_tokens`, adjacent frame tokens are average-pooled, oldest round first, until it fits.

How compression runs here (incremental, O(new tokens) amortised):
- A sweep cursor walks the items in time order (so round by round, oldest first) and pools
  each unprotected frame it passes once, by `pool_stride` along the longer side of the
  frame's token grid (adjacent tokens in the model's own row-major order), stopping as soon
  as the budget is met. The next frame arrival resumes from the cursor; nothing is
  recomputed. When the cursor reaches the newest items it wraps to the oldest item that can
  still shrink, so every sweep pools each frame at most once: older rounds have always been
  pooled at least as often as newer ones (the decay), and each pooling halves a frame's
  tokens, so a frame costs O(n + n/2 + ...) = O(n) work over its whole life.
- The newest `protected_frames` frames of every camera are never pooled or dropped: they
  stay bit-identical to what the encoder produced.
- Compression runs in batches between two water marks: it starts when the buffer passes
  `max_tokens` (high) and goes down to `target_ratio * max_tokens` (low; the shipped
  `compress_to` 0.75). Between batches the buffer only grows at its end, so a reaction
  model's KV cache of it stays valid and each new frame is prefilled once (`version()`
  tells a cache keeper when stored items changed; `arrival` numbers survive pooling).
- The floor: a frame pooled down to a single token cannot shrink further. When a whole
  sweep finds nothing left to pool and the buffer is still over budget, the oldest
  unprotected items (frames or dialogue turns, in time order) are dropped. If only
  protected frames remain and they alone exceed the budget, the buffer stays over budget
  and warns once (raise `max_tokens` or lower `protected_frames`).

Token count = visual tokens of every frame + each frame's overhead (the text a prompt puts
around it: markers, and a time label on the frames that carry one; `frame_cost`, from the
reaction model's tokenizer) + the token counts given for dialogue turns. The overhead
matters: a frame pooled down to one visual token still costs its markers, so without it a
full buffer of 1-token frames made a 4096-token budget a 34,000-token prompt.

`policy="fifo"` is the sliding-window baseline (SimpleStream): drop the oldest, never pool.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, Iterable, List, Optional, Tuple, Union

import torch

from dispider_ros.core import schema

LOG = logging.getLogger(__name__)

ROLES = ("user", "assistant")


@dataclass(frozen=True)
class FrameTokens:
    """One frame's visual tokens as a reaction model consumes them (any backend).

    Args:
        tokens: (n, hidden) visual tokens (for Qwen2-VL the merger output of the vision tower).
        grid: (rows, cols) of the tokens in the model's row-major order, rows * cols == n; a
            backend without a spatial layout uses (1, n).
        camera_id, stamp, frame_index, frame_id: where and when the frame was taken.
        level: how many times the tokens were average-pooled (0 = as encoded).
        key: identity assigned by the MemoryBuffer (a pooled frame gets a new key); -1 outside.
        encode_ms: time the encoder took for this frame.
        labelled: the prompt puts a time label before this frame (the engine labels one
            frame every few seconds per camera, not each one).
        named: its label also names the camera (the engine names it when the camera changes
            and every half minute; the others carry only the time).
        overhead: prompt tokens around the visual tokens (label, markers), set by the
            MemoryBuffer when stored.
        arrival: the MemoryBuffer's arrival number, kept when the frame is pooled.
        media: the frame as encoded bytes, for a backend whose model runs elsewhere (a
            remote server gets JPEG images, not visual tokens; its `tokens` are then a
            zero-width (n, 0) placeholder whose grid is the server's visual-token grid, so
            the budget counts what the server will spend). Pooling keeps it unchanged and
            shrinks the grid: such a backend sends a pooled frame downscaled to its grid.
            None for backends that hold real visual tokens.
        extra: side features whose rows are aligned with tokens, a tuple of (n, d) tensors
            (Qwen3-VL: its DeepStack features, one per decoder layer they are injected into);
            pooling treats them exactly like tokens. () = none.
    """

    tokens: torch.Tensor
    grid: Tuple[int, int]
    camera_id: str = ""
    stamp: float = 0.0
    frame_index: int = 0
    frame_id: str = ""
    level: int = 0
    key: int = -1
    encode_ms: float = 0.0
    labelled: bool = True
    named: bool = True
    overhead: int = 0
    arrival: int = -1
    media: Optional[bytes] = None
    extra: Tuple[torch.Tensor, ...] = ()

    def __post_init__(self):
        if not isinstance(self.tokens, torch.Tensor) or self.tokens.ndim != 2:
            shape = tuple(self.tokens.shape) if isinstance(self.tokens, torch.Tensor) else type(self.tokens)
            raise ValueError(f"frame tokens {shape} must be a 2-D (n, hidden) tensor")
        rows, cols = (int(v) for v in self.grid)
        if rows < 1 or cols < 1 or rows * cols != self.tokens.shape[0]:
            raise ValueError(f"grid {self.grid} does not hold {self.tokens.shape[0]} tokens")
        object.__setattr__(self, "grid", (rows, cols))
        extra = tuple(self.extra)
        for rows_of in extra:
            if not isinstance(rows_of, torch.Tensor) or rows_of.ndim != 2 \
                    or rows_of.shape[0] != self.tokens.shape[0]:
                shape = tuple(rows_of.shape) if isinstance(rows_of, torch.Tensor) else type(rows_of)
                raise ValueError(f"frame extra {shape} must be a 2-D ({self.tokens.shape[0]}, d) tensor "
                                 "with one row per token")
        object.__setattr__(self, "extra", extra)

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])


@dataclass(frozen=True)
class DialogueTurn:
    """A question (role "user") or an answer (role "assistant") placed in the stream's time.

    Args:
        role: "user" or "assistant".
        text: what was asked or answered.
        stamp: camera time of the turn (for answers: the trigger's evidence time).
        camera_id, query_id: where it belongs.
        n_tokens: its length in the reaction model's tokens (counted against max_tokens).
        key: identity assigned by the MemoryBuffer.
        arrival: the MemoryBuffer's arrival number.
    """

    role: str
    text: str
    stamp: float
    camera_id: str = ""
    query_id: str = ""
    n_tokens: int = 0
    key: int = -1
    arrival: int = -1

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"turn role {self.role!r} is not one of {ROLES}")
        if not isinstance(self.text, str):
            raise TypeError(f"turn text {self.text!r} must be a string")
        if self.n_tokens < 0:
            raise ValueError(f"turn n_tokens {self.n_tokens} must be >= 0")


MemoryItem = Union[FrameTokens, DialogueTurn]


POLICIES = ("round_decay", "fifo")


@dataclass
class MemoryConfig:
    """Args:
        max_tokens: budget of the buffer in tokens (frames + dialogue), >= 1: the high water
            mark, where a compression starts.
        pool_stride: adjacent tokens averaged into one per pooling step, >= 2.
        protected_frames: newest frames per camera that are never pooled or dropped, >= 0.
        target_ratio: the low water mark: a compression goes down to target_ratio *
            max_tokens, in (0, 1]. Below 1, compressions come in batches and the buffer is
            append-only between them, so a model's KV cache of it stays valid.
        frame_overhead_tokens: prompt tokens each frame costs besides its visual tokens, >= 0,
            when the buffer is given no frame_cost; None = 0.
        policy: "round_decay" (StreamBridge: pool oldest rounds first, drop at the floor) or
            "fifo" (a sliding window: drop the oldest, never pool; the baseline).
    """

    max_tokens: int = schema.default("reaction_node", "max_tokens")
    pool_stride: int = 2
    protected_frames: int = schema.default("reaction_node", "protected_frames")
    target_ratio: float = schema.default("reaction_node", "compress_to")
    frame_overhead_tokens: Optional[int] = None
    policy: str = schema.default("reaction_node", "memory_policy")

    def __post_init__(self):
        for name, low in (("max_tokens", 1), ("pool_stride", 2), ("protected_frames", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} {value!r} must be an int >= {low}")
        if not (0.0 < self.target_ratio <= 1.0):  # also rejects NaN
            raise ValueError(f"target_ratio {self.target_ratio!r} must be in (0, 1]")
        overhead = self.frame_overhead_tokens
        if overhead is not None and (not isinstance(overhead, int) or isinstance(overhead, bool)
                                     or overhead < 0):
            raise ValueError(f"frame_overhead_tokens {overhead!r} must be None or an int >= 0")
        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r} is not one of {POLICIES}")


def pool_frame(frame: FrameTokens, stride: int) -> FrameTokens:
    """Average adjacent tokens along the longer side of the frame's grid.

    Args:
        frame: the frame to shrink (needs more than one token).
        stride: tokens averaged into one; a partial group at the edge is averaged alone.
    Returns:
        A new FrameTokens with grid (rows, ceil(cols / stride)) or (ceil(rows / stride), cols)
        and level + 1, its extra rows pooled the same way; metadata is kept, key is reset to -1.
    """
    tokens, grid = _pool_rows(frame.tokens, frame.grid, stride)
    extra = tuple(_pool_rows(rows, frame.grid, stride)[0] for rows in frame.extra)
    return dataclasses.replace(frame, tokens=tokens, grid=grid, level=frame.level + 1, key=-1,
                               extra=extra)


def _pool_rows(values: torch.Tensor, grid: Tuple[int, int], stride: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """(rows * cols, d) values on a row-major grid -> pooled (n', d) values and their grid."""
    rows, cols = grid
    x = values.float().view(rows, cols, -1)  # (R, C, D)
    along_cols = cols >= rows
    if not along_cols:
        x = x.transpose(0, 1)  # (C, R, D): pool the rows the same way
    length = x.shape[1]
    full = length // stride * stride
    parts = []
    if full:
        parts.append(x[:, :full].reshape(x.shape[0], full // stride, stride, -1).mean(2))
    if full < length:
        parts.append(x[:, full:].mean(1, keepdim=True))
    pooled = torch.cat(parts, dim=1)  # (R, ceil(C / s), D) or transposed
    if not along_cols:
        pooled = pooled.transpose(0, 1)
    new_grid = (pooled.shape[0], pooled.shape[1])
    return pooled.reshape(new_grid[0] * new_grid[1], -1).to(values.dtype).contiguous(), new_grid


class MemoryBuffer:
    """Thread-safe buffer of FrameTokens and DialogueTurns in time order.

    Args:
        config: budget and compression settings.
        frame_cost: prompt tokens a frame costs besides its visual tokens (its label and
            markers, as the reaction model renders it); None = config.frame_overhead_tokens.
    """

    def __init__(self, config: Optional[MemoryConfig] = None,
                 frame_cost: Optional[Callable[[FrameTokens], int]] = None):
        self.config = config or MemoryConfig()
        self._frame_cost = frame_cost
        self._cond = threading.Condition(threading.Lock())
        self._items: List[Optional[MemoryItem]] = []
        self._head = 0  # items before head were dropped (set to None, compacted lazily)
        self._cursor = 0  # absolute index of the sweep cursor
        self._scan_start = 0  # items before this can never shrink (turns, 1-token frames)
        self._tokens = 0
        self._next_key = 0
        self._next_arrival = 0
        self._protected: Dict[str, Deque[int]] = {}
        self._protected_keys: set = set()
        self._latest_stamp: Dict[str, float] = {}
        self._latest_index: Dict[str, int] = {}  # newest frame_index stored per camera
        self._warned_over_budget = False
        # scan_steps counts items the sweep looked at: tests use it to check the amortised cost.
        # compressions counts batches; epoch counts every change to stored items (pool, drop,
        # clear): while it stands still the buffer only grew at its end.
        self.counts = {"frames_added": 0, "turns_added": 0, "pool_ops": 0, "scan_steps": 0,
                       "frames_dropped": 0, "turns_dropped": 0, "compressions": 0, "epoch": 0}

    # ---- input -------------------------------------------------------------------------
    def add_frame(self, frame: FrameTokens) -> FrameTokens:
        """Store a frame's tokens (in stamp order), then compress if over budget.

        Args:
            frame: the encoder's output with camera_id, stamp and frame_index set.
        Returns:
            The stored frame (with its memory key).
        """
        if not isinstance(frame, FrameTokens):
            raise TypeError(f"add_frame needs FrameTokens, got {type(frame).__name__}")
        overhead = self._frame_cost(frame) if self._frame_cost is not None else \
            (self.config.frame_overhead_tokens or 0)
        with self._cond:
            frame = dataclasses.replace(frame, key=self._new_key(), arrival=self._new_arrival(),
                                        overhead=int(overhead))
            self._insert(frame)
            self._protect(frame)
            self._tokens += self._cost(frame)
            self.counts["frames_added"] += 1
            latest = self._latest_stamp.get(frame.camera_id, float("-inf"))
            self._latest_stamp[frame.camera_id] = max(latest, frame.stamp)
            self._latest_index[frame.camera_id] = max(
                self._latest_index.get(frame.camera_id, -1), frame.frame_index)
            self._compress()
            self._cond.notify_all()
        return frame

    def add_turn(self, role: str, text: str, stamp: float, camera_id: str = "",
                 query_id: str = "", n_tokens: Optional[int] = None) -> DialogueTurn:
        """Store a dialogue turn at its stamp; it ends the current round.

        Args:
            role: "user" (question) or "assistant" (answer).
            text: the turn's text.
            stamp: camera time it belongs to.
            camera_id, query_id: links for the prompt and diagnostics.
            n_tokens: its length in model tokens; None = estimate (UTF-8 bytes / 4, at least 1).
        """
        if n_tokens is None:
            n_tokens = max(1, len(text.encode("utf-8")) // 4)
        turn = DialogueTurn(role=role, text=text, stamp=float(stamp), camera_id=camera_id,
                            query_id=query_id, n_tokens=int(n_tokens))
        with self._cond:
            turn = dataclasses.replace(turn, key=self._new_key(), arrival=self._new_arrival())
            self._insert(turn)
            self._tokens += turn.n_tokens
            self.counts["turns_added"] += 1
            self._compress()
            self._cond.notify_all()
        return turn

    def set_max_tokens(self, max_tokens: int) -> None:
        """Change the budget live; a lower budget compresses at once."""
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ValueError(f"max_tokens {max_tokens!r} must be an int >= 1")
        with self._cond:
            self.config = dataclasses.replace(self.config, max_tokens=max_tokens)
            self._warned_over_budget = False
            self._compress()

    def clear(self, camera_id: Optional[str] = None) -> None:
        """Forget one camera's frames and dialogue (its clock jumped back), or everything.

        Frame indices keep counting across a clear, so `has_frame` stays true for frames
        that were stored before it.
        """
        with self._cond:
            keep = [] if camera_id is None else [
                it for it in self._items[self._head:] if it is not None and it.camera_id != camera_id]
            self._items, self._head, self._cursor, self._scan_start = keep, 0, 0, 0
            self.counts["epoch"] += 1
            self._tokens = sum(self._cost(it) for it in keep)
            dropped = self._protected.keys() if camera_id is None else [camera_id]
            for cam in list(dropped):
                self._protected_keys.difference_update(self._protected.pop(cam, ()))
                self._latest_stamp.pop(cam, None)
            self._cond.notify_all()

    def version(self) -> Tuple[int, int]:
        """(items ever stored, epoch): changes whenever the stored items change."""
        with self._cond:
            return self._version()

    # ---- output ------------------------------------------------------------------------
    def snapshot(self, cameras: Optional[Iterable[str]] = None) -> List[MemoryItem]:
        """The items in time order, for a prompt (items are immutable; the list is a copy).

        Args:
            cameras: keep only frames of these cameras (dialogue turns are always kept);
                None = every camera.
        """
        with self._cond:
            items = self._items[self._head:]
        if cameras is None:
            return items
        keep = set(cameras)
        return [it for it in items if isinstance(it, DialogueTurn) or it.camera_id in keep]

    def token_count(self) -> int:
        with self._cond:
            return self._tokens

    def __len__(self) -> int:
        with self._cond:
            return len(self._items) - self._head

    def latest_stamp(self, camera_id: str) -> float:
        """Newest frame stamp seen from camera_id (-inf if none)."""
        with self._cond:
            return self._latest_stamp.get(camera_id, float("-inf"))

    def has_frame(self, camera_id: str, frame_index: int) -> bool:
        """True once the sampled frame (camera_id, frame_index) or a later one was stored."""
        with self._cond:
            return self._latest_index.get(camera_id, -1) >= frame_index

    def wait_for_frame(self, camera_id: str, frame_index: int, timeout: float) -> bool:
        """Block until has_frame(camera_id, frame_index) or timeout (seconds); its result."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._latest_index.get(camera_id, -1) >= frame_index, timeout=timeout)

    def stats(self) -> dict:
        """Counters and what the buffer holds now: tokens (= visual_tokens + frame_overhead_tokens
        + turn_tokens), frames, turns, pooled frames, the deepest pooling level, and
        history_span_sec (newest minus oldest frame stamp, the widest camera)."""
        with self._cond:
            items = self._items[self._head:]
            frames = [it for it in items if isinstance(it, FrameTokens)]
            stamps: Dict[str, List[float]] = {}
            for f in frames:
                stamps.setdefault(f.camera_id, []).append(f.stamp)
            span = max((max(v) - min(v) for v in stamps.values()), default=0.0)
            return dict(self.counts, tokens=self._tokens, max_tokens=self.config.max_tokens,
                        frames=len(frames), turns=len(items) - len(frames),
                        visual_tokens=sum(f.n_tokens for f in frames),
                        frame_overhead_tokens=sum(f.overhead for f in frames),
                        turn_tokens=sum(it.n_tokens for it in items if isinstance(it, DialogueTurn)),
                        pooled_frames=sum(f.level > 0 for f in frames),
                        max_level=max((f.level for f in frames), default=0),
                        history_span_sec=span)

    # ---- internals (called with the lock held) -----------------------------------------
    def _version(self) -> Tuple[int, int]:
        return self._next_arrival, self.counts["epoch"]

    @staticmethod
    def _cost(item: MemoryItem) -> int:
        return item.n_tokens + (item.overhead if isinstance(item, FrameTokens) else 0)

    def _new_key(self) -> int:
        self._next_key += 1
        return self._next_key

    def _new_arrival(self) -> int:
        self._next_arrival += 1
        return self._next_arrival

    def _insert(self, item: MemoryItem) -> None:
        # Arrivals are almost always the newest, so search back from the end: O(1) typically.
        i = len(self._items)
        while i > self._head and self._items[i - 1].stamp > item.stamp:
            i -= 1
        self._items.insert(i, item)
        if i < len(self._items) - 1:  # not at the end: what follows it moved
            self.counts["epoch"] += 1
        if i < self._cursor:
            self._cursor += 1
        if i < self._scan_start:
            self._scan_start = i

    def _protect(self, frame: FrameTokens) -> None:
        keys = self._protected.setdefault(frame.camera_id, deque())
        keys.append(frame.key)
        self._protected_keys.add(frame.key)
        while len(keys) > self.config.protected_frames:
            self._protected_keys.discard(keys.popleft())

    def _compress(self) -> None:
        if self._tokens <= self.config.max_tokens:
            return
        target = max(1, int(self.config.max_tokens * self.config.target_ratio))
        self.counts["compressions"] += 1
        while self._tokens > target:
            if self.config.policy == "round_decay" and self._pool_next():
                self.counts["epoch"] += 1
                continue
            if not self._drop_oldest():
                if not self._warned_over_budget:
                    LOG.warning("memory holds %d tokens > max_tokens %d with only protected frames "
                                "left; raise max_tokens or lower protected_frames",
                                self._tokens, self.config.max_tokens)
                    self._warned_over_budget = True
                return

    def _poolable(self, item: Optional[MemoryItem]) -> bool:
        return isinstance(item, FrameTokens) and item.n_tokens > 1 and item.key not in self._protected_keys

    def _pool_next(self) -> bool:
        """Pool the next frame at or after the cursor; False when a whole sweep found none."""
        wrapped = False
        while True:
            while self._cursor < len(self._items):
                item = self._items[self._cursor]
                self.counts["scan_steps"] += 1
                if self._poolable(item):
                    pooled = dataclasses.replace(pool_frame(item, self.config.pool_stride),
                                                 key=self._new_key())
                    self._items[self._cursor] = pooled
                    self._tokens -= item.n_tokens - pooled.n_tokens
                    self._cursor += 1
                    self.counts["pool_ops"] += 1
                    return True
                self._cursor += 1
            # End of a sweep: start the next one at the oldest item that can still shrink.
            self._cursor = self._advance_scan_start()
            if wrapped:
                return False  # a whole sweep shrank nothing: the floor
            wrapped = True

    def _advance_scan_start(self) -> int:
        self._scan_start = max(self._scan_start, self._head)
        while self._scan_start < len(self._items):
            item = self._items[self._scan_start]
            self.counts["scan_steps"] += 1
            if isinstance(item, FrameTokens) and (item.n_tokens > 1 or item.key in self._protected_keys):
                break
            self._scan_start += 1
        return self._scan_start

    def _drop_oldest(self) -> bool:
        for i in range(self._head, len(self._items)):
            item = self._items[i]
            if isinstance(item, FrameTokens) and item.key in self._protected_keys:
                continue
            self._tokens -= self._cost(item)
            self.counts["epoch"] += 1
            kind = "frames_dropped" if isinstance(item, FrameTokens) else "turns_dropped"
            self.counts[kind] += 1
            if kind == "frames_dropped" and self.counts[kind] == 1:
                LOG.info("memory at its floor: dropping the oldest items to stay within %d tokens",
                         self.config.max_tokens)
            if i == self._head:
                self._items[i] = None
                self._head += 1
            else:
                del self._items[i]
                self._cursor -= self._cursor > i
                self._scan_start -= self._scan_start > i
            self._compact()
            return True
        return False

    def _compact(self) -> None:
        if self._head > 1024 and self._head * 2 > len(self._items):
            del self._items[:self._head]
            self._cursor = max(0, self._cursor - self._head)
            self._scan_start = max(0, self._scan_start - self._head)
            self._head = 0
        self._cursor = max(self._cursor, self._head)
        self._scan_start = max(self._scan_start, self._head)


__all__ = ["FrameTokens", "DialogueTurn", "MemoryItem", "MemoryConfig", "MemoryBuffer", "pool_frame",
           "POLICIES"]
