#!/usr/bin/env bash
# GPU figures of issue 17 (fused LoRA, utilisation, compile break-even) in about 5 minutes; run from
# the repository root:
#
#   OUT=/some/folder bash scripts/gpu_figures.sh          # ViT-B/16 on cuda, batch 128, bf16
#   GPU_FIGURES_ALL=1 OUT=/some/folder bash scripts/gpu_figures.sh   # also issue 9's figures (8 more minutes)
#   GPU_FIGURES_QUICK=1 OUT=/tmp/f bash scripts/gpu_figures.sh   # dry run: tiny ViT on CPU, batch 8
#
# Steps (each under `timeout`; a failed step is logged and the next one runs):
#   1. environment: nvidia-smi, Python, torch, torchvision, timm
#   2. bench, bf16, eager (fused LoRA), $METHODS: ratios, TFLOP/s, the bound's share of the measured
#      bf16 GEMM peak and its time by operator class        -> $OUT/bench/bench_*_bf16_b*.json
#   3. bench, bf16, --compile, one run per method of $COMPILE_METHODS (in that order, so a time-out
#      keeps the earlier ones): compile and recompile seconds, break-even, and the compiled bound's
#      utilisation in every row (so frozen is left out) -> $OUT/bench/bench_*_bf16_compiled_*.json
#      (Inductor's cache in a fresh folder: the first compile of each method is cold, as on a new machine)
# With GPU_FIGURES_ALL=1, issue 9's figures as well (measured before; docs/speed.md):
#   4. bench, bf16, every method; 5. bench, fp32, frozen/seq-lora/inflora, 2 steps;
#   6. data loading: generated JPEGs through the loaders -> $OUT/loader.json
# Everything printed goes to $OUT/gpu_figures.log as well.
# Settable: BACKBONE DEVICE BATCH STEPS WARMUP COMPILE_STEPS METHODS COMPILE_METHODS FP32_STEPS IMAGES WORKERS PYTHON.
# With GPU_FIGURES_PIPELINE=1 (issue 17 items 1, 2, 5; about 5 more minutes), after the steps above:
#   pipeline: one training epoch of seq-lora through the PIL path, the decoded cache and device
#     decoding against in-memory batches, and the leaderboard's GPU-hours from the newest bench JSON
#     of that precision under $OUT/bench -> $OUT/pipeline.json
#   device-decode-tests: tests/test_device_decode.py on the GPU (its pixel differences printed)
#   Settable: PIPELINE_IMAGES PIPELINE_WORKERS PIPELINE_PRECISION PIPELINE_STEPS.
# With GPU_FIGURES_PREFLIGHT=1 (issue 23 item 6; about 4 minutes): preflight of seq-lora, inflora and l2p on
#   the ImageNet-R stand-in at batch 128 on the GPU: its peaks, projection and prefetch check -> $OUT/preflight/
# ONLY="NAME ..." runs only the steps so named, e.g. within one 10-minute device call:
#   GPU_FIGURES_ALL=1 GPU_FIGURES_PIPELINE=1 ONLY="environment bench-bf16-all pipeline device-decode-tests"
# If a .whl/ folder exists (e.g. timm's wheel), its wheels are installed into /tmp/site first.

set -u -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_figures_out}
mkdir -p "$OUT/bench"
PY=${PYTHON:-python3}
: "${METHODS:=frozen seq-lora inflora sd-lora}" "${COMPILE_METHODS:=seq-lora inflora sd-lora}"
if [ "${GPU_FIGURES_QUICK:-0}" = 1 ]; then
  : "${BACKBONE:=tiny}" "${DEVICE:=cpu}" "${BATCH:=8}" "${STEPS:=2}" "${WARMUP:=0}" "${COMPILE_STEPS:=1}"
  : "${FP32_STEPS:=1}" "${IMAGES:=400}" "${WORKERS:=0 2}"
