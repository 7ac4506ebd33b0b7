#!/usr/bin/env bash
# Device check on the lent GPU machine (Python 3.12, jax 0.11 image), in one run:
#   1. the test suite on that machine's CPU (the code must run on jax 0.10 and 0.11);
#   2. the demo config trained on the GPU in float32 and in bfloat16 compute.
# Run from the repo root with the wheels this image lacks carried in .whl/ (see README).
set -uo pipefail
OUT=${OUT:-/tmp/vlmjax-gpu-check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c "import jax, flax, optax, orbax.checkpoint as o, grain; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, jax.devices())"

echo "== tests on CPU (jax of this image)"
JAX_PLATFORMS=cpu timeout 400 python3 -m pytest -q -n 8 -p no:cacheprovider tests 2>&1 | tee "$OUT/tests.log" | tail -25

echo "== coca_tiny on the GPU"
python3 -m vlmjax.cli data synth --out /tmp/shapes --num-shards 4 --samples-per-shard 2500
for dtype in float32 bfloat16; do
  timeout 150 python3 -m vlmjax.cli train --config configs/coca_tiny.py --workdir /tmp/gpu_$dtype \
    --config.model.dtype=$dtype --config.data.train.source='tar:/tmp/shapes/*.tar' \
    --config.data.train.num_threads=8 2>&1 | tee "$OUT/train_$dtype.log" | grep -E "step +(1|120|240)/|done|rror"
done
