"""Reading and writing artifacts: Parquet plus a JSON manifest, written atomically.

An artifact ``X.parquet`` is complete when ``X.parquet`` and ``X.manifest.json`` both exist;
the manifest is written last, so a crash at any point leaves either nothing visible or an
artifact without a manifest, which every stage treats as absent.

``path`` may also be an ``s3://`` or ``gs://`` URL (see ``artifacts.location``): each object
is one upload, visible only once complete, and the manifest is still written last.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from mipo_engine.artifacts import location
from mipo_engine.artifacts.schemas import ArtifactSchema, validate_frame
from mipo_engine.errors import InputError


def _beside(path: str | Path, suffix: str) -> Path:
    """``X.parquet`` -> ``X<suffix>`` in the same folder, or under the same URL prefix."""
    if location.is_url(path):
        return location.sibling(path, location.name(path).removesuffix(".parquet") + suffix)  # type: ignore[return-value]
    path = Path(path)
    return path.with_name(path.stem + suffix)


def manifest_path(path: str | Path) -> Path:
    return _beside(path, ".manifest.json")


def summary_path(path: str | Path) -> Path:
    """``<out>.summary.json`` beside a judgments or eval artifact."""
    return _beside(path, ".summary.json")


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A process killed mid-write leaves its temporary file behind (as large as the file):
    # whoever writes the same path next removes it. One writer per path is assumed.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: str | Path, payload: Any) -> None:
    text = json.dumps(payload, indent=2, default=str) + "\n"
    if location.is_url(path):
        location.write_bytes(str(path), text.encode("utf-8"))  # one upload: all or nothing
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_parquet_atomic(frame: pl.DataFrame, path: str | Path) -> None:
    # lz4: about twice as fast to write as zstd for text-heavy artifacts, a little larger.
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, compression="lz4")


def is_complete(path: str | Path) -> bool:
    """True when the artifact and its manifest both exist."""
    if location.is_url(path):
        return location.is_file(path) and location.is_file(manifest_path(path))
    path = Path(path)
    return path.is_file() and manifest_path(path).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    if location.is_url(path):
        return json.loads(location.read_bytes(str(manifest_path(path))))
    return json.loads(manifest_path(path).read_text(encoding="utf-8"))


def write_artifact(
    frame: pl.DataFrame,
    path: str | Path,
    schema: ArtifactSchema,
    manifest: dict[str, Any],
) -> Path:
    """Validate ``frame``, write it and then its manifest, both atomically."""
    if location.is_url(path):
        return _write_remote_artifact(frame, str(path), schema, manifest)
    path = Path(path)
    frame = validate_frame(frame, schema, file=path)
    manifest_file = manifest_path(path)
    if manifest_file.exists():
        manifest_file.unlink()  # the old manifest must not vouch for the new data
    write_parquet_atomic(frame, path)
    manifest = dict(manifest)
    manifest["output"] = {
        "path": str(path),
        "artifact": schema.name,
        "rows": frame.height,
        "sha256": file_sha256(path),
        "schema": {name: str(dtype) for name, dtype in frame.schema.items()},
    }
    write_json_atomic(manifest_file, manifest)
    return path


def _write_remote_artifact(
    frame: pl.DataFrame, url: str, schema: ArtifactSchema, manifest: dict[str, Any]
) -> Any:
    frame = validate_frame(frame, schema, file=url)
    manifest_url = str(manifest_path(url))
    location.remove(manifest_url)  # the old manifest must not vouch for the new data
    data = location.frame_bytes(frame)
    location.write_bytes(url, data)
    manifest = dict(manifest)
    manifest["output"] = {
        "path": url,
        "artifact": schema.name,
        "rows": frame.height,
        "sha256": hashlib.sha256(data).hexdigest(),
        "schema": {name: str(dtype) for name, dtype in frame.schema.items()},
    }
    payload = json.dumps(manifest, indent=2, default=str) + "\n"
    location.write_bytes(manifest_url, payload.encode("utf-8"))
    return url


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise InputError("file not found", file=path)


def parquet_columns(path: str | Path) -> dict[str, pl.DataType]:
    """Column names and types of a Parquet file, read without its rows.

    Raises InputError naming the file when it is missing or not readable Parquet.
    """
    if location.is_url(path):
        return dict(read_parquet(path).schema)
    path = Path(path)
    _check_exists(path)
    try:
        return dict(pl.read_parquet_schema(path))
    except Exception as error:  # polars raises several types for corrupt files
        raise InputError(f"not a readable Parquet file ({error})", file=path) from None


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pl.DataFrame:
    """A Parquet file's rows (only ``columns`` when given), unvalidated.

    Raises InputError naming the file when it is missing or not readable Parquet.
    """
    if location.is_url(path):
        return _read_remote(str(path), columns)
    path = Path(path)
    _check_exists(path)
    try:
        return pl.read_parquet(path, columns=columns)
    except Exception as error:  # polars raises several types for corrupt files
        raise InputError(f"not a readable Parquet file ({error})", file=path) from None


def _read_remote(url: str, columns: list[str] | None) -> pl.DataFrame:
    try:
        found = location.is_file(url)
    except Exception as error:  # drivers raise their own types for network and auth errors
        raise InputError(f"cannot reach the object store ({error})", file=url) from None
    if not found:
        raise InputError("file not found", file=url)
    try:
        return location.read_frame(url, columns)
    except Exception as error:  # polars raises several types for corrupt files
        raise InputError(f"not a readable Parquet file ({error})", file=url) from None


def read_artifact(path: str | Path, schema: ArtifactSchema) -> pl.DataFrame:
    """Read and validate a Parquet artifact; errors name the file, row and column."""
    file = path if location.is_url(path) else Path(path)
    return validate_frame(read_parquet(path), schema, file=file)
