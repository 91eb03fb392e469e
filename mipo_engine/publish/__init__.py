"""Publishing preference sets to the Hugging Face Hub, and loading them back.

``mipo publish`` lives in ``hub.py`` (folder layout, upload) and ``card.py`` (dataset card).
``load_preferences`` reads a set from any of the places it can be: a preferences artifact,
a published folder, or a Hub repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mipo_engine.errors import InputError

if TYPE_CHECKING:
    from datasets import DatasetDict

__all__ = ["load_preferences"]


def load_preferences(path_or_repo: str | Path) -> DatasetDict:
    """The rows of a preference set as a ``datasets.DatasetDict`` with one entry per split.

    ``path_or_repo`` is one of:

    - a preferences ``.parquet`` artifact (from ``mipo export``): split by its ``split``
      column, which is dropped;
    - a folder written by ``mipo publish --local-dir`` (read with ``datasets.load_dataset``);
    - a Hub dataset repo id ``OWNER/NAME`` that is not a local path.

    All three give the same rows, columns and column types for the same set.
    """
    import datasets

    from mipo_engine.artifacts.preferences import read_preferences
    from mipo_engine.publish.hub import REPO_ID, split_tables

    path = Path(path_or_repo)
    if path.is_dir():
        # Rebuilt from the folder's files every time: ``datasets`` keys its cache of a local
        # folder by the folder's name and its files' metadata, and a folder rewritten by a
        # later ``mipo publish`` can hit the cache of the earlier one and read stale rows.
        return datasets.load_dataset(str(path), download_mode="force_redownload")
    if path.is_file():
        tables = split_tables(read_preferences(path))
        return datasets.DatasetDict(
            {split: datasets.Dataset(table) for split, table in tables.items()}
        )
    if REPO_ID.match(str(path_or_repo)):
        return datasets.load_dataset(str(path_or_repo))
    raise InputError(
        "not found: expected a preferences .parquet file, a folder written by mipo publish, "
        "or a Hub repo id OWNER/NAME",
        file=path,
    )
