#!/usr/bin/env bash
# Fine-tune and evaluate a model on the paper's tasks whose data is at hand, with the paper's settings (Table 3:
# lr 3e-5; CMRC 384 tokens / 2 epochs, PD-NER 256 / 5, ChnSentiCorp 256 / 10), then score CMRC's predictions with
# the official-script path as a cross-check.
#
#   bash examples/finetune_paper_tasks.sh MODEL_DIR [DATA_DIR] [OUT_DIR] [extra nezha finetune options...]
#
# MODEL_DIR: a pretrained model directory (e.g. NEZHA-base imported with `nezha import`, or runs/pretrain-*/final).
# DATA_DIR:  folders chnsenticorp/, peoples_daily_ner/, cmrc2018/ (default ../shared/data); LCQMC and XNLI go the
#            same way with --task lcqmc / --task xnli and their own folders.
# These are GPU-sized runs for a base model; on a CPU use a tiny model and fewer epochs (--epochs 1).
set -euo pipefail

MODEL=${1:?usage: $0 MODEL_DIR [DATA_DIR] [OUT_DIR] [extra finetune options]}
DATA=${2:-../shared/data}
OUT=${3:-runs/paper-tasks}
shift $(( $# < 3 ? $# : 3 ))

run() {  # task, data folder, predictions file type, extra options
    local task=$1 folder=$2 ext=$3
    shift 3
    nezha finetune --task "$task" --model "$MODEL" --data-dir "$DATA/$folder" -o "$OUT/$task" --overwrite "$@"
    nezha evaluate "$task" --model "$OUT/$task/final" --data-dir "$DATA/$folder" --split dev --overwrite \
        --output "$OUT/$task/dev_metrics.json" --predictions-out "$OUT/$task/dev_predictions.$ext"
}

run chnsenti chnsenticorp jsonl "$@"
run pd-ner peoples_daily_ner jsonl "$@"
run cmrc cmrc2018 json "$@"
nezha evaluate cmrc --dataset "$DATA/cmrc2018/dev.json" --predictions "$OUT/cmrc/dev_predictions.json" --json
