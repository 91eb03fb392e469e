"""One measurement per process: ``python benchmarks/workers.py JOB_JSON`` prints one JSON line.

A fresh process per training or scoring measurement means each one's peak memory is its
own (RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU) and nothing warmed by the
other side carries over. Generation and export compare both sides inside one process,
alternating, because they share the loaded model (or the input file) by design.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


def peak_memory_mib(device: str) -> float:
    """Peak memory of this process: GPU allocations on CUDA, resident set size on CPU."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_memory_mib(device: str) -> float:
    """Memory held right now: GPU allocations on CUDA, resident set size on CPU."""
    if device == "cuda":
        import torch

        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/statm", encoding="ascii") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class StepTimer:
    """A ``TrainerCallback`` recording each optimizer step's wall time, and a memory profile:
    what is held when training starts (weights, plus any reference model), what is held
    after the first step (optimizer moments now exist; gradients freed or kept), and the
    peak, whose excess over the held memory is the step's transient (activations, logits)."""

    def __init__(self, device: str) -> None:
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):  # type: ignore[misc]
            def on_train_begin(
                self, args: Any, state: Any, control: Any, model: Any = None, **_: Any
            ) -> None:
                timer.profile["held_at_start_mib"] = current_memory_mib(timer.device)
                if model is not None:
                    params = list(model.parameters())
                    timer.profile["parameters"] = sum(p.numel() for p in params)
                    timer.profile["trainable"] = sum(p.numel() for p in params if p.requires_grad)

            def on_step_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
                _sync(timer.device)
                timer._started = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
                _sync(timer.device)
                timer.seconds.append(time.perf_counter() - timer._started)
                if len(timer.seconds) == 1:
                    timer.profile["held_after_step_mib"] = current_memory_mib(timer.device)

        self.device = device
        self.seconds: list[float] = []
        self.profile: dict[str, float] = {}
        self._started = 0.0
        self.callback = _Callback()

    def result(self) -> dict[str, Any]:
        peak = peak_memory_mib(self.device)
        return {"step_seconds": self.seconds, "peak_mib": peak, "profile": self.profile}


def _load_policy(model: str, device: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    return policy.to(device), tokenizer


def _trl_dataset(path: str) -> Any:
    import polars as pl
    from datasets import Dataset

    frame = pl.read_parquet(path).select("prompt", "chosen", "rejected")
    return Dataset.from_dict(frame.to_dict(as_series=False))


def _trl_config(job: dict[str, Any], *, precompute: bool) -> Any:
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(Path(job["workdir"]) / "trl"),
        per_device_train_batch_size=job["batch_size"],
        max_length=job["max_length"],
        max_steps=job.get("steps", 1),
        learning_rate=5e-6,
        beta=0.1,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=precompute,
        gradient_checkpointing=job.get("gradient_checkpointing", False),
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=job["device"] == "cpu",
        bf16=job["device"] == "cuda",
        seed=0,
        dataloader_num_workers=0,
    )


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------


def train_ours(job: dict[str, Any]) -> dict[str, Any]:
    """``mipo train --loss dpo`` (full fine-tune) with reference log-probs from ``mipo score``."""
    from mipo_engine.stages.train import TrainConfig, run_train

    timer = StepTimer(job["device"])
    config = TrainConfig(
        preferences=Path(job["data"]),
        scores=Path(job["scores"]),
        output_dir=Path(job["workdir"]) / "ours",
        model=job["model"],
        loss="dpo",
        beta=0.1,
        learning_rate=5e-6,
        per_device_batch_size=job["batch_size"],
        max_steps=job.get("steps", 1),
        max_length=job["max_length"],
        gradient_checkpointing=job.get("gradient_checkpointing", False),
        logging_steps=10**6,
        save_steps=10**6,
        resume=False,
        device=job["device"],
        show_progress=False,
    )
    run_train(config, callbacks=[timer.callback])
    return timer.result()


