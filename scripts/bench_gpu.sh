#!/usr/bin/env bash
# The GPU benchmark of issue 8 on the lent machine: `bench_gpu.sh [STAGE...]`, the stages in the
# order given, all within one time budget (default: main):
#   main      vlmjax and open_clip (torch.compile) train steps on the same synthetic work at
#             batch 256, CoCa pair first, then SigLIP, and a table of ratios: every figure
#             from one run;
#   max       the largest batch of each vlmjax model that fits (full remat, layer scan), found
#             from XLA's compiled memory estimates (scripts/bench_step.py --max-batch), and its
#             throughput;
#   variants  openclip_coca_b16 at batch 256 against one change at a time (XLA options, cuDNN vs
#             XLA attention, remat, scan, unchunked caption loss) in one process: the
#             measurements that decide which XLA options vlmjax sets (`xla_options.gpu`);
#   check     scripts/gpu_check.sh: attention kernel and bf16 error per B/16 shape, coca_tiny
#             trained in float32 and bfloat16 (output in $OUT/check/);
#   naflex    scripts/bench_naflex.py on siglip2_b16_naflex (batch 64, 256 patches): padding and step
#             time unpacked vs packed, and the compile count of budgets 144,256 ($OUT/naflex.txt);
#   all       main, check, max, variants, naflex: the whole device session in priority order.
# The whole call keeps within BUDGET seconds (default 540): each job's timeout is what is left,
# so the table always prints, with whatever finished. Results in $OUT (at most 8 files come
# back from the device): results.jsonl (one JSON line per job, with its name), log.txt (every
# job's stderr), variants.txt. Untimed on a GPU so far.
#
#   bash scripts/fetch_gpu_wheels.sh     # here, once: the wheels the image lacks, into .whl/
#   run(command="bash scripts/bench_gpu.sh all", carry=[".whl"], timeout_s=570)
#   then, with the device time left: BUDGET=... bash scripts/bench_gpu.sh <what did not finish>
#
# scripts/check_gpu_image.sh rehearses this on a CPU in a venv built like the image.
set -uo pipefail
STAGES=${*:-main}
[ "$STAGES" = all ] && STAGES="main check max variants naflex"
OUT=${OUT:-/tmp/vlmjax-bench}
BUDGET=${BUDGET:-540}
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
  COCA=configs/coca_tiny.py:evals=0 SIGLIP=configs/siglip_tiny.py TINY=--tiny B=8 STEPS=2 MEM="--memory-gib 0.5" CHECK_STEPS=20
  NAFLEX="--config configs/siglip2_naflex_tiny.py:evals=0 --batch 16 --steps 2"
else
  COCA=configs/openclip_coca_b16.py SIGLIP=configs/siglip_b16.py TINY= B=256 STEPS=20 MEM= CHECK_STEPS=240
  NAFLEX="--config configs/siglip2_b16_naflex.py --batch 64 --steps 5 --budgets 144,256"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
fi
$PY -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
RESULTS=$OUT/results.jsonl LOG=$OUT/log.txt
touch "$RESULTS" "$LOG"

left() { echo $((BUDGET - SECONDS)); }
limit() {  # a job's timeout: its cap, or what is left of the budget less a margin for the table
  local l=$(( $(left) - 15 ))
  [ "$l" -lt "$1" ] && echo "$l" || echo "$1"
}
record() {  # name, exit status, JSON file: append the result (or the failure) to results.jsonl
  local name=$1 rc=$2 json=$3
  if [ "$rc" -eq 0 ] && [ -s "$json" ]; then
    $PY -c "import json,sys; r=json.loads(open(sys.argv[1]).read().splitlines()[-1]); r['name']=sys.argv[2]; print(json.dumps(r))" \
      "$json" "$name" >> "$RESULTS"
    tail -1 "$RESULTS"
  else
    echo "$name failed (exit $rc$([ "$rc" -eq 124 ] && echo ': timed out'))"
    echo "{\"name\": \"$name\", \"error\": \"exit $rc\"}" >> "$RESULTS"
  fi
}
run_job() {  # name, cap seconds, command...: runs it under the budget, stderr to log.txt
  local name=$1 cap=$2; shift 2
  local t; t=$(limit "$cap")
  if [ "$t" -lt 30 ]; then echo "$name skipped: $(left) s of the budget left"; return 1; fi
  echo "== $name (up to $t s)" >> "$LOG"
  timeout "$t" "$@" --json > "$OUT/job.json" 2>> "$LOG"
  local rc=$?
  record "$name" $rc "$OUT/job.json"
  [ $rc -eq 0 ] || tail -3 "$LOG"
  return $rc
}
vlmjax() { local name=$1; shift; run_job "$name" 240 $PY scripts/bench_step.py "$@"; }
openclip() {  # a cold torch.compile of CoCa takes minutes; if compiling fails, time eager instead
  local name=$1; shift
  run_job "$name" 300 $PY_TORCH scripts/bench_openclip.py "$@" --compile
  local rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 124 ]; then run_job "${name}_eager" 150 $PY_TORCH scripts/bench_openclip.py "$@"; fi
}

