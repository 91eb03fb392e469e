"""``mipo export``: filters (hand-built cases), splits, formats, TRL compatibility, speed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli import app
from mipo_engine import filters
from mipo_engine.artifacts.preferences import read_preferences
from mipo_engine.artifacts.schemas import GENERATIONS, JUDGMENTS, SCORES
from mipo_engine.artifacts.store import is_complete, read_manifest, write_artifact
from mipo_engine.chat import build_messages
from mipo_engine.errors import ConfigError, InputError
from mipo_engine.stages.export import (
    EmptyExport,
    ExportConfig,
    assign_splits,
    judge_margins,
    parse_splits,
    run_export,
    user_turn,
)
from mipo_engine.testing import synthetic_generations

runner = CliRunner()

# --------------------------------------------------------------------------------------------
# Hand-built inputs
# --------------------------------------------------------------------------------------------


def generation_row(pair_id: str, prompt_id: str, chosen: str, rejected: str, **extra) -> dict:
    prompt = extra.pop("prompt", f"Question {prompt_id}: where should I travel?")
    context = extra.pop("context", "I like trains.")
    row = {
        "id": pair_id,
        "prompt_id": prompt_id,
        "prompt": prompt,
        "context": context,
        "chosen": chosen,
        "rejected": rejected,
        "strategy": "missing-context",
        "negative_source": "none",
        "chosen_input": f"<bos>User: {prompt}\n\nMy requirements for your answer:\n{context}"
        "\n\nAssistant:\n",
        "rejected_input": f"<bos>User: {prompt}\n\nAssistant:\n",
        "model": "hand-built",
        "seed": 0,
        "chosen_finish_reason": "stop",
        "rejected_finish_reason": "stop",
        "chosen_tokens": 10,
        "rejected_tokens": 10,
    }
    row.update(extra)
    return row


# One pair per filter, each built to be caught by exactly that filter (the near-duplicate
# copy is also caught by the normalised and MinHash filters, as the table below says).
CASES = [
    generation_row("ok1", "p1", "Take the night train to Vienna and walk.", "Fly to Rome."),
    generation_row("ok2", "p2", "Cook pasta with garlic and olive oil.", "Order a pizza."),
    generation_row("empty", "p3", "Visit the lakes by bus.", "   "),
    generation_row("same", "p4", "Walk along the river.", "  Walk along the river.  "),
    generation_row(
        "cut", "p5", "Go north by sleeper.", "Stay home.", chosen_finish_reason="length"
    ),
    generation_row("short", "p6", "Rail.", "Take a long drive.", chosen_tokens=1),
    generation_row("long", "p7", "Cycle the coast.", "Drive " * 200, rejected_tokens=500),
    generation_row("dup", "p1", "Take the night train to Vienna and walk.", "Fly to Rome."),
    generation_row(
        "near",
        "p2",
        "COOK pasta, with garlic and olive oil!",
        "order a   PIZZA",
        prompt="question p2 - where should I travel",
    ),
    generation_row("lowpmi", "p8", "Take the ferry to the islands.", "Rent a car."),
    generation_row("lowjudge", "p9", "Hike the mountain trail slowly.", "Sleep in."),
]
IDS = [row["id"] for row in CASES]


def write_generations(path: Path, rows: list[dict]) -> Path:
    frame = pl.DataFrame(rows, schema=GENERATIONS.polars_schema())
    write_artifact(frame, path, GENERATIONS, {"stage": "generate", "config": {}, "inputs": []})
    return path


def write_scores(path: Path, ids: list[str], pmi: dict[str, float | None]) -> Path:
    frame = pl.DataFrame(
        {
            "id": ids,
            "ref_chosen_logps": [-10.0 - i for i in range(len(ids))],
            "ref_rejected_logps": [-20.0 - i for i in range(len(ids))],
            "chosen_tokens": [10] * len(ids),
            "rejected_tokens": [10] * len(ids),
            "pmi_chosen": [pmi.get(i, 1.0) for i in ids],
        },
        schema=SCORES.polars_schema(),
    )
    write_artifact(frame, path, SCORES, {"stage": "score", "config": {}, "inputs": []})
    return path


def judgment(pair_id: str, role: str, index: int, score: float | None) -> dict:
    return {
        "id": f"{role}:{pair_id}:{index}",
        "response_id": pair_id,
        "role": role,
        "task": "personalization",
        "mode": "rubric",
        "item_index": index,
        "item": f"item {index}",
        "rubric_id": None,
        "checker": None,
        "passed": None,
        "score": score,
        "raw": None if score is None else str(score),
        "error": None if score is not None else "unreadable",
        "attempts": 1,
    }


def write_judgments(path: Path, ids: list[str]) -> Path:
    rows = []
    for pair_id in ids:
        if pair_id == "lowjudge":  # chosen mean (5 + 1) / 2 = 3, rejected 4: margin -1
            rows += [judgment(pair_id, "chosen", 0, 5.0), judgment(pair_id, "chosen", 1, 1.0)]
            rows += [judgment(pair_id, "rejected", 0, 4.0)]
        else:  # chosen mean (4 + 5) / 2 = 4.5 (the null is skipped), rejected 3: margin 1.5
            rows += [
                judgment(pair_id, "chosen", 0, 4.0),
                judgment(pair_id, "chosen", 1, 5.0),
                judgment(pair_id, "chosen", 2, None),
                judgment(pair_id, "rejected", 0, 3.0),
            ]
    frame = pl.DataFrame(rows, schema=JUDGMENTS.polars_schema())
    write_artifact(frame, path, JUDGMENTS, {"stage": "judge", "config": {}, "inputs": []})
    return path


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    return {
        "generations": write_generations(tmp_path / "g.parquet", CASES),
        "scores": write_scores(tmp_path / "s.parquet", IDS, {"lowpmi": -1.0}),
        "judgments": write_judgments(tmp_path / "j.parquet", IDS),
    }


ALL_OFF = {"drop_empty": False, "drop_identical": False, "drop_duplicates": False}


def export(inputs: dict[str, Path], out: Path, **options) -> pl.DataFrame:
    config = ExportConfig.from_options(**inputs, out=out, **options)
    return read_preferences(run_export(config))


# --------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "removed"),
    [
        ({}, set()),
        ({"drop_empty": True}, {"empty"}),
        ({"drop_identical": True}, {"same"}),
        ({"drop_truncated": True}, {"cut"}),
        ({"min_tokens": 5, "max_tokens": 100}, {"short", "long"}),
        ({"drop_duplicates": True}, {"dup"}),
        ({"near_duplicates": "normalized"}, {"dup", "near"}),
        ({"near_duplicates": "minhash"}, {"dup", "near"}),
        ({"min_pmi": 0.0}, {"lowpmi"}),
        ({"min_judge_margin": 0.5}, {"lowjudge"}),
    ],
)
def test_each_filter_removes_exactly_its_pairs(inputs, tmp_path, options, removed):
    kept = export(inputs, tmp_path / "p.parquet", **{**ALL_OFF, **options})
    assert set(IDS) - set(kept["id"]) == removed
    counts = read_manifest(tmp_path / "p.parquet")["stats"]["filters"]
    assert sum(c["removed"] for c in counts) == len(removed)


def test_all_filters_run_in_order_and_are_counted(inputs, tmp_path):
    kept = export(
        inputs,
        tmp_path / "p.parquet",
        drop_truncated=True,
        min_tokens=5,
        max_tokens=100,
        near_duplicates="normalized",
        min_pmi=0.0,
        min_judge_margin=0.5,
    )
    assert kept["id"].to_list() == ["ok1", "ok2"]
    stats = read_manifest(tmp_path / "p.parquet")["stats"]
    counts = {c["filter"]: c["removed"] for c in stats["filters"]}
    assert counts == {
        "empty": 1,
        "identical": 1,
        "truncated": 1,
        "length": 2,
        "min_pmi": 1,
        "min_judge_margin": 1,
        "exact_duplicate": 1,
        "near_duplicate": 1,  # "dup" is already gone; only "near" is left to catch
    }
    assert stats["input_pairs"] == 11 and stats["output_pairs"] == 2


def test_missing_pmi_or_judgment_counts_as_failing_the_margin(tmp_path):
    rows = CASES[:2]
    paths = {
        "generations": write_generations(tmp_path / "g.parquet", rows),
        "scores": write_scores(tmp_path / "s.parquet", ["ok1", "ok2"], {"ok2": None}),
    }
    kept = export(paths, tmp_path / "p.parquet", min_pmi=-100.0)
    assert kept["id"].to_list() == ["ok1"]


def test_judge_margins_average_items_and_skip_nulls(inputs):
    margins = dict(judge_margins(inputs["judgments"]).iter_rows())
    assert margins["ok1"] == pytest.approx(1.5)  # (4 + 5) / 2 - 3, the null item skipped
    assert margins["lowjudge"] == pytest.approx(-1.0)  # (5 + 1) / 2 - 4


def test_every_pair_removed_is_an_error_and_writes_nothing(tmp_path):
    paths = {"generations": write_generations(tmp_path / "g.parquet", [CASES[3]])}
    with pytest.raises(EmptyExport, match="identical: 1"):
        export(paths, tmp_path / "p.parquet")
    assert not (tmp_path / "p.parquet").exists()


def test_normalize_text_folds_case_punctuation_and_spaces():
    frame = pl.DataFrame({"t": ["  Hello,   WORLD!! ", "hello world", "Ｈｅｌｌｏ world", None]})
    normalized = frame.select(filters.normalize_text(pl.col("t")))["t"].to_list()
    assert normalized == ["hello world", "hello world", "hello world", ""]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=30)), min_size=1, max_size=20))
def test_fast_normalization_equals_the_definition(texts):
    series = pl.Series(texts, dtype=pl.String)
    expected = series.to_frame("t").select(filters.normalize_text(pl.col("t")))["t"]
    assert filters.normalize_texts(series).to_list() == expected.to_list()


def test_lsh_bands_by_hand():
    """32 entries, threshold 0.8: rows r=4, bands b=8 gives 1 - (1 - 0.8^4)^8 = 1 - 0.5904^8
    = 0.985 >= 0.97, while r=8, b=4 gives 1 - (1 - 0.8^8)^4 = 1 - 0.8322^4 = 0.52. At 0.5:
    r=2, b=16 gives 1 - 0.75^16 = 0.99; r=4 gives 1 - 0.9375^8 = 0.40."""
    assert filters.lsh_bands(0.8, 32) == (8, 4)
    assert filters.lsh_bands(0.5, 32) == (16, 2)


def _shingles(text: str) -> set[bytes]:
    data = text.encode()
    return {data[i : i + 8] for i in range(len(data) - 7)}


def test_minhash_estimates_jaccard_of_byte_8grams():
    """The signature agreement estimates the exact 8-gram Jaccard (computed here with sets)."""
    rng = np.random.default_rng(3)
    words = [f"word{i}" for i in range(500)]
    base = " ".join(rng.choice(words, 400))
    edited = base.split()
    for index in rng.choice(len(edited), 40, replace=False):
        edited[index] = "changed"
    variant = " ".join(edited)
    other = " ".join(rng.choice(words, 400))
    signatures = filters.minhash_signatures(pl.Series([base, variant, other]), num_perm=128)
    for left, right in ((0, 1), (0, 2)):
        a, b = _shingles([base, variant, other][left]), _shingles([base, variant, other][right])
        exact = len(a & b) / len(a | b)
        estimate = float((signatures[left] == signatures[right]).mean())
        assert abs(estimate - exact) < 0.12, (left, right, exact, estimate)


def test_minhash_keeps_first_of_near_duplicates_and_distinct_texts():
    rng = np.random.default_rng(5)
    words = [f"w{i}" for i in range(300)]
    base = " ".join(rng.choice(words, 200))
    near = base.replace(base.split()[50], "other", 1)  # one word changed: Jaccard ~0.95
    texts = pl.Series([base, " ".join(rng.choice(words, 200)), near, "tiny", "tiny", "tin"])
    keep = filters.minhash_keep_mask(texts, threshold=0.8)
    assert keep.tolist() == [True, True, False, True, False, True]
    # Texts in different groups are never compared.
    groups = np.array([1, 1, 2, 1, 1, 1], dtype=np.uint64)
    keep = filters.minhash_keep_mask(texts, threshold=0.8, groups=groups)
    assert keep.tolist() == [True, True, True, True, False, True]


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def test_parse_splits():
    assert parse_splits("train=0.95,test=0.05") == {"train": 0.95, "test": 0.05}
    assert parse_splits("train") == {"train": 1.0}
    for bad, message in [
        ("train=0.9,test=0.2", "sum to 1"),
        ("train=0.5,train=0.5", "twice"),
        ("train-a=1", "must start with a letter"),
        ("train=abc", "not a number"),
        ("train=0,test=1", r"\(0, 1\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_splits(bad)


def test_splits_deal_whole_prompts_deterministically():
    """200 prompts, 3 pairs each; train=0.9 puts exactly rint(0.9 * 200) = 180 prompts in
    train and 20 in test."""
    prompt_ids = pl.Series([f"q{i // 3:03d}" for i in range(600)])
    splits = {"train": 0.9, "test": 0.1}
    first = assign_splits(prompt_ids, splits, seed=1)
    frame = pl.DataFrame({"prompt_id": prompt_ids, "split": first})
    per_prompt = frame.group_by("prompt_id").agg(pl.col("split").n_unique())
    assert per_prompt["split"].max() == 1  # no prompt in two splits
    prompts = frame.unique("prompt_id")["split"].value_counts().sort("split")
    assert dict(prompts.iter_rows()) == {"test": 20, "train": 180}
    assert assign_splits(prompt_ids, splits, seed=1).equals(first)
    assert not assign_splits(prompt_ids, splits, seed=2).equals(first)
    # The assignment depends on the set of prompts, not on row order.
    shuffled = prompt_ids.sample(fraction=1.0, shuffle=True, seed=0)
    again = pl.DataFrame({"prompt_id": shuffled, "split": assign_splits(shuffled, splits, 1)})
    assert dict(again.unique("prompt_id").iter_rows()) == dict(
        frame.unique("prompt_id").iter_rows()
    )


def test_export_splits_have_no_prompt_overlap(tmp_path):
    generations = write_generations(
        tmp_path / "g.parquet",
        [
            generation_row(f"q{p}#{k}", f"q{p}", f"answer {p} {k} yes", f"answer {p} {k} no")
            for p in range(30)
            for k in range(3)
        ],
    )
    kept = export({"generations": generations}, tmp_path / "p.parquet", split="train=0.8,test=0.2")
    train = set(kept.filter(pl.col("split") == "train")["prompt_id"])
    test = set(kept.filter(pl.col("split") == "test")["prompt_id"])
    assert train and test and not train & test
    assert len(test) == 6  # rint(0.2 * 30)
    assert kept["split"].to_list() == sorted(kept["split"].to_list(), key=["train", "test"].index)


# --------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------


def test_user_turn_matches_build_messages_on_builtin_data(tmp_path):
    """The column-wise user turn equals chat.build_messages row by row (336 built-in rows,
    random-prompt rows trained without their context)."""
    from mipo_engine.resources import resource_dir

    rows = [json.loads(line) for line in (resource_dir("data") / "personalization.jsonl").open()]
    frame = pl.DataFrame(
        {
            "prompt": [row["prompt"] for row in rows] + ["  spaced prompt  "] * 2,
            "context": [row.get("context") for row in rows] + ["   ", None],
            "strategy": ["missing-context", "random-prompt"] * (len(rows) // 2)
            + ["prompt", "prompt"],
        }
    )
    built = frame.select(user_turn().alias("user"))["user"].to_list()
    expected = [
        build_messages(p, None if s == "random-prompt" else c)[0]["content"]
        for p, c, s in frame.iter_rows()
    ]
    assert built == expected


@pytest.mark.parametrize("export_format", ["trl", "trl-conversational", "openrlhf"])
def test_every_format_has_the_shape_trl_accepts(inputs, tmp_path, tiny_model_dir, export_format):
    """Each format loads (via load_preferences) as TRL preference data; applying the chat
    template to the conversational formats gives back exactly the generation-time prompt."""
    from transformers import AutoTokenizer
    from trl.data_utils import is_conversational, maybe_apply_chat_template, maybe_extract_prompt

    from mipo_engine.chat import ensure_chat_template
    from mipo_engine.publish import load_preferences

    out = tmp_path / "p.parquet"
    export(inputs, out, format=export_format, split="train=0.5,test=0.5")
    dataset = load_preferences(out)
    assert set(dataset) == {"train", "test"}
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ensure_chat_template(tokenizer)
    chosen_input = dict(
        pl.read_parquet(inputs["generations"]).select("id", "chosen_input").iter_rows()
    )
    for example in dataset["train"]:
        assert example["ref_chosen_logps"] < 0 and example["ref_rejected_logps"] < 0
        assert is_conversational(example) == (export_format != "trl")
        if export_format == "openrlhf":
            assert "prompt" not in example
            assert [m["role"] for m in example["chosen"]] == ["user", "assistant"]
        rendered = maybe_apply_chat_template(maybe_extract_prompt(dict(example)), tokenizer)
        assert rendered["prompt"] == chosen_input[example["id"]]
        assert rendered["chosen"].startswith(
            example["chosen"] if export_format == "trl" else example["chosen"][-1]["content"]
        )


def test_scores_with_other_ids_are_an_error_naming_file_row_and_id(tmp_path):
    generations = write_generations(tmp_path / "g.parquet", CASES[:3])
    short = write_scores(tmp_path / "short.parquet", ["ok1", "ok2"], {})
    with pytest.raises(InputError) as error:
        export({"generations": generations, "scores": short}, tmp_path / "p.parquet")
    message = str(error.value)
    assert "g.parquet" in message and "row 3" in message and "'empty'" in message
    extra = write_scores(tmp_path / "extra.parquet", ["ok1", "ok2", "empty", "ghost"], {})
    with pytest.raises(InputError) as error:
        export({"generations": generations, "scores": extra}, tmp_path / "p.parquet")
    message = str(error.value)
    assert "extra.parquet" in message and "row 4" in message and "'ghost'" in message
    assert not (tmp_path / "p.parquet").exists()


def test_config_errors_name_the_option(tmp_path):
    base = {"generations": tmp_path / "g.parquet", "out": tmp_path / "p.parquet"}
    with pytest.raises(ConfigError, match=r"min_pmi.*needs --scores"):
        ExportConfig.from_options(**base, min_pmi=0.0)
    with pytest.raises(ConfigError, match="min_judge_margin"):
        ExportConfig.from_options(**base, min_judge_margin=1.0)
    with pytest.raises(ConfigError, match=r"'split'.*sum to 1"):
        ExportConfig.from_options(**base, split="train=0.5")
    with pytest.raises(ConfigError, match="'format'"):
        ExportConfig.from_options(**base, format="csv")
    with pytest.raises(ConfigError, match="min_tokens"):
        ExportConfig.from_options(**base, min_tokens=9, max_tokens=3)


def test_cli_export_and_bad_input_exit_codes(inputs, tmp_path):
    out = tmp_path / "cli.parquet"
    args = ["export", "--generations", str(inputs["generations"]), "--out", str(out)]
    result = runner.invoke(app, [*args, "--split", "train=0.7,test=0.3", "--keep-identical"])
    assert result.exit_code == 0, result.output
    assert is_complete(out)
    assert read_manifest(out)["config"]["drop_identical"] is False
    result = runner.invoke(app, [*args, "--split", "train=0.7"])
    assert result.exit_code == 2 and "sum to 1" in result.output
    missing = ["export", "--generations", str(tmp_path / "nope.parquet"), "--out", str(out)]
    result = runner.invoke(app, missing)
    assert result.exit_code == 2 and "nope.parquet" in result.output


# --------------------------------------------------------------------------------------------
# Synthetic data and speed
# --------------------------------------------------------------------------------------------


def test_synthetic_generations_give_every_filter_work():
    frame = synthetic_generations(2_000, defect_rate=0.02, seed=1)
    assert frame.height == 2_000 and frame["id"].n_unique() == 2_000
    _, counts = filters.apply_filters(
        frame,
        [
            filters.non_empty(),
            filters.not_identical(),
            filters.not_truncated(),
            filters.exact_unique(),
        ],
    )
    assert all(c["removed"] > 10 for c in counts), counts


def test_export_costs_about_as_much_as_reading_and_writing_its_data(tmp_path):
    """Export is column expressions only: on 20,000 synthetic pairs, with every cheap filter
    and the normalised near-duplicate filter on, it takes a small multiple of one write plus
    one read of the generations artifact, timed on the same machine at the same moment (so
    the check holds on a busy machine; a per-row Python loop would be far slower)."""
    frame = synthetic_generations(20_000)
    generations = tmp_path / "g.parquet"
    started = time.perf_counter()
    write_artifact(frame, generations, GENERATIONS, {"stage": "test"})
    pl.read_parquet(generations)
    baseline = time.perf_counter() - started
    started = time.perf_counter()
    kept = export(
        {"generations": generations},
        tmp_path / "p.parquet",
        split="train=0.95,test=0.05",
        drop_truncated=True,
        near_duplicates="normalized",
    )
    elapsed = time.perf_counter() - started
    assert 19_000 < kept.height < 19_500
    assert elapsed < 6 * baseline + 0.5, f"export {elapsed:.2f} s vs read+write {baseline:.2f} s"


# --------------------------------------------------------------------------------------------
# Real generations from the tiny model, trained for one step
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_generations(tmp_path_factory, tiny_model_dir) -> Path:
    folder = tmp_path_factory.mktemp("tiny-run")
    prompts = folder / "p.parquet"
    result = runner.invoke(
        app, ["ingest", "builtin:personalization-train", "--out", str(prompts), "--limit", "6"]
    )
    assert result.exit_code == 0, result.output
    generations = folder / "g.parquet"
    result = runner.invoke(
        app,
        [
            "generate",
            "--prompts",
            str(prompts),
            "--out",
            str(generations),
            "--model",
            str(tiny_model_dir),
            "--max-new-tokens",
            "8",
            "--n-pairs",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    return generations


@pytest.mark.parametrize("export_format", ["trl", "trl-conversational"])
def test_trl_dpo_trainer_trains_one_step_on_an_export(
    tiny_generations, tiny_model_dir, tmp_path, export_format
):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from mipo_engine.chat import ensure_chat_template
    from mipo_engine.publish import load_preferences

    out = tmp_path / "p.parquet"
    run_export(
        ExportConfig.from_options(generations=tiny_generations, out=out, format=export_format)
    )
    dataset = load_preferences(out)["train"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ensure_chat_template(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = [p.detach().clone() for p in model.parameters()]
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 1 and np.isfinite(result.training_loss)
    assert any(not a.equal(b) for a, b in zip(before, model.parameters(), strict=True))


def test_project_trainer_trains_one_step_on_an_export(tiny_generations, tiny_model_dir, tmp_path):
    from mipo_engine.stages import train

    out = tmp_path / "p.parquet"
    run_export(
        ExportConfig.from_options(
            generations=tiny_generations, out=out, format="trl-conversational"
        )
    )
    config = train.TrainConfig.from_options(
        preferences=out,
        output_dir=tmp_path / "run",
        model=str(tiny_model_dir),
        max_steps=1,
        per_device_batch_size=4,
        max_length=128,
        device="cpu",
        show_progress=False,
    )
    final = train.run_train(config)
    assert Path(final).exists()


def test_length_ratio_and_copy_filters(tmp_path):
    """Token ratios and 4-gram overlaps worked out by hand for each pair."""
    context = "Use exactly three bullet points and a calm tone."
    prompt = "Plan a picnic for my family."
    rows = [
        # 40 vs 10 tokens: ratio 4.0 > 3 -> dropped by max_length_ratio=3.
        generation_row("ratio4", "q1", "a " * 40, "b " * 10, chosen_tokens=40, rejected_tokens=10),
        # 30 vs 10: ratio exactly 3.0 -> kept.
        generation_row("ratio3", "q2", "c " * 30, "d " * 10, chosen_tokens=30, rejected_tokens=10),
        # 0 tokens counts as 1: 2 vs 0 -> ratio 2 -> kept.
        generation_row("zero", "q3", "e e", "", chosen_tokens=2, rejected_tokens=0),
        # The chosen side restates the requirements block. User turn words (19): plan a picnic
        # for my family my requirements for your answer use exactly three bullet points and a
        # calm tone -> 16 distinct 4-grams; the response repeats "my requirements ... tone"
        # (words 7-19): 10 of them, 10/16 = 0.625 >= 0.5 -> dropped by max_copy=0.5.
        generation_row(
            "copier",
            "q4",
            "My requirements for your answer: use exactly three bullet points and a calm tone.",
            "Bring food.",
            prompt=prompt,
            context=context,
        ),
        # Repeats only "plan a picnic for my family" (3 of 16 4-grams = 0.1875) -> kept.
        generation_row(
            "echo",
            "q5",
            "Plan a picnic for my family: - bread - fruit - a blanket.",
            "Bring food.",
            prompt=prompt,
            context=context,
        ),
    ]
    generations = write_generations(tmp_path / "g.parquet", rows)
    kept = export(
        {"generations": generations}, tmp_path / "r.parquet", **ALL_OFF, max_length_ratio=3
    )
    assert set(kept["id"]) == {"ratio3", "zero", "copier", "echo"}
    kept = export({"generations": generations}, tmp_path / "c.parquet", **ALL_OFF, max_copy=0.5)
    assert set(kept["id"]) == {"ratio4", "ratio3", "zero", "echo"}
    counts = read_manifest(tmp_path / "c.parquet")["stats"]["filters"]
    assert counts == [
        {
            "filter": "copy",
            "setting": 0.5,
            "removed": 1,
            "description": "the chosen response repeats the user's message",
        }
    ]
    with pytest.raises(ConfigError, match="max_copy"):
        ExportConfig.from_options(generations=generations, out=tmp_path / "x.parquet", max_copy=0)
