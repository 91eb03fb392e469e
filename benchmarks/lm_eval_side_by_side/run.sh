#!/bin/bash
# lm-evaluation-harness on the same local items as `mipo eval` (docs/experiments.md, lm-eval
# section). Usage, from this folder, with lm-eval installed in its own environment:
#   LM_EVAL=/path/to/venv/bin/lm_eval ./run.sh ifeval_local --apply_chat_template --gen_kwargs max_gen_toks=256
#   LM_EVAL=/path/to/venv/bin/lm_eval ./run.sh gsm8k_local
# Items: data/ifeval50.jsonl (the first 50 IFEval prompts) and data/gsm8k_test20.jsonl (the
# first 20 GSM8K test problems); GSM8K's few-shot pool is $GSM8K_TRAIN.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
task=$1; shift
LM_EVAL=${LM_EVAL:-lm_eval}
MODEL=${MODEL:-$(python -c "from mipo_engine.models import resolve_model; print(resolve_model(None))")}
GSM8K_TRAIN=${GSM8K_TRAIN:-$here/../../../shared/data/gsm8k/train_subsample_2000_seed0.jsonl}
tasks_src=$("$(dirname "$LM_EVAL")/python" -c "import lm_eval, os; print(os.path.join(os.path.dirname(lm_eval.__file__), 'tasks'))")
mkdir -p "$here/tasks"
cat > "$here/tasks/ifeval_local.yaml" <<YAML
include: $tasks_src/ifeval/ifeval.yaml
task: ifeval_local
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    train: $here/data/ifeval50.jsonl
YAML
cat > "$here/tasks/gsm8k_local.yaml" <<YAML
include: $tasks_src/gsm8k/gsm8k.yaml
task: gsm8k_local
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    train: $GSM8K_TRAIN
    test: $here/data/gsm8k_test20.jsonl
YAML
export NLTK_DATA=$HOME/.cache/mipo-engine/nltk_data HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
"$LM_EVAL" --model hf --model_args "pretrained=$MODEL,dtype=float32" \
  --include_path "$here/tasks" --tasks "$task" --batch_size 10 --log_samples \
  --output_path "$here/out_$task" "$@"
