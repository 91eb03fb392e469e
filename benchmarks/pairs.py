"""Fixed benchmark inputs: preference pairs of exact token lengths, and chat prompts.

Text comes from the built-in personalization prompts and contexts (real English, shipped
with the package), cut into windows of a fixed number of tokens, so every pair costs the
same and a step's token count does not depend on which pairs a trainer draws.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from mipo_engine.chat import Message, build_messages
from mipo_engine.modeling.tokenization import encode_pair
from mipo_engine.resources import resource_dir


@dataclass(frozen=True)
class PairShape:
    """``pairs`` rows of a ``prompt_tokens`` prompt and two responses of ``response_tokens``
    each, or, with ``response_min``, of lengths drawn (seeded, independently for chosen and
    rejected) between ``response_min`` and ``response_tokens``."""

    pairs: int
    prompt_tokens: int
    response_tokens: int
    response_min: int | None = None

    def response_lengths(self) -> list[tuple[int, int]]:
        if self.response_min is None:
            return [(self.response_tokens, self.response_tokens)] * self.pairs
        import random

        draw = random.Random(0)
        low, high = self.response_min, self.response_tokens
        return [(draw.randint(low, high), draw.randint(low, high)) for _ in range(self.pairs)]


def builtin_rows() -> list[dict[str, Any]]:
    path = resource_dir("data") / "personalization.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _token_stream(tokenizer: Any) -> list[int]:
    texts = []
    for row in builtin_rows():
        texts.append(row["prompt"])
        if row.get("context"):
            texts.append(row["context"])
    return tokenizer(" ".join(texts), add_special_tokens=False)["input_ids"]


def make_pairs(tokenizer: Any, shape: PairShape) -> pl.DataFrame:
    """``shape.pairs`` rows of (id, prompt, chosen, rejected) with windows of the built-in
    text that each decode to about the requested number of tokens."""
    stream = _token_stream(tokenizer)
    longest = shape.prompt_tokens + 2 * shape.response_tokens
    while len(stream) < 2 * longest:  # long shapes read the text more than once
        stream = stream + stream
    rows = []
    for index, (chosen_tokens, rejected_tokens) in enumerate(shape.response_lengths()):
        width = shape.prompt_tokens + chosen_tokens + rejected_tokens
        start = (index * 97) % (len(stream) - width)
        window = stream[start : start + width]
        prompt = window[: shape.prompt_tokens]
        chosen = window[shape.prompt_tokens : shape.prompt_tokens + chosen_tokens]
        rejected = window[shape.prompt_tokens + chosen_tokens :]
        rows.append(
            {
                "id": f"pair-{index:05d}",
                "prompt": tokenizer.decode(prompt) + "\n",
                "chosen": tokenizer.decode(chosen).strip(),
                "rejected": tokenizer.decode(rejected).strip(),
            }
        )
    return pl.DataFrame(rows)


def pair_tokens(tokenizer: Any, pairs: pl.DataFrame, max_length: int) -> int:
    """Tokens of every (prompt + chosen) and (prompt + rejected) sequence, as trained."""
    total = 0
    for row in pairs.iter_rows(named=True):
        for response in (row["chosen"], row["rejected"]):
            encoded = encode_pair(tokenizer, row["prompt"], response, max_length=max_length)
            total += len(encoded.input_ids)
    return total


def write_pairs(pairs: pl.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pairs.write_parquet(path)
    return path


def chat_requests(count: int) -> list[list[Message]]:
    """The first ``count`` built-in requests as chat messages (with their user context)."""
    rows = builtin_rows()
    if len(rows) < count:
        raise ValueError(f"only {len(rows)} built-in prompts; {count} asked")
    return [build_messages(row["prompt"], row.get("context")) for row in rows[:count]]
