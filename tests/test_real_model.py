"""The real models from their PyPI GGUF files (SmolLM2-135M-Instruct, the default, and Gemma 3
270M base where a test is about Gemma's architecture): marked slow."""

from __future__ import annotations

import re

import pytest
from helpers.mipo_process import REPO_ROOT
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
        assert "<|im_start|>" not in text and "<|im_end|>" not in text
    words = re.findall(r"[A-Za-z]{3,}", " ".join(texts))
    assert len(words) >= 20
    # The default model's own ChatML template rendered the conditioning.
    for chosen_input, rejected_input, context in zip(
        frame["chosen_input"], frame["rejected_input"], frame["context"], strict=True
    ):
        assert chosen_input.startswith("<|im_start|>system\n")
        assert chosen_input.endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert context in chosen_input and context not in rejected_input


def test_quickstart_config_plans_with_the_default_model(tmp_path):
    from mipo_engine.models import DEFAULT_MODEL_NAME, resolve_model
    from mipo_engine.pipeline.config import load_pipeline
    from mipo_engine.pipeline.runner import plan_pipeline

    plan = plan_pipeline(load_pipeline(REPO_ROOT / "configs" / "quickstart.yaml"))
    kinds = [stage.kind for stage in plan]
    assert kinds[0] == "ingest" and "train" in kinds and kinds[-1] == "eval"
    assert all(stage.options.get("model") in (None, DEFAULT_MODEL_NAME) for stage in plan)
    assert resolve_model(None).endswith(DEFAULT_MODEL_NAME)


def test_shared_prompt_scoring_matches_whole_sequences_on_gemma():
    """Gemma 3 mixes sliding-window and global attention layers and its own cache classes:
    scores read after a shared prompt's cached keys equal each sequence run whole."""
    import torch

    from mipo_engine.backends.hf import HFBackend, pad_pairs
    from mipo_engine.chat import render_chat
    from mipo_engine.modeling.logps import sequence_logps
    from mipo_engine.modeling.tokenization import encode_pair

    backend = HFBackend("gemma-3-270m", device="cpu", batch_size=8, show_progress=False)
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
