"""Where an artifact lives: a local path, or an object-store URL (``s3://``, ``gs://``).

URLs are reached through fsspec (``s3fs`` for ``s3://``, ``gcsfs`` for ``gs://``; the
``[ray]`` extra carries both). Credentials and endpoints come from the environment only
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE``,
``GOOGLE_APPLICATION_CREDENTIALS`` ...); nothing here reads, stores or records them.

An object becomes visible only once its upload completes, so writing the data objects first
and the manifest object last keeps the "complete when the manifest exists" rule of local
artifacts. A run's journal parts live beside the output under the same prefix
(``<out>.parts/part-NNNNNN.parquet``), so a rerun on any machine that can read the bucket
resumes it.
"""

from __future__ import annotations

import functools
import io
import posixpath
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator

from mipo_engine.errors import ConfigError, InputError

V = TypeVar("V")

_URL = re.compile(r"^[a-z][a-z0-9+.\-]*://", re.I)
_FOLDED_URL = re.compile(r"^(s3|s3a|gs|gcs|az|abfs|abfss):/(?!/)", re.I)
"""A URL that went through ``pathlib`` (the CLI's path options) lost one slash."""


def is_url(value: object) -> bool:
    """True for an object-store (or any fsspec) URL, as opposed to a local path."""
    return isinstance(value, str) and bool(_URL.match(value))


def as_location(value: Any) -> Any:
    """A URL stays a string; anything else path-like becomes a ``Path``."""
    if isinstance(value, (str, Path)):
        text = str(value)
        if _FOLDED_URL.match(text):
            text = _FOLDED_URL.sub(lambda m: f"{m.group(1)}://", text)
        if is_url(text):
            return text
        return Path(value)
    return value


Location = Annotated[Path | str, BeforeValidator(as_location)]
"""A settings field that takes a local path or an ``s3://``/``gs://`` URL."""


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path inside it (no listing cache: parts
    written by this run must show up in the next listing)."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, use_listings_cache=False)
    except ImportError as error:
        raise ConfigError(
            f"reading {url} needs an fsspec driver ({error}); install the extra: "
            "pip install 'mipo-engine[ray]'"
        ) from None


def name(location: str | Path) -> str:
    return posixpath.basename(location) if is_url(location) else Path(location).name


def sibling(location: str | Path, new_name: str) -> str | Path:
    """The location named ``new_name`` in the same folder (or prefix)."""
    if is_url(location):
        return posixpath.join(posixpath.dirname(str(location)), new_name)
    return Path(location).with_name(new_name)


def child(folder: str | Path, child_name: str) -> str | Path:
    return (
        f"{str(folder).rstrip('/')}/{child_name}" if is_url(folder) else Path(folder) / child_name
    )


def exists(location: str | Path) -> bool:
    if not is_url(location):
        return Path(location).exists()
    fs, path = filesystem(str(location))
    return fs.exists(path)


def is_file(location: str | Path) -> bool:
    if not is_url(location):
        return Path(location).is_file()
    fs, path = filesystem(str(location))
    return fs.isfile(path)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def write_bytes(url: str, data: bytes) -> None:
    """One upload: the object is either absent or complete."""
    fs, path = filesystem(url)
    fs.pipe_file(path, data)


def remove(url: str) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm_file(path)


def remove_tree(url: str) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def list_names(folder: str, pattern: str) -> list[str]:
    """Sorted URLs of the objects in ``folder`` whose name matches the glob ``pattern``."""
    fs, path = filesystem(folder)
    protocol = folder.split("://", 1)[0]
    found = fs.glob(posixpath.join(path, pattern))
    return sorted(f"{protocol}://{item}" for item in found)


def frame_bytes(frame: Any) -> bytes:
    """A polars frame as Parquet bytes (lz4, like local artifacts)."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="lz4")
    return buffer.getvalue()


def read_frame(url: str, columns: list[str] | None = None) -> Any:
    import polars as pl

    fs, path = filesystem(url)
    with fs.open(path, "rb") as handle:
        return pl.read_parquet(handle, columns=columns)


_FETCHED: dict[str, tuple[tuple[str, ...], Path]] = {}
_VERSION_KEYS = ("size", "ETag", "etag", "md5Hash", "generation", "LastModified", "updated")


def fetch(url: str, *, key: str | None = None) -> Path:
    """A local copy of the object at ``url``, downloaded once per process for as long as the
    object is unchanged (same size and version tags), into a temporary folder removed when
    the process exits. Keeps the object's name, so readers that go by the suffix work.

    A missing object (or a prefix, not an object) is a ``ConfigError`` naming ``key``. The
    manifest hashes this copy, and ``local_copy`` hands it to readers, so a stage that does
    both downloads the object once.
    """
    fs, path = filesystem(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        info = {}
    if info.get("type") != "file":
        raise ConfigError(f"{url} does not exist", key=key)
    version = tuple(str(info.get(k)) for k in _VERSION_KEYS)
    cached = _FETCHED.get(url)
    if cached is not None and cached[0] == version and cached[1].is_file():
        return cached[1]
    copy = Path(tempfile.mkdtemp(prefix="object-", dir=_fetch_folder())) / name(url)
    fs.get_file(path, str(copy))
    _FETCHED[url] = (version, copy)
    return copy


@functools.cache
def _fetch_folder() -> Path:
    """The process's folder for fetched objects, made on first use and removed at exit."""
    import atexit
    import shutil

    folder = Path(tempfile.mkdtemp(prefix="mipo-fetch-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def check_writable(url: str, *, key: str) -> None:
    """A ``ConfigError`` naming ``key`` when the bucket of ``url`` is missing or unreachable."""
    fs, path = filesystem(url)
    bucket = path.split("/", 1)[0]
    try:
        found = fs.exists(bucket)
    except Exception as error:  # drivers raise their own types for network and auth errors
        raise ConfigError(f"cannot reach {url}: {error}", key=key) from None
    if not found:
        raise ConfigError(
            f"bucket {bucket!r} of {url} does not exist (or these credentials cannot see it)",
            key=key,
        )


@contextmanager
def local_copy(value: V, *, key: str) -> Iterator[V | Path]:
    """A local file for a reader that needs one: ``value`` itself unless it is a URL, else
    the process's copy of the object (``fetch``: downloaded once, even when the stage also
    hashed it for its manifest).

    A missing object is a ``ConfigError`` naming ``key``; a reader's ``InputError`` about the
    copy names the URL, not the temporary file.
    """
    if not is_url(value):
        yield value
        return
    url = str(value)
    copy = fetch(url, key=key)
    try:
        yield copy
    except InputError as error:
        if error.file != str(copy):
            raise
        raise InputError(error.reason, file=url, row=error.row, field=error.field) from None
