#!/usr/bin/env bash
# The GPU benchmark of issue 8 on the lent machine. Stages (default: main then max):
#   main      vlmjax and open_clip (torch.compile) train steps on the same synthetic work at
#             batch 256, and a table of ratios: every figure from one run;
#   max       the largest batch of each vlmjax model that fits (full remat, layer scan), found
#             from XLA's compiled memory estimates (scripts/bench_step.py --max-batch), and its
#             throughput;
#   variants  openclip_coca_b16 at batch 256 against one change at a time (XLA options, cuDNN vs
#             XLA attention, scan, unchunked caption loss) in one process: the measurements that
#             decide which XLA options vlmjax sets (config key `xla_options.gpu`).
# Results: $OUT/*.json and *.txt, tables on stdout. Untimed on a GPU so far: run main first.
#
#   run(command="bash scripts/bench_gpu.sh main", carry=[".whl"], timeout_s=420)
#   run(command="bash scripts/bench_gpu.sh max", carry=[".whl"], timeout_s=420)
#   run(command="bash scripts/bench_gpu.sh variants", carry=[".whl"], timeout_s=420)
#
# Wheels the image lacks travel in .whl/: fetch them first with scripts/fetch_gpu_wheels.sh;
# scripts/check_gpu_image.sh rehearses this on a CPU in a venv built like the image.
set -uo pipefail
STAGE=${1:-all}
OUT=${OUT:-/tmp/vlmjax-bench}
mkdir -p "$OUT"
PY=${PY:-python3}              # the python with jax (on the lent machine, one python has both)
PY_TORCH=${PY_TORCH:-$PY}      # the python with torch and open_clip
SITE=${SITE:-/tmp/site}         # where the carried wheels (.whl/, scripts/fetch_gpu_wheels.sh) go
WHEELS=${WHEELS:-$([ -n "${SMOKE:-}" ] && echo 0 || echo 1)}  # SMOKE=1 uses $PY's own packages
if [ "$WHEELS" = 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
  export PYTHONPATH=$SITE
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# SMOKE=1 checks the script itself on a CPU in a few minutes: tiny models, batch 8, 2 steps.
if [ -n "${SMOKE:-}" ]; then
  COCA=configs/coca_tiny.py:evals=0 SIGLIP=configs/siglip_tiny.py TINY=--tiny B=8 STEPS=2 MEM="--memory-gib 0.025"
else
  COCA=configs/openclip_coca_b16.py SIGLIP=configs/siglip_b16.py TINY= B=256 STEPS=20 MEM=
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
$PY -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

report() {  # name, exit status
  if [ "$2" -eq 0 ]; then tail -1 "$OUT/$1.json"; return; fi
  echo "$1 failed (exit $2$([ "$2" -eq 124 ] && echo ': timed out')):"; tail -3 "$OUT/$1.err"
}
bench() {  # name, then bench_step.py arguments
  local name=$1; shift
  timeout 200 $PY scripts/bench_step.py "$@" --json > "$OUT/$name.json" 2> "$OUT/$name.err"
  report "$name" $?
}
openclip() {  # name, then bench_openclip.py arguments; a cold torch.compile of CoCa takes minutes
  local name=$1; shift
  timeout 300 $PY_TORCH scripts/bench_openclip.py "$@" --json > "$OUT/$name.json" 2> "$OUT/$name.err"
  report "$name" $?
}

if [ "$STAGE" = variants ]; then
  echo "== $COCA, batch $B: one change at a time against the base"
  timeout 400 $PY scripts/bench_step.py --config $COCA --batch $B --steps $((STEPS / 2)) \
    --ab xla_gpu_enable_latency_hiding_scheduler=true \
    --ab xla_gpu_enable_triton_gemm=false \
    --ab xla_gpu_enable_command_buffer= \
    --ab model.attention=xla \
    --ab model.scan=true \
    --ab loss.caption_chunk=0 \
    --ab base \
    2> "$OUT/variants.err" | tee "$OUT/variants.txt" | tail -12 || tail -5 "$OUT/variants.err"
  exit 0
fi

if [ "$STAGE" = main ] || [ "$STAGE" = all ]; then
  echo "== batch $B: vlmjax, then open_clip with torch.compile"
  bench vlmjax_coca_256 --config $COCA --batch $B --steps $STEPS
  bench vlmjax_siglip_256 --config $SIGLIP --batch $B --steps $STEPS
  openclip openclip_coca_256 --model coca_b16 $TINY --batch $B --steps $STEPS --compile
  openclip openclip_siglip_256 --model siglip_b16 $TINY --batch $B --steps $STEPS --compile
fi

if [ "$STAGE" = max ] || [ "$STAGE" = all ]; then
  echo "== largest batch that fits (full remat, layer scan; 95% of the card for jax)"
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
  bench vlmjax_coca_max --config $COCA --max-batch $MEM --steps 5 --config.model.remat=full --config.model.scan=true
  bench vlmjax_siglip_max --config $SIGLIP --max-batch $MEM --steps 5 --config.model.remat=full --config.model.scan=true
  unset XLA_PYTHON_CLIENT_MEM_FRACTION
fi

$PY - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
  try:
    return json.loads(open(os.path.join(out, name + ".json")).read().splitlines()[-1])
  except Exception:
    return None
print(f"{'run':<22} {'batch':>6} {'ex/s':>8} {'step ms':>8} {'peak GiB':>9} {'MFU':>6}")
for name in ("vlmjax_coca_256", "openclip_coca_256", "vlmjax_siglip_256", "openclip_siglip_256",
             "vlmjax_coca_max", "vlmjax_siglip_max"):
  r = load(name)
  if r:
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
    mem = f"{r['peak_memory_gib']:.1f}" if r.get("peak_memory_gib") else "-"
    print(f"{name:<22} {r['batch']:>6} {r['examples_per_sec']:>8.0f} {r['step_ms']:>8.1f} {mem:>9} {mfu:>6}")
for model in ("coca", "siglip"):
  a, b = load(f"vlmjax_{model}_256"), load(f"openclip_{model}_256")
  if a and b:
    print(f"{model}: vlmjax / open_clip torch.compile = {a['examples_per_sec'] / b['examples_per_sec']:.2f}x")
PY
