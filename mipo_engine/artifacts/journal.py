"""Per-row resume: finished rows are kept as Parquet parts until the stage completes.

A stage writes each finished batch as ``<out>.parts/part-NNNNNN.parquet`` (atomically). Rerun
after a crash, it reads the parts, skips the ids they hold, and at the end writes the whole
artifact in input order and removes the parts folder. The folder also records a fingerprint
of the stage's settings and inputs: parts from a run with other settings are discarded.

For an output URL (``s3://bucket/run/x.parquet``) the parts live under the same prefix,
``s3://bucket/run/x.parquet.parts/``: each part is one upload (visible only when complete),
so the same rules hold there, and a rerun from any machine that reaches the bucket resumes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
from rich.console import Console

from mipo_engine.artifacts import location
from mipo_engine.artifacts.store import write_json_atomic, write_parquet_atomic

_console = Console(stderr=True)


class RowJournal:
    """Finished rows of one stage run, keyed by an id column."""

    def __init__(self, output: str | Path, fingerprint: str, *, key: str = "id") -> None:
        self.remote = location.is_url(output)
        output = output if self.remote else Path(output)
        self.directory: Path | str = location.sibling(output, location.name(output) + ".parts")
        self.key = key
        self.fingerprint = fingerprint
        self._next_index = 0
        self._open_remote() if self.remote else self._open()

    def _open_remote(self) -> None:
        folder = str(self.directory)
        meta = f"{folder}/journal.json"
        if location.exists(folder):
            stored = None
            if location.is_file(meta):
                stored = json.loads(location.read_bytes(meta)).get("fingerprint")
            if stored != self.fingerprint:
                _console.print(
                    f"[yellow]Discarding partial results in {folder}: "
                    "they were made with different settings or inputs.[/]"
                )
                location.remove_tree(folder)
        if not location.is_file(meta):
            location.write_bytes(meta, json.dumps({"fingerprint": self.fingerprint}).encode())
        parts = self.parts()
        if parts:
            self._next_index = int(location.name(parts[-1]).split("-")[1].split(".")[0]) + 1

    def _open(self) -> None:
        assert isinstance(self.directory, Path)
        meta = self.directory / "journal.json"
        if self.directory.exists():
            stored = None
            if meta.is_file():
                stored = json.loads(meta.read_text(encoding="utf-8")).get("fingerprint")
            if stored != self.fingerprint:
                _console.print(
                    f"[yellow]Discarding partial results in {self.directory}: "
                    "they were made with different settings or inputs.[/]"
                )
                shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if not meta.is_file():
            write_json_atomic(meta, {"fingerprint": self.fingerprint})
        for leftover in self.directory.glob(".*.tmp"):
            leftover.unlink()  # a part killed mid-write never became visible
        parts = self.parts()
        if parts:
            self._next_index = int(parts[-1].stem.split("-")[1]) + 1

    def parts(self) -> list[Path] | list[str]:
        if self.remote:
            return location.list_names(str(self.directory), "part-*.parquet")
        return sorted(Path(self.directory).glob("part-*.parquet"))

    def _read(self, part: Path | str) -> pl.DataFrame:
        return location.read_frame(part) if isinstance(part, str) else pl.read_parquet(part)

    def load(self) -> pl.DataFrame | None:
        """All finished rows so far (first occurrence of each id), or None."""
        parts = self.parts()
        if not parts:
            return None
        frame = pl.concat([self._read(part) for part in parts], how="diagonal_relaxed")
        return frame.unique(subset=[self.key], keep="first", maintain_order=True)

    def done_ids(self) -> set[str]:
        frame = self.load()
        return set() if frame is None else set(frame[self.key].to_list())

    def append(self, rows: pl.DataFrame) -> None:
        if rows.height == 0:
            return
        part = location.child(self.directory, f"part-{self._next_index:06d}.parquet")
        if isinstance(part, str):
            location.write_bytes(part, location.frame_bytes(rows))
        else:
            write_parquet_atomic(rows, part)
        self._next_index += 1

    def finish(self) -> None:
        """Remove the parts once the complete artifact has been written."""
        if self.remote:
            location.remove_tree(str(self.directory))
        else:
            shutil.rmtree(self.directory, ignore_errors=True)
