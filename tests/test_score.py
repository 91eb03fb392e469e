"""``mipo score`` on a tiny model, checked against log-probs computed independently.

The independent computation runs one sequence at a time (no batching, no padding, no
chunked projection): ids = the rendered prompt's tokens (it starts with the BOS token) +
the response's tokens + EOS; log pi(response | prompt) = the sum over response positions of
log_softmax(full logits) at the next token.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from mipo_engine.artifacts.schemas import GENERATIONS, SCORES
from mipo_engine.artifacts.store import is_complete, read_artifact, read_manifest
from mipo_engine.chat import build_messages, render_chat
from mipo_engine.errors import InputError
from mipo_engine.stages.score import ScoreConfig, run_score

runner = CliRunner()
REPO_ROOT = Path(__file__).resolve().parents[1]

ROWS = [
    # (id, strategy, request x, context c, chosen, rejected, negative request x' or context c')
    ("mc-1", "missing-context", "Give me a tip for learning to cook.", "Be formal.",
     "Start with simple recipes.", "Practice often and cook.", None),
    ("mc-2", "missing-context", "What is the capital of France?", "Use bullet points.",
     "Paris is the capital.", "It is Paris.", None),
    ("rc-1", "random-context", "Explain like I am a beginner.", "Keep it under 30 words.",
     "Start with simple examples.", "Be formal and write clearly.", "End with a question."),
    ("rp-1", "random-prompt", "What is the capital of France?", None,
     "Paris is the capital of France.", "Start with simple recipes.",
     "Give me a tip for learning to cook."),
    ("rp-2", "random-prompt", "Give me a tip for learning to cook.", None,
     "Practice often.", "The answer is: A", "Score: good or bad?"),
    ("pr-1", "prompt", "What is the capital of France?", None,
     "Paris.", "I prefer short answers.", "Keep it under 30 words."),
]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny-model matmuls are microseconds; a second thread only adds synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tokenizer


def _rejected_messages(strategy: str, request: str, negative: str | None):
    if strategy == "missing-context":
        return build_messages(request)
    if strategy == "random-context":
        return build_messages(request, negative)
    return build_messages(negative)  # random-prompt / prompt: another request


@pytest.fixture(scope="module")
def generations_file(model_and_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, tokenizer = model_and_tokenizer
    records = []
    for pair_id, strategy, request, context, chosen, rejected, negative in ROWS:
        records.append(
            {
                "id": pair_id,
                "prompt_id": pair_id,
                "prompt": request,
                "context": context,
                "chosen": chosen,
                "rejected": rejected,
                "strategy": strategy,
                "negative_source": "none" if negative is None else f"src-{pair_id}",
                "chosen_input": render_chat(tokenizer, build_messages(request, context)),
                "rejected_input": render_chat(
                    tokenizer, _rejected_messages(strategy, request, negative)
                ),
                "model": "tiny",
                "seed": 1,
                "chosen_finish_reason": "stop",
                "rejected_finish_reason": "stop",
                "chosen_tokens": 5,
                "rejected_tokens": 5,
            }
        )
    path = tmp_path_factory.mktemp("gens") / "generations.parquet"
    pl.DataFrame(records, schema=GENERATIONS.polars_schema()).write_parquet(path)
    return path


def _independent_logp(model, tokenizer, prompt_text: str, response: str) -> tuple[float, int]:
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    assert prompt_ids[0] == tokenizer.bos_token_id  # the rendered template carries <bos>
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    response_ids.append(tokenizer.eos_token_id)
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    total = sum(
        logprobs[len(prompt_ids) + k - 1, token].item() for k, token in enumerate(response_ids)
    )
    return total, len(response_ids)


def _score(generations: Path, out: Path, model: Path, **options: object) -> pl.DataFrame:
    config = ScoreConfig.from_options(generations=generations, out=out, model=str(model), **options)
    return read_artifact(run_score(config), SCORES)


@pytest.fixture(scope="module")
def scored(generations_file: Path, tiny_model_dir: Path) -> pl.DataFrame:
    return _score(generations_file, generations_file.with_name("scores.parquet"), tiny_model_dir)


def test_reference_logps_equal_an_independent_computation(
    scored: pl.DataFrame, generations_file: Path, model_and_tokenizer
) -> None:
    model, tokenizer = model_and_tokenizer
    generations = pl.read_parquet(generations_file)
    assert scored["id"].to_list() == generations["id"].to_list()  # input order
    for row, score in zip(
        generations.iter_rows(named=True), scored.iter_rows(named=True), strict=True
    ):
        # Both responses are scored under the TRAINING prompt, chosen_input.
        chosen, chosen_tokens = _independent_logp(
            model, tokenizer, row["chosen_input"], row["chosen"]
        )
        rejected, rejected_tokens = _independent_logp(
            model, tokenizer, row["chosen_input"], row["rejected"]
        )
        assert score["ref_chosen_logps"] == pytest.approx(chosen, abs=1e-4)
        assert score["ref_rejected_logps"] == pytest.approx(rejected, abs=1e-4)
        assert (score["chosen_tokens"], score["rejected_tokens"]) == (
            chosen_tokens,
            rejected_tokens,
        )


def test_pmi_chosen_follows_the_strategy(
    scored: pl.DataFrame, generations_file: Path, model_and_tokenizer
) -> None:
    """Personalization strategies: log p(y_c|x,c) - log p(y_c|x), x rendered without c (for
    random-context too, NOT under the rejected sample's c'); random-prompt: log p(y_c|x) -
    log p(y_c|x'); no context on a personalization strategy: undefined (null)."""
    model, tokenizer = model_and_tokenizer
    generations = pl.read_parquet(generations_file)
    pmi = dict(zip(scored["id"], scored["pmi_chosen"], strict=True))
    for row in generations.iter_rows(named=True):
        with_c, _ = _independent_logp(model, tokenizer, row["chosen_input"], row["chosen"])
        if row["strategy"] in ("missing-context", "random-context"):
            without = render_chat(tokenizer, build_messages(row["prompt"]))
            expected = with_c - _independent_logp(model, tokenizer, without, row["chosen"])[0]
        elif row["strategy"] == "random-prompt":
            other = _independent_logp(model, tokenizer, row["rejected_input"], row["chosen"])[0]
            expected = with_c - other
        else:
            assert pmi[row["id"]] is None
            continue
        assert pmi[row["id"]] == pytest.approx(expected, abs=1e-4)
    assert pmi["rc-1"] != 0.0


def test_preferences_input_gives_the_same_logps_and_no_pmi(
    scored: pl.DataFrame, generations_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    generations = pl.read_parquet(generations_file)
    preferences = generations.select(
        "id", pl.col("chosen_input").alias("prompt"), "chosen", "rejected", "strategy"
    )
    path = tmp_path / "preferences.parquet"
    preferences.write_parquet(path)
    from_preferences = _score(path, tmp_path / "s.parquet", tiny_model_dir)
    assert from_preferences["pmi_chosen"].null_count() == from_preferences.height
    for column in ("ref_chosen_logps", "ref_rejected_logps"):
        assert from_preferences[column].to_list() == pytest.approx(
            scored[column].to_list(), abs=1e-5
        )


_DYING_SCORER = """
import os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from mipo_engine.backends.hf import HFBackend
from mipo_engine.stages.score import ScoreConfig, run_score

class DiesOnThirdChunk(HFBackend):
    calls = 0
    def score(self, *args, **kwargs):
        DiesOnThirdChunk.calls += 1
        if DiesOnThirdChunk.calls == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().score(*args, **kwargs)

generations, out, model = sys.argv[1:4]
config = ScoreConfig.from_options(generations=Path(generations), out=Path(out), model=model,
                                  chunk_rows=2)
run_score(config, backend=DiesOnThirdChunk(model, show_progress=False))
"""


def test_resume_after_sigkill_gives_the_rows_of_an_uninterrupted_run(
    generations_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    uninterrupted = _score(
        generations_file, tmp_path / "a" / "s.parquet", tiny_model_dir, chunk_rows=2
    )
    out = tmp_path / "b" / "s.parquet"
    killed = subprocess.run(
        [sys.executable, "-c", _DYING_SCORER, str(generations_file), str(out), str(tiny_model_dir)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not is_complete(out)
    assert len(list(out.with_name(out.name + ".parts").glob("part-*.parquet"))) == 2

    result = runner.invoke(
        app,
        ["score", "--generations", str(generations_file), "--out", str(out),
         "--model", str(tiny_model_dir), "--chunk-rows", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Resuming: 4 of 6" in result.output
    resumed = read_artifact(out, SCORES)
    assert resumed.equals(uninterrupted)
    assert not out.with_name(out.name + ".parts").exists()
    assert read_manifest(out)["stats"]["pairs"] == 6


def test_bad_input_names_file_row_and_field_and_writes_nothing(
    generations_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    broken = pl.read_parquet(generations_file).with_columns(
        pl.when(pl.col("id") == "rc-1").then(None).otherwise(pl.col("chosen")).alias("chosen")
    )
    path = tmp_path / "broken.parquet"
    broken.write_parquet(path)
    out = tmp_path / "s.parquet"
    with pytest.raises(InputError) as error:
        _score(path, out, tiny_model_dir)
    assert (error.value.file, error.value.row, error.value.field) == (str(path), 3, "chosen")
    assert not out.exists()

    no_prompt = tmp_path / "no_prompt.parquet"
    pl.DataFrame({"id": ["a"], "chosen": ["x"], "rejected": ["y"]}).write_parquet(no_prompt)
    result = runner.invoke(
        app,
        [
            "score",
            "--generations",
            str(no_prompt),
            "--out",
            str(out),
            "--model",
            str(tiny_model_dir),
        ],
    )
    assert result.exit_code == 2
    assert "no_prompt.parquet" in result.output and "prompt" in result.output
    assert not out.exists()
