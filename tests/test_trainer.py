"""The trainer's pieces against independent computations, and short runs on a tiny model.

Independent references used here: ``full_logits_sequence_logps`` (whole-vocabulary logits,
``log_softmax``, gather) for log-probs, ``priors.sequence_kl`` on full logits for TDPO's KL,
and plain ``torch.autograd.grad`` + the projection written out for DPO-PG.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch

from mipo_engine.artifacts.pairs import read_pairs
from mipo_engine.chat import build_messages, render_chat
from mipo_engine.errors import ConfigError
from mipo_engine.modeling.logps import full_logits_sequence_logps
from mipo_engine.modeling.policy import policy_sequence_logps, response_kl
from mipo_engine.modeling.tokenization import EncodedPair
from mipo_engine.stages.score import ScoreConfig, run_score
from mipo_engine.stages.train import TrainConfig, run_train
from mipo_engine.training.data import (
    LengthGroupedSeededSampler,
    PairCollator,
    PairDataset,
    encode_examples,
)
from mipo_engine.training.loss_settings import LossSettings
from mipo_engine.training.priors import sequence_kl
from mipo_engine.training.trainer import PreferenceTrainer

REQUESTS = [
    "What is the capital of France?",
    "Give me a tip for learning to cook.",
    "Explain like I am a beginner.",
    "Keep it under 30 words.",
    "What is the capital of France? Be formal.",
    "Give me a tip. Use bullet points.",
    "I prefer short answers with examples.",
    "End with a question.",
]
# Learnable pairs: every chosen answer is one sentence, every rejected one the same babble.
CHOSEN = "Paris is the capital of France."
REJECTED = "bad no bad no bad no bad"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny model's matmuls are microseconds: with a second thread, synchronisation costs
    dominate (30x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def preferences_file(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TRL-style preferences artifact (rendered prompt strings) of 8 learnable pairs."""
    _, tokenizer = _load(tiny_model_dir)
    frame = pl.DataFrame(
        {
            "id": [f"pair-{i}" for i in range(len(REQUESTS))],
            "prompt": [render_chat(tokenizer, build_messages(r)) for r in REQUESTS],
            "chosen": [CHOSEN] * len(REQUESTS),
            "rejected": [REJECTED] * len(REQUESTS),
        }
    )
    path = tmp_path_factory.mktemp("prefs") / "preferences.parquet"
    frame.write_parquet(path)
    return path


@pytest.fixture(scope="module")
def scores_file(preferences_file: Path, tiny_model_dir: Path) -> Path:
    out = preferences_file.with_name("scores.parquet")
    return run_score(
        ScoreConfig.from_options(
            generations=preferences_file, out=out, model=str(tiny_model_dir), max_length=64
        )
    )


def _train(output_dir: Path, preferences: Path, model: Path, **options: object) -> list[dict]:
    settings = {
        "preferences": preferences,
        "output_dir": output_dir,
        "model": str(model),
        "max_length": 64,
        "per_device_batch_size": 4,
        "logging_steps": 1,
        "save_steps": 1000,
        "show_progress": False,
        **options,
    }
    run_train(TrainConfig.from_options(**settings))
    lines = (output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


# --------------------------------------------------------------------------------------------
# Forward pass and TDPO's KL
# --------------------------------------------------------------------------------------------


def _batch(tokenizer, texts: list[tuple[str, str]]):
    from mipo_engine.training.data import pad_sequences

    sequences = []
    for prompt, response in texts:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        ids = [tokenizer.bos_token_id, *prompt_ids, *response_ids, tokenizer.eos_token_id]
        sequences.append(EncodedPair(ids, 1 + len(prompt_ids)))
    return pad_sequences(sequences, tokenizer.pad_token_id)


@pytest.mark.parametrize("lora", [False, True])
def test_policy_sequence_logps_equals_full_logits(tiny_model_dir: Path, lora: bool) -> None:
    model, tokenizer = _load(tiny_model_dir)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
        # Non-zero adapters, so the comparison covers the LoRA path, not only the base model.
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.5)
    ids, attention, response = _batch(
        tokenizer, [("User: hi", "Paris is the capital."), ("User: a longer question", "no")]
    )
    ours = policy_sequence_logps(model, ids, attention, response, chunk_size=3)
    expected, counts = full_logits_sequence_logps(model, ids, attention, response)
    torch.testing.assert_close(ours.logps, expected, rtol=0, atol=1e-4)
    assert ours.counts.tolist() == counts.tolist()


