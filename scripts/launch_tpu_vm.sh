#!/bin/bash
# Multi-host vlmjax training on a Cloud TPU VM slice (e.g. v5p-64): the same command on every host.
#
#   scripts/launch_tpu_vm.sh TPU_NAME ZONE BUCKET configs/coca_base.py runs/coca_base [--config.a.b=v ...]
#
# It copies this checkout's tracked files (with their uncommitted edits; `git add` a new config
# first) to every worker and installs them there from uv.lock (extras tpu and gcs) into
# ~/vlmjax/.venv with a uv-managed Python 3.11 (TPU images' python3 may be older than vlmjax's
# requires-python); uv comes from its installer, else pip --user. A relaunch skips the install while
# uv.lock and pyproject.toml are unchanged (their hash is in .venv/.lock-hash). It mounts
# gs://BUCKET at ~/bucket with gcsfuse on every worker
# (gcsfuse must be installed there: cloud.google.com/storage/docs/gcsfuse-install) and trains in
# ~/bucket/RUN_DIR. The workdir must be a local path that every host shares (vlmjax writes
# config.json, metrics.jsonl and TensorBoard files as plain files, and every host its checkpoint
# shards), hence the mount; --rename-dir-limit lets orbax rename its temporary checkpoint
# directories there (object by object, not atomically: README, "Crashes"). VLMJAX_DISTRIBUTED=1
# makes vlmjax call jax.distributed.initialize(), which finds the other hosts by itself (a TPU
# VM's environment does not say how many there are).
# Data: point --config.data.train.source at gs:// tar shards. A preempted (spot) slice gets
# SIGTERM; every host saves at the same step; re-running this script resumes.
set -euo pipefail
USAGE="usage: launch_tpu_vm.sh TPU_NAME ZONE BUCKET CONFIG RUN_DIR [overrides...]"
TPU=${1:?$USAGE}
ZONE=${2:?$USAGE}
BUCKET=${3:?$USAGE}
CONFIG=${4:?$USAGE}
RUN_DIR=${5:?$USAGE}
shift 5
ARGS=$(printf " %q" --config "$CONFIG" "$@")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

cd "$(dirname "$0")/.." && REV=$(git stash create) && git archive --format=tar.gz -o "$TMP/vlmjax.tar.gz" "${REV:-HEAD}"
gcloud compute tpus tpu-vm scp --zone "$ZONE" --worker=all "$TMP/vlmjax.tar.gz" "$TPU":~/vlmjax.tar.gz
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  set -e; mkdir -p ~/vlmjax ~/bucket && tar -xzf ~/vlmjax.tar.gz -C ~/vlmjax && cd ~/vlmjax
  mountpoint -q ~/bucket || gcsfuse --implicit-dirs --rename-dir-limit=1000000 $(printf %q "$BUCKET") ~/bucket
  export PATH=\$HOME/.local/bin:\$PATH
  command -v uv > /dev/null || (curl -LsSf https://astral.sh/uv/install.sh | UV_NO_MODIFY_PATH=1 sh) || true
  command -v uv > /dev/null || python3 -m pip install -q --user uv
  HASH=\$(cat uv.lock pyproject.toml | sha256sum)
  if [ \"\$(cat .venv/.lock-hash 2> /dev/null)\" != \"\$HASH\" ]; then
    uv python install -q 3.11
    UV_PROJECT_ENVIRONMENT=.venv uv sync -q --frozen --managed-python --python 3.11 --extra tpu --extra gcs
    echo \"\$HASH\" > .venv/.lock-hash
  fi
  export VLMJAX_DISTRIBUTED=1
  nohup .venv/bin/vlmjax train $ARGS --workdir ~/bucket/$(printf %q "$RUN_DIR") >> train.log 2>&1 < /dev/null &"
echo "started on all workers of $TPU; workdir gs://$BUCKET/$RUN_DIR;" \
     "logs: gcloud compute tpus tpu-vm ssh $TPU --zone $ZONE --worker=0 --command 'tail -f ~/vlmjax/train.log'"
