"""``mipo models``: the model catalogue (name, size, quantization as shipped, license, cache)."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def command(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per model.")] = False,
) -> None:
    """List the models that install from PyPI and whether each is converted in the cache."""
    from rich.console import Console
    from rich.table import Table

    from mipo_engine.models import cache_dir, catalog_rows

    rows = catalog_rows()
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table(title=f"Model catalogue (cache: {cache_dir()})")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    Console().print(table)
    typer.echo(
        "Use a name with --model; also accepted: a .gguf file (converted once, cached by "
        "content hash), a model folder or a Hub id."
    )
