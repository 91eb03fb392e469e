"""``mipo report``: a run directory -> one self-contained HTML page plus its figures as PNGs.

    collect (read the run into ``data``; ``pairs`` for the generated pairs)
      -> figures (matplotlib PNGs)
      -> html (``sections`` and ``formatting`` fill ``templates/report.html.j2``)

``write_report(run_dir, out_dir)`` writes ``out_dir/index.html`` (figures embedded as data
URIs, so the page can be mailed or attached alone) and each figure as ``out_dir/<name>.png``.
Every file is written atomically; the page is written last.
"""

from __future__ import annotations

from pathlib import Path

from mipo_engine.artifacts.manifest import now_iso
from mipo_engine.artifacts.store import atomic_path
from mipo_engine.errors import ConfigError, InputError
from mipo_engine.report.collect import collect_run
from mipo_engine.report.data import RunData
from mipo_engine.report.figures import Figure, run_figures
from mipo_engine.report.html import render_report

REPORT_FILE = "index.html"

__all__ = ["REPORT_FILE", "RunData", "collect_run", "render_report", "write_report"]


def _check_dirs(run_dir: Path, out_dir: Path) -> None:
    if not run_dir.exists():
        raise InputError("run directory not found", file=run_dir)
    if not run_dir.is_dir():
        raise InputError(
            "expected a run directory (the folder given to mipo run or the stages' --out)",
            file=run_dir,
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} exists and is not a folder", key="out")


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    path.chmod(0o644)  # the temporary file was private; a report is meant to be shared


def write_report(
    run_dir: str | Path, out_dir: str | Path, *, samples: int = 5, seed: int = 0
) -> Path:
    """Write the report of ``run_dir`` into ``out_dir``; return the path of the HTML page.

    ``samples`` pairs are shown side by side, drawn with ``seed``.

    Raises:
        InputError: ``run_dir`` is missing, not a folder, or holds nothing a stage wrote.
        ConfigError: ``out_dir`` is an existing file, or ``samples`` is negative.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if samples < 0:
        raise ConfigError(f"must be 0 or more, got {samples}", key="samples")
    _check_dirs(run_dir, out_dir)
    run = collect_run(run_dir, samples=samples, seed=seed)
    if run.is_empty:
        raise InputError(
            "no stage outputs found (no *.manifest.json, metrics.jsonl, state.json or "
            "pipeline.yaml); pass the folder given to mipo run or to the stages' --out",
            file=run_dir,
        )
    rounds: list[tuple[RunData, dict[str, Figure]]] = [(run, run_figures(run))]
    for later in run.rounds:  # labels are folder names like round-2: safe in file names
        rounds.append((later, run_figures(later, prefix=f"{later.label}_")))
    out_dir.mkdir(parents=True, exist_ok=True)
    for _, figures in rounds:
        for figure in figures.values():
            _write_bytes(out_dir / figure.name, figure.png)
    page = render_report(rounds, generated_at=now_iso())
    path = out_dir / REPORT_FILE
    _write_bytes(path, page.encode("utf-8"))
    return path