def test_response_kl_equals_sequence_kl_on_full_logits(tiny_model_dir: Path) -> None:
    """Value and gradient of the chunked KL match priors.sequence_kl on full logits."""
    torch.manual_seed(0)
    hidden, vocab, rows = 8, 50, 3
    weight = torch.randn(vocab, hidden, requires_grad=True)
    policy_hidden = torch.randn(rows, 5, hidden, requires_grad=True)  # (B, T, H)
    ref_hidden = torch.randn(rows, 5, hidden)
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)

    expected = sequence_kl(ref_hidden @ weight.detach().T, policy_hidden @ weight.T, mask)
    expected_grads = torch.autograd.grad(expected.sum(), [weight, policy_hidden])

    row_index, col_index = mask.nonzero(as_tuple=True)
    ours = response_kl(
        policy_hidden[row_index, col_index],
        ref_hidden[row_index, col_index],
        weight,
        row_index,
        rows,
        chunk_size=2,
    )
    grads = torch.autograd.grad(ours.sum(), [weight, policy_hidden])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Settings, batching, data order
# --------------------------------------------------------------------------------------------


def test_loss_settings_take_the_papers_defaults() -> None:
    """DESIGN.md section 4: MIO is length-normalised with beta in {5, ...} (seed 000); InfoPO
    length-normalised with beta = 1 giving eq. 13 (seed 001); DPO sums log-probs."""
    mio = LossSettings.resolve("mio")
    assert (mio.beta, mio.length_normalize) == (5.0, True)
    infopo = LossSettings.resolve("infopo")
    assert (infopo.beta, infopo.length_normalize) == (1.0, True)
    dpo = LossSettings.resolve("dpo", beta=0.3)
    assert (dpo.beta, dpo.length_normalize, dpo.prior) == (0.3, False, None)
    assert LossSettings.resolve("mi_dpo").prior == "ref"
    assert LossSettings.resolve("simpo").gamma == 1.0


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"loss": "nope"}, "loss"),
        ({"loss": "dpo", "prior": "ref"}, "prior"),
        ({"loss": "mi_dpo", "prior": "unknown"}, "prior"),
        ({"loss": "mi_dpo", "prior": "learned"}, "prior"),
        ({"loss": "mi_dpo", "prior": "centropy"}, "eta"),
        ({"loss": "mi_dpo", "prior": "length"}, "length_penalty"),
        ({"loss": "dpo", "gamma": 1.0}, "gamma"),
        ({"loss": "mio", "beta": -1.0}, "beta"),
    ],
)
def test_loss_settings_reject_bad_combinations(options: dict, key: str) -> None:
    loss = options.pop("loss")
    with pytest.raises(ConfigError) as error:
        LossSettings.resolve(loss, **options)
    assert error.value.key == key


def test_collator_stacks_chosen_rows_then_rejected_rows() -> None:
    """Pairs (chosen ids [5, 6 | 7], rejected [5, 6 | 8, 9]) and ([5 | 7, 7], [5 | 9]):
    rows 0-1 chosen, rows 2-3 rejected, right-padded with 0; response mask from the start."""
    examples = encode_examples_by_hand()
    batch = PairCollator(pad_id=0)(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [5, 7, 7, 0], [5, 6, 8, 9], [5, 9, 0, 0]]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 0],
        [1, 1, 1, 0],
        [1, 1, 1, 1],
        [1, 1, 0, 0],
    ]
    assert batch["response_mask"].int().tolist() == [
        [0, 0, 1, 0],
        [0, 1, 1, 0],
        [0, 0, 1, 1],
        [0, 1, 0, 0],
    ]
    assert batch["chosen_tokens"].tolist() == [1, 2]
    assert batch["rejected_tokens"].tolist() == [2, 1]
    assert batch["ref_chosen_logps"].tolist() == [-1.0, -2.0]
    assert batch["index"].tolist() == [0, 1]


def encode_examples_by_hand():
    from mipo_engine.training.data import PairExample

    return [
        PairExample(
            0, EncodedPair([5, 6, 7], 2), EncodedPair([5, 6, 8, 9], 2), {"ref_chosen_logps": -1.0}
        ),
        PairExample(
            1, EncodedPair([5, 7, 7], 1), EncodedPair([5, 9], 1), {"ref_chosen_logps": -2.0}
        ),
    ]


def test_sampler_order_depends_only_on_seed_and_epoch() -> None:
    lengths = [3, 50, 7, 20, 9, 1, 33, 12, 40, 5]
    sampler = LengthGroupedSeededSampler(lengths, batch_size=2, seed=7, group_factor=2)
    first = list(sampler)
    assert sorted(first) == list(range(10))
    again = LengthGroupedSeededSampler(lengths, batch_size=2, seed=7, group_factor=2)
    assert list(again) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    # Within each mega-batch of 4 the examples come longest first.
    for start in range(0, 10, 4):
        group = [lengths[i] for i in first[start : start + 4]]
        assert group == sorted(group, reverse=True)


