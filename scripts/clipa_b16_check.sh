#!/usr/bin/env bash
# CLIPA at ViT-B/16 size on the shapes set: train configs/clip_b16.py at 112 px and 16 text tokens, then
# fine-tune briefly at 224 px and 77 tokens from that run (`init_from`: the position embeddings are
# resized), and compare zero-shot and retrieval with the same short run at 224 from a fresh start.
#   bash scripts/clipa_b16_check.sh [OUT_DIR] [LOW_STEPS] [FINE_STEPS] [BATCH]
set -euo pipefail
OUT=${1:-/tmp/clipa_b16}; LOW=${2:-200}; FINE=${3:-10}; BATCH=${4:-16}
VLMJAX=${VLMJAX:-.venv/bin/vlmjax}
CFG=experiments/configs/clipa_b16.py
rm -rf "$OUT"; mkdir -p "$OUT"
"$VLMJAX" train --config "$CFG:size=112,ctx=16,steps=$LOW,batch=$BATCH" --workdir "$OUT/low112" 2>&1 \
  | grep -e "step " -e "eval" -e "zs\|ret" | tail -12
for init in low112 fresh; do
  from=(); [ "$init" = low112 ] && from=(--config.init_from="$OUT/low112")
  "$VLMJAX" train --config "$CFG:steps=$FINE,batch=$BATCH,lr=5e-5,warmup=2" --workdir "$OUT/full224_$init" \
    "${from[@]}" 2>&1 | grep -e resized -e "step " -e "zs\|ret" | tail -8
done
