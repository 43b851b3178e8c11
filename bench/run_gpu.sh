#!/usr/bin/env bash
# Every benchmark at the reference's full size on a GPU host (bench/RESULTS.md section 6).
# Needs the runtime requirements and torch with CUDA (tests/requirements.txt pins a CPU torch:
# use the host's own CUDA torch). Writes bench/results/gpu_*.jsonl and gpu_scaling.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$out/gpu_machine.txt" || true

python bench/bench_matmul.py --size full | tee "$out/gpu_matmul.jsonl"
python bench/bench_step.py --size full --rounds 3 --steps 10 --warmup 3 \
  --jax-options model.stack_modalities=true \
  --jax-options model.compute_dtype=bfloat16 \
  --jax-options model.input_projection=per_step | tee "$out/gpu_step.jsonl"
python bench/bench_step.py --size full --rounds 1 --steps 10 --warmup 3 --matmul-precision highest \
  --impls jax,torch_sequence | tee "$out/gpu_step_highest.jsonl"
python bench/bench_encoder.py --size full --options input_projection=per_step \
  --options compute_dtype=bfloat16 | tee "$out/gpu_encoder.jsonl"
python bench/bench_scaling.py --size full --steps 5 --warmup 2 --markdown \
  > "$out/gpu_scaling.jsonl" 2> "$out/gpu_scaling.md"
python bench/bench_augment.py --size full | tee "$out/gpu_augment.jsonl"
python bench/bench_hiclr.py --size full --rounds 3 --steps 10 --warmup 3 | tee "$out/gpu_hiclr.jsonl"
python bench/bench_input_pipeline.py --size full --read-threads 1,4,8,16 \
  --step-json "$out/gpu_step.jsonl" | tee "$out/gpu_input_pipeline.jsonl"