def test_token_counts_that_disagree_with_the_scores_are_refused(
    preferences_file: Path, scores_file: Path, tiny_model_dir: Path
) -> None:
    from mipo_engine.artifacts.pairs import attach_scores

    _, tokenizer = _load(tiny_model_dir)
    pairs = attach_scores(read_pairs(preferences_file), scores_file)
    with pytest.raises(ConfigError, match="--max-length 12"):
        encode_examples(pairs, tokenizer, max_length=12)


# --------------------------------------------------------------------------------------------
# Training runs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lora_r", [None, 4])
def test_step0_rewards_are_zero_with_scores_from_mipo_score(
    preferences_file: Path, scores_file: Path, tiny_model_dir: Path, tmp_path: Path, lora_r
) -> None:
    """The first log averages step 1's forward passes, all before the first update: with the
    reference from `mipo score`, D_c = D_r = 0 (DESIGN.md section 4 invariant)."""
    records = _train(
        tmp_path / "run",
        preferences_file,
        tiny_model_dir,
        scores=scores_file,
        loss="dpo",
        max_steps=2,
        learning_rate=1e-2,
        lora_r=lora_r,
    )
    first = records[0]
    assert first["step"] == 1
    assert abs(first["rewards/chosen"]) < 1e-3 and abs(first["rewards/rejected"]) < 1e-3
    assert abs(first["logps/chosen_shift"]) < 1e-3
    assert first["loss"] == pytest.approx(0.6931, abs=1e-3)  # -log sigmoid(0) = log 2
    # The second step sees the updated policy.
    assert abs(records[1]["rewards/margins"]) > 1e-4


@pytest.mark.parametrize(("loss", "beta"), [("dpo", 0.5), ("mio", 5.0), ("infopo", 1.0)])
def test_short_training_learns_the_pairs(
    preferences_file: Path,
    scores_file: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    loss: str,
    beta: float,
) -> None:
    records = _train(
        tmp_path / "run",
        preferences_file,
        tiny_model_dir,
        scores=scores_file,
        loss=loss,
        beta=beta,
        max_steps=30,
        learning_rate=3e-3,
        lr_scheduler="constant",
    )
    first_loss = records[0]["loss"]
    last_losses = [r["loss"] for r in records[-3:]]
    assert max(last_losses) < first_loss - 0.05
    assert records[0]["rewards/accuracies"] == 0.0  # D_c = D_r = 0 at step 0: no pair won
    # Accuracy of the final model on all training pairs, by an independent computation.
    final_model, tokenizer = _load(tmp_path / "run" / "final")
    scores = pl.read_parquet(scores_file).sort("id")
    pairs = read_pairs(preferences_file).sort("id")
    examples = encode_examples(pairs, tokenizer, max_length=64)
    batch = PairCollator(tokenizer.pad_token_id)(examples)
    with torch.no_grad():
        logps, _ = full_logits_sequence_logps(
            final_model, batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        )
    n = len(examples)
    chosen_shift = logps[:n] - torch.tensor(scores["ref_chosen_logps"].to_list())
    rejected_shift = logps[n:] - torch.tensor(scores["ref_rejected_logps"].to_list())
    assert (chosen_shift > rejected_shift).float().mean().item() >= 0.99


