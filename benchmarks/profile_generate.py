"""Where the hf backend's generation time goes: the model's forward passes, the sampler
(temperature, nucleus mask, per-row Gumbel noise) and everything else (stop checks, batching,
decoding), for one batch.

    python benchmarks/profile_generate.py [--model M] [--prompts 32] [--tokens 32]
                                          [--dtype auto|float32|bfloat16]

Prints one JSON object: seconds in each part, their shares, and new tokens per second.
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
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
