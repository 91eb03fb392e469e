"""Lineage: which artifacts an artifact was made from, read from the manifests.

Every manifest lists its stage's inputs with the paths the stage was given. Those paths are
as the user typed them: relative to the folder the command ran in, or absolute on the machine
that ran it. ``recorded_places`` and ``locate_input`` turn such a recorded path back into a
file here; ``names_file`` says whether a recorded path names a given file; ``manifest_chain``
walks from an artifact to everything upstream of it. The dataset card (``publish``) and the
run report (``report``) both read lineage through these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mipo_engine.artifacts.store import is_complete, read_manifest


def recorded_places(recorded: str | Path, folder: Path) -> list[Path]:
    """Where a recorded path may point: as recorded (absolute, or relative to the current
    folder), then relative to ``folder``; resolved, unresolvable ones left out."""
    places = []
    for place in (Path(recorded), folder / Path(recorded)):
        try:
            places.append(place.resolve())
        except OSError:
            continue
    return places


def locate_input(recorded: str | Path, folder: Path) -> Path | None:
    """The complete artifact a recorded input path names, or None.

    Tried in order: the path as recorded, the path relative to ``folder`` (where the manifest
    that records it lies), and a file of the same name in ``folder`` (a run folder that was
    moved or copied keeps its artifacts side by side).
    """
    recorded = Path(recorded)
    for candidate in (recorded, folder / recorded, folder / recorded.name):
        if is_complete(candidate):
            return candidate
    return None


def names_file(recorded: Any, candidate: Path | None, folder: Path) -> bool:
    """A path recorded in a manifest (or ``state.json``) names ``candidate``.

    True when the recorded path, read as in ``recorded_places``, is ``candidate``; or, for a
    path recorded on another machine or from another folder, when the file names are equal
    and so are the parent folders' names (or the recorded path has no parent, or
    ``candidate`` lies directly in ``folder``).
    """
    if not recorded or candidate is None:
        return False
    recorded = Path(str(recorded))
    if any(place == candidate.resolve() for place in recorded_places(recorded, folder)):
        return True
    if recorded.name != candidate.name:
        return False
    parent = recorded.parent.name
    return not parent or parent == candidate.parent.name or candidate.parent == folder


@dataclass(frozen=True)
class Step:
    """One artifact in a chain: where it is and the manifest that made it."""

    path: Path
    manifest: dict[str, Any]

    @property
    def stage(self) -> str:
        return str(self.manifest.get("stage", "unknown"))

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.manifest.get("config") or {})


def manifest_chain(path: Path) -> list[Step]:
    """The artifact at ``path`` and every artifact upstream of it, inputs first.

    Inputs without a manifest (a user's JSONL file, a missing artifact) end the walk there.
    """
    ordered: list[Step] = []
    seen: set[Path] = set()

    def visit(current: Path) -> None:
        key = current.resolve()
        if key in seen:
            return
        seen.add(key)
        manifest = read_manifest(current)
        for entry in manifest.get("inputs", []):
            upstream = locate_input(str(entry.get("path", "")), current.parent)
            if upstream is not None:
                visit(upstream)
        ordered.append(Step(current, manifest))

    visit(path)
    return ordered


def find_step(chain: list[Step], stage: str) -> Step | None:
    """The last step of ``chain`` made by ``stage`` (the one closest to the output)."""
    return next((step for step in reversed(chain) if step.stage == stage), None)
