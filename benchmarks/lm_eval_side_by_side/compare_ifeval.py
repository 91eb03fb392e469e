"""Per-item comparison of lm-eval 0.4.13 and mipo eval on the same items."""

import glob
import json
import sys

import polars as pl


def samples(folder, task):
    (path,) = glob.glob(f"{folder}/**/samples_{task}_*.jsonl", recursive=True)
    return [json.loads(line) for line in open(path)]


def ifeval(lm_folder, scored, generated):
    lm = samples(lm_folder, "ifeval_local")
    lm_by_prompt = {s["doc"]["prompt"]: s for s in lm}
    ours = pl.read_parquet(scored)
    gen = pl.read_parquet(generated)
    rows = {r["prompt"]: r for r in ours.iter_rows(named=True)}
    gens = {r["prompt"]: r for r in gen.iter_rows(named=True)}
    agree = {k: 0 for k in ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose")}
    dis = []
    same_text = 0
    for prompt, s in lm_by_prompt.items():
        r = rows[prompt]
        lm_inst_s, lm_inst_l = s["inst_level_strict_acc"], s["inst_level_loose_acc"]
        agree["prompt_strict"] += bool(s["prompt_level_strict_acc"]) == all(r["strict_followed"])
        agree["prompt_loose"] += bool(s["prompt_level_loose_acc"]) == all(r["loose_followed"])
        agree["inst_strict"] += lm_inst_s == r["strict_followed"]
        agree["inst_loose"] += lm_inst_l == r["loose_followed"]
        if lm_inst_s != r["strict_followed"] or lm_inst_l != r["loose_followed"]:
            dis.append(
                (
                    r["item_id"],
                    r["instruction_ids"],
                    lm_inst_s,
                    r["strict_followed"],
                    lm_inst_l,
                    r["loose_followed"],
                )
            )
        lm_text = (
            s["filtered_resps"][0]
            if isinstance(s["filtered_resps"][0], str)
            else s["filtered_resps"][0][0]
        )
        same_text += lm_text.strip() == gens[prompt]["response"].strip()
    n = len(lm)

    def acc(key):
        return (
            sum(float(s[key]) for s in lm) / n
            if "prompt" in key
            else (sum(sum(s[key]) for s in lm) / sum(len(s[key]) for s in lm))
        )

    print("IFEval items", n)
    print(
        "lm-eval:",
        {
            k: round(acc(k), 4)
            for k in (
                "prompt_level_strict_acc",
                "prompt_level_loose_acc",
                "inst_level_strict_acc",
                "inst_level_loose_acc",
            )
        },
    )
    for name, frame in (("mipo --responses (lm-eval's responses)", ours), ("mipo generated", gen)):
        flat_s = [f for fl in frame["strict_followed"] for f in fl]
        flat_l = [f for fl in frame["loose_followed"] for f in fl]
        print(
            name,
            {
                "prompt_strict": round(frame["strict_followed"].list.all().mean(), 4),
                "prompt_loose": round(frame["loose_followed"].list.all().mean(), 4),
                "inst_strict": round(sum(flat_s) / len(flat_s), 4),
                "inst_loose": round(sum(flat_l) / len(flat_l), 4),
            },
        )
    print("verdict agreement on the same responses (items):", agree)
    print("identical responses (lm-eval vs mipo generation):", same_text, "of", n)
    for d in dis:
        print("  disagreement:", d)


if __name__ == "__main__":
    # compare_ifeval.py LM_EVAL_OUTPUT_FOLDER MIPO_SCORED.parquet MIPO_GENERATED.parquet
    ifeval(*sys.argv[1:])
