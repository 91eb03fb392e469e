"""``benchmarks/run.py`` in ``--quick`` mode: the suites run end to end and print their JSON
lines. No timing is asserted (the quick model is random and tiny); the lines' shape and
internal consistency are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def check_line(line: dict) -> None:
    assert set(line) == KEYS
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


def test_train_suite_prints_throughput_and_memory_lines(tmp_path: Path) -> None:
    lines = run_suite("train", tmp_path)
    assert [line["name"] for line in lines] == [
        "train_throughput",
        "train_memory",
        "train_throughput_vs_precomputed",
        "train_memory_vs_precomputed",
    ]
    for line in lines:
        check_line(line)
    # Both throughput lines share our measurement; only the baseline differs.
    assert lines[0]["ours"] == lines[2]["ours"]
    assert lines[1]["metric"] == "peak RSS MiB"


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
