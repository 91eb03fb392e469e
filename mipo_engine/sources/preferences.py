"""Readers for real-user preference data and system-message preferences.

Seed 004 (sec. 5.3) infers user contexts from the choices real users made (PRISM, Community
Alignment) and rewrites Multifaceted-Bench system messages as user statements. This module
turns those files into two plain record types that ``mipo contexts`` consumes:

- ``PreferenceExample``: one prompt, two or more response options, and which one the user
  preferred. Layouts:

  ``pairwise`` (any file): one row per choice, columns ``prompt``, the option columns
  (default: every ``option_a``, ``option_b``... or ``response_a``, ``response_b``... column),
  ``preferred``, optional ``id``, ``user_id`` and ``feedback``; every name can be remapped.

  ``prism`` (PRISM ``utterances.jsonl``): one row per model response, grouped into one choice
  per ``interaction_id``; ``user_prompt``, ``model_response``, ``if_chosen``, ordered by
  ``within_turn_id``. Interactions with a single response (no choice made) are skipped.

  ``community-alignment``: one row per annotator choice with per-turn columns
  ``{turn}_turn_prompt``, ``{turn}_turn_response_{a,b,c,d}``, ``{turn}_turn_preferred_response``
  and ``annotator_id`` (names from public loaders, not checked against the data: remap them
  with ``columns`` when they differ).

- ``SystemPreference``: one preference of a Multifaceted-Bench style record (``dimension``,
  ``subdimension``, ``preference``, ``description`` and the record's ``prompt``). A record
  with a ``preference_set`` list yields one per entry (seed 004: "every prompt-preference pair
  yields four variants, each targeting a single preference"); a record with flat columns of
  those names yields one; a record with only a ``system`` message yields one whose description
  is the whole system message.

The preferred option may be given as a letter (``"B"``), an option column name
(``"response_b"``, ``"option_b"``), ``"Option B"``, a 1-based option number, or the exact text
of the option. Errors name the file, the 1-based row and the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mipo_engine.artifacts.schemas import first_repeat
from mipo_engine.errors import InputError
from mipo_engine.sources.files import read_records

Layout = Literal["auto", "pairwise", "prism", "community-alignment", "multifaceted"]
PREFERENCE_LAYOUTS = ("pairwise", "prism", "community-alignment")
TURN_WORDS = ("first", "second", "third", "fourth")

_OPTION_COLUMN = re.compile(r"^(?:option|response)_([a-z])$")
_OPTION_LETTER = re.compile(r"(?:option|response)_([a-z])$")
_LETTER = re.compile(r"^(?:(?:option|response)[ _]?)?([a-z])$", re.IGNORECASE)
_CA_RESPONSE_COLUMN = re.compile(r"_turn_response_[a-d]$")
_SNAKE_SPLIT = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class PreferenceExample:
    """One choice a user made: a prompt, the options shown, and the index of the preferred one."""

    source_id: str
    prompt: str
    options: tuple[str, ...]
    preferred: int
    user_id: str | None = None
    feedback: str | None = None


@dataclass(frozen=True)
class SystemPreference:
    """One preference written from the assistant's side (Multifaceted-Bench style)."""

    source_id: str
    prompt: str
    dimension: str
    subdimension: str
    preference: str
    description: str
    group: str
    """Id of the record the preference came from: its variants share the record's prompt."""
    reference_answer: str | None = None


# --------------------------------------------------------------------------------------------
# Small value helpers
# --------------------------------------------------------------------------------------------


def _text(value: Any, *, file: Path, row: int, field: str, required: bool = True) -> str | None:
    """A non-empty string cell, or None for a missing optional one."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InputError("value is missing or empty", file=file, row=row, field=field)
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(
            f"expected text, got {type(value).__name__}", file=file, row=row, field=field
        )
    return str(value)


def snake_case(text: str, fallback: str = "preference") -> str:
    """``"Style / Vividness"`` -> ``"style_vividness"``; ``fallback`` when nothing is left."""
    words = [word for word in _SNAKE_SPLIT.split(text.lower()) if word]
    if not words or not words[0][0].isalpha():
        return fallback
    return "_".join(words)


def _row_id(record: Mapping[str, Any], column: str, *, file: Path, row: int) -> str:
    """The record's id from ``column``, or ``<file stem>-<row>`` when the file has none."""
    value = record.get(column)
    if value is None:
        return f"{file.stem}-{row:06d}"
    return _text(value, file=file, row=row, field=column) or ""


def _option_letter(column: str) -> str | None:
    """``"response_b"``, ``"first_turn_response_b"`` -> ``"b"``; None for other names."""
    found = _OPTION_LETTER.search(column)
    return found.group(1) if found else None


