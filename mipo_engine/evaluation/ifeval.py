"""IFEval (Zhou et al. 2023, arXiv:2311.07911): verify responses, and the paper's metrics.

Each IFEval prompt carries verifiable instructions (``instruction_id_list`` with one
``kwargs`` dict each). A response follows an instruction *strictly* when the reference
verifier accepts the response as is, and *loosely* when it accepts the response or one of its
variants without the first line, the last line, both, and/or markdown asterisks (paper
sec. 2.2). The four metrics:

- prompt-level accuracy: share of prompts whose instructions are all followed;
- instruction-level accuracy: share of all instructions followed;

each strict and loose.

The verifiers are those of the ``if-verifiable`` package (a packaged copy of Google's
``instruction_following_eval`` registry), called through its public
``evaluate_output_for_sample``; nothing here re-implements a check. Two behaviours of that
entry point are made to match the reference evaluation: an empty response fails every
instruction (the package returns no per-instruction result for it), and an unknown
instruction id is refused when the items are read (the package would skip it silently).
The package also drops a leading ``<think>...</think>`` block before checking, which the
reference does not do; the responses of the models evaluated here contain no such block.
Language detection (``langdetect``, used by the language and case instructions) samples at
random; it is seeded here so that a response always gets the same verdict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mipo_engine.evaluation.punkt_data import install_punkt
from mipo_engine.sources.ifeval import is_instruction_id


@dataclass(frozen=True)
class Verdict:
    """Which instructions of one prompt a response follows, strictly and loosely."""

    instruction_ids: tuple[str, ...]
    strict: tuple[bool, ...]
    loose: tuple[bool, ...]

    @property
    def prompt_strict(self) -> bool:
        return all(self.strict)

    @property
    def prompt_loose(self) -> bool:
        return all(self.loose)


def verify(
    prompt: str,
    instruction_ids: Sequence[str],
    kwargs: Sequence[Mapping[str, Any]],
    response: str,
) -> Verdict:
    """Check ``response`` against each instruction of ``prompt`` with the reference verifiers."""
    from if_verifiable import IFEvalSample, evaluate_output_for_sample

    if len(instruction_ids) != len(kwargs):
        raise ValueError(f"{len(instruction_ids)} instruction ids but {len(kwargs)} kwargs")
    unknown = [name for name in instruction_ids if not is_instruction_id(name)]
    if unknown:
        raise ValueError(f"unknown IFEval instruction id(s) {unknown}")
    ids = tuple(instruction_ids)
    if not response.strip():
        failed = (False,) * len(ids)
        return Verdict(ids, failed, failed)
    install_punkt()  # sentence counts and word splitting use NLTK's Punkt model
    _seed_language_detection()
    sample = IFEvalSample(
        key=0,
        prompt=prompt,
        instruction_id_list=list(ids),
        kwargs=[dict(arguments) for arguments in kwargs],
    )
    results, _ = evaluate_output_for_sample("ifeval", sample, response)
    if not results:  # nothing left to check (e.g. only a thinking block): all fail
        failed = (False,) * len(ids)
        return Verdict(ids, failed, failed)
    if tuple(result.instruction_id for result in results) != ids:
        raise RuntimeError(f"the verifier library checked {results} for instructions {ids}")
    return Verdict(
        ids,
        tuple(bool(result.strict_pass) for result in results),
        tuple(bool(result.loose_pass) for result in results),
    )


def _seed_language_detection() -> None:
    """Make ``langdetect`` (language and lowercase/capital checks) give the same verdict on
    every run: it samples, and the reference leaves it unseeded."""
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0


def kwargs_json(kwargs: Sequence[Mapping[str, Any]]) -> str:
    """The kwargs list as stored in the ``eval`` artifact (one JSON text, keys sorted)."""
    return json.dumps([dict(arguments) for arguments in kwargs], sort_keys=True)


# --------------------------------------------------------------------------------------------
# Metrics


METRICS = (
    "prompt_level_strict",
    "prompt_level_loose",
    "instruction_level_strict",
    "instruction_level_loose",
)


def metric_values(
    strict: Sequence[Sequence[bool]], loose: Sequence[Sequence[bool]]
) -> dict[str, list[float]]:
    """Per-unit 0/1 values whose means are the four metrics.

    Prompt-level metrics have one value per prompt (all its instructions followed),
    instruction-level metrics one value per instruction.
    """
    return {
        "prompt_level_strict": [float(all(flags)) for flags in strict],
        "prompt_level_loose": [float(all(flags)) for flags in loose],
        "instruction_level_strict": [float(flag) for flags in strict for flag in flags],
        "instruction_level_loose": [float(flag) for flags in loose for flag in flags],
    }


def per_instruction_type(
    ids: Sequence[Sequence[str]],
    strict: Sequence[Sequence[bool]],
    loose: Sequence[Sequence[bool]],
) -> dict[str, dict[str, float | int]]:
    """Instruction id -> {n, strict, loose}: accuracy of each instruction type, by id."""
    counts: dict[str, list[int]] = {}
    for names, strict_flags, loose_flags in zip(ids, strict, loose, strict=True):
        for name, strict_flag, loose_flag in zip(names, strict_flags, loose_flags, strict=True):
            entry = counts.setdefault(name, [0, 0, 0])
            entry[0] += 1
            entry[1] += int(strict_flag)
            entry[2] += int(loose_flag)
    return {
        name: {"n": n, "strict": followed / n, "loose": loosely / n}
        for name, (n, followed, loosely) in sorted(counts.items())
    }
