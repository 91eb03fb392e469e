"""``mipo rubrics``: preference items -> one scoring rubric per item.

Seed 004 App. C.2 grades personalization item by item: every preference item gets a rubric
with a ``criteria`` question and ``score1_description`` .. ``score5_description`` (the
Prometheus absolute-grading layout), and the judge scores a response once per item.

Items come from a ``contexts`` artifact (its ``item`` column) or a ``prompts`` artifact (its
``context_items``); each distinct item text gets one rubric. Verifiable items (those
``constraint_type`` recognises, e.g. "Answer in at most 3 sentences.") take the built-in rubric
of their constraint type from ``rubrics/verifiable.yaml`` and record its ``checker``; every
other item's rubric is written by the model, validated, and retried (only the failing items,
each retry with a new derived seed) up to ``max_attempts`` times. Items that still fail are
listed with their reasons in the manifest and have no rubric; ``mipo judge`` records a null
score with that reason for them. The work is ``judging.rubric_writing.write_rubrics``; this
module holds the stage's settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import Field

from mipo_engine.artifacts.location import Location
from mipo_engine.backends.base import Backend
from mipo_engine.commandline import Cli
from mipo_engine.judging.rubric_writing import MAX_NEW_TOKENS, write_rubrics
from mipo_engine.modelcalls.settings import AskingConfig

# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


class RubricsConfig(AskingConfig):
    contexts: Location = Field(
        description="Contexts .parquet (from mipo contexts) or prompts .parquet with context_items."
    )
    """A contexts artifact (``item`` column) or a prompts artifact (``context_items``)."""
    out: Annotated[Location, Cli("--out", "-o")] = Field(description="Output rubrics .parquet.")
    max_new_tokens: int = Field(MAX_NEW_TOKENS, ge=1, description="Maximum new tokens per rubric.")
    limit: int | None = Field(None, ge=1, description="Use only the first N distinct items.")

    chunk_key: ClassVar[str] = "chunk_items"

    option_help: ClassVar[dict[str, str]] = {
        "chunk_size": "Items per saved chunk: the unit of resume after a crash.",
        "retry_temperature": "Sampling temperature of retries after an invalid rubric.",
        "max_attempts": "Attempts per item before it is recorded as failed.",
        "structured": "Constrain replies to the rubric JSON layout (vllm backends).",
    }


def run_rubrics(config: RubricsConfig, *, backend: Backend | None = None) -> Path:
    """Write one rubric per distinct preference item of ``config.contexts`` to ``config.out``."""
    return write_rubrics(
        config,
        contexts=config.contexts,
        out=config.out,
        limit=config.limit,
        identity=config.identity(),
        backend=backend,
    )
