"""Resident memory and time through the phases of our full fine-tuning step, for finding
where the peak of ``train_memory`` and the time of a training step go.

    python benchmarks/profile_step.py [--pairs 2] [--tokens 259] [--prompt-tokens N]
                                      [--steps 3] [--gradient-checkpointing] [--model M]
                                      [--ops N]

Loads the policy as ``mipo train`` does, then runs ``--steps`` DPO steps by hand on random
token ids (the first ``--tokens // 2`` of each sequence are the prompt): forward through
``policy_sequence_logps``, backward, gradient clipping, fused AdamW (the Trainer's default
optimizer), ``zero_grad``. A thread samples the resident set size every 5 ms; the output is
the largest sample in each phase of each step, in MiB, and the phase's seconds. Resident
memory counts pages the allocator keeps after a free, so the level between steps is above
what live tensors hold. ``--ops N`` also profiles the steps after the first with
``torch.profiler`` and prints the N operators with the most self CPU time, with their share.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


class PhaseSampler:
    """Largest resident set size seen while each named phase was current, and the seconds
    spent in each phase."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self._phase = "load"
        self._since = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[self._phase] = self.seconds.get(self._phase, 0.0) + now - self._since
        self._phase, self._since = name, now

    @staticmethod
    def resident_mib() -> float:
        import resource

        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize() / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            phase, size = self.phase, self.resident_mib()
            self.peaks[phase] = max(self.peaks.get(phase, 0.0), size)
            time.sleep(self._interval)

    def __enter__(self) -> PhaseSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep(2 * self._interval)
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=259, help="tokens per sequence")
    parser.add_argument(
        "--prompt-tokens", type=int, default=None, help="prompt part (default: --tokens // 2)"
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--model", default=None, help="default: the default model")
    parser.add_argument("--ops", type=int, default=0, help="print the N costliest operators")
    args = parser.parse_args(argv)
    if min(args.pairs, args.steps) < 1 or args.tokens < 2:
        raise SystemExit("--pairs and --steps must be >= 1, --tokens >= 2")

    import torch

    from mipo_engine.modeling.policy import policy_sequence_logps
    from mipo_engine.stages.train import TrainConfig
    from mipo_engine.training.loading import load_policy

    with PhaseSampler() as sampler:
        config = TrainConfig.from_options(
            preferences=Path("unused.parquet"), output_dir=Path("unused"), model=args.model
        )
        model, _, _ = load_policy(config, cuda=False)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-6, fused=True)
        generator = torch.Generator().manual_seed(0)
        rows = 2 * args.pairs  # chosen rows, then rejected rows
        input_ids = torch.randint(10, 20_000, (rows, args.tokens), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        response_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        prompt = args.tokens // 2 if args.prompt_tokens is None else args.prompt_tokens
        response_mask[:, prompt:] = True
        profiler = None
        for step in range(1, args.steps + 1):
            if step == 2 and args.ops:
                profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                profiler.__enter__()
            sampler.phase = f"step {step} forward"
            logps = policy_sequence_logps(model, input_ids, attention_mask, response_mask).logps
            margin = 0.1 * (logps[: args.pairs] - logps[args.pairs :])
            loss = -torch.nn.functional.logsigmoid(margin).mean()
            sampler.phase = f"step {step} backward"
            loss.backward()
            sampler.phase = f"step {step} clip"
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            sampler.phase = f"step {step} optimizer"
            optimizer.step()
            sampler.phase = f"step {step} zero_grad"
            optimizer.zero_grad(set_to_none=True)
            sampler.phase = f"step {step} after"
            time.sleep(0.05)
        if profiler is not None:
            profiler.__exit__(None, None, None)
    for phase, peak in sampler.peaks.items():
        print(f"{phase:24s} {peak:8.0f} MiB {sampler.seconds.get(phase, 0.0):9.3f} s")
    if profiler is not None:
        events = [e for e in profiler.key_averages() if e.self_cpu_time_total > 0]
        total = sum(e.self_cpu_time_total for e in events)
        print(f"operators, steps 2-{args.steps} (share of self CPU time):")
        for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.ops]:
            share = event.self_cpu_time_total / total
            print(f"  {event.key:56s} {share:6.1%} {event.count:6d} calls")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
