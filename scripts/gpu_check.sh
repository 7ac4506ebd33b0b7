#!/usr/bin/env bash
# Correctness on the lent GPU (Python 3.12, jax 0.11 image), in one call of about 2 minutes:
#   1. scripts/gpu_check.py: which attention kernel `auto` takes for each B/16 attention shape
#      and its error against float32 XLA attention (output and gradients); the cuDNN calls in
#      the real train steps are counted by bench_step.py (`fused_attention_calls`);
#   2. the demo config trained on the GPU in float32 and in bfloat16 compute (losses side by side).
# The test suite on jax 0.11 needs no GPU: run it here with Python 3.12 (see benchmarks/RESULTS.md).
#
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=300)
set -uo pipefail
OUT=${OUT:-/tmp/vlmjax-gpu-check}
mkdir -p "$OUT"
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}  # where the carried wheels (.whl/, scripts/fetch_gpu_wheels.sh) go
STEPS=${STEPS:-240}      # coca_tiny training steps per dtype (fewer to check this script on a CPU)
if [ "${WHEELS:-1}" = 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
  export PYTHONPATH=$SITE
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
$PY -c "import jax, flax, optax, orbax.checkpoint as o, grain; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, jax.devices())"

echo "== attention kernels and numerics"
timeout 150 $PY scripts/gpu_check.py --batch 8 2>"$OUT/gpu_check.err" | tee "$OUT/gpu_check.txt" || tail -5 "$OUT/gpu_check.err"

echo "== coca_tiny on the GPU, float32 vs bfloat16 compute"
$PY -m vlmjax.cli data synth --out /tmp/shapes --num-shards 4 --samples-per-shard 2500 --image-size 32
for dtype in float32 bfloat16; do
  rm -rf /tmp/gpu_$dtype  # a warm machine keeps it: training would resume and have nothing to do
  timeout 100 $PY -m vlmjax.cli train --config configs/coca_tiny.py:evals=0,steps=$STEPS --workdir /tmp/gpu_$dtype \
    --config.model.dtype=$dtype --config.data.train.source='tar:/tmp/shapes/*.tar' \
    --config.data.train.num_threads=8 2>&1 | tee "$OUT/train_$dtype.log" | grep -E "step +1/|step +$((STEPS / 2))/|step +$STEPS/|done|rror"
done
