"""``mipo publish``: the stage command, reporting the Hub URL or the folder written."""

from __future__ import annotations

from typing import Any

from mipo_engine.commands.shared import err_console
from mipo_engine.commands.stages import run_stage
from mipo_engine.pipeline.stages import STAGE_KINDS


def finish(result: Any) -> None:
    rows = ", ".join(f"{split}: {count}" for split, count in result.rows.items())
    if result.url is not None:
        err_console.print(f"[green]published[/] {result.url} ({rows})")
    else:
        err_console.print(f"[green]wrote[/] Hub folder: {result.folder} ({rows})")


def build() -> Any:
    kind = STAGE_KINDS["publish"]
    return kind.command(lambda settings: run_stage(kind, settings, finish))
