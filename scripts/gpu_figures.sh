#!/usr/bin/env bash
# GPU figures of issue 9 (speed), in one go of under 8 minutes; run from the repository root:
#
#   OUT=/some/folder bash scripts/gpu_figures.sh          # ViT-B/16 on cuda, batch 128
#   GPU_FIGURES_QUICK=1 OUT=/tmp/f bash scripts/gpu_figures.sh   # dry run: tiny ViT on CPU, batch 8
#
# Steps (each under `timeout`; a failed step is logged and the next one runs):
#   1. environment: nvidia-smi, Python, torch, torchvision, timm
#   2. bench, bf16, every method             -> $OUT/bench/bench_*_bf16_*.json
#   3. bench, fp32, frozen/seq-lora/inflora, 2 steps -> $OUT/bench/bench_*_fp32_*.json
#   4. bench, bf16 with --compile, seq-lora and inflora (when bench has --compile)
#   5. data loading: generated JPEGs through the loaders -> $OUT/loader.json
# Everything printed goes to $OUT/gpu_figures.log as well. At most 6 files are written under $OUT.
# Settable: BACKBONE DEVICE BATCH STEPS WARMUP FP32_STEPS IMAGES WORKERS PYTHON.
# If a .whl/ folder exists (e.g. timm's wheel), its wheels are installed into /tmp/site first.

set -u -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_figures_out}
mkdir -p "$OUT/bench"
PY=${PYTHON:-python3}
if [ "${GPU_FIGURES_QUICK:-0}" = 1 ]; then
  : "${BACKBONE:=tiny}" "${DEVICE:=cpu}" "${BATCH:=8}" "${STEPS:=2}" "${WARMUP:=0}" "${FP32_STEPS:=1}"
  : "${IMAGES:=400}" "${WORKERS:=0 2}"
else
  : "${BACKBONE:=vit-b16}" "${DEVICE:=cuda}" "${BATCH:=128}" "${STEPS:=10}" "${WARMUP:=3}" "${FP32_STEPS:=2}"
  : "${IMAGES:=2000}" "${WORKERS:=8 16}"
fi

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi

# step NAME SECONDS COMMAND...: run COMMAND under a time limit and report its exit status
step() {
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "=== $name (limit ${limit} s): $*"
  timeout --kill-after=15 "$limit" "$@"
  echo "=== $name: exit status $? after $((SECONDS - start)) s"
}

BENCH=("$PY" run_benchmark.py bench --backbone "$BACKBONE" --batch-size "$BATCH" --device "$DEVICE"
       --results-dir "$OUT")

{
  echo "gpu_figures: $(date -u +%FT%TZ), backbone $BACKBONE, device $DEVICE, batch $BATCH, steps $STEPS"
  step environment 30 bash -c "nvidia-smi || echo 'no nvidia-smi'; \"$PY\" -c 'import platform, torch, \
torchvision, timm; print(\"python\", platform.python_version(), \"torch\", torch.__version__, \"torchvision\", \
torchvision.__version__, \"timm\", timm.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available())'"
  step bench-bf16 160 "${BENCH[@]}" --precision bf16 --warmup "$WARMUP" --steps "$STEPS"
  step bench-fp32 100 "${BENCH[@]}" --precision fp32 --methods frozen seq-lora inflora --warmup 1 \
    --steps "$FP32_STEPS"
  if "$PY" run_benchmark.py bench --help | grep -q -- --compile; then
    step bench-bf16-compile 110 "${BENCH[@]}" --precision bf16 --compile --methods seq-lora inflora --warmup "$WARMUP" \
      --steps "$STEPS"
  else
    echo "=== bench-bf16-compile: skipped, bench has no --compile"
  fi
  # shellcheck disable=SC2086  # WORKERS is a list of numbers
  step loader 120 "$PY" scripts/loader_figures.py --images "$IMAGES" --workers $WORKERS --device "$DEVICE" \
    --out "$OUT/loader.json"
  echo "gpu_figures: done $(date -u +%FT%TZ); files:"
  find "$OUT" -type f | sort
} 2>&1 | tee "$OUT/gpu_figures.log"
