"""Where the hf backend's generation time goes: the model's forward passes, the sampler
(temperature, softmax, the per-row nucleus and draw) and everything else (stop checks, batching,
decoding), for one batch.

    python benchmarks/profile_generate.py [--model M] [--prompts 32] [--tokens 32]
                                          [--dtype auto|float32|bfloat16] [--ops 12]

Prints one JSON object: seconds in each part, their shares, and new tokens per second. With
``--ops N`` it also profiles a second, identical batch with ``torch.profiler`` (the N
operators with the most self time, and their shares), and measures the matrix-product rate
at the shapes a decoding step multiplies (``prompts`` rows times each linear layer's weight)
against the 1024-cubed rate that ``bound_tokens_per_s`` in ``benchmarks/run.py`` assumes:
their ratio is the share of that bound a decoding step can reach at this batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: the project's default model")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--dtype", default="auto", help="generation dtype (auto: the default)")
    parser.add_argument("--ops", type=int, default=0, help="also list the N costliest operators")
    args = parser.parse_args(argv)

    from benchmarks.pairs import chat_requests
    from mipo_engine.backends import hf
    from mipo_engine.backends.base import GenerationRequest, SamplingConfig

    backend = hf.HFBackend(
        args.model,
        device="cpu",
        generation_dtype=args.dtype,
        batch_size=args.prompts,
        show_progress=False,
    )
    requests = [
        GenerationRequest(f"r{i}", m, seed=i) for i, m in enumerate(chat_requests(args.prompts))
    ]
    sampling = SamplingConfig(max_new_tokens=args.tokens, temperature=0.8, top_p=0.95)
    backend.generate(requests[:2], SamplingConfig(max_new_tokens=2, temperature=0.8))  # warm-up

    spent = {"forward": 0.0, "sampler": 0.0}
    started: dict[str, float] = {}
    sample = hf._RowSeededSampler.__call__

    def timed_sample(self: Any, input_ids: Any, scores: Any) -> Any:
        begin = time.perf_counter()
        out = sample(self, input_ids, scores)
        spent["sampler"] += time.perf_counter() - begin
        return out

    def before(*_: Any) -> None:
        started["forward"] = time.perf_counter()

    def after(*_: Any) -> None:
        spent["forward"] += time.perf_counter() - started["forward"]

    hf._RowSeededSampler.__call__ = timed_sample  # type: ignore[method-assign]
    model = backend.generation_model
    hooks = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    begin = time.perf_counter()
    completions = backend.generate(requests, sampling)
    total = time.perf_counter() - begin
    for hook in hooks:
        hook.remove()
    hf._RowSeededSampler.__call__ = sample  # type: ignore[method-assign]

    tokens = sum(c.num_tokens for c in completions)
    other = total - spent["forward"] - spent["sampler"]
    extra: dict[str, Any] = {}
    if args.ops:
        extra["ops"] = _costliest_ops(backend, requests, sampling, args.ops)
        extra["decode_gemm"] = _decode_gemm(model, backend.generation_dtype, args.prompts)
    print(
        json.dumps(
            {
                "model": backend.model_path,
                "dtype": str(backend.generation_dtype).removeprefix("torch."),
                "prompts": args.prompts,
                "max_new_tokens": args.tokens,
                "seconds": round(total, 3),
                "forward_seconds": round(spent["forward"], 3),
                "sampler_seconds": round(spent["sampler"], 3),
                "other_seconds": round(other, 3),
                "forward_share": round(spent["forward"] / total, 3),
                "sampler_share": round(spent["sampler"] / total, 3),
                "new_tokens_per_s": round(tokens / total, 2),
                **extra,
            }
        )
    )
    return 0


def _costliest_ops(backend: Any, requests: list[Any], sampling: Any, count: int) -> list[Any]:
    """The ``count`` operators with the most self CPU time over one generate call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        backend.generate(requests, sampling)
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events) or 1.0
    costliest = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)
    return [
        {
            "op": event.key,
            "share": round(event.self_cpu_time_total / total, 3),
            "calls": event.count,
            "ms_per_call": round(event.self_cpu_time_total / event.count / 1000, 4),
        }
        for event in costliest[:count]
    ]


def _decode_gemm(model: Any, dtype: Any, rows: int, reps: int = 20) -> dict[str, Any]:
    """The rate of ``rows`` x K times K x N products for every linear layer's (K, N), in
    ``dtype``, weighted by how many FLOPs each shape carries per decoding step, against the
    1024-cubed rate (``benchmarks.workers.gemm_flops_per_s``)."""
    import torch

    from benchmarks.workers import gemm_flops_per_s

    counts: dict[tuple[int, int], int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            shape = (module.in_features, module.out_features)
            counts[shape] = counts.get(shape, 0) + 1
    head = model.get_output_embeddings()
    if head is not None and not isinstance(head, torch.nn.Linear):
        shape = (head.weight.shape[1], head.weight.shape[0])
        counts[shape] = counts.get(shape, 0) + 1
    flops = seconds = 0.0
    shapes = []
    for (k, n), count in sorted(counts.items()):
        x = torch.randn(rows, k).to(dtype)
        w = torch.randn(n, k).to(dtype)
        torch.nn.functional.linear(x, w)
        best = float("inf")
        for _ in range(reps):
            begin = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - begin)
        shape_flops = 2.0 * rows * k * n * count
        flops += shape_flops
        seconds += best * count
        shapes.append(
            {
                "k": k,
                "n": n,
                "layers": count,
                "gflops_per_s": round(2 * rows * k * n / best / 1e9, 1),
            }
        )
    cube = gemm_flops_per_s(dtype, "cpu")
    return {
        "rows": rows,
        "dtype": str(dtype).removeprefix("torch."),
        "shapes": shapes,
        "linear_seconds_per_step": round(seconds, 5),
        "decode_gflops_per_s": round(flops / seconds / 1e9, 1),
        "cube_gflops_per_s": round(cube / 1e9, 1),
        "share_of_cube_rate": round(flops / seconds / cube, 3),
    }


if __name__ == "__main__":
    raise SystemExit(main())
