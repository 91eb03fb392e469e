"""The stage run kernel every stage shares: settings validation, seeds, input description,
the row journal and output writing (artifact plus manifest)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mipo_engine import __version__
from mipo_engine.artifacts import location
from mipo_engine.artifacts.config import StageConfig  # noqa: F401
from mipo_engine.artifacts.journal import RowJournal
from mipo_engine.artifacts.manifest import (
    build_manifest,
    describe_inputs,
    fingerprint,
    now_iso,
    redact,
)
from mipo_engine.artifacts.schemas import ArtifactSchema
from mipo_engine.artifacts.store import (
    is_complete,
    read_manifest,
    write_artifact,
    write_json_atomic,
)
from mipo_engine.errors import ConfigError, InputError


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed from the global seed and a row key: stable across runs and machines."""
    text = ":".join([str(seed), *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def check_output_path(output: Path | str, *inputs: Path | str | None) -> Path:
    if location.is_url(output):
        url = str(output)
        if not url.endswith(".parquet"):
            raise ConfigError(f"output must be a .parquet file, got {url}", key="out")
        if url in {str(path) for path in inputs if path is not None}:
            raise ConfigError(f"output {url} would overwrite an input", key="out")
        location.check_writable(url, key="out")
        return url  # type: ignore[return-value]
    output = Path(output)
    if output.suffix != ".parquet":
        raise ConfigError(f"output must be a .parquet file, got {output}", key="out")
    for path in inputs:
        if (
            path is not None
            and not location.is_url(path)
            and Path(path).resolve() == output.resolve()
        ):
            raise ConfigError(f"output {output} would overwrite an input", key="out")
    return output


@dataclass
class StageRun:
    """One execution of a stage: its settings, inputs, journal and manifest."""

    stage: str
    output: Path
    config: dict[str, Any]
    inputs: dict[str, Path | None]
    started_at: str = field(default_factory=now_iso)

    def __post_init__(self) -> None:
        self.output = location.as_location(self.output)
        self.input_info = describe_inputs(self.inputs)
        self.fingerprint = fingerprint(self.config, self.input_info)

    def up_to_date(self) -> bool:
        """True when the output exists, is complete, and was made from these settings."""
        if not is_complete(self.output):
            return False
        return read_manifest(self.output).get("fingerprint") == self.fingerprint

    def journal(self, key: str = "id", *, reuse_output: bool = False) -> RowJournal:
        """The run's row journal. ``reuse_output``: when no parts exist yet but the output
        is complete and made with these settings and inputs, its rows count as done, so a
        rerun (after ``--allow-failures``, say) works only on the rows it lacks."""
        journal = RowJournal(self.output, self.fingerprint, key=key)
        if reuse_output and not journal.parts() and self.up_to_date():
            journal.append(pl.read_parquet(self.output))
        return journal

    def write(
        self,
        frame: Any,
        schema: ArtifactSchema,
        *,
        model: str | None = None,
        backend: str | None = None,
        seed: int | None = None,
        stats: dict[str, Any] | None = None,
    ) -> Path:
        manifest = build_manifest(
            self.stage,
            self.config,
            self.input_info,
            started_at=self.started_at,
            model=model,
            backend=backend,
            seed=seed,
            stats=stats,
        )
        return write_artifact(frame, self.output, schema, manifest)

    def write_folder_manifest(
        self,
        path: Path,
        *,
        settings: dict[str, Any],
        model: str | None,
        stats: dict[str, Any],
        **fields: Any,
    ) -> Path:
        """The manifest of a stage whose output is a folder (``mipo train``), written last
        and atomically: its presence marks the run complete. ``settings`` is the whole
        configuration recorded (the fingerprint covers ``self.config`` only); ``fields`` are
        the stage's own entries."""
        manifest = {
            "stage": self.stage,
            "package_version": __version__,
            "config": redact(settings),
            "fingerprint": self.fingerprint,
            "inputs": self.input_info,
            "model": model,
            **fields,
            "stats": redact(stats),
            "started_at": self.started_at,
            "finished_at": now_iso(),
        }
        write_json_atomic(path, manifest)
        return path


def require_columns_non_empty(frame: Any, columns: list[str], file: Path) -> None:
    """Reject empty or whitespace-only text in required text columns."""
    for column in columns:
        blank = frame[column].str.strip_chars().str.len_chars() == 0
        if blank.any():
            row = int(blank.arg_true()[0]) + 1
            raise InputError("text is empty or whitespace", file=file, row=row, field=column)
