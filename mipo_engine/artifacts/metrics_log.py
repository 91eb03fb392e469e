"""``metrics.jsonl``: the per-step log a training run writes, and its one reader.

Training appends one JSON object per logged step (``training.metrics``); the training
stage, its plots and ``mipo report`` read the file back through ``read_metrics``. Reading
needs neither torch nor transformers, so the report stays light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, in order (a torn last line is ignored).

    A missing file has no records. Bytes that are not UTF-8 are replaced, not fatal: the
    line they stand in no longer parses and ends the records, like a torn line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a run killed mid-write leaves at most one partial last line
    return records
