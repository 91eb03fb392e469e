"""What a written Hub folder holds: shared by the folder writer (``hub``) and the card."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class HubFolder:
    """A written Hub folder: its path, files per split and rows per split."""

    path: Path
    files: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
