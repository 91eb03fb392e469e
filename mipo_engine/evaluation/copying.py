"""The copy shortcut: responses that restate the user's own message instead of answering it.

A small model trained to raise log pi(y | x, c) - log pi(y | x) can do so cheaply by repeating
the context c (its requirements block included) in the response: the repeated words are
likely given c and unlikely without it, so the pointwise MI rises while the user is not
served. This module measures that behaviour so every evaluation can report it.

- ``copy_overlap(response, user_turn)``: the share of the user turn's distinct word 4-grams
  (lower-cased words, ``\\w+``, punctuation ignored) that also occur in the response. 0 means
  no run of four of the user's words is repeated; 1 means the whole message is.
- ``restates(response, user_turn)``: ``copy_overlap >= RESTATE_THRESHOLD``. A response that
  repeats a quarter of the user's 4-grams has copied whole sentences of the message; an answer
  that merely echoes a phrase of the request ("a long weekend in early spring") stays below.
"""

from __future__ import annotations

import re

NGRAM = 4
RESTATE_THRESHOLD = 0.25
_WORD = re.compile(r"\w+")


def word_ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def copy_overlap(response: str, user_turn: str) -> float:
    """Share of the user turn's distinct word 4-grams that the response repeats."""
    source = word_ngrams(user_turn)
    if not source:
        return 0.0
    return len(source & word_ngrams(response)) / len(source)


def restates(response: str, user_turn: str) -> bool:
    return copy_overlap(response, user_turn) >= RESTATE_THRESHOLD