def preferred_index(
    value: Any,
    options: Sequence[str],
    option_names: Sequence[str],
    *,
    file: Path,
    row: int,
    field: str,
) -> int:
    """Index into ``options`` of the preferred option, from any accepted way of naming it.

    ``option_names`` are the column names the options came from (``response_b``...); their
    final letter is the option's letter.
    """
    if isinstance(value, bool) or value is None:
        raise InputError(
            "missing preferred option; give a letter (A, B, ...) or the option's column name",
            file=file,
            row=row,
            field=field,
        )
    letters = [_option_letter(name) for name in option_names]
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        number = int(value)
        if not 1 <= number <= len(options):
            raise InputError(
                f"option number {number} is out of range 1..{len(options)} (numbers are "
                "1-based: 1 is the first option)",
                file=file,
                row=row,
                field=field,
            )
        return number - 1
    text = str(value).strip()
    name = text.removesuffix("_turn_preferred_response")
    for index, column in enumerate(option_names):
        if text == column or name.endswith(column):
            return index
    letter = _LETTER.match(text.replace("Option ", "option_"))
    if letter is not None:
        wanted = letter.group(1).lower()
        if wanted in letters:
            return letters.index(wanted)
        position = ord(wanted) - ord("a")
        if all(found is None for found in letters) and position < len(options):
            return position
    if text.isdigit():
        return preferred_index(int(text), options, option_names, file=file, row=row, field=field)
    if text in options:
        return options.index(text)
    raise InputError(
        f"cannot tell which option {text[:60]!r} names; use a letter "
        f"({', '.join(chr(ord('A') + i) for i in range(len(options)))}), an option column "
        f"name ({', '.join(option_names)}), a 1-based number, or the option's exact text",
        file=file,
        row=row,
        field=field,
    )


# --------------------------------------------------------------------------------------------
# Layout detection
# --------------------------------------------------------------------------------------------


def detect_layout(record: Mapping[str, Any]) -> str:
    """Guess a file's layout from the columns of its first record."""
    keys = set(record)
    if {"model_response", "if_chosen"} <= keys:
        return "prism"
    if any(_CA_RESPONSE_COLUMN.search(key) for key in keys):
        return "community-alignment"
    if "preference_set" in keys or "system" in keys or {"dimension", "description"} <= keys:
        return "multifaceted"
    return "pairwise"


