#!/usr/bin/env bash
# What produced the GPU figures in benchmarks/RESULTS.md, run on the lent H100 from the repo root.
# The GPU image has torch/transformers but not pydantic(-settings): those travel as wheels in .whl/,
# and the encoder travels as fp16 safetensors in .device-carry/encoder (the 83 MB wheel does not fit).
#   usage: bash benchmarks/gpu_run.sh OUTDIR [extra `vigil train` options for both tasks]
set -euo pipefail
out=$1; shift
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export VIGIL_DATA_DIR=/tmp/vigil VIGIL_BASE_ENCODER_DIR=$PWD/.device-carry/encoder VIGIL_DEVICE=cuda
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for task in sentiment triage; do
  python3 -m streams.cli train --task "$task" --profile full --promote "$@" 2>&1 | grep -v "━" | tail -3
  python3 -m benchmarks.quality --task "$task" --json "$out/quality.jsonl"
done
cp -r /tmp/vigil/models/*/v*/card.json "$out/" 2>/dev/null || true
for task in sentiment triage; do cp /tmp/vigil/models/$task/v1/card.json "$out/card-$task.json"; done
