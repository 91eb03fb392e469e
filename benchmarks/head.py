"""The log-prob head alone: token log-probs of N hidden states against a [V, H] output
embedding, forward and forward + backward, in three layouts.

    python benchmarks/head.py [--rows 512] [--vocab 262144] [--hidden 640] [--reps 3] [--quick]

- ``blocks``: ``linear_token_logps`` as it runs on this device (on CPU: row tiles against
  cache-sized vocabulary blocks, ``logps.head_tiling``);
- ``tiles``: the same function with whole-vocabulary tiles (the accelerator layout, and what
  the CPU ran before vocabulary blocks);
- ``full_logits`` (the baseline): ``log_softmax`` of the whole [N, V] product and a gather,
  differentiated by autograd, as trainers that materialise logits do.

Each measurement runs in its own process (so peak memory is per layout), the layouts
alternating, ``--reps`` processes each; a process makes one untimed forward + backward, then
times one forward (no gradient) and one forward + backward. The defaults are Gemma 3 270M's
head in fp32. Prints one JSON line per comparison (ours = ``blocks``, or ``tiles`` where
named), ``ratio`` = baseline / ours (higher is better), as ``run.py`` does.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

LAYOUTS = ("blocks", "tiles", "full_logits")


def _resident_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def measure(layout: str, rows: int, vocab: int, hidden_size: int) -> dict[str, float]:
    """One process's figures for ``layout``: seconds of forward, of forward + backward, and
    peak resident memory above what the inputs and weight hold (MiB)."""
    import torch

    from mipo_engine.modeling.logps import linear_token_logps

    generator = torch.Generator().manual_seed(0)
    weight = (torch.randn(vocab, hidden_size, generator=generator) * 0.02).requires_grad_()
    hidden = torch.randn(rows, hidden_size, generator=generator).requires_grad_()
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    upstream = torch.randn(rows, generator=generator)

    def token_logps() -> Any:
        if layout == "full_logits":
            logprobs = torch.log_softmax(hidden @ weight.T, dim=-1)
            return logprobs.gather(1, targets[:, None]).squeeze(1)
        block = vocab if layout == "tiles" else None
        return linear_token_logps(hidden, weight, targets, vocab_block=block)

    def forward_backward() -> None:
        weight.grad = hidden.grad = None
        token_logps().backward(upstream)

    held = _resident_mib()
    forward_backward()  # warm-up
    start = time.perf_counter()
    with torch.no_grad():
        token_logps()
    forward = time.perf_counter() - start
    start = time.perf_counter()
    forward_backward()
    both = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"forward_s": forward, "forward_backward_s": both, "extra_peak_mib": peak - held}


def _run_child(layout: str, args: argparse.Namespace) -> dict[str, float]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        layout,
        "--rows",
        str(args.rows),
        "--vocab",
        str(args.vocab),
        "--hidden",
        str(args.hidden),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"head benchmark ({layout}) failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


MEASURES = (
    ("forward_s", "head_forward", "s"),
    ("forward_backward_s", "head_forward_backward", "s"),
    ("extra_peak_mib", "head_extra_peak_memory", "MiB"),
)


def comparisons(figures: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> list[dict]:
    """JSON lines from the per-process figures (medians over processes): ``blocks`` against
    ``full_logits``, then against ``tiles`` (names ending ``_vs_tiles``)."""
    lines = []
    for baseline, suffix in (("full_logits", ""), ("tiles", "_vs_tiles")):
        for key, name, metric in MEASURES:
            ours = statistics.median(run[key] for run in figures["blocks"])
            theirs = statistics.median(run[key] for run in figures[baseline])
            lines.append(
                {
                    "name": name + suffix,
                    "metric": metric,
                    "ours": round(ours, 6),
                    "baseline": round(theirs, 6),
                    "ratio": round(theirs / ours, 3) if ours > 0 else None,
                    "device": "cpu",
                    "model": f"random head [{args.vocab}, {args.hidden}]",
                    "settings": {
                        "rows": args.rows,
                        "reps": args.reps,
                        "ours": "blocks",
                        "baseline": baseline,
                    },
                }
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=262_144)
    parser.add_argument("--hidden", type=int, default=640)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one process each")
    parser.add_argument("--child", choices=LAYOUTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.vocab, args.hidden, args.reps = 64, 1000, 32, 1
    if min(args.rows, args.vocab, args.hidden, args.reps) < 1:
        raise SystemExit("--rows, --vocab, --hidden and --reps must be >= 1")
    if args.child:
        print(json.dumps(measure(args.child, args.rows, args.vocab, args.hidden)))
        return 0
    figures: dict[str, list[dict[str, float]]] = {layout: [] for layout in LAYOUTS}
    for rep in range(args.reps):
        for layout in LAYOUTS:
            print(f"rep {rep + 1}/{args.reps}: {layout}", file=sys.stderr, flush=True)
            figures[layout].append(_run_child(layout, args))
    for line in comparisons(figures, args):
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