def _json_document_records(path: Path) -> list[tuple[int, Mapping[str, Any]]] | None:
    """Records of a ``.json`` file holding one object or a list of objects; None otherwise."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # maybe JSON Lines with a .json suffix
    if isinstance(document, Mapping):
        document = [document]
    if not isinstance(document, list):
        return None
    for index, record in enumerate(document, start=1):
        if not isinstance(record, Mapping):
            raise InputError("each record must be a JSON object", file=path, row=index)
    return list(enumerate(document, start=1))


def _records(path: Path) -> list[tuple[int, Mapping[str, Any]]]:
    """(row number, record) pairs: JSONL, CSV, Parquet, or a JSON object/list file."""
    path = Path(path)
    records = None
    if path.suffix.lower() == ".json" and path.is_file():
        records = _json_document_records(path)
    if records is None:
        records = read_records(path)
    if not records:
        raise InputError("the file has no rows", file=path)
    return records


# --------------------------------------------------------------------------------------------
# Pairwise and Community Alignment: one choice per row
# --------------------------------------------------------------------------------------------


def _default_option_columns(record: Mapping[str, Any]) -> list[str]:
    found = sorted(key for key in record if _OPTION_COLUMN.match(key))
    return found


def _row_example(
    record: Mapping[str, Any],
    *,
    file: Path,
    row: int,
    columns: Mapping[str, Any],
    option_columns: Sequence[str],
) -> PreferenceExample:
    """One choice from a row holding all its options in separate columns."""
    missing = [name for name in (columns["prompt"], *option_columns) if name not in record]
    if missing:
        raise InputError(
            f"missing column {missing[0]!r} (found {sorted(record)}); map the columns with "
            "the prompt/option/preferred column options",
            file=file,
            row=row,
            field=missing[0],
        )
    shown = [(name, record[name]) for name in option_columns if record.get(name) is not None]
    shown = [
        (name, text) for name, text in shown if not (isinstance(text, str) and not text.strip())
    ]
    if len(shown) < 2:
        raise InputError(
            f"needs at least two non-empty options, found {len(shown)}",
            file=file,
            row=row,
            field=option_columns[0],
        )
    names = [name for name, _ in shown]
    options = tuple(_text(text, file=file, row=row, field=name) or "" for name, text in shown)
    preferred_field = columns["preferred"]
    preferred = preferred_index(
        record.get(preferred_field), options, names, file=file, row=row, field=preferred_field
    )
    return PreferenceExample(
        source_id=_row_id(record, columns["id"], file=file, row=row),
        prompt=_text(record[columns["prompt"]], file=file, row=row, field=columns["prompt"]) or "",
        options=options,
        preferred=preferred,
        user_id=_text(
            record.get(columns["user"]), file=file, row=row, field=columns["user"], required=False
        ),
        feedback=_text(
            record.get(columns["feedback"]),
            file=file,
            row=row,
            field=columns["feedback"],
            required=False,
        ),
    )


def _pairwise_columns(overrides: Mapping[str, Any]) -> dict[str, Any]:
    columns: dict[str, Any] = {
        "id": "id",
        "user": "user_id",
        "prompt": "prompt",
        "options": None,
        "preferred": "preferred",
        "feedback": "feedback",
    }
    columns.update({key: value for key, value in overrides.items() if value is not None})
    return columns


def _community_alignment_columns(turn: int, overrides: Mapping[str, Any]) -> dict[str, Any]:
    word = TURN_WORDS[turn - 1]
    columns: dict[str, Any] = {
        "id": "id",
        "user": "annotator_id",
        "prompt": f"{word}_turn_prompt",
        "options": [f"{word}_turn_response_{letter}" for letter in "abcd"],
        "preferred": f"{word}_turn_preferred_response",
        "feedback": "feedback",
    }
    columns.update({key: value for key, value in overrides.items() if value is not None})
    return columns


def _row_examples(
    records: list[tuple[int, Mapping[str, Any]]], path: Path, columns: Mapping[str, Any]
) -> list[PreferenceExample]:
    examples = []
    for row, record in records:
        option_columns = columns["options"] or _default_option_columns(record)
        if len(option_columns) < 2:
            raise InputError(
                f"no option columns found (looked for option_a/option_b or "
                f"response_a/response_b among {sorted(record)}); name them with the option "
                "columns setting",
                file=path,
                row=row,
            )
        # Community Alignment rows have four slots; a file may leave unused ones out.
        present = [name for name in option_columns if name in record]
        if len(present) < 2:
            present = list(option_columns)  # reports the first missing column
        examples.append(
            _row_example(record, file=path, row=row, columns=columns, option_columns=present)
        )
    return examples


# --------------------------------------------------------------------------------------------
# PRISM: one row per response, grouped by interaction
# --------------------------------------------------------------------------------------------

_PRISM_REQUIRED = ("interaction_id", "user_prompt", "model_response", "if_chosen")


def _natural_key(value: Any) -> tuple[int, float, str]:
    """Sort numbers numerically (2 before 10) and anything else as text after them."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    text = "" if value is None else str(value)
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def _prism_groups(
    records: list[tuple[int, Mapping[str, Any]]], path: Path
) -> dict[str, list[tuple[int, Mapping[str, Any]]]]:
    groups: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for row, record in records:
        for field in _PRISM_REQUIRED:
            if field not in record:
                raise InputError(
                    f"missing column {field!r} for the PRISM utterances layout",
                    file=path,
                    row=row,
                    field=field,
                )
        key = _text(record["interaction_id"], file=path, row=row, field="interaction_id") or ""
        groups.setdefault(key, []).append((row, record))
    return groups


def _keep_turn(
    groups: dict[str, list[tuple[int, Mapping[str, Any]]]], turn: int | None
) -> dict[str, list[tuple[int, Mapping[str, Any]]]]:
    """Interactions at the conversation's ``turn``-th turn (1 = first), whatever the numbering."""
    if turn is None:
        return groups
    turns_by_conversation: dict[Any, set[Any]] = {}
    for rows in groups.values():
        record = rows[0][1]
        turns_by_conversation.setdefault(record.get("conversation_id"), set()).add(
            record.get("turn")
        )
    kept = {}
    for key, rows in groups.items():
        record = rows[0][1]
        ordered = sorted(turns_by_conversation[record.get("conversation_id")], key=_natural_key)
        if len(ordered) >= turn and record.get("turn") == ordered[turn - 1]:
            kept[key] = rows
    return kept


def _prism_example(
    key: str, rows: list[tuple[int, Mapping[str, Any]]], path: Path
) -> PreferenceExample:
    rows = sorted(rows, key=lambda item: (_natural_key(item[1].get("within_turn_id")), item[0]))
    chosen = [
        index
        for index, (_, record) in enumerate(rows)
        if record["if_chosen"] is True or str(record["if_chosen"]).lower() in ("true", "1")
    ]
    if len(chosen) != 1:
        raise InputError(
            f"interaction {key!r} has {len(chosen)} responses marked if_chosen; exactly one "
            "must be",
            file=path,
            row=rows[0][0],
            field="if_chosen",
        )
    first_row, first = rows[0]
    options = tuple(
        _text(record["model_response"], file=path, row=row, field="model_response") or ""
        for row, record in rows
    )
    return PreferenceExample(
        source_id=key,
        prompt=_text(first["user_prompt"], file=path, row=first_row, field="user_prompt") or "",
        options=options,
        preferred=chosen[0],
        user_id=_text(
            first.get("user_id"), file=path, row=first_row, field="user_id", required=False
        ),
    )


