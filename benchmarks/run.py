"""Side-by-side benchmarks of mipo-engine against the tools users would otherwise pick.

    python benchmarks/run.py --suite train|train_long|score|generate|export|scale|all [--quick]
                             [--device cpu|cuda] [--model M] [--reps N]
                             [--gen-tokens N] [--pairs-per-step N]
                             [--gradient-checkpointing]

Every comparison runs ours and the baseline on the same machine, model, data, batch and
maximum length, alternating, each at least ``--reps`` times after a warm-up (one warm-up
step per training process; one untimed call per side for generation and export). The run
ends by printing one JSON object per comparison on its own line:

    {"name", "metric", "ours", "baseline", "ratio", "device", "model", "settings"}

``ratio`` is ours/baseline for throughput and baseline/ours for memory and seconds, so
higher is better for every line. ``--quick`` swaps in a tiny random model and small
settings: it checks that the suites run end to end, and its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.pairs import PairShape, make_pairs, pair_tokens, write_pairs  # noqa: E402

SUITES = ("export", "score", "train", "train_long", "generate", "scale")


@dataclass(frozen=True)
class Settings:
    """Sizes of one run (full or ``--quick``)."""

    train_shape: PairShape  # one epoch per process, the first step of which is the warm-up
    batch_size: int
    max_length: int
    long_shape: PairShape
    long_max_length: int
    score_shape: PairShape
    gen_prompts: int
    gen_tokens: int
    export_pairs: int
    scale_prompts: int
    reps: int
    gradient_checkpointing: bool = False


FULL = Settings(
    train_shape=PairShape(pairs=16, prompt_tokens=128, response_tokens=128),
    batch_size=2,
    max_length=512,
    # Sequences of 1.1k-2k tokens: a 256-token prompt and responses of 800-1750 tokens.
    long_shape=PairShape(pairs=6, prompt_tokens=256, response_tokens=1750, response_min=800),
    long_max_length=2048,
    score_shape=PairShape(pairs=32, prompt_tokens=128, response_tokens=128),
    gen_prompts=32,
    gen_tokens=64,
    export_pairs=100_000,
    scale_prompts=96,
    reps=3,
)
QUICK = Settings(
    train_shape=PairShape(pairs=8, prompt_tokens=24, response_tokens=16),
    batch_size=2,
    max_length=128,
    long_shape=PairShape(pairs=4, prompt_tokens=24, response_tokens=64, response_min=24),
    long_max_length=128,
    score_shape=PairShape(pairs=8, prompt_tokens=24, response_tokens=16),
    gen_prompts=4,
    gen_tokens=8,
    export_pairs=2_000,
    scale_prompts=8,
    reps=1,
)


@dataclass
class Context:
    """What the suites share: paths, device, model and the tokenizer used to count tokens."""

    settings: Settings
    device: str
    model: str
    model_label: str
    workdir: Path
    quick: bool
    lines: list[dict[str, Any]] = field(default_factory=list)
    _tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        return self._tokenizer

    def record(
        self,
        name: str,
        metric: str,
        ours: float,
        baseline: float,
        *,
        higher_is_better: bool,
        settings: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> None:
        ratio = ours / baseline if higher_is_better else baseline / ours
        self.lines.append(
            {
                **(extra or {}),
                "name": name,
                "metric": metric,
                # Significant figures, not decimals: a 0.0157 s export keeps its precision.
                "ours": float(f"{ours:.6g}"),
                "baseline": float(f"{baseline:.6g}"),
                "ratio": round(ratio, 3),
                "device": self.device,
                "model": self.model_label,
                "settings": settings,
            }
        )
        log(f"{name}: ours {ours:.4g} vs baseline {baseline:.4g} {metric} -> ratio {ratio:.3f}")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Jobs that always get a process of their own: vLLM's engine starts worker processes and
# is shut down with its process.
ISOLATED_JOBS = ("generate_vllm",)


def run_job(job: dict[str, Any], context: Context) -> dict[str, Any]:
    """Run one measurement in a fresh process; its last line starting RESULT is the answer.

    ``--quick`` runs the jobs in this process instead (their figures mean nothing there, and
    importing torch, transformers and TRL once instead of per job keeps the smoke run short).
    """
    log(f"running {job['job']} {job.get('impl', '')}".rstrip())
    job = {"device": context.device, "model": context.model, **job}
    if context.quick and job["job"] not in ISOLATED_JOBS:
        from benchmarks import workers

        # Libraries print to stdout (TRL its metrics); stdout is for the JSON lines only.
        with contextlib.redirect_stdout(sys.stderr):
            result = workers.JOBS[job["job"]](job)
        return json.loads(json.dumps(result))
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "workers.py"), json.dumps(job)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    results = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not results:
        sys.stderr.write(completed.stderr[-4000:])
        raise SystemExit(f"benchmark job {job['job']} failed (exit {completed.returncode})")
    return json.loads(results[-1][len("RESULT ") :])


# ---------------------------------------------------------------------------------------------
# Suites
# ---------------------------------------------------------------------------------------------


def _pairs_file(
    context: Context, shape: PairShape, name: str, max_length: int | None = None
) -> tuple[Path, int]:
    pairs = make_pairs(context.tokenizer, shape)
    path = write_pairs(pairs, context.workdir / f"{name}.parquet")
    length = max_length or context.settings.max_length
    return path, pair_tokens(context.tokenizer, pairs, length)


def _score_job(
    context: Context, impl: str, data: Path, out: Path, max_length: int | None = None
) -> dict[str, Any]:
    return run_job(
        {
            "job": f"score_{impl}",
            "data": str(data),
            "out": str(out),
            "batch_size": context.settings.batch_size,
            "max_length": max_length or context.settings.max_length,
            "workdir": str(context.workdir / f"score-{impl}"),
        },
        context,
    )


def suite_score(context: Context) -> None:
    s = context.settings
    data, tokens = _pairs_file(context, s.score_shape, "score-pairs")
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trl": []}
    for rep in range(s.reps):
        for impl in runs:
            out = context.workdir / f"scores-{impl}-{rep}.parquet"
            runs[impl].append(_score_job(context, impl, data, out))
    throughput = {
        impl: statistics.median(tokens / r["seconds"] for r in results)
        for impl, results in runs.items()
    }
    context.record(
        "score_throughput",
        "tokens/s",
        throughput["ours"],
        throughput["trl"],
        higher_is_better=True,
        settings={
            "pairs": s.score_shape.pairs,
            "tokens": tokens,
            "pairs_per_batch": s.batch_size,
            "max_length": s.max_length,
            "baseline": "trl DPOTrainer._precompute_ref_logps (precompute_ref_log_probs=True)",
            "ours": "mipo score --no-pmi, hf backend",
            "reps": s.reps,
        },
    )


def _train_runs(
    context: Context, shape: PairShape, name: str, impls: tuple[str, ...]
) -> tuple[dict[str, list[dict[str, Any]]], list[float], int, int]:
    """One epoch of each trainer in ``impls`` per repetition, alternating, on pairs of
    ``shape``; before each repetition, ``mipo score`` of the pairs (our reference, timed).
    Returns (runs per trainer, scoring seconds per repetition, tokens, steps per epoch)."""
    s = context.settings
    max_length = s.long_max_length if name == "long-pairs" else s.max_length
    data, tokens = _pairs_file(context, shape, name, max_length)
    steps = -(-shape.pairs // s.batch_size)
    runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    score_seconds = []
    for rep in range(s.reps):
        scores = context.workdir / f"{name}-scores-{rep}.parquet"
        score_seconds.append(_score_job(context, "ours", data, scores, max_length)["seconds"])
        for impl in impls:
            job = {
                "job": "train_ours" if impl == "ours" else "train_trl",
                "impl": impl,
                "data": str(data),
                "scores": str(scores),
                "batch_size": s.batch_size,
                "max_length": max_length,
                "steps": steps,
                "gradient_checkpointing": s.gradient_checkpointing,
                "workdir": str(context.workdir / f"{name}-{impl}-{rep}"),
            }
            runs[impl].append(run_job(job, context))
    return runs, score_seconds, tokens, steps


def _step_throughput(runs: list[dict[str, Any]], tokens_per_step: float) -> float:
    """Median over processes of tokens per second in the timed steps (all but the first,
    the warm-up)."""
    return statistics.median(
        tokens_per_step / statistics.median(r["step_seconds"][1:]) for r in runs
    )


def suite_train(context: Context) -> None:
    """Like for like first: our steps (reference log-probs read from ``mipo score``) against
    TRL with ``precompute_ref_log_probs=True`` (also precomputed, before its timed steps).
    Then end to end, one epoch: our scoring time plus our steps against TRL's default, whose
    steps run the reference model. Last, TRL's default steps alone (the favourable ratio)."""
    s = context.settings
    impls = ("ours", "trl_precomputed", "trl")
    runs, score_seconds, tokens, steps = _train_runs(context, s.train_shape, "train-pairs", impls)
    tokens_per_step = tokens / s.train_shape.pairs * s.batch_size
    throughput = {i: _step_throughput(runs[i], tokens_per_step) for i in impls}
    memory = {i: statistics.median(r["peak_mib"] for r in runs[i]) for i in impls}
    epoch = {i: statistics.median(sum(r["step_seconds"]) for r in runs[i]) for i in impls}
    for impl in impls:
        log_memory_profile(impl, runs[impl])
    settings = {
        "pairs": s.train_shape.pairs,
        "pairs_per_step": s.batch_size,
        "tokens_per_step": round(tokens_per_step),
        "prompt_tokens": s.train_shape.prompt_tokens,
        "response_tokens": s.train_shape.response_tokens,
        "max_length": s.max_length,
        "steps_per_process": steps,
        "reps": s.reps,
        "gradient_checkpointing": s.gradient_checkpointing,
        "full_fine_tune": True,
        "ours": "mipo train --loss dpo --scores (from mipo score)",
    }
    memory_metric = "peak GPU MiB" if context.device == "cuda" else "peak RSS MiB"
    precomputed = {**settings, "baseline": "trl DPOTrainer sigmoid, precompute_ref_log_probs"}
    context.record(
        "train_vs_trl_precomputed",
        "tokens/s",
        throughput["ours"],
        throughput["trl_precomputed"],
        higher_is_better=True,
        settings={**precomputed, "timed": "steps after the first"},
        extra=_utilization_fields(context, throughput["ours"], throughput["trl_precomputed"]),
    )
    context.record(
        "train_memory_vs_trl_precomputed",
        memory_metric,
        memory["ours"],
        memory["trl_precomputed"],
        higher_is_better=False,
        settings=precomputed,
    )
    context.record(
        "train_end_to_end_vs_trl",
        "seconds per epoch",
        statistics.median(score_seconds) + epoch["ours"],
        epoch["trl"],
        higher_is_better=False,
        settings={
            **settings,
            "ours": "mipo score --no-pmi, then every step of one epoch of mipo train",
            "score_seconds": round(statistics.median(score_seconds), 3),
            "baseline": "every step of one epoch of trl DPOTrainer sigmoid, reference model",
            "timed": "scoring and all steps, warm-up step included; model loading excluded",
        },
    )
    context.record(
        "train_vs_trl_default",
        "tokens/s",
        throughput["ours"],
        throughput["trl"],
        higher_is_better=True,
        settings={
            **settings,
            "baseline": "trl DPOTrainer sigmoid, reference model (not like for like: our "
            "reference log-probs come from an untimed mipo score)",
            "timed": "steps after the first",
        },
    )


