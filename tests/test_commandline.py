"""Commands built from settings classes (``mipo_engine.commandline``).

A small settings class stands in for a stage's: its fields must become options with the names,
defaults, flags and help the builder promises, and the command must hand the parsed values to
the settings class, whose errors name the option and exit with code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import pytest
import typer.main
from click.testing import CliRunner
from pydantic import Field

from mipo_engine.artifacts.config import StageConfig
from mipo_engine.commandline import Cli, build_command, option_specs
from mipo_engine.commands.shared import call_stage
from mipo_engine.pipeline.stages import STAGE_KINDS

runner = CliRunner()


class BaseSettings(StageConfig):
    """Stands in for the model-call settings base: its fields are inherited options."""

    workers: int = Field(1, ge=1, description="Parallel workers.")
    engine: Literal["local", "ray"] = Field("local", description="Where calls run.")


class ToySettings(BaseSettings):
    source: Path = Field(description="Input file.")
    out: Annotated[Path, Cli("--out", "-o")] = Field(description="Output file.")
    mode: Literal["fast", "slow"] = Field("fast", description="fast or slow.")
    limit: int | None = Field(None, ge=1, description="Only the first N rows.")
    keep: bool = Field(True, description="Keep the rows.")
    strict: bool | None = Field(None, description="Strict checks; default: by mode.")
    drop_empty: Annotated[bool, Cli("--drop-empty/--keep-empty")] = Field(
        True, description="Drop empty rows."
    )
    columns: Annotated[list[str] | None, Cli(comma=True)] = Field(
        None, description="Comma-separated columns."
    )
    tags: list[str] | None = Field(None, description="A tag (repeat).")
    format: Annotated[str, Cli("--format", param="file_format")] = Field(
        "auto", description="File format."
    )
    internal: Annotated[float, Cli(hidden=True)] = 0.5

    option_help: ClassVar[dict[str, str]] = {"workers": "Parallel workers of this toy stage."}


def _command(received: list[Any]) -> Any:
    def action(settings: dict[str, Any]) -> None:
        received.append(call_stage(lambda: ToySettings.from_options(**settings)))

    return build_command("toy", "A toy stage.", ToySettings, action)


def _params(command: Any) -> dict[str, Any]:
    return {param.name: param for param in command.params}


def test_every_field_but_hidden_ones_is_an_option_with_its_help_and_default() -> None:
    params = _params(_command([]))
    assert set(params) == {
        "source",
        "out",
        "mode",
        "limit",
        "keep",
        "strict",
        "drop_empty",
        "columns",
        "tags",
        "file_format",
        "workers",
        "engine",
    }
    # The class's own fields first (inputs and output lead), then the inherited ones.
    assert list(params)[:2] == ["source", "out"] and list(params)[-2:] == ["workers", "engine"]
    assert params["out"].opts == ["--out", "-o"] and params["out"].required
    assert params["source"].required and params["source"].help == "Input file."
    assert params["mode"].default == "fast" and not params["mode"].required
    assert params["limit"].default is None and params["limit"].opts == ["--limit"]
    assert params["keep"].is_flag and params["keep"].secondary_opts == ["--no-keep"]
    assert params["strict"].is_flag and params["strict"].default is None
    assert params["strict"].secondary_opts == ["--no-strict"]
    assert params["drop_empty"].opts == ["--drop-empty"]
    assert params["drop_empty"].secondary_opts == ["--keep-empty"]
    assert params["file_format"].opts == ["--format"]
    assert params["tags"].multiple
    assert params["workers"].help == "Parallel workers of this toy stage."
    assert params["engine"].help == "Where calls run." and params["engine"].default == "local"


def test_the_command_hands_typed_values_to_the_settings(tmp_path: Path) -> None:
    received: list[Any] = []
    command = _command(received)
    args = ["--source", "in.jsonl", "-o", str(tmp_path / "o.parquet"), "--limit", "3"]
    args += ["--no-keep", "--keep-empty", "--columns", "a, b,,c", "--tags", "x", "--tags", "y"]
    args += ["--format", "csv", "--engine", "ray", "--workers", "4", "--strict"]
    result = runner.invoke(command, args)
    assert result.exit_code == 0, result.output
    (settings,) = received
    assert settings.source == Path("in.jsonl") and settings.out == tmp_path / "o.parquet"
    assert settings.limit == 3 and settings.keep is False and settings.drop_empty is False
    assert settings.strict is True and settings.columns == ["a", "b", "c"]
    assert settings.tags == ["x", "y"] and settings.format == "csv"
    assert settings.engine == "ray" and settings.workers == 4 and settings.internal == 0.5


def test_defaults_reach_the_settings_unchanged(tmp_path: Path) -> None:
    received: list[Any] = []
    result = runner.invoke(_command(received), ["--source", "a", "--out", "b"])
    assert result.exit_code == 0, result.output
    (settings,) = received
    assert settings.mode == "fast" and settings.limit is None and settings.strict is None
    assert settings.columns is None and settings.tags is None and settings.keep is True


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--mode", "medium"], "config key 'mode'"),
        (["--engine", "spark"], "config key 'engine'"),
        (["--limit", "0"], "config key 'limit'"),
    ],
)
def test_a_value_outside_the_choices_exits_2_naming_the_option(args: list[str], named: str) -> None:
    received: list[Any] = []
    result = runner.invoke(_command(received), ["--source", "a", "--out", "b", *args])
    assert result.exit_code == 2, result.output
    assert named in " ".join(result.output.split())
    assert not received


def test_a_missing_required_option_is_a_usage_error() -> None:
    result = runner.invoke(_command([]), ["--out", "b"])
    assert result.exit_code == 2
    assert "--source" in result.output


def test_a_type_without_a_command_line_form_is_refused() -> None:
    class Odd(StageConfig):
        table: dict[str, float] = Field(default_factory=dict)

    with pytest.raises(TypeError, match="'table'"):
        option_specs(Odd)


def test_every_setting_of_every_stage_is_an_option_of_its_command() -> None:
    """A field added to a settings class (or to a base it inherits) is an option with no
    code in ``commands/``; only fields marked hidden are left out."""
    from cli import app

    root = typer.main.get_command(app)
    for name, kind in STAGE_KINDS.items():
        config = kind.config_class()
        expected = {spec.param for spec in option_specs(config)}
        shown = {
            field
            for field, info in config.model_fields.items()
            if not any(isinstance(item, Cli) and item.hidden for item in info.metadata)
        }
        assert len(expected) == len(shown), name
        command = root.commands[name]  # type: ignore[attr-defined]
        assert expected <= {param.name for param in command.params}, name
