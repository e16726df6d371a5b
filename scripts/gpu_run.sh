#!/usr/bin/env bash
# The GPU run of every kernel repo in one command (the device issue): correctness against float64, host cost,
# kernel-level anchors, the Hopper Gluon forward and model-level A/B against sdpa, each step under its own time
# limit so one failing step never costs the others. Everything it writes lands in one archive under $OUT.
#
#   scripts/gpu_run.sh [STEP ...]      steps: env check attention decode gluon tiles model (default: all but tiles)
#   GPU_RUN_BUDGET_S=540               seconds for the whole run (steps past it are skipped and say so)
#   CHECK_BUDGET_S, CHECK_ARGS         gpu_check's own budget and extra arguments (e.g. "--kernels paged-attention")
#   MODEL_DEADLINE_S, MODEL_ARGS       bench_model's deadline and extra arguments (e.g. "--skip attention,prefill")
#   TILES_BUDGET_S, TILES_ARGS         tile_sweep's budget and extra arguments (e.g. "--phases decode")
#
# One device call holds at most 10 minutes, so the full run is two calls:
#   scripts/gpu_run.sh env check model          (precompiled variants: correctness, host cost; model level)
#   scripts/gpu_run.sh env attention decode gluon   (kernel level with the anchors; the Hopper Gluon forward)
#
# Expects, carried with the working tree (built on the CPU machine): .gpu/<repo>/<variant>/ (the AOT and Triton
# JIT variant folders, `kernel-loader build kernel_repos/flash-attn2 --variant torch-stable-abi210-cu130-x86_64-linux
# --variant torch-cuda --out .gpu/flash-attn2`, the same for sliding-window; about 12 MB) and .whl/ (wheels the
# GPU image lacks: transformers >= 5.22, kernels 0.17.2, tomlkit; olah and its dependencies for a real local Hub).
# Nothing is compiled on the GPU machine but the Triton JIT variant, measured as the comparison it is.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
WORK=$(mktemp -d)
mkdir -p "$OUT" "$WORK/logs"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
budget=${GPU_RUN_BUDGET_S:-540}
start=$(date +%s)
steps=${*:-env check attention decode gluon model}
summary="$WORK/summary.txt"
: > "$summary"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local left=$(( budget - ($(date +%s) - start) ))
  if [ "$left" -lt 20 ]; then echo "$name: skipped (run budget spent)" | tee -a "$summary"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s)"
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$WORK/logs/$name.log" 2>&1
  local rc=$?
  tail -25 "$WORK/logs/$name.log"
  echo "$name: rc=$rc in $(( $(date +%s) - t0 ))s" | tee -a "$summary"
  rm -f "$WORK"/*/warm.log  # the archive is rewritten after every step: a run cut off still returns what it has
  tar -czf "$OUT/gpu_results.tar.gz" -C "$WORK" --exclude=site .
}

for s in $steps; do
  case $s in
    env) step env 60 bash -c 'nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv;
          python3 -c "import torch,triton,sys,platform; print(torch.__version__, triton.__version__, sys.version.split()[0], platform.libc_ver())";
          python3 -c "import transformers, kernels; print(\"transformers\", transformers.__version__, \"kernels\", kernels.__version__)";
          command -v git; git --version' ;;
    check) [ -f scripts/gpu_check.py ] && step check 340 python3 scripts/gpu_check.py --variants .gpu --out "$WORK/check" --budget-s ${CHECK_BUDGET_S:-320} ${CHECK_ARGS:-} ;;
    attention) step attention 150 python3 scripts/bench_attention_followup.py --out "$WORK/attention" --deadline 130 --skip-e2e ;;
    decode) step decode 110 python3 scripts/bench_decode.py --out "$WORK/decode" --quick --budget-s 80 ;;
    gluon) [ -f kernel_repos/flash-attn3/benchmarks/gpu_gluon.py ] && \
             step gluon 330 env OUT="$WORK/gluon" python3 kernel_repos/flash-attn3/benchmarks/gpu_gluon.py ;;
    tiles) step tiles 200 python3 kernel_repos/flash-attn2/benchmarks/tile_sweep.py --out "$WORK/tiles" --budget-s ${TILES_BUDGET_S:-170} ${TILES_ARGS:-} ;;
    model) [ -f scripts/bench_model.py ] && step model 260 python3 scripts/bench_model.py --device cuda --out "$WORK/model" --tag h200 --deadline ${MODEL_DEADLINE_S:-230} ${MODEL_ARGS:-} \
             $(aot=$(ls -d .gpu/flash-attn2/torch-stable-abi* 2>/dev/null | head -1); [ -n "$aot" ] && echo --kernel-path flash-attn2=$aot) ;;
    *) echo "unknown step '$s' (valid: env check attention decode gluon tiles model)"; exit 2 ;;
  esac
done

rm -f "$WORK"/*/warm.log
tar -czf "$OUT/gpu_results.tar.gz" -C "$WORK" --exclude=site .
echo "== summary"; cat "$summary"
