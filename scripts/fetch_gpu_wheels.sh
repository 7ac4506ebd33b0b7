#!/usr/bin/env bash
# Fetch, here, the wheels the lent GPU machine's image lacks (it reaches no registry), into .whl/
# for `run(..., carry=[".whl"])`. The image is Python 3.12 with jax 0.11.2, optax, orbax, numpy,
# torch 2.11, timm, huggingface_hub, regex and the like (/work/.library/device/KINDS.md);
# scripts/bench_gpu.sh and gpu_check.sh install whatever lies in .whl/ with --no-deps.
#
#   bash scripts/fetch_gpu_wheels.sh          # then: run(command="bash scripts/bench_gpu.sh main", carry=[".whl"], ...)
#
# flax travels too: the image's version is not known, and flax <= 0.12.9 cannot import nnx
# under jax 0.11. Check what the list yields without a GPU: scripts/check_gpu_image.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-.whl}
PY=${PY:-python3}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
mkdir -p "$DEST"
WHEELS=(
  flax==0.12.12              # the image's flax may predate jax 0.11
  grain==0.2.18 array-record==0.8.6 dm-tree==0.1.10 portpicker==1.6.0  # data loading (vlmjax.data)
  ml-collections==1.1.0      # configs
  tensorboardX==2.6.5        # metrics writer
  importlib-resources==7.1.0 # etils.epath, used by grain and orbax
  open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.14  # the reference in bench_gpu.sh
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${WHEELS[@]}" 2> >(grep -v "is ignored" >&2)  # this machine's local indexes warn
ls "$DEST"
du -sh "$DEST" | awk '{print "total", $1, "(64 MiB travel with the working tree)"}'
