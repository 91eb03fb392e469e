"""The real default model (Gemma 3 270M base, converted from its PyPI GGUF): marked slow."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from cli import app
from mipo_engine.artifacts.schemas import GENERATIONS
from mipo_engine.artifacts.store import read_artifact

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_default_model_generates_sensible_pairs(tmp_path):
    prompts = tmp_path / "prompts.parquet"
    out = tmp_path / "generations.parquet"
    assert (
        runner.invoke(
            app, ["ingest", "builtin:personalization-train", "--limit", "4", "--out", str(prompts)]
        ).exit_code
        == 0
    )
    result = runner.invoke(
        app,
        [
            "generate",
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "--max-new-tokens",
            "40",
            "--temperature",
            "0.7",
            "--top-p",
            "0.95",
            "--batch-size",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    frame = read_artifact(out, GENERATIONS)
    assert frame.height == 4
    texts = frame["chosen"].to_list() + frame["rejected"].to_list()
    # Sensible text: mostly letters and spaces, several real words, no template leakage.
    non_empty = [t for t in texts if t.strip()]
    assert len(non_empty) >= 6
    for text in non_empty:
        letters = sum(ch.isalpha() or ch.isspace() for ch in text)
        assert letters / len(text) > 0.6, text
        assert "User:" not in text and "<bos>" not in text
    words = re.findall(r"[A-Za-z]{3,}", " ".join(texts))
    assert len(words) >= 20


def test_shared_prompt_scoring_matches_whole_sequences_on_gemma():
    """Gemma 3 mixes sliding-window and global attention layers and its own cache classes:
    scores read after a shared prompt's cached keys equal each sequence run whole."""
    import torch

    from mipo_engine.backends.hf import HFBackend, pad_pairs
    from mipo_engine.chat import render_chat
    from mipo_engine.tokenization import encode_pair
    from mipo_engine.training.logps import sequence_logps

    backend = HFBackend(None, device="cpu", batch_size=8, show_progress=False)
    prompts = [
        render_chat(backend.tokenizer, [{"role": "user", "content": text}])
        for text in ("Name three rivers in Europe.", "Write a haiku about rain, in lowercase.")
    ]
    responses = [
        "The Danube, the Rhine and the Loire.",
        "Rivers: Thames.",
        "soft rain on the roof\nthe gutters hum a low song\nmorning smells of earth",
        "Rain falls.",
    ]
    owners = [0, 0, 1, 1]
    shared = backend.score([prompts[g] for g in owners], responses)
    for prompt_index, response, result in zip(owners, responses, shared, strict=True):
        pair = encode_pair(backend.tokenizer, prompts[prompt_index], response)
        ids, attention, mask = pad_pairs([pair], backend.tokenizer.pad_token_id)
        with torch.no_grad():
            alone, counts = sequence_logps(backend.model, ids, attention, mask)
        assert result.num_tokens == int(counts[0])
        assert result.logp == pytest.approx(float(alone[0]), abs=2e-3)
