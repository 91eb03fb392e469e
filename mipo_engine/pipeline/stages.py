"""The registry of stages: the ``mipo`` commands, what a pipeline can run, how files connect.

Each entry names the stage's settings class and run function (imported lazily), the setting
that receives its output path, the kind of artifact it produces, and which settings take
earlier artifacts: the runner fills each from the latest earlier stage producing that kind.
It also holds the command's help line and the noun of its "wrote" message: the CLI builds each
stage's command from the settings class (``commandline``), ``mipo run`` runs the same stages,
and the dataset card renders the commands that made a set, all from this one table.
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
    help: str = ""  # the command's help text
    noun: str = ""  # what ``mipo <name>`` reports it wrote; default: ``produces``
    extra_ref: str | None = None  # "module:ClassName": the command's options beyond the stage's
    cli_optional: frozenset[str] = frozenset()  # required settings the command checks itself

    def config_class(self) -> Any:
        module, name = self.config_ref.split(":")
        return getattr(importlib.import_module(module), name)

    def run_function(self) -> Callable[..., Any]:
        module, name = self.run_ref.split(":")
        return getattr(importlib.import_module(module), name)

    def command(self, action: Callable[..., Any] | None = None) -> Any:
        """``mipo <name>`` as Click sees it (options and arguments, in the CLI's order).

        Built from the settings class as ``cli.py`` builds it, so the dataset card writes
        commands the CLI accepts without importing it. ``action(settings, **extras)`` runs when
        the command is invoked; without one the command only describes its parameters.
        """
        from mipo_engine.commandline import build_command

        extra = None
        if self.extra_ref is not None:
            module, name = self.extra_ref.split(":")
            extra = getattr(importlib.import_module(module), name)
        return build_command(
            self.name,
            self.help,
            self.config_class(),
            action or _describe_only,
            extra=extra,
            optional=self.cli_optional,
        )


def _describe_only(settings: dict[str, Any], **extras: Any) -> None:
    raise RuntimeError("this command describes the stage's options; the CLI runs it")


_S = "mipo_engine.stages"
STAGE_KINDS: dict[str, StageKind] = {
    kind.name: kind
    for kind in (
        StageKind(
            "ingest",
            f"{_S}.ingest:IngestConfig",
            f"{_S}.ingest:run_ingest",
            "out",
            "prompts",
            help="Normalise prompt files and built-in sets into a prompts artifact.",
        ),
        StageKind(
            "contexts",
            f"{_S}.contexts:ContextsConfig",
            f"{_S}.contexts:run_contexts",
            "out",
            "contexts",
            help="Infer user contexts from users' choices, or rewrite system messages (seed 004 App. C.2).",
        ),
        StageKind(
            "generate",
            f"{_S}.generate:GenerateConfig",
            f"{_S}.generate:run_generate",
            "out",
            "generations",
            {"prompts": ("prompts",)},
            help="Generate chosen/rejected response pairs (MIPO, seed 004 Algorithm 1).",
        ),
        StageKind(
            "revise",
            f"{_S}.revise:ReviseConfig",
            f"{_S}.revise:run_revise",
            "out",
            "revisions",
            {"generations": ("generations",), "prompts": ("prompts",)},
            optional=frozenset({"prompts"}),
            help="Revise each pair's chosen response with the model itself (SFT (Revision), seed 004 "
            "sec. 5.1); train on the result with mipo train --loss sft.",
            noun="revised generations",
        ),
        StageKind(
            "score",
            f"{_S}.score:ScoreConfig",
            f"{_S}.score:run_score",
            "out",
            "scores",
            {"generations": ("generations",)},
            help="Reference log-probs of chosen/rejected under the training prompt, and pointwise MI.",
        ),
        StageKind(
            "rubrics",
            f"{_S}.rubrics:RubricsConfig",
            f"{_S}.rubrics:run_rubrics",
            "out",
            "rubrics",
            {"contexts": ("contexts", "prompts")},
            help="Write a 1-5 scoring rubric for every preference item (verifiable items: built-in).",
        ),
        StageKind(
            "judge",
            f"{_S}.judge:JudgeConfig",
            f"{_S}.judge:run_judge",
            "out",
            "judgments",
            {"responses": ("generations",), "rubrics": ("rubrics",)},
            optional=frozenset({"rubrics"}),
            help="Score responses 1-5 per rubric item; aggregate, win rate, critic accuracy (seed 004).",
        ),
        StageKind(
            "export",
            f"{_S}.export:ExportConfig",
            f"{_S}.export:run_export",
            "out",
            "preferences",
            {"generations": ("generations",), "scores": ("scores",), "judgments": ("judgments",)},
            optional=frozenset({"scores", "judgments"}),
            help="Filter and split generations into TRL/OpenRLHF preference data.",
        ),
        StageKind(
            "train",
            "mipo_engine.training.config:TrainConfig",
            f"{_S}.train:run_train",
            "output_dir",
            "model",
            {"preferences": ("preferences", "generations", "revisions"), "scores": ("scores",)},
            optional=frozenset({"scores"}),
            directory_output=True,
            help="Train with DPO, MIO, InfoPO, SimPO, MI-DPO, InfoNCE, SFT or DPO-PG, or online with "
            "GRPO/RLOO and a reward (MI, RLAIF judge, both, or verifiable answers).\n\n"
            "A transformers Trainer underneath, so it also runs under accelerate launch or "
            "torchrun.",
            noun="trained model",
        ),
        StageKind(
            "eval",
            f"{_S}.eval:EvalConfig",
            f"{_S}.eval:run_eval",
            "out",
            "eval",
            help="Evaluate a model: math and MCQ accuracy, answer entropy, IFEval, personalization.",
            noun="eval results",
            extra_ref=f"{_S}.eval:CompareOptions",
            cli_optional=frozenset({"task", "out"}),  # --compare needs neither
        ),
        StageKind(
            "publish",
            "mipo_engine.publish.hub:PublishConfig",
            "mipo_engine.publish.hub:run_publish",
            "local_dir",
            "published",
            {"preferences": ("preferences",)},
            directory_output=True,
            help="Publish a preference set as a Hugging Face Hub dataset (token: HF_TOKEN or login).",
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
