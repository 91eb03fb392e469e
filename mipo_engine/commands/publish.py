"""``mipo publish``: options -> PublishConfig -> run_publish."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mipo_engine.commands.shared import call_stage, err_console


def command(
    preferences: Annotated[
        Path, typer.Option(help="Preferences .parquet to publish (from mipo export).")
    ],
    repo_id: Annotated[str, typer.Option(help="Hub dataset repository, OWNER/NAME.")],
    private: Annotated[bool, typer.Option(help="Create the repository as private.")] = False,
    local_dir: Annotated[
        Path | None,
        typer.Option(help="Write the Hub folder here instead of uploading it."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            help="Write the folder (to --local-dir, or <preferences>-hub/ beside the input) "
            "and do not upload."
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(help="Upload even if a row contains text that looks like a secret."),
    ] = False,
    license: Annotated[
        str, typer.Option(help="License identifier for the dataset card (Hub list).")
    ] = "other",
    pretty_name: Annotated[
        str | None, typer.Option(help="Display name in the card; default: the repo name.")
    ] = None,
    max_shard_mb: Annotated[
        float, typer.Option(help="Cut each split into shards of at most this many MB.")
    ] = 500.0,
) -> None:
    """Publish a preference set as a Hugging Face Hub dataset (token: HF_TOKEN or login)."""
    from mipo_engine.publish.hub import PublishConfig, PublishResult, run_publish

    def run() -> PublishResult:
        config = PublishConfig.from_options(
            preferences=preferences,
            repo_id=repo_id,
            private=private,
            local_dir=local_dir,
            dry_run=dry_run,
            force=force,
            license=license,
            pretty_name=pretty_name,
            max_shard_mb=max_shard_mb,
        )
        return run_publish(config)

    result = call_stage(run)
    rows = ", ".join(f"{split}: {count}" for split, count in result.rows.items())
    if result.url is not None:
        err_console.print(f"[green]published[/] {result.url} ({rows})")
    else:
        err_console.print(f"[green]wrote[/] Hub folder: {result.folder} ({rows})")
