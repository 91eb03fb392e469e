"""IFEval prompts and responses to score, read from their original formats.

- Prompts: ``input_data.jsonl`` of Google's ``instruction_following_eval`` (one object per
  line: ``key``, ``prompt``, ``instruction_id_list``, ``kwargs``). A copy of the 541 prompts
  ships with mipo-engine (``data/ifeval/``, Apache-2.0); the Hugging Face copy
  ``google/IFEval`` has the same fields, with every kwargs key present (unused ones null).
- Responses (``mipo eval --task ifeval --responses FILE``): IFEval's own response format,
  JSONL with ``prompt`` and ``response`` per line, or a ``.parquet`` with those two columns
  (an ``eval`` artifact of ``mipo eval --task ifeval`` has them). Responses are matched to
  the prompts by the exact prompt text, as the reference evaluation does.

Rows are dicts shaped like the ``prompts`` schema plus ``instruction_ids`` and ``kwargs``.
Every problem raises ``InputError`` naming the file, the 1-based row and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mipo_engine.errors import InputError

Row = dict[str, Any]

BUILTIN_IFEVAL = "ifeval/input_data.jsonl"
"""The bundled copy, relative to the ``data`` resource folder."""


def instruction_registry() -> Mapping[str, Any]:
    """IFEval instruction id -> verifier class, from the verifier library."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    return INSTRUCTION_DICT


def is_instruction_id(instruction_id: str) -> bool:
    return instruction_id in instruction_registry()


def builtin_ifeval_path() -> Path:
    from mipo_engine.resources import resource_dir

    return resource_dir("data") / BUILTIN_IFEVAL


def _jsonl_records(path: Path) -> list[tuple[int, Any]]:
    """(1-based line, parsed value) of every non-blank line; InputError on bad bytes or JSON."""
    raw = path.read_bytes()
    records = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(
                f"not UTF-8 text (byte {error.start} of the line)", file=path, row=number
            ) from None
        if not text.strip():
            continue
        try:
            records.append((number, json.loads(text)))
        except json.JSONDecodeError as error:
            raise InputError(f"not valid JSON ({error.msg})", file=path, row=number) from None
    return records


def ifeval_rows(records: Iterable[tuple[int, Any]], source: str | Path) -> list[Row]:
    """IFEval records (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``) as rows."""
    rows: list[Row] = []
    seen: dict[str, int] = {}
    for number, record in records:
        if not isinstance(record, dict):
            raise InputError(
                f"expected a JSON object, got {type(record).__name__}", file=source, row=number
            )
        key = record.get("key")
        if isinstance(key, bool) or not isinstance(key, int):
            raise InputError(
                f"expected an integer key, got {key!r}", file=source, row=number, field="key"
            )
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("expected non-empty text", file=source, row=number, field="prompt")
        ids = record.get("instruction_id_list")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise InputError(
                "expected a non-empty list of instruction ids",
                file=source,
                row=number,
                field="instruction_id_list",
            )
        unknown = [name for name in ids if not is_instruction_id(name)]
        if unknown:
            raise InputError(
                f"unknown IFEval instruction id(s) {unknown}",
                file=source,
                row=number,
                field="instruction_id_list",
            )
        kwargs = record.get("kwargs")
        if not isinstance(kwargs, list) or len(kwargs) != len(ids):
            raise InputError(
                f"expected a list of {len(ids)} objects, one per instruction id",
                file=source,
                row=number,
                field="kwargs",
            )
        if not all(isinstance(arguments, dict) for arguments in kwargs):
            raise InputError(
                "each entry must be an object", file=source, row=number, field="kwargs"
            )
        row_id = f"ifeval-{key}"
        if row_id in seen:
            raise InputError(
                f"duplicate key {key} (first at row {seen[row_id]})",
                file=source,
                row=number,
                field="key",
            )
        seen[row_id] = number
        rows.append(
            {
                "id": row_id,
                "prompt": prompt,
                "context": None,
                "context_items": None,
                "context_group": None,
                "task": "ifeval",
                "answer": None,
                "choices": None,
                "source": "ifeval",
                "instruction_ids": list(ids),
                # The Hub copy lists every argument name; unused ones are null there.
                "kwargs": [
                    {k: v for k, v in arguments.items() if v is not None} for arguments in kwargs
                ],
            }
        )
    return rows


def load_ifeval(path: str | Path | None = None) -> list[Row]:
    """IFEval rows from ``path`` (original ``input_data.jsonl`` layout) or the bundled copy."""
    file = Path(path).expanduser() if path is not None else builtin_ifeval_path()
    if not file.is_file():
        raise InputError("IFEval prompts file not found", file=file)
    return ifeval_rows(_jsonl_records(file), file)


# --------------------------------------------------------------------------------------------
# Responses to score


def _response_records(path: Path) -> list[tuple[int, Any]]:
    if path.suffix == ".parquet":
        from mipo_engine.artifacts.store import read_parquet

        frame = read_parquet(path)
        for column in ("prompt", "response"):
            if column not in frame.columns:
                raise InputError(f"missing column (found {frame.columns})", file=path, field=column)
        return list(enumerate(frame.select("prompt", "response").to_dicts(), start=1))
    return _jsonl_records(path)


def read_responses(path: str | Path, items: Sequence[Row]) -> list[tuple[Row, str]]:
    """(item, response) pairs from a responses file, matched to ``items`` by prompt text.

    Refuses a row without a text ``prompt`` or ``response``, a prompt that is not one of
    ``items``, and a prompt answered twice.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError("responses file not found", file=file)
    by_prompt = {item["prompt"]: item for item in items}
    answered: dict[str, int] = {}
    pairs = []
    for number, record in _response_records(file):
        if not isinstance(record, dict):
            raise InputError(
                f"expected a JSON object, got {type(record).__name__}", file=file, row=number
            )
        for field in ("prompt", "response"):
            if not isinstance(record.get(field), str):
                found = (
                    "missing"
                    if record.get(field) is None
                    else f"got {type(record[field]).__name__}"
                )
                raise InputError(f"expected text, {found}", file=file, row=number, field=field)
        item = by_prompt.get(record["prompt"])
        if item is None:
            raise InputError(
                "prompt is not one of the IFEval prompts being scored (responses are matched by "
                "the exact prompt text)",
                file=file,
                row=number,
                field="prompt",
            )
        if item["id"] in answered:
            raise InputError(
                f"second response to this prompt (first at row {answered[item['id']]})",
                file=file,
                row=number,
                field="prompt",
            )
        answered[item["id"]] = number
        pairs.append((item, record["response"]))
    if not pairs:
        raise InputError("no responses to score", file=file)
    return pairs
