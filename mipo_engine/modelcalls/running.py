"""Running a model-calling stage: its backend, the chunked journaled loop, and the run tail."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from mipo_engine.artifacts.journal import RowJournal
from mipo_engine.artifacts.run import StageRun
from mipo_engine.artifacts.schemas import ArtifactSchema
from mipo_engine.backends.base import Backend
from mipo_engine.backends.registry import create_backend

console = Console(stderr=True)

T = TypeVar("T")


def progress_bar() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )


class BackendHandle:
    """The backend a run uses: the caller's, or one made from the settings on first use.

    Only a backend made here is closed when the run ends (``with BackendHandle(...)``), so a
    caller may share one backend across several stages.
    """

    def __init__(
        self,
        backend: str,
        model: str | None,
        options: dict[str, object],
        given: Backend | None = None,
    ) -> None:
        self._name, self._model, self._options = backend, model, options
        self._given = given
        self._made: Backend | None = None

    def get(self) -> Backend:
        if self._given is not None:
            return self._given
        if self._made is None:
            self._made = create_backend(self._name, self._model, **self._options)
        return self._made

    @property
    def opened(self) -> Backend | None:
        """The backend in use so far, if any (the caller's, or one made here)."""
        return self._given if self._given is not None else self._made

    def close(self) -> None:
        if self._made is not None:
            self._made.close()
            self._made = None

    def __enter__(self) -> BackendHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_chunks(
    todo: Sequence[T],
    work: Callable[[list[T]], pl.DataFrame | None],
    journal: RowJournal,
    *,
    chunk_size: int,
    label: str,
    total: int,
    done: int,
    show: Literal["bar", "lines"] = "bar",
) -> None:
    """Run ``work`` on ``todo`` chunk by chunk, appending each chunk's rows to the journal.

    A chunk's rows are saved as one journal part as soon as it finishes, so a killed run
    resumes at the first unfinished chunk; ``work`` returns None when a chunk has no row to
    keep. ``show``: a progress bar over ``total`` rows (``done`` already finished), or one
    line per chunk (``"<label> <n> of <todo>"``) for stages whose backend shows its own bar.
    """
    if show == "lines":
        for start in range(0, len(todo), chunk_size):
            chunk = list(todo[start : start + chunk_size])
            frame = work(chunk)
            if frame is not None:
                journal.append(frame)
            console.print(f"{label} {min(start + len(chunk), len(todo))} of {len(todo)}")
        return
    with progress_bar() as progress:
        task = progress.add_task(label, total=total, completed=done)
        for start in range(0, len(todo), chunk_size):
            chunk = list(todo[start : start + chunk_size])
            frame = work(chunk)
            if frame is not None:
                journal.append(frame)
            progress.advance(task, len(chunk))


def keep_order(frame: pl.DataFrame, key: str, order: Sequence[str]) -> pl.DataFrame:
    """Rows of ``frame`` whose ``key`` is in ``order``, sorted by their position there."""
    positions = {value: index for index, value in enumerate(order)}
    return (
        frame.filter(pl.col(key).is_in(list(positions)))
        .with_columns(pl.col(key).replace_strict(positions, return_dtype=pl.Int64).alias("_pos"))
        .sort("_pos")
        .drop("_pos")
    )


def unfinished(
    journal: RowJournal, planned: Sequence[T], what: str, *, key: Callable[[T], str]
) -> tuple[list[T], set[str]]:
    """The planned items the journal does not hold yet, and the ids it holds.

    On a resumed run it says so: ``Resuming: 3 of 8 <what>.`` (``what``: "pairs already
    generated", "items already done", ...).
    """
    done = journal.done_ids()
    todo = [item for item in planned if key(item) not in done]
    if done:
        console.print(f"Resuming: {len(done)} of {len(planned)} {what}.")
    return todo, done


def finished_rows(
    journal: RowJournal, empty: pl.DataFrame, order: Sequence[str], *, key: str = "id"
) -> pl.DataFrame:
    """Every row the journal holds, in input order (``order``: the keys as planned).

    Rows no longer planned (a smaller ``--limit``, say) are left out; ``empty`` stands in when
    the journal holds nothing.
    """
    loaded = journal.load()
    return keep_order(loaded if loaded is not None else empty, key, order)


def write_output(
    run: StageRun,
    journal: RowJournal,
    frame: pl.DataFrame,
    schema: ArtifactSchema,
    *,
    model: str | None,
    backend: str | None,
    seed: int | None = None,
    stats: dict[str, Any] | None = None,
) -> Path:
    """The run tail: write the artifact and its manifest, then drop the journal."""
    path = run.write(frame, schema, model=model, backend=backend, seed=seed, stats=stats)
    journal.finish()
    return path