def suite_train_long(context: Context) -> None:
    """Long pairs (responses of spread lengths, sequences of about 1k-2k tokens), like for
    like against TRL with precomputed reference log-probs: peak memory and throughput."""
    s = context.settings
    shape = s.long_shape
    impls = ("ours", "trl_precomputed")
    runs, _, tokens, steps = _train_runs(context, shape, "long-pairs", impls)
    tokens_per_step = tokens / shape.pairs * s.batch_size
    for impl in impls:
        log_memory_profile(impl, runs[impl])
    settings = {
        "pairs": shape.pairs,
        "pairs_per_step": s.batch_size,
        "tokens_per_step": round(tokens_per_step),
        "prompt_tokens": shape.prompt_tokens,
        "response_tokens": f"{shape.response_min}-{shape.response_tokens}",
        "max_length": s.long_max_length,
        "steps_per_process": steps,
        "reps": s.reps,
        "gradient_checkpointing": s.gradient_checkpointing,
        "full_fine_tune": True,
        "ours": "mipo train --loss dpo --scores (from mipo score)",
        "baseline": "trl DPOTrainer sigmoid, precompute_ref_log_probs",
    }
    context.record(
        "train_memory_long",
        "peak GPU MiB" if context.device == "cuda" else "peak RSS MiB",
        statistics.median(r["peak_mib"] for r in runs["ours"]),
        statistics.median(r["peak_mib"] for r in runs["trl_precomputed"]),
        higher_is_better=False,
        settings=settings,
    )
    ours = _step_throughput(runs["ours"], tokens_per_step)
    baseline = _step_throughput(runs["trl_precomputed"], tokens_per_step)
    context.record(
        "train_throughput_long",
        "tokens/s",
        ours,
        baseline,
        higher_is_better=True,
        settings={**settings, "timed": "steps after the first"},
        extra=_utilization_fields(context, ours, baseline),
    )


