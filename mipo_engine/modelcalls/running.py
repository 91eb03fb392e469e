"""Running a model-calling stage: its backend, the chunked journaled loop, and the run tail."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from mipo_engine.artifacts.journal import RowJournal
from mipo_engine.artifacts.run import StageRun
from mipo_engine.artifacts.schemas import ArtifactSchema
from mipo_engine.backends.base import Backend
from mipo_engine.backends.registry import create_backend
from mipo_engine.errors import ConfigError

if TYPE_CHECKING:
    from mipo_engine.modelcalls.settings import ModelCallConfig

console = Console(stderr=True)

T = TypeVar("T")
S = TypeVar("S")
R = TypeVar("R")


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

    @property
    def shared(self) -> bool:
        """Whether the caller passed its own backend (it cannot travel to other processes)."""
        return self._given is not None

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


def split_chunks(todo: Sequence[T], chunk_size: int) -> list[list[T]]:
    """``todo`` in consecutive chunks of ``chunk_size`` (the last may be shorter)."""
    return [list(todo[start : start + chunk_size]) for start in range(0, len(todo), chunk_size)]


def _journal_all(
    finished: Iterable[tuple[list[T], pl.DataFrame | None]],
    journal: RowJournal,
    *,
    label: str,
    total: int,
    done: int,
    todo: int,
    show: Literal["bar", "lines"],
) -> int:
    """Append each finished chunk's rows to the journal as it arrives; count the chunks."""
    count = rows = 0
    if show == "lines":
        for chunk, frame in finished:
            if frame is not None:
                journal.append(frame)
            count, rows = count + 1, rows + len(chunk)
            console.print(f"{label} {rows} of {todo}")
        return count
    with progress_bar() as progress:
        task = progress.add_task(label, total=total, completed=done)
        for chunk, frame in finished:
            if frame is not None:
                journal.append(frame)
            count += 1
            progress.advance(task, len(chunk))
    return count


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
    finished = ((chunk, work(chunk)) for chunk in split_chunks(todo, chunk_size))
    _journal_all(finished, journal, label=label, total=total, done=done, todo=len(todo), show=show)


def check_engine(settings: ModelCallConfig, *, shared_backend: bool = False) -> None:
    """Fail early, before anything is written, when the engine settings cannot work:
    ``--engine ray`` without Ray installed, an unreachable ``--ray-address``, or a backend
    object passed by the caller (it lives in this process; Ray workers build their own).
    With ``--engine ray`` this connects to (or starts) the Ray instance the run will use."""
    if settings.engine == "local":
        return
    if shared_backend:
        raise ConfigError(
            "a backend object was passed to the stage; with engine ray every worker builds "
            "its own from the settings (leave the backend out, or use engine local)",
            key="engine",
        )
    from mipo_engine.modelcalls.ray_engine import connect

    connect(settings)


def run_model_chunks(
    todo: Sequence[T],
    work: Callable[[S, list[T]], R],
    journal: RowJournal,
    *,
    settings: ModelCallConfig,
    local: S,
    opener: Callable[[], AbstractContextManager[S]],
    record: Callable[[list[T], R], pl.DataFrame | None] | None = None,
    label: str,
    total: int,
    done: int,
    show: Literal["bar", "lines"] = "bar",
) -> int:
    """Run a model-calling stage's chunks on its engine; return how many chunks ran.

    ``work(model, chunk)`` computes one chunk where the model lives: in this process with
    ``local`` (``--engine local``), or on a Ray actor that entered ``opener()`` once
    (``--engine ray``; ``work`` and ``opener`` then travel to the actors, so they must not
    depend on this process's state). ``record(chunk, result)`` runs here on each result as
    it returns and gives the chunk's journal rows (default: the result itself). The journal
    stays in this process: a chunk is saved when its result arrives, so a rerun after a
    crash computes only the chunks not saved. Chunks are ``settings.chunk_size`` rows.
    """
    chunks = split_chunks(todo, settings.chunk_size)
    computed: Iterator[tuple[list[T], R]]
    if settings.engine == "ray" and chunks:
        from mipo_engine.modelcalls.ray_engine import map_chunks

        computed = map_chunks(settings, opener, work, chunks)
    else:
        computed = ((chunk, work(local, chunk)) for chunk in chunks)
    finished = (
        (chunk, record(chunk, result) if record is not None else result)
        for chunk, result in computed
    )
    return _journal_all(
        finished,  # type: ignore[arg-type]
        journal,
        label=label,
        total=total,
        done=done,
        todo=len(todo),
        show=show,
    )


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