stage_main() {
  echo "== batch $B: vlmjax, then open_clip with torch.compile (CoCa pair, then SigLIP pair)"
  vlmjax vlmjax_coca_256 --config $COCA --batch $B --steps $STEPS
  openclip openclip_coca_256 --model coca_b16 $TINY --batch $B --steps $STEPS
  vlmjax vlmjax_siglip_256 --config $SIGLIP --batch $B --steps $STEPS
  openclip openclip_siglip_256 --model siglip_b16 $TINY --batch $B --steps $STEPS
}
stage_check() {
  local t; t=$(limit 400)
  echo "== correctness: scripts/gpu_check.sh (up to $t s; $OUT/check/)"
  OUT=$OUT/check WHEELS=0 STEPS=$CHECK_STEPS timeout "$t" bash scripts/gpu_check.sh
}
stage_max() {
  echo "== largest batch that fits (full remat, layer scan; 95% of the card for jax)"
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
  vlmjax vlmjax_coca_max --config $COCA --max-batch $MEM --steps 5 --config.model.remat=full --config.model.scan=true
  vlmjax vlmjax_siglip_max --config $SIGLIP --max-batch $MEM --steps 5 --config.model.remat=full --config.model.scan=true
  unset XLA_PYTHON_CLIENT_MEM_FRACTION
}
stage_variants() {
  local t; t=$(limit 600)
  if [ "$t" -lt 60 ]; then echo "variants skipped: $(left) s of the budget left"; return; fi
  echo "== $COCA, batch $B: one change at a time against the base (rows as they finish; up to $t s)"
  timeout "$t" $PY scripts/bench_step.py --config $COCA --batch $B --steps $((STEPS / 2)) \
    --ab xla_gpu_enable_latency_hiding_scheduler=true \
    --ab model.attention=xla \
    --ab model.remat=dots_no_batch \
    --ab loss.caption_chunk=0 \
    --ab xla_gpu_enable_triton_gemm=false \
    --ab model.scan=true \
    --ab xla_gpu_enable_command_buffer= \
    --ab base \
    > "$OUT/variants.txt" 2>&1
  echo "exit $?"; grep -E "^(variant|\(base\)|model|loss|xla|base)" "$OUT/variants.txt" | head -12
}
stage_naflex() {
  local t; t=$(limit 300)
  if [ "$t" -lt 60 ]; then echo "naflex skipped: $(left) s of the budget left"; return; fi
  echo "== NaFlex packing and budgets: scripts/bench_naflex.py $NAFLEX (up to $t s)"
  timeout "$t" $PY scripts/bench_naflex.py $NAFLEX > "$OUT/naflex.txt" 2>> "$LOG"
  echo "exit $?"; grep -vE "^(WARNING|I0000|W0000)" "$OUT/naflex.txt" | tail -8
}
for stage in $STAGES; do
  case $stage in
    main|check|max|variants|naflex) "stage_$stage" ;;
    *) echo "unknown stage '$stage'; valid: main check max variants naflex all"; exit 2 ;;
  esac
done
rm -f "$OUT/job.json"

$PY - "$RESULTS" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
  r = json.loads(line)
  rows[r["name"]] = r
print(f"{'run':<26} {'batch':>6} {'ex/s':>8} {'step ms':>8} {'peak GiB':>9} {'MFU':>6} {'fused attn':>10}")
for name, r in rows.items():
  if "error" in r:
    print(f"{name:<26} {r['error']}")
    continue
  mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
  mem = f"{r['peak_memory_gib']:.1f}" if r.get("peak_memory_gib") else "-"
  fused = str(r.get("fused_attention_calls", "-"))
  print(f"{name:<26} {r['batch']:>6} {r['examples_per_sec']:>8.0f} {r['step_ms']:>8.1f} {mem:>9} {mfu:>6} {fused:>10}")
for model in ("coca", "siglip"):
  a = rows.get(f"vlmjax_{model}_256")
  for impl in ("", "_eager"):
    b = rows.get(f"openclip_{model}_256{impl}")
    if a and b and "error" not in a and "error" not in b:
      kind = "torch.compile" if not impl else "eager"
      line = f"{model}: vlmjax / open_clip {kind} = {a['examples_per_sec'] / b['examples_per_sec']:.2f}x throughput"
      if a.get("peak_memory_gib") and b.get("peak_memory_gib"):
        line += f", {a['peak_memory_gib'] / b['peak_memory_gib']:.2f}x peak memory"
      print(line)
PY
echo "bench_gpu.sh $STAGES: $SECONDS s of a $BUDGET s budget"