def log_memory_profile(impl: str, results: list[dict[str, Any]]) -> None:
    """Where a trainer's peak goes: held at the start (weights, any reference model), held
    after the first step (plus optimizer moments and kept gradients), and the transient
    (peak minus held: activations and log-prob tiles). Medians over the processes."""

    def median(key: str) -> float:
        return statistics.median(r["profile"].get(key, float("nan")) for r in results)

    start, held = median("held_at_start_mib"), median("held_after_step_mib")
    peak = statistics.median(r["peak_mib"] for r in results)
    weights = median("parameters") * 4 / 2**20  # fp32
    log(
        f"memory profile {impl}: held at start {start:.0f} MiB, after the first step "
        f"{held:.0f} MiB, peak {peak:.0f} MiB (transient {peak - held:.0f} MiB); "
        f"policy weights {weights:.0f} MiB fp32, trainable {median('trainable'):.0f}"
    )


def _utilization_fields(context: Context, ours: float, baseline: float) -> dict[str, Any]:
    """Model FLOPs utilization of a training step on both sides: tokens/s times the model's
    training FLOPs per token (three times the forward's: forward, then the backward's two
    products per weight), over the float32 matrix-product rate measured on this machine
    (``gemm_flops_per_s``). Attention over the sequence is left out, and the output head is
    counted for every token whether a side computes it there or not, so this is the usual
    "model FLOPs" convention: it says how much of the machine's rate each side turns into
    training, and bounds the ratio one side can reach against the other."""
    import torch

    from benchmarks.workers import flops_per_token, gemm_flops_per_s

    device = "cuda" if context.device == "cuda" else "cpu"
    gemm = gemm_flops_per_s(torch.float32, device)
    per_token = 3 * flops_per_token(context.model)
    return {
        "train_flops_per_token": float(f"{per_token:.4g}"),
        "gemm_flops_per_s_float32": float(f"{gemm:.4g}"),
        "mfu_ours": round(ours * per_token / gemm, 4),
        "mfu_baseline": round(baseline * per_token / gemm, 4),
    }