def _prism_examples(
    records: list[tuple[int, Mapping[str, Any]]], path: Path, turn: int | None
) -> list[PreferenceExample]:
    groups = _keep_turn(_prism_groups(records, path), turn)
    # A single response means the user was shown nothing to choose between.
    return [_prism_example(key, rows, path) for key, rows in groups.items() if len(rows) >= 2]


# --------------------------------------------------------------------------------------------
# Public readers
# --------------------------------------------------------------------------------------------


def read_preferences(
    path: str | Path,
    *,
    layout: Layout = "auto",
    columns: Mapping[str, Any] | None = None,
    turn: int | None = None,
) -> list[PreferenceExample]:
    """Read one file of users' choices into ``PreferenceExample`` records, in file order.

    ``columns`` remaps names: keys ``id``, ``user``, ``prompt``, ``options`` (a list of
    column names), ``preferred`` and ``feedback``. ``turn`` picks a conversation turn
    (1 = first): Community Alignment reads that turn's columns (default 1); PRISM keeps the
    interactions at that turn (default: all).
    """
    path = Path(path)
    records = _records(path)
    if layout == "auto":
        layout = detect_layout(records[0][1])  # type: ignore[assignment]
    if turn is not None and not 1 <= turn <= len(TURN_WORDS):
        raise ValueError(f"turn must be 1..{len(TURN_WORDS)}, got {turn}")
    overrides = dict(columns or {})
    if layout == "pairwise":
        examples = _row_examples(records, path, _pairwise_columns(overrides))
    elif layout == "community-alignment":
        examples = _row_examples(records, path, _community_alignment_columns(turn or 1, overrides))
    elif layout == "prism":
        examples = _prism_examples(records, path, turn)
    elif layout == "multifaceted":
        raise InputError(
            "this file holds system-message preferences (Multifaceted-Bench layout), not "
            "users' choices; use the system-to-user mode",
            file=path,
        )
    else:
        raise ValueError(f"unknown layout {layout!r}; choose auto or one of {PREFERENCE_LAYOUTS}")
    _check_unique_ids([example.source_id for example in examples], path)
    return examples


def _check_unique_ids(ids: list[str], path: Path) -> None:
    repeat = first_repeat(ids)
    if repeat is not None:
        index = repeat[0]
        raise InputError(
            f"duplicate id {ids[index - 1]!r} (record {index}); ids must be unique",
            file=path,
            field="id",
        )


def _preference_entries(record: Mapping[str, Any], *, file: Path, row: int) -> list[dict[str, str]]:
    """The record's preferences as dicts with the four fields, from any accepted layout."""
    fields = ("dimension", "subdimension", "preference", "description")
    entries = record.get("preference_set")
    if entries is None and "description" in record:
        entries = [record]
    if entries is None:
        system = _text(record.get("system"), file=file, row=row, field="system")
        return [
            {
                "dimension": "general",
                "subdimension": "general",
                "preference": "as described",
                "description": system or "",
            }
        ]
    if not isinstance(entries, (list, tuple)) or not entries:
        raise InputError(
            "expected a non-empty list of preferences", file=file, row=row, field="preference_set"
        )
    parsed = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise InputError(
                f"preference {index} is a {type(entry).__name__}, not an object",
                file=file,
                row=row,
                field="preference_set",
            )
        parsed.append(
            {
                field: _text(
                    entry.get(field), file=file, row=row, field=f"preference_set[{index}].{field}"
                )
                or ""
                for field in fields
            }
        )
    return parsed


def read_system_preferences(path: str | Path) -> list[SystemPreference]:
    """Read Multifaceted-Bench style records into one ``SystemPreference`` per preference."""
    path = Path(path)
    preferences = []
    for row, record in _records(path):
        record_id = _row_id(record, "id", file=path, row=row)
        prompt = _text(record.get("prompt"), file=path, row=row, field="prompt") or ""
        reference = _text(
            record.get("reference_answer"),
            file=path,
            row=row,
            field="reference_answer",
            required=False,
        )
        entries = _preference_entries(record, file=path, row=row)
        for index, entry in enumerate(entries):
            source_id = record_id if len(entries) == 1 else f"{record_id}-p{index + 1}"
            preferences.append(
                SystemPreference(
                    source_id=source_id,
                    prompt=prompt,
                    group=record_id,
                    reference_answer=reference,
                    **entry,
                )
            )
    _check_unique_ids([preference.source_id for preference in preferences], path)
    return preferences
