#!/usr/bin/env bash
# Rehearse, on this CPU machine, a GPU session's first calls, so no device minute goes to a missing
# package: a Python 3.12 venv stands in for the lent machine's image (jax 0.11.2, numpy 2.5.2,
# optax, orbax and the rest of KINDS.md's list, with an old flax 0.12.8 that cannot import nnx
# under jax 0.11, and none of the packages the image lacks), the wheels from
# scripts/fetch_gpu_wheels.sh go in as the device scripts install them, and then
# `bench_gpu.sh main check` runs with tiny settings. open_clip's half needs
# torch, which this venv leaves out (several GB); bench_gpu.sh reports it as failed.
#
#   bash scripts/check_gpu_image.sh     # ~10 minutes the first time (venv), then ~6
set -euo pipefail
cd "$(dirname "$0")/.."
PY312=${PY312:-/root/.pyenv/versions/3.12.1/bin/python}
IMG=${IMG:-/tmp/vlmjax-gpu-image}
if [ ! -x "$IMG/bin/python" ]; then
  $PY312 -m venv "$IMG"
  "$IMG/bin/python" -m pip install -q uv
  "$IMG/bin/uv" pip install -q --python "$IMG/bin/python" jax==0.11.2 jaxlib==0.11.2 numpy==2.5.2 \
    optax orbax-checkpoint tensorstore einops pillow opencv-python-headless matplotlib absl-py etils \
    cloudpickle protobuf fsspec aiohttp pyyaml msgpack rich treescope sentencepiece tokenizers \
    safetensors typing-extensions zipp humanize attrs wrapt packaging psutil
  "$IMG/bin/uv" pip install -q --python "$IMG/bin/python" --no-deps flax==0.12.8
fi
bash scripts/fetch_gpu_wheels.sh
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
export PY=$IMG/bin/python SITE
OUT=$SITE/out SMOKE=1 WHEELS=1 BUDGET=900 bash scripts/bench_gpu.sh main check
