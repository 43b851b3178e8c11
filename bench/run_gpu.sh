#!/usr/bin/env bash
# Every comparison of bench/RESULTS.md on one GPU (section 6), each against its PyTorch rows:
# the matmul peak, CMD's step (jax vs the step-by-step design and the whole-sequence GRU),
# HiCLR's step and pipeline with ST-GCN and DSTA-Net (vs the reference design), the views
# (vs the reference's per-sample feeder path) and the input pipeline (its margin over the
# measured CMD step); then bench/summarize.py prints one table of every row and its ratios.
#
#   bash bench/run_gpu.sh            # full sizes; sized to finish within 8 minutes on one GPU
#   bash bench/run_gpu.sh --quick    # the step rows only, fewer steps; within 4 minutes
#   bash bench/run_gpu.sh --cpu      # tiny sizes on this machine's CPU: every command end to end
#   ... --out DIR                    # where the JSON lines go (default bench/results;
#                                    # with --cpu a new temporary folder)
#
# Needs the runtime requirements and a CUDA torch (tests/requirements.txt pins a CPU torch:
# use the host's own). JAX's persistent compilation cache (a temporary folder, removed at
# the end) lets a program compiled by one worker be read by a later worker that compiles
# the same program. Every stage runs under a time limit (the budget left, at most its
# share): a stage past it leaves an error row, and the run goes on. Writes
# <out>/gpu_*.jsonl (--cpu: cpu_check_*.jsonl) and <out>/<prefix>_summary.md.
set -uo pipefail
cd "$(dirname "$0")/.."

mode=full
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) mode=quick ;;
    --cpu) mode=cpu ;;
    --out) out="$2"; shift ;;
    *) echo "run_gpu.sh: unknown argument $1 (expected --quick, --cpu, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$mode" = cpu ]; then
  prefix=cpu_check
  out="${out:-$(mktemp -d /tmp/run_gpu_cpu_check.XXXXXX)}"
  budget=5400       # a 2-core CPU compiles each step program in minutes
else
  prefix=gpu
  out="${out:-bench/results}"
  if [ "$mode" = quick ]; then budget=240; else budget=480; fi
fi
mkdir -p "$out"
cache="$(mktemp -d /tmp/run_gpu_jax_cache.XXXXXX)"
trap 'rm -rf "$cache"' EXIT
export JAX_COMPILATION_CACHE_DIR="$cache"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export TF_CPP_MIN_LOG_LEVEL=2
start=$(date +%s)
status=0

# stage NAME SHARE_S OUTPUT COMMAND...: runs COMMAND under a limit of min(SHARE_S, budget
# left) seconds, its JSON lines into OUTPUT (and the terminal), its time on stderr.
stage() {
  local name="$1" share="$2" file="$3"
  shift 3
  local left=$(( budget - ($(date +%s) - start) ))
  local limit=$(( share < left ? share : left ))
  if [ "$limit" -le 5 ]; then
    echo "{\"name\": \"$name\", \"error\": \"not run: the ${budget} s budget is spent\"}" | tee "$file"
    status=1
    return
  fi
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" | tee "$file"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    status=1
    local why="exit status $rc"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && why="stopped at its ${limit} s limit"
    echo "{\"name\": \"$name\", \"error\": \"$why\"}" | tee -a "$file"
  fi
  echo "run_gpu.sh: $name took $(( $(date +%s) - t0 )) s (limit ${limit} s)" >&2
}

if [ "$mode" != cpu ]; then
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$out/${prefix}_machine.txt" || true
fi

case "$mode" in
  full)
    stage matmul 30 "$out/gpu_matmul.jsonl" python bench/bench_matmul.py --size full --rounds 3 --calls 10
    stage cmd_step 150 "$out/gpu_step.jsonl" python bench/bench_step.py --size full --rounds 1 --steps 20 --warmup 3 \
      --jax-options model.compute_dtype=bfloat16
    stage hiclr 200 "$out/gpu_hiclr.jsonl" python bench/bench_hiclr.py --size full --rounds 1 --steps 10 --warmup 3 \
      --impls jax_step,torch_step,jax_pipeline,torch_pipeline
    stage augment 60 "$out/gpu_augment.jsonl" python bench/bench_augment.py --size full --batches 128 \
      --steps 50 --ref-samples 1024
    stage input_pipeline 40 "$out/gpu_input_pipeline.jsonl" python bench/bench_input_pipeline.py --size full \
      --read-threads 4,16 --batches 50 --step-json "$out/gpu_step.jsonl"
    ;;
  quick)
    stage matmul 20 "$out/gpu_matmul.jsonl" python bench/bench_matmul.py --size full --rounds 2 --calls 5
    stage cmd_step 80 "$out/gpu_step.jsonl" python bench/bench_step.py --size full --rounds 1 --steps 10 --warmup 2
    stage hiclr 100 "$out/gpu_hiclr.jsonl" python bench/bench_hiclr.py --size full --rounds 1 --steps 5 --warmup 2 \
      --impls jax_step,torch_step
    stage augment 30 "$out/gpu_augment.jsonl" python bench/bench_augment.py --size full --batches 128 \
      --steps 20 --ref-samples 256 --workers 0
    stage input_pipeline 20 "$out/gpu_input_pipeline.jsonl" python bench/bench_input_pipeline.py --size full \
      --read-threads 16 --batches 20 --step-json "$out/gpu_step.jsonl"
    ;;
  cpu)
    stage matmul 300 "$out/cpu_check_matmul.jsonl" python bench/bench_matmul.py --shape 256,256,256 --rounds 1 --calls 2
    stage cmd_step 1500 "$out/cpu_check_step.jsonl" python bench/bench_step.py --size cpu --cpu --rounds 1 --steps 1 \
      --warmup 0 --hidden 16 --batch 8 --frames 16 --queue 64 --topk 32 --jax-options model.compute_dtype=bfloat16
    stage hiclr 3000 "$out/cpu_check_hiclr.jsonl" python bench/bench_hiclr.py --size cpu --cpu --rounds 1 --steps 1 \
      --warmup 0 --batch 4 --queue 16 --hidden-channels 4 --hidden-dim 16 \
      --impls jax_step,torch_step,jax_pipeline,torch_pipeline
    stage augment 600 "$out/cpu_check_augment.jsonl" python bench/bench_augment.py --size cpu --batches 8 --steps 3 \
      --warmup 1 --ref-samples 16 --ref-warmup 2 --workers 2
    stage input_pipeline 600 "$out/cpu_check_input_pipeline.jsonl" python bench/bench_input_pipeline.py --size cpu \
      --batch 8 --read-threads 1 --batches 5 --warmup-batches 1 --step-json "$out/cpu_check_step.jsonl"
    ;;
esac

python bench/summarize.py "$out/${prefix}"_*.jsonl | tee "$out/${prefix}_summary.md"
echo "run_gpu.sh: $mode run in $(( $(date +%s) - start )) s (budget ${budget} s); results in $out" >&2
exit $status