def _bound_fields(ours: float, bound: dict[str, Any]) -> dict[str, Any]:
    """``bound_tokens_per_s``: the GEMM rate measured here in the side's dtype over the
    model's FLOPs per new token; ``bound_fraction``: ours over it."""
    return {
        "bound_tokens_per_s": float(f"{bound['bound_tokens_per_s']:.6g}"),
        "bound_fraction": round(ours / bound["bound_tokens_per_s"], 4),
    }


def suite_generate(context: Context) -> None:
    s = context.settings
    common = {
        "prompts": s.gen_prompts,
        "max_new_tokens": s.gen_tokens,
        "temperature": 0.8,
        "top_p": 0.95,
        "reps": s.reps,
    }
    result = run_job({"job": "generate_hf", **common}, context)
    bound = result["bound"]
    ours = statistics.median(result["ours_tps"])
    shared = {
        **common,
        "dtype": bound["dtype"],
        "gemm_flops_per_s": float(f"{bound['gemm_flops_per_s']:.4g}"),
        "flops_per_token": float(f"{bound['flops_per_token']:.4g}"),
        "stop": "end of sequence and the backend's stop strings, on both sides",
    }
    for name, side, baseline in (
        ("generate_hf_vs_batched", "batched", "model.generate, all prompts, left-padded"),
        ("generate_hf", "one_at_a_time", "model.generate, one prompt at a time"),
    ):
        context.record(
            name,
            "new tokens/s",
            ours,
            statistics.median(result[f"{side}_tps"]),
            higher_is_better=True,
            settings={**shared, "baseline": baseline},
            extra=_bound_fields(ours, bound),
        )
    try:
        import vllm  # noqa: F401
    except ImportError:
        log("generate_vllm skipped: vllm is not installed")
        return
    result = run_job({"job": "generate_vllm", "quick": context.quick, **common}, context)
    bound = result["bound"]
    ours = statistics.median(result["ours_tps"])
    context.record(
        "generate_vllm",
        "new tokens/s",
        ours,
        statistics.median(result["raw_tps"]),
        higher_is_better=True,
        settings={
            **common,
            "dtype": bound["dtype"],
            "gemm_flops_per_s": float(f"{bound['gemm_flops_per_s']:.4g}"),
            "flops_per_token": float(f"{bound['flops_per_token']:.4g}"),
            "baseline": "vllm.LLM.generate, identical requests, same engine",
        },
        extra=_bound_fields(ours, bound),
    )


