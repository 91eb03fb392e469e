"""Stage manifests: what was run, on what, with which settings (secrets removed)."""

from __future__ import annotations

import hashlib
import json
import platform
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mipo_engine import __version__
from mipo_engine.artifacts import location
from mipo_engine.artifacts.store import file_sha256

REDACTED = "<redacted>"
# Whole key words only: "hf_token" and "api_key" are secrets, "max_new_tokens" is not.
_SECRET_KEY = re.compile(
    r"(^|[_\-])(api[_\-]?key|key|token|access[_\-]?token|secret|password|passwd|"
    r"authorization|credentials?)$",
    re.I,
)
_SECRET_VALUE = re.compile(
    r"(sk-[A-Za-z0-9_\-]{16,}|hf_[A-Za-z0-9]{20,}|ghp_[A-Za-z0-9]{20,}|"
    r"AKIA[0-9A-Z]{16}|xox[bap]-[A-Za-z0-9-]{10,}|eyJ[A-Za-z0-9_\-]{20,}\.[A-Za-z0-9_\-]+)"
)


def looks_like_secret(text: str) -> bool:
    """True when a string contains something shaped like an API key or access token."""
    return bool(_SECRET_VALUE.search(text))


def redact(value: Any, key: str | None = None) -> Any:
    """Copy of ``value`` with secret-looking keys and values replaced by ``<redacted>``."""
    if key is not None and _SECRET_KEY.search(key) and value not in (None, "", False):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, value)
    if isinstance(value, Path):
        return str(value)
    return value


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def describe_inputs(paths: dict[str, str | Path | None]) -> list[dict[str, Any]]:
    """Role, path, size and content hash of each input file (folders: hash of their listing)."""
    described = []
    for role, path in paths.items():
        if path is None:
            continue
        entry: dict[str, Any] = {"role": role, "path": str(path)}
        if location.is_url(path):  # the process's copy, which the stage's reader reuses
            path = location.fetch(str(path))
        path = Path(path)
        if path.is_file():
            entry["sha256"] = file_sha256(path)
            entry["bytes"] = path.stat().st_size
        elif path.is_dir():
            digest = hashlib.sha256()
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                digest.update(str(child.relative_to(path)).encode())
                digest.update(file_sha256(child).encode())
            entry["sha256"] = digest.hexdigest()
        described.append(entry)
    return described


def fingerprint(config: dict[str, Any], inputs: list[dict[str, Any]]) -> str:
    """Stable hash of a stage's settings and input contents (decides what a rerun may reuse)."""
    payload = json.dumps(
        {"config": redact(config), "inputs": [(i["role"], i.get("sha256")) for i in inputs]},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def build_manifest(
    stage: str,
    config: dict[str, Any],
    inputs: list[dict[str, Any]],
    *,
    started_at: str,
    model: str | None = None,
    backend: str | None = None,
    seed: int | None = None,
    stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "stage": stage,
        "package_version": __version__,
        "config": redact(config),
        "fingerprint": fingerprint(config, inputs),
        "inputs": inputs,
        "model": model,
        "backend": backend,
        "seed": seed,
        "stats": redact(stats or {}),
        "python": platform.python_version(),
        "started_at": started_at,
        "finished_at": now_iso(),
    }
