#!/usr/bin/env bash
# Every GPU figure of benchmarks/README.md, and the CUDA tests, in one command (about 5 minutes on one H100).
# Writes benchmarks/results/<name>_*.json (name: the first argument, default "gpu"). Needs the corpora:
# GPTLAB_MIRROR pointing at an offline mirror, or network access.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-gpu}
out=benchmarks/results
mkdir -p "$out"
python -m pytest -q tests/test_cuda.py
python benchmarks/matmul_peak.py > "$out/${name}_peak.json"
python benchmarks/time_to_quality.py --preset shakespeare-gpu --target 1.47 > "$out/${name}_ttq.json"
python benchmarks/train_speed.py --preset gpt2-124m --synthetic --set compile=true --iters 30 > "$out/${name}_gpt2.json"
# gptlab cost on a GPU run: the allocator's peak and the step time beside the prediction (eager, 100 steps)
python -m gptlab train --preset shakespeare-gpu --no-compile --max-iters 100 --max-time none --log-interval 10 \
    --out /tmp/gptlab-gpu-cost --overwrite
python -m gptlab cost /tmp/gptlab-gpu-cost --json > "$out/${name}_cost.json"
cat "$out/${name}"_*.json
