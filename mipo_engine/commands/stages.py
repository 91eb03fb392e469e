"""The stage commands of ``mipo``, built from the stage registry and each stage's settings.

A stage's command is built when it is first used (``mipo <stage> ...`` or its ``--help``):
building reads the settings class, and ``mipo --help`` should not import every stage. The
registry entry gives its help line, so the list of commands needs nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from typer.core import TyperCommand

from mipo_engine.commands.shared import call_stage, done
from mipo_engine.pipeline.stages import STAGE_KINDS, StageKind


def run_stage(
    kind: StageKind, settings: dict[str, Any], finish: Callable[[Any], None] | None = None
) -> None:
    """Validate the settings, run the stage, report what it wrote (errors: message + exit code)."""

    def run() -> Any:
        config = kind.config_class().from_options(**settings)
        return kind.run_function()(config)

    result = call_stage(run)
    if finish is not None:
        finish(result)
    else:
        done(result, kind.noun or kind.produces)


def stage_command(name: str) -> Any:
    """``mipo <name>``: one option per setting of the stage, running the stage."""
    kind = STAGE_KINDS[name]
    return kind.command(lambda settings: run_stage(kind, settings))


class LazyCommand(TyperCommand):
    """A command known by name and help line; its parameters are built on first use."""

    def __init__(self, name: str, help: str, build: Callable[[], Any]) -> None:
        self._build = build
        self._built: Any = None
        super().__init__(name, help=help)

    def _command(self) -> Any:
        if self._built is None:
            self._built = self._build()
        return self._built

    # Click reads and writes these two; reads go to the built command, writes of the empty
    # values Click's constructor sets are ignored.
    @property  # type: ignore[override]
    def params(self) -> list[Any]:
        return self._command().params

    @params.setter
    def params(self, value: list[Any]) -> None:
        if value:
            raise AttributeError("the parameters of a lazy command come from its builder")

    @property  # type: ignore[override]
    def callback(self) -> Callable[..., Any] | None:
        return self._command().callback

    @callback.setter
    def callback(self, value: Callable[..., Any] | None) -> None:
        if value is not None:
            raise AttributeError("the callback of a lazy command comes from its builder")


def lazy_stage_command(name: str, build: Callable[[], Any] | None = None) -> LazyCommand:
    return LazyCommand(name, STAGE_KINDS[name].help, build or (lambda: stage_command(name)))
