"""Training-step throughput: this project's jitted CMD step vs the PyTorch reference design.

Runs, one after another in fresh worker processes on the same machine:

* ``jax``: ``cmd_jax.trainers.pretrain.jit_train_step`` (what ``launch.py`` runs): the
  on-device augmentation of the raw clips (two views), modalities, EMA, keys, queries, the
  CMD loss and its gradient, SGD, enqueue; state donated. Options of the model
  (``--jax-options``, e.g. ``model.stack_modalities=false`` or ``model.compute_dtype=bfloat16``)
  give more ``jax*`` rows;
* ``torch_step``: ``tests/torch_reference.TorchCMD(impl="step")``: the reference's design, the
  GRU called once per time step from Python, ``loss.backward()``, ``torch.optim.SGD``;
* ``torch_sequence``: the same ``TorchCMD`` with every forward-only cell as ONE
  whole-sequence ``nn.GRU`` call (cuDNN / oneDNN), the optimised PyTorch equivalent.

The torch steps get ready-made views (the reference augments in its data-loader workers), the
JAX step augments the stored 300-frame clips inside the step: the JAX figure includes work
the torch figures do not.

Sizes (``--size``): ``full`` = the reference's (hidden 1024, 3 layers, T 64, batch 64, queue
16384, top-k 8192, three modalities, 25 joints x 2 persons); ``cpu`` = the same with hidden
256 and queue 4096 / top-k 2048, which a 2-core CPU runs in seconds per step. Any size can be
overridden (``--hidden 128 --batch 32 ...``).

Each row: ``samples_per_s`` (batch / mean step time over ``--steps`` timed steps after
``--warmup`` steps, compilation excluded; the best of ``--rounds`` interleaved rounds, each
in a fresh process, all rounds listed in ``round_step_ms``), ``step_ms``, ``peak_mem_bytes`` (bench/common.py),
JAX rows also ``first_step_s`` (the first call: tracing, compilation and one step) and ``compile_s``
(that minus the mean step time; run with ``JAX_COMPILATION_CACHE_DIR`` unset to see the full compile),
``model_flops_per_step`` (the matmul FLOPs of the encoders, forward for the six encoders and
backward for the three query encoders, counted the same for every implementation) and the
achieved ``model_flops_per_s``; ``ratio_vs`` on the first JAX row.

  python bench/bench_step.py --size cpu
  python bench/bench_step.py --size full            # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=wrong-import-position

SIZES = {
    "full": dict(hidden=1024, layers=3, frames=64, batch=64, queue=16384, topk=8192, embed=128),
    "cpu": dict(hidden=256, layers=3, frames=64, batch=64, queue=4096, topk=2048, embed=128),
}
JOINTS, PERSONS, STORED_FRAMES = 25, 2, 300
FEATURES = JOINTS * 3 * PERSONS
# Peak dense matmul throughput of known accelerators (FLOP/s), for the "fraction of peak".
# Dense (no sparsity) figures from NVIDIA's data sheets; the first matching name prefix wins.
PEAK_FLOPS = {
    "NVIDIA H100 PCIe": {"float32": 51e12, "tf32": 378e12, "bfloat16": 756e12},
    "NVIDIA H100": {"float32": 67e12, "tf32": 494.7e12, "bfloat16": 989.4e12},  # SXM (80GB HBM3)
    "NVIDIA H200": {"float32": 67e12, "tf32": 494.7e12, "bfloat16": 989.4e12},
    "NVIDIA A100": {"float32": 19.5e12, "tf32": 156e12, "bfloat16": 312e12},
}


def model_flops(s: dict) -> float:
  """Matmul FLOPs of one CMD step: per encoder, every cell of every layer does
  ``2 * T * N * 3H * (in + H)`` (input and recurrent projections), plus the MLP head; the six
  encoders run forward, the three query encoders backward (2x their forward)."""
  h, t, n, layers = s["hidden"], s["frames"], s["batch"], s["layers"]
  gru = 0.0
  for k in range(layers):
    inp = FEATURES if k == 0 else 2 * h
    gru += 2 * (2 * t * n * 3 * h * (inp + h))
  head = 2 * n * (2 * h * 2 * h + 2 * h * s["embed"])
  forward = gru + head
  return 6 * forward + 3 * 2 * forward


def sizes_of(args) -> dict:
  return common.sizes_with_overrides(SIZES[args.size], args, modalities=3, joints=JOINTS, persons=PERSONS)


# ----------------------------------------------------------------------------------------
# Workers
# ----------------------------------------------------------------------------------------

def jax_worker(s: dict, args, options: list[str]) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from cmd_jax import sharding  # pylint: disable=import-outside-toplevel
  from cmd_jax.layouts import NTU25  # pylint: disable=import-outside-toplevel
  from cmd_jax.trainers import pretrain as cp  # pylint: disable=import-outside-toplevel
  from configs import pretrain_cmd  # pylint: disable=import-outside-toplevel

  config = pretrain_cmd.get_config("ntu60_xsub")
  config.model.hidden_size, config.model.num_layers, config.model.embed_dim = s["hidden"], s["layers"], s["embed"]
  config.batch_size, config.moco.queue_size, config.cmd.topk = s["batch"], s["queue"], s["topk"]
  config.augment.frames = s["frames"]
  config.augment.min_length = min(int(config.augment.min_length), s["frames"])
  config.mesh.data = 1
  common.apply_overrides(config, options)
  mesh = sharding.make_mesh(1)
  state = sharding.put_replicated(cp.create_train_state(config, NTU25, steps_per_epoch=1000), mesh)
  step_fn = cp.jit_train_step(config, NTU25, 1000, mesh)
  rng = np.random.default_rng(0)
  batch = {"skeleton": rng.normal(size=(s["batch"], 3, STORED_FRAMES, JOINTS, PERSONS)).astype(np.float32),
           "num_frames": rng.integers(64, STORED_FRAMES + 1, size=s["batch"]).astype(np.int32)}
  batch = sharding.put_batch(batch, mesh)
  holder = {"state": state}

  def step():
    holder["state"], metrics = step_fn(holder["state"], batch)
    return metrics["loss"]

  start = time.perf_counter()
  jax.block_until_ready(step())  # the first call: trace, lower, compile (or read the compilation cache), one step
  first_step_s = time.perf_counter() - start
  mean, times = common.time_loop(step, jax.block_until_ready, args.steps, args.warmup)
  profile = profile_one_step(step) if args.profile else None
  dev = jax.devices()[0]
  stats = dev.memory_stats() if dev.platform != "cpu" else None
  peak = int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else common.host_peak_rss_bytes()
  row = {"impl": common.with_options("jax", options), "step_s": times,
         "mean_step_s": mean, "first_step_s": round(first_step_s, 3),
         "compile_s": round(first_step_s - mean, 3), "peak_mem_bytes": peak,
         "peak_mem_kind": "device" if stats else "host_rss", "machine": common.machine("jax")}
  if profile:
    row["profile"] = profile
  return row


def profile_one_step(step) -> dict:
  """One step under ``jax.profiler.trace``: device time per XLA op kind (fusion names without
  their numbers), split into ops run once and ops run inside the time loops (>= 16 calls)."""
  import collections  # pylint: disable=import-outside-toplevel
  import glob  # pylint: disable=import-outside-toplevel
  import gzip  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel

  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      jax.block_until_ready(step())
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not files:
      return {}
    with gzip.open(files[0]) as f:
      events = json.load(f)["traceEvents"]
  total, calls = collections.Counter(), collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") == "X" and "dur" in e and not name.startswith(("$", "Thunk", "Slinky", "Pjit", "Common")):
      total[name] += e["dur"]
      calls[name] += 1
  kinds = collections.Counter()
  for name, us in total.items():
    kinds[(re.sub(r"([._]\d+)+$", "", name), "loop" if calls[name] >= 16 else "once")] += us
  all_us = sum(kinds.values()) or 1
  return {"op_ms": {f"{k} ({where})": round(v / 1e3, 1) for (k, where), v in kinds.most_common(12)},
          "total_op_ms": round(all_us / 1e3, 1)}


def torch_worker(s: dict, args, impl: str) -> dict:
  import torch  # pylint: disable=import-outside-toplevel

  from tests.torch_reference import TorchCMD  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  device = common.torch_device(args.cpu, args.matmul_precision)
  model = TorchCMD(s["hidden"], s["layers"], s["embed"], s["queue"], 0.999, 0.07, s["topk"],
                   input_size=FEATURES, impl=impl.removeprefix("torch_")).to(device)
  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
  gen = torch.Generator(device="cpu").manual_seed(0)
  views = torch.randn(2, s["batch"], 3, s["frames"], JOINTS, PERSONS, generator=gen).to(device)

  def step():
    out = model(views[0], views[1])
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    return out["loss"]

  def sync(loss):
    if device.type == "cuda":
      torch.cuda.synchronize()
    return float(loss)

  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  mean, times = common.time_loop(step, sync, args.steps, args.warmup)
  gpu = device.type == "cuda"
  return {"impl": impl, "step_s": times, "mean_step_s": mean,
          "peak_mem_bytes": int(torch.cuda.max_memory_allocated()) if gpu else common.host_peak_rss_bytes(),
          "peak_mem_kind": "device" if gpu else "host_rss", "machine": common.machine("torch")}


def finish(row: dict, s: dict, args) -> dict:
  flops = model_flops(s)
  out = {"name": "train_step", "impl": row["impl"], "matmul_precision": args.matmul_precision, "samples_per_s": round(s["batch"] / row["mean_step_s"], 3),
         "step_ms": round(1e3 * row["mean_step_s"], 2), "sizes": s,
         "peak_mem_bytes": row["peak_mem_bytes"], "peak_mem_kind": row["peak_mem_kind"],
         "model_flops_per_step": flops, "model_flops_per_s": flops / row["mean_step_s"]}
  peaks = next((v for k, v in PEAK_FLOPS.items() if row["machine"].get("device", "").startswith(k)), None)
  if peaks:
    out["fraction_of_peak"] = {k: round(out["model_flops_per_s"] / v, 4) for k, v in peaks.items()}
  out["step_s_all"] = [round(t, 4) for t in row["step_s"]]
  for key in ("first_step_s", "compile_s"):
    if key in row:
      out[key] = row[key]
  if row.get("profile"):
    out["profile"] = row["profile"]
  out["machine"] = row["machine"]
  return out


def run_rounds(jobs, passthrough, rounds, timeout, s) -> list[dict]:
  """Every job once per round, interleaved; per job the row of its fastest round, with the
  step times of all rounds (``round_step_ms``)."""
  rows, _ = common.best_of_rounds(
      __file__, [passthrough + ["--impl", impl, "--options", options] for impl, options in jobs], rounds, timeout,
      lambda j, error: common.emit(name="train_step", impl=jobs[j][0], error=error, sizes=s))
  return rows


# ----------------------------------------------------------------------------------------

def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
  parser.add_argument("--impls", default="jax,torch_step,torch_sequence",
                      help="comma-separated: jax, torch_step, torch_sequence")
  parser.add_argument("--jax-options", action="append", default=[],
                      help="one extra jax row per flag: comma-separated config overrides, e.g. "
                           "model.compute_dtype=bfloat16")
  parser.add_argument("--rounds", type=int, default=3,
                      help="interleaved rounds (every implementation once per round, fresh processes); "
                           "each row reports its best round, which keeps ratios meaningful on a noisy machine")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, autotuning)")
  for k in SIZES["full"]:
    parser.add_argument(f"--{k}", type=int, default=None, help=f"override the size's {k}")
  parser.add_argument("--cpu", action="store_true", help="torch on the CPU even when a GPU is visible")
  parser.add_argument("--matmul-precision", choices=("default", "highest"), default="default",
                      help="default: float32 matmuls may use TF32 on GPUs in both frameworks (JAX's default; "
                           "torch.backends.*.allow_tf32 = True, the default of the reference's torch 1.8); "
                           "highest: full float32 in both")
  parser.add_argument("--timeout", type=float, default=3600, help="seconds per worker")
  parser.add_argument("--profile", action="store_true",
                      help="jax rows: also trace one step and report device time per XLA op kind")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--impl", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--options", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  s = sizes_of(args)

  if args.worker:
    options = common.split_options(args.options)
    if args.impl == "jax" and args.matmul_precision == "highest":
      import jax  # pylint: disable=import-outside-toplevel
      jax.config.update("jax_default_matmul_precision", "highest")
    row = jax_worker(s, args, options) if args.impl == "jax" else torch_worker(s, args, args.impl)
    common.emit(**finish(row, s, args))
    return 0

  passthrough = ["--size", args.size, "--steps", str(args.steps), "--warmup", str(args.warmup),
                 "--matmul-precision", args.matmul_precision]
  for k in SIZES["full"]:
    if getattr(args, k) is not None:
      passthrough += [f"--{k}", str(getattr(args, k))]
  if args.cpu:
    passthrough.append("--cpu")
  if args.profile:
    passthrough.append("--profile")
  jobs = []
  for impl in [i.strip() for i in args.impls.split(",") if i.strip()]:
    if impl not in ("jax", "torch_step", "torch_sequence"):
      parser.error(f"--impls: unknown implementation {impl!r}; expected jax, torch_step or torch_sequence")
    jobs.append((impl, ""))
    if impl == "jax":
      jobs += [("jax", o) for o in args.jax_options]
  rows = run_rounds(jobs, passthrough, args.rounds, args.timeout, s)
  jax_rows = [r for r in rows if r["impl"].startswith("jax")]
  for r in jax_rows:
    others = [o for o in rows if not o["impl"].startswith("jax")]
    r["ratio_vs"] = common.ratios(r, others + jax_rows[:1])
  for r in rows:
    common.emit(**r)
  return 0 if rows and len(rows) == len(jobs) else 1


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.exit(main())
