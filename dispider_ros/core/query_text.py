"""Query text rules: which mode an "auto" question gets, and what a text-image matcher embeds.

Mode inference for "auto" (`infer_mode`), on the lower-cased text, first rule that hits:
  1. match    if it contains a MATCH_CUES phrase ("tell me when", "let me know if",
              "alert me", "notify me", ...): a question about an event yet to happen;
  2. boundary if it contains a BOUNDARY_CUES phrase ("guide me", "narrate", "step by
              step", "keep me updated", "as it happens", ...): a running commentary;
  3. now      otherwise: a question about the present or the past, answered at once.
"""
from __future__ import annotations

import re

MATCH_CUES = ("tell me when", "tell me if", "tell me once", "let me know when",
              "let me know if", "let me know once", "alert me", "notify me", "warn me",
              "ping me", "remind me when", "wait until", "wait for", "watch for",
              "look out for", "as soon as")
BOUNDARY_CUES = ("guide me", "walk me through", "narrate", "commentate", "as it happens",
                 "step by step", "each step", "every step", "keep me updated",
                 "keep me posted", "play by play", "describe what happens")
_CONNECTIVES = ("when", "if", "once", "that", "for", "whenever")


def _normalise(text: str) -> str:
    return " ".join(text.lower().replace("\u2019", "'").split())


def infer_mode(text: str) -> str:
    """Mode for a query given as "auto" (rule in the module docstring)."""
    norm = _normalise(text)
    if any(re.search(rf"\b{re.escape(cue)}\b", norm) for cue in MATCH_CUES):
        return "match"
    if any(re.search(rf"\b{re.escape(cue)}\b", norm) for cue in BOUNDARY_CUES):
        return "boundary"
    return "now"


def event_text(text: str) -> str:
    """The part of a question a text-image matcher should embed.

    "Tell me when the person picks up the red cup!" -> "the person picks up the red cup":
    the instruction before the first match cue and a following connective are dropped,
    as are trailing ?!. marks. Text without a cue is returned stripped of those marks.
    """
    stripped = " ".join(text.split())
    lowered = stripped.lower().replace("\u2019", "'")
    cut = None
    for cue in MATCH_CUES:
        found = re.search(rf"\b{re.escape(cue)}\b", lowered)
        if found and (cut is None or found.start() < cut[0]):
            cut = (found.start(), found.end())
    rest = stripped[cut[1]:] if cut else stripped
    words = rest.split()
    while words and words[0].lower().strip(",:") in _CONNECTIVES:
        words.pop(0)
    rest = " ".join(words).strip(" ,:;?!.")
    return rest or stripped.strip(" ?!.") or stripped


__all__ = ["MATCH_CUES", "BOUNDARY_CUES", "infer_mode", "event_text"]
