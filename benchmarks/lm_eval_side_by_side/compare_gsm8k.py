"""lm-eval gsm8k per-item verdicts vs mipo's grader (grade_math) on the same responses."""

import glob
import json

from mipo_engine.evaluation.tasks import grade_math
from mipo_engine.sources.benchmarks import load_gsm8k

(path,) = glob.glob("out_gsm8k_local/**/samples_gsm8k_local_*.jsonl", recursive=True)
with open(path) as handle:
    samples = [json.loads(line) for line in handle]
gold = {i: row["answer"] for i, row in enumerate(load_gsm8k("data/gsm8k_test20.jsonl"))}
by_filter = {}
for s in samples:
    by_filter.setdefault(s["filter"], {})[s["doc_id"]] = s
first = next(iter(by_filter.values()))
ours = {i: grade_math(s["resps"][0][0], gold[i]) for i, s in first.items()}
print("items", len(first))
for name, items in by_filter.items():
    acc = sum(s["exact_match"] for s in items.values()) / len(items)
    agree = sum(bool(items[i]["exact_match"]) == ours[i][1] for i in items)
    print(f"lm-eval {name}: {acc:.3f}; per-item agreement with mipo's grader {agree}/{len(items)}")
    for i in sorted(items):
        if bool(items[i]["exact_match"]) != ours[i][1]:
            tail = items[i]["resps"][0][0][-160:]
            print(
                f"  {i}: lm {items[i]['filtered_resps']} mipo {ours[i][0]} gold {gold[i]} | {tail!r}"
            )
print("mipo grader accuracy:", sum(v[1] for v in ours.values()) / len(ours))
