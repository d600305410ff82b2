"""Streaming glue for transformers' generate(): a callback streamer and a stop-event criterion."""
from __future__ import annotations

import functools
import threading
import time
from typing import List, Optional

import torch

from dispider_ros.core.protocols import TextCallback

# A run of tokens with no word boundary finalizes no text (random weights, long tokens,
# code): the callback then hears ("", tokens so far) at least this often, so a listener
# (the ask action's answer timeout) can tell a slow answer from a dead or stalled node.
PROGRESS_SEC = 1.0


def callback_streamer(tokenizer, on_text: Optional[TextCallback]):
    """A transformers TextStreamer that hands each finalized text chunk to a plain callback.

    generate() calls put()/end() on the thread that runs it (the reaction worker), so there
    is no queue to block on: an exception in generate() (or in the callback) propagates
    straight to the caller instead of leaving a reader waiting for text that never comes.
    The streamer also records its chunks, counts the new tokens (a chunk may cover several:
    text is finalized at word boundaries) and notes when the first new token arrived. While
    tokens come but no text is finalized, it calls back ("", tokens so far) every
    PROGRESS_SEC (such empty calls are not recorded as chunks).
    """
    return _streamer_class()(tokenizer, on_text)


@functools.lru_cache(maxsize=1)
def _streamer_class():
    from transformers import TextStreamer

    class CallbackStreamer(TextStreamer):
        def __init__(self, tokenizer, on_text: Optional[TextCallback]):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.on_text = on_text
            self.chunks: List[str] = []
            self.first_token_time: Optional[float] = None
            self.token_count = 0  # new tokens put so far
            self.last_call = 0.0  # perf_counter of the last callback (or the first token)

        def put(self, value):
            generated = not self.next_tokens_are_prompt  # the first put() is the prompt
            if generated:
                now = time.perf_counter()
                if self.first_token_time is None:
                    self.first_token_time = self.last_call = now
                self.token_count += value.numel()  # (1,) or (1, 1): batch size 1
            super().put(value)
            if generated and self.on_text is not None and \
                    time.perf_counter() - self.last_call >= PROGRESS_SEC:
                self.last_call = time.perf_counter()  # no text for a while: progress only
                self.on_text("", self.token_count)

        def on_finalized_text(self, text: str, stream_end: bool = False):
            if text:
                self.chunks.append(text)
                self.last_call = time.perf_counter()
                if self.on_text is not None:
                    self.on_text(text, self.token_count)

    return CallbackStreamer


def stop_criteria(stop: Optional[threading.Event]):
    """StoppingCriteriaList that ends generation after the token during which stop was set."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _OnEvent(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool,
                              device=input_ids.device)

    return StoppingCriteriaList([_OnEvent()] if stop is not None else [])


__all__ = ["callback_streamer", "stop_criteria"]
