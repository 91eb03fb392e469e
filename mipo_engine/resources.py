"""Locate the project's bundled resource folders (prompts, rubrics, built-in data).

In a source checkout (or an editable install) they sit beside the package; a wheel carries
them inside the package under ``_resources/``. Both layouts resolve through ``resource_dir``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_RESOURCE_KINDS = ("prompts", "rubrics", "data")


def resource_dir(kind: str) -> Path:
    """Return the folder holding one kind of bundled resource."""
    if kind not in _RESOURCE_KINDS:
        raise ValueError(f"unknown resource kind {kind!r}; expected one of {_RESOURCE_KINDS}")
    for candidate in (_PACKAGE_DIR / "_resources" / kind, _PACKAGE_DIR.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bundled '{kind}' folder not found next to {_PACKAGE_DIR}")


def prompt_path(name: str) -> Path:
    """Path of a prompt template in ``prompts/`` (``name`` includes the extension)."""
    path = resource_dir("prompts") / name
    if not path.is_file():
        raise FileNotFoundError(f"prompt template {name!r} not found in {path.parent}")
    return path


def read_prompt(name: str) -> str:
    """Text of a prompt template in ``prompts/``."""
    return prompt_path(name).read_text(encoding="utf-8")