def train_trl(job: dict[str, Any]) -> dict[str, Any]:
    """TRL ``DPOTrainer`` (sigmoid loss); the reference is TRL's default unless precomputed."""
    from trl import DPOTrainer

    precompute = job["impl"] == "trl_precomputed"
    policy, tokenizer = _load_policy(job["model"], job["device"])
    timer = StepTimer(job["device"])
    trainer = DPOTrainer(
        model=policy,
        args=_trl_config(job, precompute=precompute),
        train_dataset=_trl_dataset(job["data"]),
        processing_class=tokenizer,
        callbacks=[timer.callback],
    )
    trainer.train()
    return timer.result()


def score_ours(job: dict[str, Any]) -> dict[str, Any]:
    """``mipo score --no-pmi`` (chosen and rejected only) with a loaded hf backend."""
    from mipo_engine.backends.hf import HFBackend
    from mipo_engine.stages.score import ScoreConfig, run_score

    backend = HFBackend(
        job["model"],
        device=job["device"],
        batch_size=2 * job["batch_size"],
        show_progress=False,
    )
    frame = _read(job["data"])
    warm = frame.head(job["batch_size"])
    backend.score(warm["prompt"].to_list(), warm["chosen"].to_list(), max_length=job["max_length"])
    out = Path(job["out"])
    config = ScoreConfig(
        generations=Path(job["data"]),
        out=out,
        model=job["model"],
        pmi=False,
        max_length=job["max_length"],
        batch_size=2 * job["batch_size"],
        chunk_rows=max(64, 2 * job["batch_size"]),
    )
    _sync(job["device"])
    started = time.perf_counter()
    run_score(config, backend=backend)
    _sync(job["device"])
    return {"seconds": time.perf_counter() - started, "peak_mib": peak_memory_mib(job["device"])}


def score_trl(job: dict[str, Any]) -> dict[str, Any]:
    """TRL's reference log-prob precompute (``precompute_ref_log_probs=True`` runs exactly
    this method before training) on the same pairs and batch size."""
    from trl import DPOTrainer

    os.environ.setdefault("TQDM_DISABLE", "1")
    policy, tokenizer = _load_policy(job["model"], job["device"])
    trainer = DPOTrainer(
        model=policy,
        args=_trl_config(job, precompute=False),
        train_dataset=_trl_dataset(job["data"]),
        processing_class=tokenizer,
    )
    dataset = trainer.train_dataset
    trainer._precompute_ref_logps(dataset.select(range(job["batch_size"])), "warm-up", 1)
    _sync(job["device"])
    started = time.perf_counter()
    trainer._precompute_ref_logps(dataset, "benchmark", job["batch_size"])
    _sync(job["device"])
    return {"seconds": time.perf_counter() - started, "peak_mib": peak_memory_mib(job["device"])}


def _read(path: str) -> Any:
    import polars as pl

    return pl.read_parquet(path)


def _count_new_tokens(ids: list[int], eos: int | None, pad: int | None) -> int:
    count = 0
    for token in ids:
        if token == eos:
            break
        if token == pad:
            continue
        count += 1
    return count


