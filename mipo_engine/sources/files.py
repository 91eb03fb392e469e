"""Read user prompt files (JSONL, CSV, Parquet) into rows of the prompts schema.

Every value is checked as it is read; a problem raises InputError naming the file, the
1-based row (the line for JSONL, the record after the header for CSV) and the field.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mipo_engine.artifacts.schemas import TASKS
from mipo_engine.errors import InputError

Row = dict[str, Any]

FIELDS = ("id", "prompt", "context", "context_items", "context_group", "task", "answer", "choices")
# A prompt longer than this is almost certainly a mistake (a whole file pasted in a cell).
MAX_PROMPT_CHARS = 200_000


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        row = data[: error.start].count(b"\n") + 1
        raise InputError(
            f"not valid UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start}); "
            "re-save the file as UTF-8",
            file=path,
            row=row,
        ) from None


def read_records(path: Path, file_format: str = "auto") -> list[tuple[int, Mapping[str, Any]]]:
    """(row number, record) pairs from a JSONL, CSV or Parquet file."""
    if not path.is_file():
        raise InputError("file not found", file=path)
    kind = file_format if file_format != "auto" else path.suffix.lower().lstrip(".")
    if kind in ("jsonl", "json", "ndjson"):
        return _read_jsonl(path)
    if kind == "csv":
        return _read_csv(path)
    if kind == "parquet":
        return _read_parquet(path)
    raise InputError(
        f"unknown file type {path.suffix!r}; use .jsonl, .csv or .parquet (or --format)",
        file=path,
    )


def _read_jsonl(path: Path) -> list[tuple[int, Mapping[str, Any]]]:
    text = _decode(path)
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"invalid JSON ({error.msg})", file=path, row=number) from None
        if not isinstance(record, dict):
            raise InputError("each line must be a JSON object", file=path, row=number)
        records.append((number, record))
    return records


def _read_csv(path: Path) -> list[tuple[int, Mapping[str, Any]]]:
    reader = csv.DictReader(io.StringIO(_decode(path), newline=""))
    if not reader.fieldnames:
        raise InputError("CSV file has no header row", file=path)
    return [(number, record) for number, record in enumerate(reader, start=1)]


def _read_parquet(path: Path) -> list[tuple[int, Mapping[str, Any]]]:
    from mipo_engine.artifacts.store import read_parquet

    return list(enumerate(read_parquet(path).to_dicts(), start=1))


def _text(value: Any, *, path: Path, row: int, field: str, required: bool) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if required:
            raise InputError("value is missing", file=path, row=row, field=field)
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(
            f"expected text, got {type(value).__name__}", file=path, row=row, field=field
        )
    if field in ("prompt",) and not isinstance(value, str):
        raise InputError(
            f"expected text, got {type(value).__name__}", file=path, row=row, field=field
        )
    text = str(value)
    if not text.strip():
        if required:
            raise InputError("text is empty or whitespace", file=path, row=row, field=field)
        return None
    return text


def _text_list(value: Any, *, path: Path, row: int, field: str) -> list[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):  # CSV cells: a JSON list, or items separated by " | "
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = [part.strip() for part in value.split("|") if part.strip()]
        value = parsed
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InputError("expected a list of strings", file=path, row=row, field=field)
    return list(value)


def normalise_record(
    record: Mapping[str, Any],
    *,
    path: Path,
    row: int,
    columns: Mapping[str, str],
    task: str | None,
    source: str,
) -> Row:
    """One prompts-schema row from a raw record; ``columns`` maps schema field -> file column."""

    def get(field: str) -> Any:
        return record.get(columns.get(field, field))

    prompt_column = columns.get("prompt", "prompt")
    if prompt_column not in record:
        raise InputError(
            f"missing prompt column {prompt_column!r} (found {sorted(record)}); "
            "map it with --prompt-column",
            file=path,
            row=row,
            field=prompt_column,
        )
    prompt = _text(get("prompt"), path=path, row=row, field=prompt_column, required=True)
    assert prompt is not None
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(
            f"prompt has {len(prompt):,} characters (limit {MAX_PROMPT_CHARS:,})",
            file=path,
            row=row,
            field=prompt_column,
        )
    raw_id = get("id")
    row_id = (
        _text(raw_id, path=path, row=row, field=columns.get("id", "id"), required=True)
        if raw_id is not None
        else f"{Path(path).stem}-{row:06d}"
    )
    context = _text(get("context"), path=path, row=row, field="context", required=False)
    items = _text_list(get("context_items"), path=path, row=row, field="context_items")
    if context is None and items:
        context = " ".join(items)
    row_task = task or _text(get("task"), path=path, row=row, field="task", required=False)
    if row_task is None:
        row_task = "personalization" if context else "general"
    if row_task not in TASKS:
        raise InputError(
            f"unknown task {row_task!r}; expected one of {', '.join(TASKS)}",
            file=path,
            row=row,
            field="task",
        )
    return {
        "id": row_id,
        "prompt": prompt,
        "context": context,
        "context_items": items,
        "context_group": _text(
            get("context_group"), path=path, row=row, field="context_group", required=False
        ),
        "task": row_task,
        "answer": _text(get("answer"), path=path, row=row, field="answer", required=False),
        "choices": _text_list(get("choices"), path=path, row=row, field="choices"),
        "source": _text(record.get("source"), path=path, row=row, field="source", required=False)
        or source,
    }
