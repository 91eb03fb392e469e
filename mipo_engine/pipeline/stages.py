"""The registry of stages a pipeline can run, and how their files connect.

Each entry names the stage's settings class and run function (imported lazily), the setting
that receives its output path, the kind of artifact it produces, and which settings take
earlier artifacts: the runner fills each from the latest earlier stage producing that kind.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StageKind:
    name: str
    config_ref: str  # "module:ClassName"
    run_ref: str  # "module:function"
    output_key: str  # the setting that receives the output path
    produces: str  # artifact kind
    wires: dict[str, tuple[str, ...]] = field(default_factory=dict)  # setting -> kinds
    optional: frozenset[str] = frozenset()  # wired settings that may stay empty
    directory_output: bool = False

    def config_class(self) -> Any:
        module, name = self.config_ref.split(":")
        return getattr(importlib.import_module(module), name)

    def run_function(self) -> Callable[..., Any]:
        module, name = self.run_ref.split(":")
        return getattr(importlib.import_module(module), name)

    def command(self) -> Any:
        """``mipo <name>`` as Click sees it (options and arguments, in the CLI's order).

        Built from the command function in ``mipo_engine.commands.<name>``, the one ``cli.py``
        registers, so the dataset card writes commands the CLI accepts without importing it.
        """
        import typer
        import typer.main

        function = importlib.import_module(f"mipo_engine.commands.{self.name}").command
        app = typer.Typer(add_completion=False)
        app.command(self.name)(function)
        return typer.main.get_command(app)


_S = "mipo_engine.stages"
STAGE_KINDS: dict[str, StageKind] = {
    kind.name: kind
    for kind in (
        StageKind(
            "ingest", f"{_S}.ingest:IngestConfig", f"{_S}.ingest:run_ingest", "out", "prompts"
        ),
        StageKind(
            "contexts",
            f"{_S}.contexts:ContextsConfig",
            f"{_S}.contexts:run_contexts",
            "out",
            "contexts",
        ),
        StageKind(
            "generate",
            f"{_S}.generate:GenerateConfig",
            f"{_S}.generate:run_generate",
            "out",
            "generations",
            {"prompts": ("prompts",)},
        ),
        StageKind(
            "revise",
            f"{_S}.revise:ReviseConfig",
            f"{_S}.revise:run_revise",
            "out",
            "revisions",
            {"generations": ("generations",), "prompts": ("prompts",)},
            optional=frozenset({"prompts"}),
        ),
        StageKind(
            "score",
            f"{_S}.score:ScoreConfig",
            f"{_S}.score:run_score",
            "out",
            "scores",
            {"generations": ("generations",)},
        ),
        StageKind(
            "rubrics",
            f"{_S}.rubrics:RubricsConfig",
            f"{_S}.rubrics:run_rubrics",
            "out",
            "rubrics",
            {"contexts": ("contexts", "prompts")},
        ),
        StageKind(
            "judge",
            f"{_S}.judge:JudgeConfig",
            f"{_S}.judge:run_judge",
            "out",
            "judgments",
            {"responses": ("generations",), "rubrics": ("rubrics",)},
            optional=frozenset({"rubrics"}),
        ),
        StageKind(
            "export",
            f"{_S}.export:ExportConfig",
            f"{_S}.export:run_export",
            "out",
            "preferences",
            {"generations": ("generations",), "scores": ("scores",), "judgments": ("judgments",)},
            optional=frozenset({"scores", "judgments"}),
        ),
        StageKind(
            "train",
            f"{_S}.train:TrainConfig",
            f"{_S}.train:run_train",
            "output_dir",
            "model",
            {"preferences": ("preferences", "generations", "revisions"), "scores": ("scores",)},
            optional=frozenset({"scores"}),
            directory_output=True,
        ),
        StageKind("eval", f"{_S}.eval:EvalConfig", f"{_S}.eval:run_eval", "out", "eval"),
        StageKind(
            "publish",
            "mipo_engine.publish.hub:PublishConfig",
            "mipo_engine.publish.hub:run_publish",
            "local_dir",
            "published",
            {"preferences": ("preferences",)},
            directory_output=True,
        ),
    )
}

# A train stage with an online ``method`` (grpo, rloo) samples for a prompts artifact instead.
ONLINE_TRAIN_WIRES: dict[str, tuple[str, ...]] = {"prompts": ("prompts",)}


def stage_wires(kind: StageKind, options: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Which settings of this stage take earlier artifacts, given its options."""
    if kind.name == "train" and options.get("method", "offline") != "offline":
        return ONLINE_TRAIN_WIRES
    return kind.wires


# Stages repeated by ``--rounds``: each round generates with the previous round's policy.
ROUND_STAGES = ("generate", "score", "export", "train")