def test_dice_prior_with_reference_scores_trains_exactly_like_dpo(
    preferences_file: Path, scores_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """MI-DPO with zeta = the previous policy (DICE) is DPO when that policy is pi_ref
    (seed 003 App. B): giving the reference scores as --prior-scores must reproduce DPO."""
    common = {"max_steps": 3, "learning_rate": 1e-2, "beta": 0.5}
    dpo = _train(
        tmp_path / "dpo", preferences_file, tiny_model_dir, scores=scores_file, loss="dpo", **common
    )
    dice = _train(
        tmp_path / "dice",
        preferences_file,
        tiny_model_dir,
        prior_scores=scores_file,
        loss="mi_dpo",
        prior="dice",
        **common,
    )
    assert [r["loss"] for r in dice] == pytest.approx([r["loss"] for r in dpo], abs=1e-5)


def test_dpo_pg_sets_the_projected_gradient(
    preferences_file: Path, scores_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Seed 002 Def. H.1: grad = g_w - max(0, g_w . g_l) / |g_l|^2 g_l, g = grad of the batch NLL."""
    from mipo_engine.artifacts.pairs import attach_scores
    from mipo_engine.training.arguments import training_arguments

    model, tokenizer = _load(tiny_model_dir)
    pairs = attach_scores(read_pairs(preferences_file), scores_file)
    dataset = PairDataset(encode_examples(pairs, tokenizer, max_length=64))
    collator = PairCollator(tokenizer.pad_token_id)
    config = TrainConfig.from_options(
        preferences=preferences_file, output_dir=tmp_path, loss="dpo_pg", learning_rate=1e-3
    )
    trainer = PreferenceTrainer(
        model=model,
        args=training_arguments(config, cuda=False),
        data_collator=collator,
        train_dataset=dataset,
        processing_class=tokenizer,
        settings=config.loss_settings(),
    )
    batch = collator([dataset[i] for i in range(4)])
    model.zero_grad()
    trainer.training_step(model, batch)
    got = torch.cat([p.grad.flatten() for p in model.parameters()])

    model.zero_grad()
    params = list(model.parameters())
    logps, _ = full_logits_sequence_logps(
        model, batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    )
    g_w = torch.autograd.grad(-logps[:4].mean(), params, retain_graph=True)
    g_l = torch.autograd.grad(-logps[4:].mean(), params)
    g_w = torch.cat([g.flatten() for g in g_w]).double()
    g_l = torch.cat([g.flatten() for g in g_l]).double()
    expected = g_w - max(0.0, float(g_w @ g_l)) / float(g_l @ g_l) * g_l
    torch.testing.assert_close(got.double(), expected, rtol=1e-3, atol=1e-6)
    assert float(g_w @ g_l) > 0  # the projection was active in this case


def test_infonce_trains_on_generations_and_refuses_pairs_without_rejected_input(
    preferences_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from mipo_engine.artifacts.schemas import GENERATIONS

    prefs = pl.read_parquet(preferences_file)
    _, tokenizer = _load(tiny_model_dir)
    generations = pl.DataFrame(
        {
            "id": prefs["id"],
            "prompt_id": prefs["id"],
            "prompt": REQUESTS,
            "context": [None] * prefs.height,
            "chosen": prefs["chosen"],
            "rejected": prefs["rejected"],
            "strategy": ["random-prompt"] * prefs.height,
            "negative_source": list(reversed(prefs["id"].to_list())),
            "chosen_input": prefs["prompt"],
            "rejected_input": [
                render_chat(tokenizer, build_messages(r)) for r in reversed(REQUESTS)
            ],
            "model": ["tiny"] * prefs.height,
            "seed": list(range(prefs.height)),
            "chosen_finish_reason": ["stop"] * prefs.height,
            "rejected_finish_reason": ["stop"] * prefs.height,
            "chosen_tokens": [7] * prefs.height,
            "rejected_tokens": [9] * prefs.height,
        },
        schema_overrides=GENERATIONS.polars_schema(),
    )
    path = tmp_path / "generations.parquet"
    generations.write_parquet(path)
    records = _train(
        tmp_path / "run", path, tiny_model_dir, loss="infonce", max_steps=2, learning_rate=1e-3
    )
    assert records[0]["step"] == 1 and records[0]["loss"] > -0.6932  # bounded below by -log 2
    with pytest.raises(ConfigError, match="rejected_input") as error:
        _train(tmp_path / "bad", preferences_file, tiny_model_dir, loss="infonce", max_steps=1)
    assert error.value.key == "loss"


def test_two_process_launch_shards_the_pairs_and_writes_one_run(
    preferences_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Two processes (DDP over gloo on CPU, as ``torchrun`` or ``accelerate launch`` start them
    on several GPUs): the first computes the reference log-probs and the others read them,
    each trains on its own share of the pairs, one process writes the folder, and a rerun
    resumes from the last checkpoint instead of starting over."""
    from tests.helpers.mipo_process import REPO_ROOT

    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO_ROOT / "cli.py"), "train",
        "--preferences", str(preferences_file),
        "--model", str(tiny_model_dir), "--loss", "dpo", "--beta", "0.5",
        "--per-device-batch-size", "2", "--max-steps", "2", "--max-length", "64",
        "--logging-steps", "1", "--save-steps", "1", "--output-dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch() -> subprocess.CompletedProcess[str]:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        return result

    launch()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # 8 pairs, 2 processes x 2 pairs per step: one epoch is 2 steps only if the shards differ.
    assert [(r["step"], r["epoch"]) for r in records] == [(1, 0.5), (2, 1.0)]
    assert abs(records[0]["rewards/chosen"]) < 1e-3 and abs(records[0]["rewards/rejected"]) < 1e-3
    names = {path.name for path in out.iterdir()}
    assert {"final", "checkpoint-2", "train_manifest.json", "logps.png"} <= names
    assert {"reference_scores.parquet", "reference_scores.manifest.json"} <= names
    assert not [name for name in names if name.endswith(".tmp")]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "final")

    (out / "train_manifest.json").unlink()
    second = launch()
    said = (second.stdout + second.stderr).replace("\n", "")
    assert f"Resuming from {out / 'checkpoint-2'}" in said
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