def gemm_flops_per_s(dtype: Any, device: str, size: int = 1024, reps: int = 5) -> float:
    """This machine's matrix-product rate in ``dtype``: the best of ``reps`` square
    ``size``-cubed products (2 size^3 FLOPs each), after one warm-up."""
    import torch

    left = torch.randn(size, size, device=device).to(dtype)
    right = torch.randn(size, size, device=device).to(dtype)
    torch.mm(left, right)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        started = time.perf_counter()
        torch.mm(left, right)
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def flops_per_token(model_path: str) -> float:
    """FLOPs of one new token's forward: two per weight of every linear layer, the output
    head included once (tied or not); attention over the context is left out (small at
    these lengths). Counted on a weightless copy built from the config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        network = AutoModelForCausalLM.from_config(config)
    weights = {id(m.weight): m.weight.numel() for m in network.modules() if _is_linear(m)}
    head = network.get_output_embeddings()
    weights[id(head.weight)] = head.weight.numel()
    return 2.0 * sum(weights.values())


def _is_linear(module: Any) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear)


def _bound(model_path: str, dtype: Any, device: str) -> dict[str, Any]:
    gemm = gemm_flops_per_s(dtype, device)
    per_token = flops_per_token(model_path)
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "gemm_flops_per_s": gemm,
        "flops_per_token": per_token,
        "bound_tokens_per_s": gemm / per_token,
    }


def generate_hf(job: dict[str, Any]) -> dict[str, Any]:
    """The hf backend (batched, per-row seeds) against two ways of calling
    ``model.generate`` on the same loaded weights (the backend's generation dtype), with the
    same sampling settings, stop rules and token budget, alternating:

    - ``batched``: every prompt in one left-padded batch, what a user writes first;
    - ``one_at_a_time``: one prompt per call.
    """
    import torch
    from transformers import StoppingCriteriaList

    from benchmarks.pairs import chat_requests
    from mipo_engine.backends.base import GenerationRequest, SamplingConfig
    from mipo_engine.backends.hf import HFBackend, _StopOnStrings
    from mipo_engine.modeling.tokenization import encode_prompt

    backend = HFBackend(
        job["model"], device=job["device"], batch_size=job["prompts"], show_progress=False
    )
    messages = chat_requests(job["prompts"])
    requests = [GenerationRequest(f"r{i}", m, seed=i) for i, m in enumerate(messages)]
    sampling = SamplingConfig(
        max_new_tokens=job["max_new_tokens"], temperature=job["temperature"], top_p=job["top_p"]
    )
    model, tokenizer = backend.generation_model, backend.tokenizer
    prompt_ids = [encode_prompt(tokenizer, backend.render(m)) for m in messages]
    stop = backend.default_stop()
    options = {
        "do_sample": True,
        "temperature": job["temperature"],
        "top_p": job["top_p"],
        "top_k": None,
        "max_new_tokens": job["max_new_tokens"],
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }

    def count(new: list[int]) -> int:
        """New tokens as the backend counts them: up to the end-of-sequence token, and up to
        a stop string when one ends the text."""
        tokens = new[: _count_new_tokens(new, tokenizer.eos_token_id, None)]
        tokens = [t for t in tokens if t != tokenizer.pad_token_id]
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        if cut >= 0:
            return len(tokenizer(text[:cut], add_special_tokens=False)["input_ids"])
        return len(tokens)

    def ours() -> int:
        return sum(c.num_tokens for c in backend.generate(requests, sampling))

    @torch.no_grad()
    def batched() -> int:
        width = max(len(ids) for ids in prompt_ids)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompt_ids])
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids])
        stopping = StoppingCriteriaList([_StopOnStrings(tokenizer, width, stop)] if stop else [])
        output = model.generate(
            input_ids.to(backend.device),
            attention_mask=attention.to(backend.device),
            stopping_criteria=stopping,
            **options,
        )
        return sum(count(row) for row in output[:, width:].tolist())

    @torch.no_grad()
    def one_at_a_time() -> int:
        total = 0
        for ids in prompt_ids:
            stopping = StoppingCriteriaList(
                [_StopOnStrings(tokenizer, len(ids), stop)] if stop else []
            )
            output = model.generate(
                torch.tensor([ids], device=backend.device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=backend.device),
                stopping_criteria=stopping,
                **options,
            )
            total += count(output[0, len(ids) :].tolist())
        return total

    sides = {"ours": ours, "batched": batched, "one_at_a_time": one_at_a_time}
    result = _alternate(sides, job)
    result["bound"] = _bound(backend.model_path, backend.generation_dtype, job["device"])
    return result


def generate_vllm(job: dict[str, Any]) -> dict[str, Any]:
    """The vllm backend against ``LLM.generate`` called directly with the identical token
    prompts and per-request ``SamplingParams``, on the same engine."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from benchmarks.pairs import chat_requests
    from mipo_engine.backends.base import GenerationRequest, SamplingConfig
    from mipo_engine.backends.vllm import VLLMBackend
    from mipo_engine.modeling.tokenization import encode_prompt

    options = {"kv_cache_gib": 0.25} if job.get("quick") else {}
    backend = VLLMBackend(job["model"], show_progress=False, enable_prefix_caching=False, **options)
    messages = chat_requests(job["prompts"])
    requests = [GenerationRequest(f"r{i}", m, seed=i) for i, m in enumerate(messages)]
    sampling = SamplingConfig(
        max_new_tokens=job["max_new_tokens"], temperature=job["temperature"], top_p=job["top_p"]
    )
    stop = list(backend.default_stop()) or None
    prompts = [
        TokensPrompt(prompt_token_ids=encode_prompt(backend.tokenizer, backend.render(m)))
        for m in messages
    ]
    params = [
        SamplingParams(
            n=1,
            seed=r.seed,
            temperature=job["temperature"],
            top_p=job["top_p"],
            max_tokens=job["max_new_tokens"],
            stop=stop,
        )
        for r in requests
    ]

    def ours() -> int:
        return sum(c.num_tokens for c in backend.generate(requests, sampling))

    eos = backend.tokenizer.eos_token_id

    def raw() -> int:
        outputs = backend.llm.generate(prompts, params, use_tqdm=False)
        # Counted as ours counts (and as generate_hf counts both sides): new tokens up to,
        # not including, the end-of-sequence token.
        return sum(_count_new_tokens(list(o.outputs[0].token_ids), eos, None) for o in outputs)

    result = _alternate({"ours": ours, "raw": raw}, job)
    dtype = backend.llm.llm_engine.model_config.dtype
    result["bound"] = _bound(backend.model_path, dtype, "cpu" if job["device"] == "cpu" else "cuda")
    backend.close()
    return result


def _alternate(sides: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """A warm-up call of each side, then ``reps`` timed calls of each, alternating; new
    tokens per second per call, under ``<side>_tps``."""
    for call in sides.values():
        call()
    result: dict[str, Any] = {f"{name}_tps": [] for name in sides}
    for _ in range(job["reps"]):
        for name, call in sides.items():
            _sync(job["device"])
            started = time.perf_counter()
            tokens = call()
            _sync(job["device"])
            result[f"{name}_tps"].append(tokens / (time.perf_counter() - started))
    return result


def export(job: dict[str, Any]) -> dict[str, Any]:
    """``mipo export`` (default filters) of ``pairs`` synthetic generations to TRL format."""
    from mipo_engine.artifacts.schemas import GENERATIONS
    from mipo_engine.artifacts.store import write_artifact
    from mipo_engine.stages.export import ExportConfig, run_export
    from mipo_engine.testing import synthetic_generations

    workdir = Path(job["workdir"])
    generations = workdir / "generations.parquet"
    write_artifact(
        synthetic_generations(job["pairs"], seed=0), generations, GENERATIONS, {"stage": "bench"}
    )
    seconds = []
    for rep in range(job["reps"] + 1):  # the first run is the warm-up
        config = ExportConfig(generations=generations, out=workdir / f"prefs-{rep}.parquet")
        started = time.perf_counter()
        run_export(config)
        if rep:
            seconds.append(time.perf_counter() - started)
    return {"seconds": seconds}


JOBS = {
    "train_ours": train_ours,
    "train_trl": train_trl,
    "score_ours": score_ours,
    "score_trl": score_trl,
    "generate_hf": generate_hf,
    "generate_vllm": generate_vllm,
    "export": export,
}


def main() -> None:
    job = json.loads(sys.argv[1])
    result = JOBS[job["job"]](job)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
