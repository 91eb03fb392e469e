"""The dataset card writes ``mipo`` commands from the stage registry, never from ``cli.py``."""

from __future__ import annotations

from pathlib import Path

import typer.main

from cli import app
from mipo_engine.artifacts.lineage import Step
from mipo_engine.pipeline.stages import STAGE_KINDS
from mipo_engine.publish.card import stage_command


def _shape(command):
    return [
        (p.name, p.param_type_name, list(p.opts), list(p.secondary_opts), bool(p.is_flag))
        if p.param_type_name == "option"
        else (p.name, p.param_type_name, list(p.opts))
        for p in command.params
    ]


def test_every_registered_stage_has_the_cli_command_of_its_name():
    """Each stage's command, as the registry builds it, has the options ``mipo`` has."""
    commands = typer.main.get_command(app).commands
    for name, kind in STAGE_KINDS.items():
        assert _shape(kind.command()) == _shape(commands[name]), name


def test_stage_command_uses_arguments_flags_and_lists_unknown_settings():
    ingest = Step(
        Path("p.parquet"),
        {
            "stage": "ingest",
            "config": {"inputs": ["builtin:general", "/data/mine.jsonl"], "limit": 3},
            "output": {"path": "/runs/x/p.parquet"},
        },
    )
    line = stage_command(ingest, {"/runs/x/p.parquet": "p.parquet"})
    assert line == "mipo ingest builtin:general /data/mine.jsonl --limit 3 --out p.parquet"
    generate = Step(
        Path("g.parquet"),
        {
            "stage": "generate",
            "config": {"prompts": "p.parquet", "allow_failures": False, "not_an_option": 1},
            "output": {"path": "g.parquet"},
        },
    )
    assert stage_command(generate, {}) == (
        "mipo generate --prompts p.parquet --no-allow-failures --out g.parquet"
        "  # also recorded: not_an_option=1"
    )
