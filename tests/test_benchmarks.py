"""``benchmarks/run.py`` in ``--quick`` mode: the suites run end to end and print their JSON
lines. No timing is asserted (the quick model is random and tiny); the lines' shape and
internal consistency are."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.pairs import PairShape, make_pairs, pair_tokens
from mipo_engine.testing import make_tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
KEYS = {"name", "metric", "ours", "baseline", "ratio", "device", "model", "settings"}


def run_script(script: str, *args: str) -> list[dict]:
    """Run ``benchmarks/<script>`` and return the JSON lines it printed."""
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]


def run_suite(suite: str, tmp_path: Path) -> list[dict]:
    lines = run_script(
        "run.py",
        "--suite",
        suite,
        "--quick",
        "--workdir",
        str(tmp_path / suite),
        "--json-out",
        str(tmp_path / "lines.jsonl"),
    )
    saved = (tmp_path / "lines.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in saved[-len(lines) :]] == lines
    return lines


BOUND_KEYS = {"bound_tokens_per_s", "bound_fraction"}
MFU_KEYS = {"train_flops_per_token", "gemm_flops_per_s_float32", "mfu_ours", "mfu_baseline"}


def check_line(line: dict) -> None:
    assert set(line) - BOUND_KEYS - MFU_KEYS == KEYS
    assert line["device"] == "cpu" and line["model"] == "tiny-random-llama"
    assert line["ours"] > 0 and line["baseline"] > 0
    higher_is_better = line["metric"].endswith("/s")
    expected = (
        line["ours"] / line["baseline"] if higher_is_better else line["baseline"] / line["ours"]
    )
    assert line["ratio"] == pytest.approx(expected, rel=2e-3, abs=2e-3)


def test_export_suite_prints_its_line(tmp_path: Path) -> None:
    lines = run_suite("export", tmp_path)
    assert [line["name"] for line in lines] == ["export_2k"]
    check_line(lines[0])
    assert lines[0]["metric"] == "seconds" and lines[0]["settings"]["pairs"] == 2000


def test_train_suite_prints_like_for_like_then_end_to_end_lines(tmp_path: Path) -> None:
    lines = run_suite("train", tmp_path)
    names = [line["name"] for line in lines]
    assert names == [
        "train_vs_trl_precomputed",
        "train_memory_vs_trl_precomputed",
        "train_end_to_end_vs_trl",
        "train_vs_trl_default",
    ]
    for line in lines:
        check_line(line)
    by_name = dict(zip(names, lines, strict=True))
    # Both throughput lines share our measurement; only the baseline differs.
    assert by_name["train_vs_trl_precomputed"]["ours"] == by_name["train_vs_trl_default"]["ours"]
    assert by_name["train_memory_vs_trl_precomputed"]["metric"] == "peak RSS MiB"
    end_to_end = by_name["train_end_to_end_vs_trl"]
    assert end_to_end["metric"] == "seconds per epoch"
    # Ours includes the scoring time: more than the scoring alone.
    assert end_to_end["ours"] > end_to_end["settings"]["score_seconds"] > 0
    assert end_to_end["settings"]["steps_per_process"] == 4  # 8 pairs, 2 per step
    check_utilization(by_name["train_vs_trl_precomputed"])


def check_utilization(line: dict) -> None:
    """MFU = tokens/s x training FLOPs per token / the float32 GEMM rate, on both sides."""
    assert set(line) & MFU_KEYS == MFU_KEYS
    rate, per_token = line["gemm_flops_per_s_float32"], line["train_flops_per_token"]
    assert rate > 1e8 and per_token > 0
    assert line["mfu_ours"] == pytest.approx(line["ours"] * per_token / rate, rel=1e-2, abs=1e-4)
    assert line["mfu_baseline"] == pytest.approx(
        line["baseline"] * per_token / rate, rel=1e-2, abs=1e-4
    )


def test_train_long_suite_prints_memory_and_throughput(tmp_path: Path) -> None:
    lines = run_suite("train_long", tmp_path)
    assert [line["name"] for line in lines] == ["train_memory_long", "train_throughput_long"]
    for line in lines:
        check_line(line)
        assert "precompute_ref_log_probs" in line["settings"]["baseline"]
    check_utilization(lines[1])


def test_score_suite_prints_its_line(tmp_path: Path) -> None:
    lines = run_suite("score", tmp_path)
    assert [line["name"] for line in lines] == ["score_throughput"]
    check_line(lines[0])
    assert lines[0]["settings"]["tokens"] > 0


def test_generate_suite_prints_batched_and_bound_lines(tmp_path: Path) -> None:
    """The hf lines, and the vLLM line whenever vLLM is installed (the README's install
    includes it; its engine start makes this the slowest quick suite)."""
    lines = run_suite("generate", tmp_path)
    names = [line["name"] for line in lines]
    expected = ["generate_hf_vs_batched", "generate_hf"]
    if importlib.util.find_spec("vllm") is not None:
        expected.append("generate_vllm")
    assert names == expected
    for line in lines:
        check_line(line)
        assert set(line) >= BOUND_KEYS
        settings = line["settings"]
        bound = settings["gemm_flops_per_s"] / settings["flops_per_token"]
        assert line["bound_tokens_per_s"] == pytest.approx(bound, rel=2e-3)
        assert line["bound_fraction"] == pytest.approx(line["ours"] / bound, rel=2e-2, abs=1e-4)
    # The tiny model: four linear layers per block plus the MLP's three and the head,
    # 2 FLOPs per weight (hidden 128, MLP 256, 2 of 4 heads for keys and values, vocab 384).
    hidden, mlp, kv, vocab = 128, 256, 64, 384
    per_layer = hidden * hidden * 2 + hidden * kv * 2 + 3 * hidden * mlp
    expected_flops = 2 * (2 * per_layer + hidden * vocab)
    assert lines[0]["settings"]["flops_per_token"] == pytest.approx(expected_flops, rel=1e-3)


def test_scale_suite_prints_worker_ratio_and_ray_overhead(tmp_path: Path) -> None:
    lines = run_suite("scale", tmp_path)  # needs the [ray] extra (in the README's install)
    assert [line["name"] for line in lines] == [
        "scale_ray_2_vs_1_worker",
        "scale_ray_overhead_per_chunk",
    ]
    for line in lines:
        check_line(line)
    overhead = lines[1]
    assert overhead["settings"]["chunks"] == {"small": 1, "large": 4}
    # Quick runs are too short for the figures to mean anything; their parts must exist.
    assert isinstance(overhead["settings"]["overhead_s_per_chunk"], float)
    assert isinstance(overhead["settings"]["fixed_start_s"], float)
    assert set(lines[0]["settings"]["actor_start_s"]) == {"ray1", "ray2"}


def test_head_benchmark_prints_its_comparisons() -> None:
    lines = run_script("head.py", "--quick")
    assert [line["name"] for line in lines] == [
        "head_forward",
        "head_forward_backward",
        "head_extra_peak_memory",
        "head_forward_vs_tiles",
        "head_forward_backward_vs_tiles",
        "head_extra_peak_memory_vs_tiles",
    ]
    for line in lines:
        assert set(line) == KEYS
        assert line["settings"]["ours"] == "blocks"
        if line["metric"] == "s":  # memory at these sizes may round to nothing
            assert line["ours"] > 0 and line["baseline"] > 0
            assert line["ratio"] == pytest.approx(
                line["baseline"] / line["ours"], rel=1e-2, abs=2e-3
            )


def test_pairs_have_the_requested_token_lengths() -> None:
    tokenizer = make_tiny_tokenizer()
    shape = PairShape(pairs=6, prompt_tokens=20, response_tokens=12)
    pairs = make_pairs(tokenizer, shape)
    assert pairs.height == 6 and pairs["id"].n_unique() == 6
    per_pair = pair_tokens(tokenizer, pairs, max_length=1024) / shape.pairs
    # Two sequences of prompt + response (+ end of sequence); re-encoding decoded text may
    # merge or split a token at the window edges.
    nominal = 2 * (shape.prompt_tokens + shape.response_tokens + 1)
    assert abs(per_pair - nominal) <= 6


def test_generation_profile_splits_the_time(tiny_model_dir: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "profile_generate.py"),
            "--model",
            str(tiny_model_dir),
            "--prompts",
            "3",
            "--tokens",
            "4",
            "--ops",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    profile = json.loads(completed.stdout.strip().splitlines()[-1])
    parts = profile["forward_seconds"] + profile["sampler_seconds"] + profile["other_seconds"]
    assert parts == pytest.approx(profile["seconds"], abs=2e-3)
    assert profile["forward_seconds"] > 0 and profile["sampler_seconds"] > 0
    # --ops: the costliest operators (shares of the profiled call), and the GEMM rate at the
    # decode shapes: every linear layer of the tiny model, 3 rows each.
    assert len(profile["ops"]) == 5 and all(0 < op["share"] <= 1 for op in profile["ops"])
    assert sum(op["share"] for op in profile["ops"]) <= 1.0 + 1e-6
    gemm = profile["decode_gemm"]
    assert gemm["rows"] == 3 and gemm["share_of_cube_rate"] > 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert sum(shape["layers"] for shape in gemm["shapes"]) == len(layers)
