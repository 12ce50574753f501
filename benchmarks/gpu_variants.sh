#!/usr/bin/env bash
# Recipe variants trained side by side on one GPU (each its own registry), then the scoring benchmark.
#   usage: bash benchmarks/gpu_variants.sh OUTDIR
set -euo pipefail
out=$1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export VIGIL_BASE_ENCODER_DIR=$PWD/.device-carry/encoder VIGIL_DEVICE=cuda
variant() {  # name, then `vigil train` options
  local name=$1; shift
  for task in sentiment triage; do
    VIGIL_DATA_DIR=/tmp/v-$name python3 -m streams.cli train --task $task --profile full --promote "$@" 2>&1 | grep -v "━" | tail -2
    VIGIL_DATA_DIR=/tmp/v-$name python3 -m benchmarks.quality --task $task --json "$out/quality-$name.jsonl" | sed "s/^/$name /"
  done
}
variant lr1e4-e10 --lr 1e-4 --epochs 10 > "$out/lr1e4-e10.txt" 2>&1 &
variant lr2e4-e10 --lr 2e-4 --epochs 10 > "$out/lr2e4-e10.txt" 2>&1 &
variant lr1e4-e15-b16 --lr 1e-4 --epochs 15 --batch-size 16 > "$out/lr1e4-e15-b16.txt" 2>&1 &
wait
cat "$out"/*.txt
VIGIL_DATA_DIR=/tmp/v-lr1e4-e10 python3 -m streams.cli bench scoring --task sentiment --n 65536 --batch 1024 \
  --n-single 512 --device cuda 2>&1 | grep -v Warning | tee "$out/bench_scoring_gpu.txt"
