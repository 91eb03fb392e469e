"""The built-in prompt sets in ``data/`` and their splits.

``personalization.jsonl`` is split by two id lists:

- ``personalization_heldout_ids.txt``: the held-out evaluation rows (``-heldout``); every
  other row is a training row (``-train``);
- ``personalization_dev_ids.txt``: 40 training rows with verifiable requirements, drawn with
  seed 0, on which training settings are chosen (``-dev``); the remaining training rows
  (``-fit``) are what models are trained on while settings are being chosen. The held-out rows
  are evaluated once, for the chosen settings.
"""

from __future__ import annotations

from functools import lru_cache

from mipo_engine.resources import resource_dir

# name -> (file in data/, split or None for every row)
BUILTIN_SETS: dict[str, tuple[str, str | None]] = {
    "personalization": ("personalization.jsonl", None),
    "personalization-train": ("personalization.jsonl", "train"),
    "personalization-heldout": ("personalization.jsonl", "heldout"),
    "personalization-dev": ("personalization.jsonl", "dev"),
    "personalization-fit": ("personalization.jsonl", "fit"),
    "general": ("general.jsonl", None),
}


def _ids(file_name: str) -> frozenset[str]:
    path = resource_dir("data") / file_name
    text = path.read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.split("\n") if line.strip())


@lru_cache(maxsize=1)
def heldout_ids() -> frozenset[str]:
    return _ids("personalization_heldout_ids.txt")


@lru_cache(maxsize=1)
def dev_ids() -> frozenset[str]:
    return _ids("personalization_dev_ids.txt")


def in_split(row_id: str, split: str | None) -> bool:
    """Whether the row with ``row_id`` belongs to ``split`` (None: every row)."""
    if split is None:
        return True
    held = row_id in heldout_ids()
    if split == "heldout":
        return held
    if split == "train":
        return not held
    dev = row_id in dev_ids()
    if split == "dev":
        return dev and not held
    if split == "fit":
        return not held and not dev
    raise ValueError(f"unknown split {split!r}")
