#!/usr/bin/env bash
# The three worked fine-tuning examples on the CPU, each timed (see examples/sft/README.md).
#   python examples/sft/prepare.py --out runs/sft_data && lmkit train examples/sft/base.toml
#   bash examples/sft/run.sh [summarize|translate|chat ...]
set -euo pipefail
D=runs/sft_data
B=runs/sft_base
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # on a shared 2-core machine one thread runs fastest
STEPS=${STEPS:-300}
COMMON="max_iters=$STEPS eval_interval=50 eval_iters=8 batch_size=8 num_threads=$OMP_NUM_THREADS"
lmkit() { python3 -m lmkit "$@"; }
timed() { local t0=$(date +%s); "$@"; echo "[$(($(date +%s) - t0)) s] $*"; }

summarize() {
  timed lmkit evaluate $B --task summarization --data $D/summarize_eval.jsonl --json runs/sft_eval/summarize_base.json
  timed lmkit finetune sft --base $B --data $D/summarize_train.jsonl --out runs/sft_summarize --overwrite --quiet \
    --set $COMMON learning_rate=1e-3 min_lr=1e-4
  timed lmkit evaluate runs/sft_summarize --task summarization --data $D/summarize_eval.jsonl --json runs/sft_eval/summarize_sft.json
}

translate() {
  timed lmkit evaluate $B --task translation --data $D/translate_eval.jsonl --json runs/sft_eval/translate_base.json
  timed lmkit finetune sft --base $B --data $D/translate_train.jsonl --out runs/sft_translate --overwrite --quiet \
    --set $COMMON learning_rate=1e-3 min_lr=1e-4
  timed lmkit evaluate runs/sft_translate --task translation --data $D/translate_eval.jsonl --json runs/sft_eval/translate_sft.json
}

chat() {  # LoRA on Alpaca English + Chinese; long answers keep their beginning
  timed lmkit finetune sft --base $B --data $D/chat.jsonl --out runs/sft_chat --overwrite --quiet --too-long truncate \
    --lora-rank 16 --merge --set $COMMON
  for p in "Give three tips for staying healthy." "用一句话介绍一下长城。"; do
    echo "user> $p"; lmkit generate runs/sft_chat --chat --prompt "$p" --temperature 0 --max-new-tokens 60 --repetition-penalty 1.2
  done
}

mkdir -p runs/sft_eval
for task in "${@:-summarize translate chat}"; do
  for t in $task; do $t; done
done
