#!/usr/bin/env bash
# Every CPU figure of benchmarks/README.md, written as JSON lines to benchmarks/results/DATE/cpu_*.json.
# About 25 minutes on the 2-core project machine; run it on an otherwise idle machine.
#   bash benchmarks/run_cpu.sh [OUT_DIR] [NANOGPT_CHECKOUT]
# With a nanoGPT checkout (default ../../shared/reference/nanogpt, when it exists) its CPU recipe is timed
# between gptlab's runs, so that the ratios come from one sitting.
set -euo pipefail
base_run=${BASE_RUN:+$(realpath "$BASE_RUN")}; chat_run=${CHAT_RUN:+$(realpath "$CHAT_RUN")}  # (before the cd)
cd "$(dirname "$0")"
out=${1:-results/$(date +%F)}
nanogpt=${2:-../../shared/reference/nanogpt}
mirror=${GPTLAB_MIRROR:-../../shared/data}
mkdir -p "$out"
python matmul_peak.py > "$out/cpu_matmul_peak.json"
for round in 1 2 3; do  # interleaved, so the machine's drift hits every variant alike
  for dtype in bfloat16 float32; do
    python train_speed.py --preset nanogpt-cpu --iters 200 --set dtype=$dtype
  done
done > "$out/cpu_train_nanogpt.json"
if [ -d "$nanogpt" ]; then
  for round in 1 2; do
    python nanogpt_reference.py --nanogpt "$nanogpt" --mirror "$mirror"
    python train_speed.py --preset nanogpt-cpu --iters 200 --set dtype=bfloat16
  done > "$out/cpu_nanogpt_reference.json"
fi
python train_speed.py --preset cpu --iters 60 > "$out/cpu_train_default.json"
python generate_speed.py --preset nanogpt-cpu > "$out/cpu_generate_nanogpt.json"
python generate_speed.py --preset cpu --skip-cli > "$out/cpu_generate_default.json"
python tokenize_speed.py > "$out/cpu_tokenize.json"
python time_to_quality.py --preset nanogpt-cpu --target 1.886 > "$out/cpu_ttq_nanogpt_fp32.json"
python time_to_quality.py --preset nanogpt-cpu --target 1.886 -- --dtype bfloat16 > "$out/cpu_ttq_nanogpt_bf16.json"
python time_to_quality.py --preset cpu --target 1.886 --target 1.70 --target 1.60 > "$out/cpu_ttq_default.json"
python cost_check.py --steps 30 > "$out/cpu_cost_check.json"
python shared_machine.py --runs 2 > "$out/cpu_shared_machine.json"  # two default runs at once: 5 more minutes
# The inference figures need a trained run and its finetuned child on builtin:words (skipped without them):
#   BASE_RUN=runs/base CHAT_RUN=runs/words bash benchmarks/run_cpu.sh
if [ -n "$base_run" ] && [ -n "$chat_run" ]; then
  python serve_load.py --run "$base_run" > "$out/cpu_serve_load.json"
  python serve_memory.py --run "$base_run" > "$out/cpu_serve_memory.json"
  python inference_speed.py --run "$base_run" --chat "$chat_run" > "$out/cpu_inference_speed.json"
fi
