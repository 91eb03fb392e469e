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
