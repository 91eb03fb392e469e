"""``mipo publish``: a preferences artifact -> a Hugging Face Hub dataset repository.

The folder follows the layout ``Dataset.push_to_hub`` writes, so ``datasets.load_dataset``
reads it locally or from the Hub: ``data/{split}-{i:05d}-of-{n:05d}.parquet`` (a split is
cut into n shards when it is larger than ``max_shard_bytes``) and a ``README.md`` dataset
card whose YAML ``configs`` point at the files (``card.py``).

The upload uses ``huggingface_hub.HfApi`` with its own token lookup (the ``HF_TOKEN``
environment variable or the login cache). This module never reads, prints or stores the
token itself; it only asks whether one exists.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator
from rich.console import Console
from rich.markup import escape

from mipo_engine.artifacts.manifest import looks_like_secret, redact
from mipo_engine.artifacts.run import StageConfig
from mipo_engine.artifacts.store import atomic_path, is_complete, read_manifest
from mipo_engine.errors import BackendError, InputError
from mipo_engine.publish.folder import HubFolder

console = Console(stderr=True)

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$")
"""``owner/name`` as the Hub accepts it: letters, digits, ``-``, ``_`` and ``.``."""

DATA_DIR = "data"
CARD_FILE = "README.md"
DEFAULT_MAX_SHARD_MB = 500.0  # the default shard bound of Dataset.push_to_hub


class SecretInData(InputError):
    """A row holds something shaped like an API key or access token."""


class PublishConfig(StageConfig):
    """Settings of ``mipo publish``."""

    preferences: Path = Field(description="Preferences .parquet to publish (from mipo export).")
    repo_id: str = Field(description="Hub dataset repository, OWNER/NAME.")
    private: bool = Field(False, description="Create the repository as private.")
    local_dir: Path | None = Field(
        None, description="Write the Hub folder here instead of uploading it."
    )
    dry_run: bool = Field(
        False,
        description="Write the folder (to --local-dir, or <preferences>-hub/ beside the input) and do not upload.",
    )
    force: bool = Field(
        False, description="Upload even if a row contains text that looks like a secret."
    )
    license: str = Field(
        "other", min_length=1, description="License identifier for the dataset card (Hub list)."
    )
    pretty_name: str | None = Field(
        None, description="Display name in the card; default: the repo name."
    )
    max_shard_mb: float = Field(
        DEFAULT_MAX_SHARD_MB,
        gt=0,
        description="Cut each split into shards of at most this many MB.",
    )

    @field_validator("repo_id")
    @classmethod
    def _check_repo_id(cls, value: str) -> str:
        if not REPO_ID.match(value) or ".." in value or value.endswith((".", "-")):
            raise ValueError(
                f"{value!r} is not a Hub repo id; expected OWNER/NAME with letters, digits, "
                "'-', '_' or '.' (e.g. my-org/mipo-preferences)"
            )
        return value

    @property
    def uploads(self) -> bool:
        """True when the folder goes to the Hub (neither --dry-run nor --local-dir)."""
        return not self.dry_run and self.local_dir is None

    def folder(self) -> Path | None:
        """Where the folder is written to stay: --local-dir, or beside the input on a dry run."""
        if self.local_dir is not None:
            return self.local_dir
        if self.dry_run:
            return self.preferences.with_name(self.preferences.stem + "-hub")
        return None


# --------------------------------------------------------------------------------------------
# Rows -> per-split Arrow tables
# --------------------------------------------------------------------------------------------


def _plain_type(dtype: pa.DataType) -> pa.DataType:
    """Arrow type with large strings and lists narrowed, the types the Hub viewer expects."""
    if pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return pa.string()
    if pa.types.is_large_list(dtype) or pa.types.is_list(dtype):
        return pa.list_(_plain_type(dtype.value_type))
    if pa.types.is_struct(dtype):
        return pa.struct([pa.field(f.name, _plain_type(f.type)) for f in dtype])
    return dtype


def split_tables(frame: pl.DataFrame) -> dict[str, pa.Table]:
    """One Arrow table per split (in order of first appearance), without the split column.

    Both the Hub files and ``load_preferences`` on a preferences file go through this, so
    the two give the same rows and the same column types.
    """
    tables = {}
    for name in frame["split"].unique(maintain_order=True).to_list():
        table = frame.filter(pl.col("split") == name).drop("split").to_arrow()
        schema = pa.schema([pa.field(f.name, _plain_type(f.type)) for f in table.schema])
        tables[name] = table.cast(schema)
    return tables


def shard_count(table: pa.Table, max_shard_bytes: int) -> int:
    """Shards for a table: enough that each holds at most ``max_shard_bytes`` (in memory),
    and never an empty one (a reader cannot take a Parquet file with no rows as a shard)."""
    wanted = min(max(1, math.ceil(table.nbytes / max_shard_bytes)), max(1, table.num_rows))
    per_shard = max(1, math.ceil(table.num_rows / wanted))
    return max(1, math.ceil(table.num_rows / per_shard))


def shard_name(split: str, index: int, count: int) -> str:
    return f"{DATA_DIR}/{split}-{index:05d}-of-{count:05d}.parquet"


def write_shards(tables: dict[str, pa.Table], folder: Path, max_shard_bytes: int) -> HubFolder:
    """Write each split's table as ``data/{split}-{i:05d}-of-{n:05d}.parquet`` under folder."""
    written = HubFolder(folder)
    (folder / DATA_DIR).mkdir(parents=True, exist_ok=True)
    for split, table in tables.items():
        count = shard_count(table, max_shard_bytes)
        per_shard = math.ceil(table.num_rows / count)
        names = []
        for index in range(count):
            name = shard_name(split, index, count)
            pq.write_table(table.slice(index * per_shard, per_shard), folder / name)
            names.append(name)
        written.files[split] = names
        written.rows[split] = table.num_rows
    return written


