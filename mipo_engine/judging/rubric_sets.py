"""Load rubric sets: the built-in ones in ``rubrics/`` or a user's YAML/JSON file.

A rubric follows the Prometheus absolute-grading layout that seed 004 (App. C.2) uses for its
judge: an ``id``, a ``criteria`` question and ``score1_description`` .. ``score5_description``.
Rubrics for verifiable items also carry ``checker``, the name of a constraint type in
``mipo_engine.judging.constraints.CONSTRAINT_TYPES``; other keys (``dimension``...) pass through.

A rubric file holds either a list of rubrics or a mapping with a ``rubrics`` list (plus
optional ``name`` and ``description``)::

    name: my-rubrics
    rubrics:
      - id: politeness
        criteria: Is the response polite?
        score1_description: ...
        ...
        score5_description: ...
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from mipo_engine.artifacts.schemas import RUBRIC_FIELDS, RUBRICS
from mipo_engine.artifacts.store import read_artifact
from mipo_engine.judging.constraints import CONSTRAINT_TYPES
from mipo_engine.resources import resource_dir

__all__ = ["builtin_rubric_sets", "load_rubric_set", "rubric_for_constraint"]

_REQUIRED_FIELDS = ("id", *RUBRIC_FIELDS)
_SUFFIXES = (".yaml", ".yml", ".json")


def builtin_rubric_sets() -> list[str]:
    """Names of the built-in rubric sets (the YAML files in ``rubrics/``)."""
    return sorted(path.stem for path in resource_dir("rubrics").glob("*.yaml"))


def _resolve(name_or_path: str | Path) -> Path:
    """A built-in set's file when given its name, else the given path, which must exist."""
    if isinstance(name_or_path, str) and name_or_path in builtin_rubric_sets():
        return resource_dir("rubrics") / f"{name_or_path}.yaml"
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(
            f"rubric set {str(name_or_path)!r} is neither a built-in set "
            f"({', '.join(builtin_rubric_sets())}) nor an existing file; give one of those "
            "names or a path to a .yaml/.yml/.json file"
        )
    if path.suffix.lower() not in _SUFFIXES:
        raise ValueError(f"{path}: rubric files must end in {', '.join(_SUFFIXES)}")
    return path


def _read_document(path: Path) -> object:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {error}") from None


def _rubric_list(document: object, path: Path) -> list[object]:
    """The list of rubrics from either file layout."""
    if isinstance(document, dict):
        if "rubrics" not in document:
            raise ValueError(f"{path}: a rubric file mapping needs a 'rubrics' list")
        document = document["rubrics"]
    if not isinstance(document, list):
        raise ValueError(
            f"{path}: expected a list of rubrics (or a mapping with a 'rubrics' list), "
            f"got {type(document).__name__}"
        )
    if not document:
        raise ValueError(f"{path}: the rubric set is empty")
    return document


def _validate_rubric(rubric: object, index: int, path: Path) -> dict[str, Any]:
    """Check one rubric's fields; errors name the file, the rubric index and the field."""
    where = f"{path}: rubrics[{index}]"
    if not isinstance(rubric, dict):
        raise ValueError(f"{where} must be a mapping, got {type(rubric).__name__}")
    for field in _REQUIRED_FIELDS:
        value = rubric.get(field)
        if value is None:
            raise ValueError(
                f"{where} is missing {field!r}; every rubric needs {', '.join(_REQUIRED_FIELDS)}"
            )
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where} field {field!r} must be a non-empty string, got {value!r}")
    checker = rubric.get("checker")
    if checker is not None and checker not in CONSTRAINT_TYPES:
        raise ValueError(
            f"{where} ({rubric['id']}) names checker {checker!r}, which is not a constraint "
            f"type; known types: {', '.join(CONSTRAINT_TYPES)}"
        )
    cleaned = dict(rubric)
    for field in _REQUIRED_FIELDS:
        cleaned[field] = rubric[field].strip()
    return cleaned


@lru_cache(maxsize=32)
def _load_validated(path: Path, modified_ns: int) -> tuple[dict[str, Any], ...]:
    # ``modified_ns`` is part of the cache key so an edited file is read again.
    rubrics = [
        _validate_rubric(rubric, index, path)
        for index, rubric in enumerate(_rubric_list(_read_document(path), path))
    ]
    seen: dict[str, int] = {}
    for index, rubric in enumerate(rubrics):
        if rubric["id"] in seen:
            raise ValueError(
                f"{path}: rubrics[{index}] repeats id {rubric['id']!r} "
                f"(first used by rubrics[{seen[rubric['id']]}]); ids must be unique"
            )
        seen[rubric["id"]] = index
    return tuple(rubrics)


def load_rubric_set(name_or_path: str | Path) -> list[dict[str, Any]]:
    """Rubrics of a built-in set (``"general"``, ``"personalization"``, ``"verifiable"``) or file.

    Every rubric is checked for ``id`` (unique within the set), ``criteria`` and all five
    score descriptions (non-empty strings), and a ``checker`` that names a known constraint
    type; a ValueError names the file, the rubric index and the field otherwise. Returns fresh
    copies, so callers may modify them.
    """
    path = _resolve(name_or_path)
    return copy.deepcopy(list(_load_validated(path.resolve(), path.stat().st_mtime_ns)))


def rubric_for_constraint(type_name: str) -> dict[str, Any]:
    """The built-in verifiable rubric whose ``checker`` is the constraint type ``type_name``."""
    if type_name not in CONSTRAINT_TYPES:
        raise ValueError(
            f"unknown constraint type {type_name!r}; known types: {', '.join(CONSTRAINT_TYPES)}"
        )
    for rubric in load_rubric_set("verifiable"):
        if rubric.get("checker") == type_name:
            return rubric
    raise ValueError(
        f"rubrics/verifiable.yaml has no rubric with checker {type_name!r}; add one so every "
        "constraint type can be judged"
    )


def load_rubrics(path: Path) -> dict[str, dict[str, Any]]:
    """Rubrics of a rubrics artifact keyed by item text (for ``mipo judge``)."""
    frame = read_artifact(path, RUBRICS)
    return {row["item"]: row for row in frame.iter_rows(named=True)}