else
  : "${BACKBONE:=vit-b16}" "${DEVICE:=cuda}" "${BATCH:=128}" "${STEPS:=10}" "${WARMUP:=3}" "${COMPILE_STEPS:=5}"
  : "${FP32_STEPS:=2}" "${IMAGES:=2000}" "${WORKERS:=8 16}"
fi

if [ "${GPU_FIGURES_QUICK:-0}" = 1 ]; then
  : "${PIPELINE_IMAGES:=400}" "${PIPELINE_WORKERS:=2}" "${PIPELINE_PRECISION:=fp32}" "${PIPELINE_STEPS:=3}"
else
  : "${PIPELINE_IMAGES:=30000}" "${PIPELINE_WORKERS:=16}" "${PIPELINE_PRECISION:=bf16}" "${PIPELINE_STEPS:=30}"
fi

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi

# step NAME SECONDS COMMAND...: run COMMAND under a time limit and report its exit status
step() {
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then
    echo "=== $name: skipped (ONLY=$ONLY)"
    return
  fi
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
  # shellcheck disable=SC2086  # METHODS and COMPILE_METHODS are lists of names
  step bench-bf16-eager 100 "${BENCH[@]}" --precision bf16 --methods $METHODS --warmup "$WARMUP" --steps "$STEPS"
  TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) && export TORCHINDUCTOR_CACHE_DIR
  for method in $COMPILE_METHODS; do
    step "bench-bf16-compile-$method" 90 "${BENCH[@]}" --precision bf16 --compile --methods "$method" --warmup 1 \
      --steps "$COMPILE_STEPS"
  done
  if [ "${GPU_FIGURES_ALL:-0}" = 1 ]; then
    step bench-bf16-all 160 "${BENCH[@]}" --precision bf16 --warmup "$WARMUP" --steps "$STEPS"
    step bench-fp32 100 "${BENCH[@]}" --precision fp32 --methods frozen seq-lora inflora --warmup 1 \
      --steps "$FP32_STEPS"
    # shellcheck disable=SC2086  # WORKERS is a list of numbers
    step loader 120 "$PY" scripts/loader_figures.py --images "$IMAGES" --workers $WORKERS --device "$DEVICE" \
      --out "$OUT/loader.json"
  fi
  if [ "${GPU_FIGURES_PIPELINE:-0}" = 1 ]; then
    bench_json=$(find "$OUT/bench" -name "bench_*_${PIPELINE_PRECISION}_b*.json" | sort | tail -n 1)
    # shellcheck disable=SC2086  # PIPELINE_WORKERS is a list of numbers
    step pipeline 240 "$PY" scripts/pipeline_figures.py --images "$PIPELINE_IMAGES" --workers $PIPELINE_WORKERS \
      --backbone "$BACKBONE" --device "$DEVICE" --precision "$PIPELINE_PRECISION" --steps "$PIPELINE_STEPS" \
      ${bench_json:+--bench "$bench_json"} --out "$OUT/pipeline.json"
    step device-decode-tests 90 "$PY" -m pytest -q -s -p no:cacheprovider tests/test_device_decode.py \
      -k "equals or cuda or bit_for_bit"
  fi
  if [ "${GPU_FIGURES_PREFLIGHT:-0}" = 1 ]; then
    # the CUDA paths of preflight (allocator peaks, probes at the preset's batch, OOM handling) and
    # its prefetch check (side-stream batches against the synchronous path, step time with and without)
    step preflight 240 "$PY" run_benchmark.py preflight --methods seq-lora inflora l2p --dataset imagenet-r \
      --fake-data --backbone "$BACKBONE" --device "$DEVICE" --precision bf16 --num-workers 2 --no-progress \
      --results-dir "$OUT" --scratch "$(mktemp -d)"
  fi
  echo "gpu_figures: done $(date -u +%FT%TZ); files:"
  find "$OUT" -type f | sort
} 2>&1 | tee "$OUT/gpu_figures.log"