# --------------------------------------------------------------------------------------------
# Safety checks
# --------------------------------------------------------------------------------------------


def _strings(value: Any) -> list[str]:
    """Every string inside a (possibly nested) cell value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in _strings(item)]
    return []


def find_secret(frame: pl.DataFrame) -> tuple[int, str] | None:
    """(1-based row, column) of the first cell holding a secret-looking string, or None."""
    for column in frame.columns:
        if frame[column].dtype in (pl.String(), pl.Categorical()) or isinstance(
            frame[column].dtype, (pl.List, pl.Struct)
        ):
            for row, value in enumerate(frame[column].to_list(), start=1):
                if any(looks_like_secret(text) for text in _strings(value)):
                    return row, column
    return None


def _check_folder_target(folder: Path) -> None:
    """Refuse to replace a folder that holds anything but a previous publish's files."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise InputError("exists and is not a folder", file=folder)
    foreign = [p.name for p in folder.iterdir() if p.name not in (DATA_DIR, CARD_FILE)]
    if foreign:
        raise InputError(
            f"folder holds other files ({', '.join(sorted(foreign)[:3])}); choose an empty or "
            "new --local-dir",
            file=folder,
        )


def _replace_folder(built: Path, target: Path) -> None:
    """Move a freshly built folder's contents onto ``target`` (old data files removed)."""
    target.mkdir(parents=True, exist_ok=True)
    old_data = target / DATA_DIR
    if old_data.exists():
        shutil.rmtree(old_data)
    os.replace(built / DATA_DIR, old_data)
    os.replace(built / CARD_FILE, target / CARD_FILE)


# --------------------------------------------------------------------------------------------
# Upload
# --------------------------------------------------------------------------------------------


def upload(folder: Path, repo_id: str, *, private: bool, commit_message: str) -> str:
    """Create the dataset repo if needed and upload ``folder`` in one commit; return its URL.

    Old ``data/`` files that the new folder does not have are deleted in the same commit, so
    a re-publish with fewer shards leaves no stale rows behind.
    """
    from huggingface_hub import HfApi, get_token

    if get_token() is None:
        raise BackendError(
            "no Hugging Face token found: set HF_TOKEN or run `hf auth login`, or pass "
            "--dry-run / --local-dir to only write the folder"
        )
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=str(folder),
            commit_message=commit_message,
            delete_patterns=[f"{DATA_DIR}/*.parquet"],
        )
    except Exception as error:  # the Hub client raises many types (HTTP, offline, auth)
        raise BackendError(f"upload to {repo_id} failed: {redact(str(error))}") from None
    return f"https://huggingface.co/datasets/{repo_id}"


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


@dataclass
class PublishResult:
    folder: Path | None  # the kept local folder (None after an upload from a temp folder)
    url: str | None  # the Hub URL when uploaded
    rows: dict[str, int]


def build_folder(config: PublishConfig, frame: pl.DataFrame, folder: Path) -> HubFolder:
    """Write the shards and the dataset card for ``frame`` into the empty ``folder``."""
    from mipo_engine.publish.card import dataset_card

    max_bytes = max(1, int(config.max_shard_mb * 1_000_000))
    written = write_shards(split_tables(frame), folder, max_bytes)
    card = dataset_card(
        preferences=config.preferences,
        repo_id=config.repo_id,
        license=config.license,
        pretty_name=config.pretty_name,
        hub_folder=written,
        frame=frame,
    )
    with atomic_path(folder / CARD_FILE) as tmp:
        tmp.write_text(card, encoding="utf-8")
    return written


def _read_exported(path: Path) -> pl.DataFrame:
    """The rows of a preferences artifact, refusing files that ``mipo export`` did not write."""
    from mipo_engine.artifacts.preferences import read_preferences

    if not is_complete(path):
        raise InputError(
            "no manifest beside this file: publish a preferences artifact written by mipo export",
            file=path,
        )
    if read_manifest(path).get("stage") != "export":
        raise InputError("not a preferences artifact (made by mipo export)", file=path)
    return read_preferences(path)


def _check_secrets(config: PublishConfig, frame: pl.DataFrame) -> None:
    """Refuse to upload secret-looking text (a warning only for a local folder or --force)."""
    found = find_secret(frame)
    if found is None:
        return
    row, column = found
    problem = SecretInData(
        "text looks like an API key or access token; remove it, or pass --force to publish anyway",
        file=config.preferences,
        row=row,
        field=column,
    )
    if config.uploads and not config.force:
        raise problem
    console.print(f"[yellow]warning:[/] {escape(str(problem))}", highlight=False)


def run_publish(config: PublishConfig) -> PublishResult:
    """Build the Hub folder for ``config.preferences``; upload it unless told not to.

    The folder is built in a temporary folder first: a failure leaves any earlier
    ``--local-dir`` folder as it was.
    """
    frame = _read_exported(config.preferences)
    _check_secrets(config, frame)
    target = config.folder()
    if target is not None:
        _check_folder_target(target)
        target.parent.mkdir(parents=True, exist_ok=True)
    scratch_parent = target.parent if target is not None else None
    with tempfile.TemporaryDirectory(prefix=".mipo-publish-", dir=scratch_parent) as scratch:
        built = build_folder(config, frame, Path(scratch))
        if target is not None:
            _replace_folder(Path(scratch), target)
            return PublishResult(target, None, built.rows)
        url = upload(
            Path(scratch),
            config.repo_id,
            private=config.private,
            commit_message=f"Upload {sum(built.rows.values())} preference pairs (mipo publish)",
        )
        return PublishResult(None, url, built.rows)
