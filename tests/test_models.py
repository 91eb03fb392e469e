"""The model catalogue and GGUF conversion (a tiny GGUF written here with the gguf package)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.mipo_process import REPO_ROOT, run_mipo
from helpers.tiny_gguf import CHAT_TEMPLATE, write_tiny_gguf

from mipo_engine import models
from mipo_engine.errors import ConfigError


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MIPO_CACHE_DIR", str(root))
    return root


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _gguf_model_and_tokenizer(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model, tokenizer


def test_gguf_converts_to_a_loadable_folder(cache, tiny_gguf):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(models.resolve_model(str(tiny_gguf)))
    assert folder.parent == cache / "gguf-converted"
    assert models.is_converted(folder)

    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama"
    assert (config.hidden_size, config.num_hidden_layers) == (32, 2)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)

    # The tokenizer and chat template carry over: the same ids as transformers' own GGUF load.
    reference_model, reference_tokenizer = _gguf_model_and_tokenizer(tiny_gguf)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = "What is the capital of France? Paris is the capital."
    assert tokenizer(text).input_ids == reference_tokenizer(text).input_ids
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert tokenizer.eos_token == "<eos>"

    # Weights: the GGUF's float32 values rounded to the folder's dtype (bfloat16 for a
    # user's own file), key by key.
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    expected = reference_model.state_dict()
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value.to(torch.bfloat16).float(), rtol=0, atol=0)


def test_converted_gguf_is_cached_by_content(cache, tiny_gguf, tmp_path, monkeypatch):
    first = models.resolve_model(str(tiny_gguf))

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr(models, "convert_gguf", no_conversion)
    assert models.resolve_model(str(tiny_gguf)) == first
    copy = tmp_path / "renamed.gguf"
    copy.write_bytes(tiny_gguf.read_bytes())
    # Same content under another name: a folder of its own name, but the hash part is equal.
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    monkeypatch.undo()
    monkeypatch.setenv("MIPO_CACHE_DIR", str(cache))
    assert (
        Path(models.resolve_model(str(copy))).name.split("-")[-1] == Path(first).name.split("-")[-1]
    )
    assert (
        Path(models.resolve_model(str(other))).name.split("-")[-1]
        != Path(first).name.split("-")[-1]
    )


_KILL_BEFORE_RENAME = """
import os, signal, sys
from pathlib import Path
from mipo_engine import models
original = Path.rename
def rename(self, target):
    if self.name.startswith(".convert-"):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, target)
Path.rename = rename
models.resolve_model(sys.argv[1])
"""


def test_a_killed_conversion_never_looks_complete(cache, tiny_gguf):
    env = {**os.environ, "MIPO_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO_ROOT)}
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_BEFORE_RENAME, str(tiny_gguf)],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -9
    converted = cache / "gguf-converted"
    leftovers = list(converted.glob(".convert-*"))
    assert leftovers, "the staging folder was written before the kill"
    # Only the hidden staging folder exists: no folder under the name that resolve_model reads.
    assert not [p for p in converted.iterdir() if not p.name.startswith(".")]
    # The same call afterwards converts again and ends with a complete folder.
    folder = Path(models.resolve_model(str(tiny_gguf)))
    assert models.is_converted(folder)


def test_unknown_names_are_refused_with_the_known_ones(cache):
    with pytest.raises(ConfigError) as error:
        models.resolve_model("smollm3-instruct")
    message = str(error.value)
    assert "unknown model 'smollm3-instruct'" in message
    for name in ("default", "smollm2-135m-instruct", "gemma-3-270m"):
        assert name in message
    # Names with an owner stay Hub ids (resolved by transformers, offline or not).
    assert models.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_a_file_that_is_not_gguf_is_refused(cache, tmp_path):
    fake = tmp_path / "weights.gguf"
    fake.write_text("not a model")
    with pytest.raises(ConfigError, match="is a file but not a GGUF model"):
        models.resolve_model(str(fake))
    with pytest.raises(ConfigError, match="does not exist"):
        models.resolve_model(str(tmp_path / "missing.gguf"))


def test_cli_refuses_an_unknown_model_and_lists_the_catalogue(tmp_path):
    prompts = tmp_path / "prompts.parquet"
    assert (
        run_mipo(["ingest", "builtin:general", "--limit", "2", "--out", str(prompts)]).returncode
        == 0
    )
    result = run_mipo(
        [
            "generate",
            "--prompts",
            str(prompts),
            "--out",
            str(tmp_path / "g.parquet"),
            "--strategy",
            "random-prompt",
            "--model",
            "no-such-model",
        ]
    )
    assert result.returncode == 2
    assert "smollm2-135m-instruct" in result.stderr + result.stdout
    assert not (tmp_path / "g.parquet").exists()

    listing = run_mipo(["models", "--json"])
    assert listing.returncode == 0
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    by_name = {row["name"]: row for row in rows}
    assert set(by_name) == {"smollm2-135m-instruct", "gemma-3-270m"}
    assert by_name["smollm2-135m-instruct"]["default"] == "yes"
    assert "Q4_1" in by_name["smollm2-135m-instruct"]["quantization"]
    assert "Q4_K_M" in by_name["gemma-3-270m"]["quantization"]
    assert by_name["gemma-3-270m"]["license"] == "Gemma terms of use"


def test_the_default_models_chat_template_renders_every_role():
    """The template shipped inside the default model's GGUF (read without converting)."""
    import gguf
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    path = models.CATALOG[models.DEFAULT_MODEL_NAME].locate(models.cache_dir())
    field = gguf.GGUFReader(str(path)).fields["tokenizer.chat_template"]
    template = field.contents()
    messages = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Rouge."},
    ]
    text = (
        ImmutableSandboxedEnvironment()
        .from_string(template)
        .render(messages=messages, add_generation_prompt=True)
    )
    assert text == (
        "<|im_start|>system\nAnswer in French.<|im_end|>\n"
        "<|im_start|>user\nName a colour.<|im_end|>\n"
        "<|im_start|>assistant\nRouge.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
