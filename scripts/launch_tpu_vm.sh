#!/bin/bash
# Multi-host vlmjax training on a Cloud TPU VM slice (e.g. v5p-64): the same command on every host.
#
#   scripts/launch_tpu_vm.sh TPU_NAME ZONE configs/coca_base.py gs://BUCKET/runs/coca_base [--config.a.b=v ...]
#
# It copies this checkout to every worker, installs it, and starts training on all of them.
# On TPU VMs jax.distributed.initialize() finds the other hosts by itself, so vlmjax needs no
# coordinator flags. Use a gs:// workdir so that every host writes its checkpoint shards to the
# same place. Data: point --config.data.train.source at gs:// tar shards. A preempted (spot)
# slice gets SIGTERM; every host saves at the same step; re-running this script resumes.
set -euo pipefail
TPU=${1:?usage: launch_tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]}
ZONE=${2:?zone}
CONFIG=${3:?config}
WORKDIR=${4:?workdir}
shift 4
OVERRIDES=$(printf " %q" "$@")

gcloud compute tpus tpu-vm scp --recurse --zone "$ZONE" --worker=all . "$TPU":~/vlmjax
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  cd ~/vlmjax && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]' gcsfs &&
  nohup .venv/bin/vlmjax train --config $CONFIG --workdir $WORKDIR $OVERRIDES > train.log 2>&1 &"
echo "started on all workers of $TPU; logs: gcloud compute tpus tpu-vm ssh $TPU --zone $ZONE --worker=0 --command 'tail -f ~/vlmjax/train.log'"
