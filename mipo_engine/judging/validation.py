"""Checks for the JSON that LLMs return when they infer user contexts or write rubrics.

A reply that fails a check raises ValueError with the reason; the calling stage treats that as
"retry this row" (DESIGN.md sec. 2: contexts are validated and failed rows retried).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from mipo_engine.artifacts.schemas import RUBRIC_FIELDS
from mipo_engine.judging.constraints import count_sentences

# Context extraction (seed 004 App. C.2): keys are snake_case summaries of one or two words,
# values are instructions of at most two sentences that apply to any topic.
_SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
MAX_CONTEXT_KEY_CHARS = 40
MAX_CONTEXT_VALUE_CHARS = 400
"""A light stand-in for "general, not topic-specific": two plain sentences fit well within it,
while a value that retells the conversation usually does not."""
MAX_CONTEXT_SENTENCES = 2

_CODE_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.S)
# Limits the work on pathological replies full of "{" (each start is a full decode attempt).
_MAX_DECODE_ATTEMPTS = 200


# --------------------------------------------------------------------------------------------
# Finding the JSON object in a reply
# --------------------------------------------------------------------------------------------


def _first_object_in(text: str) -> dict[str, Any] | None:
    """First ``{...}`` in ``text`` that decodes as a JSON object, scanning left to right."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    attempts = 0
    while start != -1 and attempts < _MAX_DECODE_ATTEMPTS:
        attempts += 1
        try:
            value, _ = decoder.raw_decode(text, start)
        except (json.JSONDecodeError, RecursionError):
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def parse_json_object(text: str) -> dict[str, Any] | None:
    """Find the JSON object in an LLM reply; None when there is none.

    Handles a bare object, an object inside a code fence (```json ... ```), and an object with
    prose before or after it. Fenced blocks are tried first because a model that fences its
    answer often mentions braces in the surrounding prose. Never raises on a string.
    """
    if not isinstance(text, str):
        return None
    for fenced in _CODE_FENCE.findall(text):
        found = _first_object_in(fenced)
        if found is not None:
            return found
    return _first_object_in(text)


# --------------------------------------------------------------------------------------------
# User contexts
# --------------------------------------------------------------------------------------------


def _check_context_key(key: object) -> str:
    """A key must be a short snake_case identifier."""
    if not isinstance(key, str) or not _SNAKE_CASE.fullmatch(key):
        raise ValueError(
            f"context key {key!r} is not snake_case; use lower-case words joined by "
            "underscores, e.g. 'response_length'"
        )
    if len(key) > MAX_CONTEXT_KEY_CHARS:
        raise ValueError(
            f"context key {key!r} has {len(key)} characters (at most "
            f"{MAX_CONTEXT_KEY_CHARS}); summarise the instruction in one or two words"
        )
    return key


def _check_context_value(key: str, value: object) -> str:
    """A value must be a non-empty instruction of at most two sentences."""
    if not isinstance(value, str):
        raise ValueError(
            f"context value for {key!r} is a {type(value).__name__}, not a string; each value "
            "must be one plain-text instruction"
        )
    instruction = value.strip()
    if not instruction:
        raise ValueError(f"context value for {key!r} is empty; write the instruction")
    if len(instruction) > MAX_CONTEXT_VALUE_CHARS:
        raise ValueError(
            f"context value for {key!r} has {len(instruction)} characters (at most "
            f"{MAX_CONTEXT_VALUE_CHARS}); keep it a short, topic-agnostic instruction"
        )
    sentences = count_sentences(instruction, rule="reply")
    if sentences > MAX_CONTEXT_SENTENCES:
        raise ValueError(
            f"context value for {key!r} has {sentences} sentences (at most {MAX_CONTEXT_SENTENCES})"
        )
    return instruction


def validate_user_context(obj: object) -> dict[str, str]:
    """Check an inferred user context (seed 004 App. C.2) and return it with values stripped.

    Expected: a non-empty JSON object whose keys are snake_case identifiers (at most
    ``MAX_CONTEXT_KEY_CHARS`` characters) and whose values are non-empty strings of at most two
    sentences and ``MAX_CONTEXT_VALUE_CHARS`` characters. Whether an instruction is truly
    topic-agnostic cannot be checked mechanically; the length limit is a light proxy.

    Raises ValueError naming the offending key and what to change.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"user context must be a JSON object, got {type(obj).__name__}; parse the reply "
            "with parse_json_object first"
        )
    if not obj:
        raise ValueError("user context is an empty object; it needs at least one instruction")
    return {_check_context_key(key): _check_context_value(key, value) for key, value in obj.items()}


# --------------------------------------------------------------------------------------------
# Rubrics
# --------------------------------------------------------------------------------------------


def _flatten_score_descriptions(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Accept the nested layout ``{"criteria", "score_descriptions": {"1": ..}}`` as well.

    Seed 004 App. C.2 and Multifaceted-Bench write rubrics that way; a model shown such
    examples may answer in it. Flat fields win when both are present.
    """
    flat = dict(obj)
    nested = obj.get("score_descriptions")
    if isinstance(nested, Mapping):
        for level in range(1, 6):
            field = f"score{level}_description"
            if field not in flat:
                description = nested.get(str(level), nested.get(level))
                if description is not None:
                    flat[field] = description
    return flat


def validate_rubric(obj: object) -> dict[str, str]:
    """Check a generated rubric and return exactly its six fields, stripped.

    Required: ``criteria`` and ``score1_description`` .. ``score5_description``, each a
    non-empty string (Prometheus absolute-grading layout). The nested
    ``score_descriptions: {"1": ..., "5": ...}`` layout is accepted and flattened. Other keys
    are dropped.

    Raises ValueError naming the first missing or bad field.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"rubric must be a JSON object, got {type(obj).__name__}; parse the reply with "
            "parse_json_object first"
        )
    flat = _flatten_score_descriptions(obj)
    rubric: dict[str, str] = {}
    for field in RUBRIC_FIELDS:
        if field not in flat:
            raise ValueError(f"rubric is missing {field!r}; it needs {', '.join(RUBRIC_FIELDS)}")
        value = flat[field]
        if not isinstance(value, str):
            raise ValueError(f"rubric field {field!r} is a {type(value).__name__}, not a string")
        if not value.strip():
            raise ValueError(f"rubric field {field!r} is empty")
        rubric[field] = value.strip()
    return rubric
