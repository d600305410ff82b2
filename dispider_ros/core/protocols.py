"""What the core needs from models, as small Protocols that `dispider_ros.models` implements.

The core never loads a model: the caller (a node, the offline replay, a benchmark) loads
one from `models` and hands it in. Dependencies therefore point one way, models -> core.

- `ImageEncoder`: frames -> embeddings (perception).
- `TextEncoder`: query texts -> embeddings in the same space, and the calibration that
  turns a text-image cosine into a match probability (decision's match policy).
- `ActivationScorer`: a learned (text, frame) -> probability head (activation policy).
- `ReactionVLM`: per-frame visual tokens on arrival, streamed answers at trigger time
  (reaction), with the records it shares with the engine (`PromptParts`,
  `GenerationResult`, `TextCallback`).
"""
from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from dispider_ros.core.memory import FrameTokens, MemoryItem

TextCallback = Callable[[str, int], None]  # (new text, new tokens generated so far)


class ImageEncoder(Protocol):
    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(H, W, 3) uint8 RGB images -> (N, D) float32, rows L2-normalised."""


class TextEncoder(Protocol):
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """N texts -> (N, D) float32, rows L2-normalised, in the image embeddings' space."""

    def match_calibration(self) -> Tuple[float, float]:
        """(scale, bias) such that sigmoid(scale * cos + bias) is a match probability."""


class ActivationScorer(Protocol):
    def score(self, text: np.ndarray, frame: np.ndarray) -> np.ndarray:
        """text (N, D), frame (N, D) embeddings -> (N,) probabilities in [0, 1]."""


@dataclass
class PromptParts:
    """What one answer is generated from.

    Args:
        items: memory items (FrameTokens, DialogueTurn) in time order.
        question: the trigger's query text.
        cache_slot: which of the model's prefix caches to reuse and extend (see
            ReactionVLM.prefill); a model with one cache ignores it.
        retrieved: keyframes of older clips relevant to the question, in time order, at full
            resolution (core/keyframe_store.py): the prompt puts them after the memory and
            before the question, so the memory's cached prefix stays valid.
    """

    items: Sequence[MemoryItem]
    question: str
    cache_slot: int = 0
    retrieved: Sequence[FrameTokens] = ()


@dataclass
class GenerationResult:
    """One finished (or stopped) generation."""

    text: str
    ttft_sec: float  # generate() call -> first new token (prompt build + prefill included)
    token_count: int  # new tokens, end-of-answer token included
    duration_sec: float
    prompt_tokens: int
    prefill_tokens: int  # prompt tokens computed by this call (the rest came from the KV cache)
    reused_tokens: int
    stop_reason: str  # eos | max_new_tokens | stopped
    token_ids: List[int] = field(default_factory=list)
    # What the engine adds to the final's extras (run records): e.g. a remote backend says
    # which model answered ("answered_by") when its local fallback stood in for the server.
    extras: dict = field(default_factory=dict)

    @property
    def tokens_per_sec(self) -> float:
        decode = self.duration_sec - self.ttft_sec
        return (self.token_count - 1) / decode if self.token_count > 1 and decode > 0 else float("nan")


class ReactionVLM(Protocol):
    """A reaction model: visual tokens per frame on arrival, answers over memory on demand.

    A backend may derive from this class (then the abstract members are enforced and the
    others have the defaults below) or just provide the same members.
    """

    @abc.abstractmethod
    def encode_frame(self, image: np.ndarray, camera_id: str = "", stamp: float = 0.0,
                     frame_index: int = 0, frame_id: str = "") -> FrameTokens:
        """Visual tokens of one frame, computed now.

        Args:
            image: (H, W, 3) uint8 RGB.
            camera_id, stamp, frame_index, frame_id: metadata copied into the result.
        Raises:
            ValueError: the image is not (H, W, 3) uint8.
        """

    @abc.abstractmethod
    def generate(self, parts: PromptParts, on_text: Optional[TextCallback] = None,
                 stop: Optional[threading.Event] = None) -> GenerationResult:
        """Answer parts.question over parts.items.

        Args:
            parts: the memory snapshot and the question.
            on_text: called with each decoded text chunk and the number of new tokens
                generated so far (this chunk's included), on the calling thread.
            stop: when set, generation ends after the current token (stop_reason "stopped").
        """

    @abc.abstractmethod
    def count_tokens(self, text: str) -> int:
        """Length of text in this model's tokens."""

    @property
    @abc.abstractmethod
    def hidden_size(self) -> int:
        """Width of the visual tokens."""

    def frame_overhead_tokens(self, frame: Optional[FrameTokens] = None) -> int:
        """Prompt tokens a frame costs besides its visual tokens (its label if it is
        labelled, markers); None = a typical labelled frame."""
        return 0

    def turn_overhead_tokens(self) -> int:
        """Prompt tokens a dialogue turn costs besides its text (role markers)."""
        return 0

    def prefill(self, items: Sequence[MemoryItem], slot: int = 0, max_tokens: int = 1 << 30) -> Tuple[int, int]:
        """Extend prefix cache `slot` towards the prompt prefix of `items` (everything before a
        question), by at most max_tokens newly prefilled tokens, so a later generate() over
        these items (and more) prefills only what is new. Two slots (0, 1) let a caller
        rebuild one after a compression while answering from the other.

        Returns:
            (tokens of that prefix now cached, its length); (0, 0) = the model keeps no cache.
        """
        return 0, 0

    def reset_cache(self) -> None:
        """Forget any cached prompt state."""

    def release_memory(self) -> None:
        """Return cached device memory (after an out-of-memory error); the model stays loaded."""

    def close(self) -> None:
        """Drop the model and return device memory."""


__all__ = ["ImageEncoder", "TextEncoder", "ActivationScorer", "ReactionVLM", "PromptParts",
           "GenerationResult", "TextCallback"]
