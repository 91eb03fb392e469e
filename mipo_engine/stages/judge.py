"""``mipo judge``: responses + rubrics -> a 1-5 score per (response, preference item).

Seed 004 sec. 5.4 and App. C.2: a judge scores each response once per rubric item of the
user's context; the item scores are averaged per response; responses are compared with
reference responses by win rate with ties counted as wins; and a judge's reliability is its
strict and tie-tolerant accuracy at ranking known chosen responses above rejected ones
(Table 6).

What is judged (``responses``):

- a ``generations`` artifact: both the ``chosen`` and the ``rejected`` response of each pair
  (``role`` = chosen / rejected), against the pair's context. Critic accuracy is reported.
- a ``responses`` artifact: ``id``, ``prompt``, ``context`` and/or ``context_items``,
  ``response``, optional ``task`` (``role`` = response). With ``reference`` (a Parquet file
  with ``id`` and ``response``), the reference response of each id is judged the same way
  (``role`` = reference) and win rates are reported per task and overall.

A response's preference items are its ``context_items``; when it has only a ``context`` text
(generations), they are the rubric items found in that text (``mipo ingest`` joins items with
spaces), or else the text's sentences.

Modes: ``rubric`` (default) asks the judge once per item with that item's rubric; ``rlaif``
asks once per response with the whole context (the RLAIF critic of seed 004 sec. 5.2);
``verify`` uses no model: it checks the verifiable items with ``check_constraint`` and stores
5 for a pass and 1 for a failure, so aggregation, win rates and critic accuracy work the same.
In every mode verifiable items also get the checker's verdict in ``passed``.

With a backend offering ``generate_structured`` (vLLM) the reply is constrained to one of
"1".."5"; otherwise it is read with ``parse_score`` and only unreadable items are asked again,
at most ``max_attempts`` times, before a null score is recorded with the reason. Finished
judgments are journaled in chunks: a killed run resumes without scoring them again.

The work is ``judging.judge.judge_responses`` (targets in ``judging.targets``, metrics in
``judging.summary``); this module holds the stage's settings.

Outputs: the ``judgments`` artifact (one row per judged item) and ``<out>.summary.json`` with
the aggregate metrics (also in the manifest's stats). Per-response scores are not stored
separately: ``aggregate_judgments`` computes them from the judgments (mean over items).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from mipo_engine.artifacts.location import Location
from mipo_engine.backends.base import Backend
from mipo_engine.commandline import Cli
from mipo_engine.judging.judge import judge_responses
from mipo_engine.modelcalls.settings import AskingConfig

Mode = Literal["rubric", "rlaif", "verify"]


class JudgeConfig(AskingConfig):
    responses: Location = Field(
        description="Generations .parquet (chosen and rejected are judged) or responses .parquet (id, prompt, context and/or context_items, response, optional task)."
    )
    """A generations artifact or a responses artifact."""
    out: Annotated[Location, Cli("--out", "-o")] = Field(description="Output judgments .parquet.")
    rubrics: Location | None = Field(
        None, description="Rubrics .parquet from mipo rubrics (mode rubric)."
    )
    reference: Location | None = Field(
        None,
        description="Reference responses .parquet (id, response): reports the win rate of the responses over them, ties counted as wins.",
    )
    mode: Mode = Field(
        "rubric",
        description="rubric: one judge call per (response, rubric item); rlaif: one call per response with the whole context; verify: checkers only, no model.",
    )
    limit: int | None = Field(None, ge=1, description="Judge only the first N input rows.")

    chunk_key: ClassVar[str] = "chunk_items"

    option_help: ClassVar[dict[str, str]] = {
        "backend": "Judge backend: hf, vllm or openai.",
        "model": "Judge model: a name from `mipo models`, a .gguf file, a folder or a Hub id; default: smollm2-135m-instruct.",
        "chunk_size": "Judgments per saved chunk: the unit of resume after a crash.",
        "max_new_tokens": "Maximum new tokens per judge reply.",
        "retry_temperature": "Sampling temperature of retries after an unreadable score.",
        "max_attempts": "Attempts per item before a null score is recorded.",
        "structured": "Constrain replies to 1..5 when the backend supports it (vllm).",
    }

    @model_validator(mode="after")
    def _rubrics_for_rubric_mode(self) -> JudgeConfig:
        if self.mode == "rubric" and self.rubrics is None:
            raise ValueError(
                "mode 'rubric' needs rubrics (make them with mipo rubrics), or use mode "
                "'rlaif' (whole context, one call) or 'verify' (checkers only, no model)"
            )
        return self


def run_judge(config: JudgeConfig, *, backend: Backend | None = None) -> Path:
    """Judge ``config.responses`` into ``config.out`` and its summary; return the output path."""
    return judge_responses(
        config,
        responses=config.responses,
        out=config.out,
        rubrics=config.rubrics,
        reference=config.reference,
        mode=config.mode,
        limit=config.limit,
        identity=config.identity(),
        backend=backend,
    )
