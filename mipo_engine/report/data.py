"""The plain data ``mipo report`` draws its page from (filled by ``report.collect``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------
# The data the page is drawn from
# --------------------------------------------------------------------------------------------


@dataclass
class Artifact:
    """One finished stage output: its manifest, and the data file it describes (if any)."""

    stage: str
    manifest_file: Path
    manifest: dict[str, Any]
    data_file: Path | None

    @property
    def rows(self) -> int | None:
        rows = (self.manifest.get("output") or {}).get("rows")
        return int(rows) if isinstance(rows, (int, float)) else None

    @property
    def started_at(self) -> str:
        return str(self.manifest.get("started_at") or "")

    @property
    def seconds(self) -> float | None:
        """Wall time from the manifest's timestamps (the last run of a resumed stage)."""
        try:
            start = datetime.fromisoformat(self.manifest["started_at"])
            end = datetime.fromisoformat(self.manifest["finished_at"])
        except (KeyError, TypeError, ValueError):
            return None
        return max((end - start).total_seconds(), 0.0)

    @property
    def stats(self) -> dict[str, Any]:
        return self.manifest.get("stats") or {}


@dataclass
class StageRow:
    """One line of the pipeline table."""

    name: str
    stage: str
    status: str
    output: str
    rows_in: int | None = None
    rows_out: int | None = None
    seconds: float | None = None
    note: str = ""


@dataclass
class TrainingData:
    """A training folder: the logged steps and, once finished, its manifest."""

    folder: str
    records: list[dict[str, float]]
    manifest: dict[str, Any] | None

    @property
    def loss(self) -> dict[str, Any]:
        return (self.manifest or {}).get("loss") or {}

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """Steps and values of one metric (steps without it are skipped)."""
        points = [(int(r["step"]), r[key]) for r in self.records if key in r and "step" in r]
        return [p[0] for p in points], [p[1] for p in points]


@dataclass
class EvalRow:
    """One eval output of a task: its summary and paired differences to the first row."""

    label: str
    model: str
    adapter: str | None
    summary: dict[str, Any]
    difference: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalGroup:
    """The eval outputs of one task, the baseline (before training) first."""

    task: str
    kind: str
    rows: list[EvalRow]
    paired: bool
    """True when the differences were computed item by item (``compare_evals``)."""


@dataclass
class PairStats:
    """Numbers about the generated pairs: lengths, finish reasons, diversity, PMI."""

    pairs: int
    chosen_tokens: list[int]
    rejected_tokens: list[int]
    finish_reasons: dict[str, dict[str, int]]
    self_bleu: dict[str, float | None]
    distinct_2: dict[str, float | None]
    pmi: list[float] = field(default_factory=list)
    ref_margin: list[float] = field(default_factory=list)
    """Reference log-prob of chosen minus rejected, per scored pair."""


@dataclass
class RunData:
    """Everything the report shows about one run directory (one round)."""

    root: Path
    label: str
    pipeline: dict[str, Any] | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    stages: list[StageRow] = field(default_factory=list)
    header: dict[str, str] = field(default_factory=dict)
    export: dict[str, Any] | None = None
    training: TrainingData | None = None
    evals: list[EvalGroup] = field(default_factory=list)
    judging: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    pairs: PairStats | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    rounds: list[RunData] = field(default_factory=list)

    def first(self, stage: str) -> Artifact | None:
        """The first artifact of ``stage`` in pipeline order, or None."""
        return next((a for a in self.artifacts if a.stage == stage), None)

    @property
    def is_empty(self) -> bool:
        """True when nothing the report could show was found (this round and later ones)."""
        own = self.artifacts or self.training or self.pipeline or self.stages
        return not own and all(r.is_empty for r in self.rounds)
