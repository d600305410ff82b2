"""Query text rules: which mode an "auto" question gets, and what a text-image matcher embeds.

Mode inference for "auto" (`infer_mode`), on the lower-cased text, first rule that hits:
  1. match    if it contains a MATCH_CUES phrase ("tell me when", "let me know if",
              "alert me", "notify me", ...): a question about an event yet to happen;
  2. boundary if it contains a BOUNDARY_CUES phrase ("guide me", "narrate", "step by
              step", "keep me updated", "as it happens", ...): a running commentary;
  3. now      otherwise: a question about the present or the past, answered at once.

Retrieval (`refers_to_past`): a question with a PAST_CUES word or phrase ("saw", "earlier",
"did you see", "what happened", ...) asks about something that may have left the camera;
its answer gets the stored clips relevant to it (DecisionCore, retrieval_k). A question
about the present does not: its evidence is the newest clip, in memory at full resolution,
and clips that merely share a word with it ("the camera" in "What is in front of the
camera?") would only distract the model and lengthen its prompt.
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
PAST_CUES = ("saw", "seen", "earlier", "before", "ago", "previously", "last time", "remember",
             "did you see", "have you seen", "was there", "were there", "what was", "where was",
             "where were", "when did", "where did", "what happened", "happened")
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


def refers_to_past(text: str) -> bool:
    """True when a question asks about the past (rule in the module docstring)."""
    norm = _normalise(text)
    return any(re.search(rf"\b{re.escape(cue)}\b", norm) for cue in PAST_CUES)


_PAST_FRAMING = ("tell me about", "tell me", "what about", "describe", "show me", "do you remember",
                 "remember", "did you see", "have you seen", "you saw", "you have seen", "you've seen",
                 "we saw", "i saw", "saw", "seen", "earlier", "before", "previously", "a while ago",
                 "ago", "last time", "what was", "where was", "when did you see", "where did you see",
                 "what did", "look like", "looked like")


def retrieval_text(text: str) -> str:
    """The part of a question about the past that a text-image ranker should embed: the
    framing ("Tell me about", "you saw", "earlier", ...) and ?!. marks dropped, so "Tell me
    about the rocket you saw." -> "the rocket" (a dual encoder was trained on captions, not
    on requests). Text that is all framing is returned stripped of those marks."""
    stripped = " ".join(text.split()).replace("\u2019", "'")
    rest = stripped
    for phrase in sorted(_PAST_FRAMING, key=len, reverse=True):
        rest = re.sub(rf"\b{re.escape(phrase)}\b", " ", rest, flags=re.IGNORECASE)
    rest = " ".join(rest.split()).strip(" ,:;?!.")
    return rest or stripped.strip(" ?!.") or stripped


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


__all__ = ["MATCH_CUES", "BOUNDARY_CUES", "PAST_CUES", "infer_mode", "refers_to_past", "retrieval_text", "event_text"]