EXPORT_BUDGET_SECONDS = 3.0


def suite_export(context: Context) -> None:
    s = context.settings
    result = run_job(
        {
            "job": "export",
            "pairs": s.export_pairs,
            "reps": max(s.reps, 1),
            "workdir": str(context.workdir / "export"),
        },
        context,
    )
    context.record(
        f"export_{s.export_pairs // 1000}k",
        "seconds",
        statistics.median(result["seconds"]),
        EXPORT_BUDGET_SECONDS,
        higher_is_better=False,
        settings={
            "pairs": s.export_pairs,
            "filters": "defaults (empty, identical, exact duplicates)",
            "format": "trl",
            "baseline": f"the {EXPORT_BUDGET_SECONDS:g} s budget",
            "reps": max(s.reps, 1),
        },
    )


def _timed_generate(config: Any) -> float:
    from mipo_engine.stages.generate import run_generate

    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        run_generate(config)
    return time.perf_counter() - started


def suite_scale(context: Context) -> None:
    """``mipo generate`` with ``--engine ray``: 1 and 2 workers (ratio), and the time Ray adds
    per chunk over ``--engine local`` (actor start, model load in the actor and transfers,
    spread over the run's chunks). Ray runs on this machine (``ray.init`` local instance);
    the first Ray run, untimed, warms the instance up."""
    import ray
    import torch
    from typer.testing import CliRunner

    from cli import app
    from mipo_engine.stages.generate import GenerateConfig

    s = context.settings
    folder = context.workdir / "scale"
    folder.mkdir(parents=True, exist_ok=True)
    prompts = folder / "prompts.parquet"
    result = CliRunner().invoke(
        app, ["ingest", "builtin:personalization-train", "--out", str(prompts)]
    )
    if result.exit_code != 0:
        raise SystemExit(f"scale suite: ingest failed: {result.output}")
    chunk_pairs = 2
    sizes = {"small": max(s.scale_prompts // 4, chunk_pairs), "large": s.scale_prompts}
    chunks = {size: -(-pairs // chunk_pairs) for size, pairs in sizes.items()}
    options = {
        "prompts": prompts,
        "model": context.model,
        "max_new_tokens": s.gen_tokens,
        "chunk_pairs": chunk_pairs,
        "batch_size": chunk_pairs,
        "seed": 0,
    }
    engines = {
        "local": {},
        "ray1": {"engine": "ray", "workers": 1},
        "ray2": {"engine": "ray", "workers": 2},
    }
    runs: dict[tuple[str, str], list[float]] = {}
    # One thread per model on both sides: Ray gives each 1-CPU actor OMP_NUM_THREADS=1.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        _timed_generate(
            GenerateConfig.from_options(
                out=folder / "warm.parquet", engine="ray", workers=1, limit=2, **options
            )
        )
        for rep in range(s.reps):
            for size, limit in sizes.items():
                for name, engine in engines.items():
                    config = GenerateConfig.from_options(
                        out=folder / f"{name}-{size}-{rep}.parquet",
                        limit=limit,
                        **engine,
                        **options,
                    )
                    runs.setdefault((name, size), []).append(_timed_generate(config))
    finally:
        ray.shutdown()
        torch.set_num_threads(threads)
    seconds = {key: statistics.median(values) for key, values in runs.items()}
    # The difference between the two sizes removes what a run pays once (actor start and
    # model load, Ray's scheduling of the first call): what is left is per chunk.
    extra_chunks = chunks["large"] - chunks["small"]
    extra_pairs = sizes["large"] - sizes["small"]

    def per_chunk(name: str) -> float:
        return (seconds[(name, "large")] - seconds[(name, "small")]) / extra_chunks

    def start(name: str) -> float:
        return seconds[(name, "small")] - per_chunk(name) * chunks["small"]

    settings = {
        "pairs": sizes,
        "chunk_pairs": chunk_pairs,
        "chunks": chunks,
        "max_new_tokens": s.gen_tokens,
        "backend": "hf",
        "cpus": 2,
        "threads_per_model": 1,
        "reps": s.reps,
        "seconds": {f"{name}_{size}": round(value, 3) for (name, size), value in seconds.items()},
    }
    context.record(
        "scale_ray_2_vs_1_worker",
        "pairs/s",
        extra_pairs / max(per_chunk("ray2") * extra_chunks, 1e-9),
        extra_pairs / max(per_chunk("ray1") * extra_chunks, 1e-9),
        higher_is_better=True,
        settings={
            **settings,
            "what": "steady-state rate: the pairs between the two sizes over their time",
            "baseline": "--engine ray --workers 1",
            "actor_start_s": {"ray1": round(start("ray1"), 3), "ray2": round(start("ray2"), 3)},
        },
    )
    context.record(
        "scale_ray_overhead_per_chunk",
        "seconds per chunk",
        max(per_chunk("ray1"), 1e-9),
        max(per_chunk("local"), 1e-9),
        higher_is_better=False,
        settings={
            **settings,
            "baseline": "--engine local, same chunks",
            "overhead_s_per_chunk": round(per_chunk("ray1") - per_chunk("local"), 4),
            "fixed_start_s": round(start("ray1") - start("local"), 3),
        },
    )


SUITE_FUNCTIONS = {
    "export": suite_export,
    "score": suite_score,
    "train": suite_train,
    "train_long": suite_train_long,
    "generate": suite_generate,
    "scale": suite_scale,
}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=(*SUITES, "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="tiny model, small sizes")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", default=None, help="default: Gemma 3 270M (tiny if --quick)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per side")
    parser.add_argument("--gen-tokens", type=int, default=None, help="new tokens per prompt")
    parser.add_argument(
        "--pairs-per-step",
        type=int,
        default=None,
        help="train and score suites: pairs per step or batch on both sides (default 2)",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="train suite: checkpoint activations on both sides (TRL's own default)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary one")
    parser.add_argument("--json-out", type=Path, default=None, help="also append lines here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.reps is not None:
        if args.reps < 1:
            raise SystemExit("--reps must be >= 1")
        settings = Settings(**{**settings.__dict__, "reps": args.reps})
    if args.gen_tokens is not None:
        if args.gen_tokens < 1:
            raise SystemExit("--gen-tokens must be >= 1")
        settings = Settings(**{**settings.__dict__, "gen_tokens": args.gen_tokens})
    if args.pairs_per_step is not None:
        if args.pairs_per_step < 1:
            raise SystemExit("--pairs-per-step must be >= 1")
        settings = Settings(**{**settings.__dict__, "batch_size": args.pairs_per_step})
    if args.gradient_checkpointing:
        settings = Settings(**{**settings.__dict__, "gradient_checkpointing": True})
    with tempfile.TemporaryDirectory(prefix="mipo-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        model, label = resolve_benchmark_model(args, workdir)
        context = Context(settings, args.device, model, label, workdir, args.quick)
        suites = SUITES if args.suite == "all" else (args.suite,)
        for suite in suites:
            SUITE_FUNCTIONS[suite](context)
    lines = [json.dumps(line) for line in context.lines]
    if args.json_out is not None:
        with args.json_out.open("a", encoding="utf-8") as handle:
            handle.writelines(line + "\n" for line in lines)
    for line in lines:
        print(line)
    return 0


def resolve_benchmark_model(args: argparse.Namespace, workdir: Path) -> tuple[str, str]:
    """(path, label): ``--model``, else a tiny random model for ``--quick``, else Gemma 3 270M
    (by catalogue name: the recorded figures in RESULTS.md are for it)."""
    if args.model is not None:
        from mipo_engine.models import resolve_model

        return resolve_model(args.model), args.model
    if args.quick:
        from mipo_engine.testing import make_tiny_model

        # Hidden size 128 (head size 32): the smallest head size vLLM's CPU attention takes.
        path = make_tiny_model(workdir / "tiny-model", hidden_size=128)
        return str(path), "tiny-random-llama"
    from mipo_engine.models import resolve_model

    return resolve_model("gemma-3-270m"), "gemma-3-270m"


if __name__ == "__main__":
    raise SystemExit(main())
