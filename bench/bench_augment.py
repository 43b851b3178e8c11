"""Augmentation throughput: the batched, jitted pretraining views vs the reference's per-sample feeder path.

For both methods (``--method cmd,hiclr``, default both). Every row carries ``method``.

CMD: one sample = one stored clip ``x [3, 300, 25, 2]`` float32 with its ``num_frames`` turned
into its two pretraining views ``(view_q, view_k)``, each ``[3, 64, 25, 2]`` float32
(docs/references.md#cmd-pretraining-views: per view, the random crop of
``L = min(max(floor(F * U(0.1, 1)), 64), F)`` frames resized to 64, then with probability
0.5 the corruption of 15 joints, otherwise the shear; amplitudes 1.0). The clips are random
normal values, zero after ``num_frames``, with ``num_frames`` uniform in [1, 300] (seeded; the same clips for every
implementation). Runs, one after another in fresh worker processes on the same machine:

* ``jax_batched``: ``cmd_jax.methods.cmd.views.pretrain_views`` with the reference's parameters (as
  ``cmd_jax.trainers.pretrain.train_step`` calls it) jitted on a batch ``[B, 3, 300, 25,
  2]`` + ``num_frames int32 [B]`` already on the default JAX device, a new key every call
  (``fold_in(key, i)`` inside the jitted function); one row per ``--batches`` entry, each
  in its own worker. Timed: ``--steps`` calls, each waited for with ``block_until_ready``,
  after ``--warmup`` untimed calls (compilation excluded; its time is ``compile_s``);
  ``samples_per_s`` uses the MEDIAN call time (a 2-core VM's noise at the millisecond scale
  moves the mean by 2x between runs). On a CPU host XLA uses all cores.
* ``reference_per_sample``: ``tests/torch_reference.reference_pretrain_views(x, num_frames)``
  called per sample in a Python loop over the same clips (numpy + Python ``random`` + one
  ``F.interpolate`` per view), what one reference DataLoader worker does per item, with
  ``torch.set_num_threads(1)`` (as PyTorch sets in every DataLoader worker) and BLAS limited
  to one thread. Timed: ``--ref-samples`` samples after ``--ref-warmup`` untimed ones
  (batch collation, which the reference's loader also does, is not included).
* ``reference_per_sample[workers=N]``: ``--workers N`` processes (default: all cores;
  0 skips it) each running that loop at the same time, started with ``spawn`` and released
  together by a barrier; ``samples_per_s`` = all samples / wall time from the release to
  the last process's end: what N DataLoader workers deliver on this machine.

Each row: ``samples_per_s``, ``ms_per_batch`` (jax) or ``ms_per_sample`` (reference),
``sizes``, ``peak_mem_bytes`` (bench/common.py: the device's peak on an accelerator,
otherwise the worker's peak RSS; for the N-process row the sum of the N processes' peak
RSS), ``machine``. The ``jax_batched`` rows carry ``ratio_vs`` (their samples/s over each
reference row's) and ``goal_50x`` (the issue's goal: ``jax_batched`` >= 50x
``reference_per_sample``). On a GPU the jax rows are the device's figure and the reference
rows the host CPU's.

HiCLR: one sample = one stored 50-frame clip ``x [3, 50, 25, 2]`` float32 (random normal
values, seeded) turned into its four views ``(q, k, q1, q2)`` (``cmd_jax.methods.hiclr.views``:
crop + shear for ``q`` and ``k``; crop + shear + flip / rotation / noise / blur / axis mask
for ``q1`` and ``q2``, the release's ``aug_method="12345"``):

* ``jax_batched``: ``hiclr_views`` jitted on a batch, the configured default
  (``hiclr.noise_rng="threefry"``: JAX's PRNG for the Gaussian noise);
  ``jax_batched[noise_rng=fast]``: the same with the hash-based noise generator (an option);
* ``reference_per_sample`` (and ``[workers=N]``): ``tests/hiclr_feeder_reference.feeder_views``
  per sample, the release's data-loader worker path in numpy (float64, as the release).
* The joint mask of the third query branch is drawn once per batch by both (in the
  processor, after the stream conversion) and is not included.

Sizes (``--size``): CMD ``full`` = the reference's (batch 64, 64 output frames, 300 stored
frames, 25 joints, 2 persons, 15 corrupted joints); ``cpu`` is identical for this benchmark
(the augmentation is cheap at the full size); HiCLR: 50 stored frames, 25 joints, 2
persons for both sizes (its release's batch is 128). ``--batches`` lists the jax batch sizes
(default: 64,128, the issue's two batch sizes).

  python bench/bench_augment.py --size full
  python bench/bench_augment.py --size cpu --method hiclr --batches 64,128 --workers 2
  python bench/bench_augment.py --batches 64 --steps 5 --ref-samples 64 --workers 2   # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=wrong-import-position

SIZES = {
    "full": dict(batch=64, frames=64, stored_frames=300, joints=25, persons=2, corrupted_joints=15),
    "cpu": dict(batch=64, frames=64, stored_frames=300, joints=25, persons=2, corrupted_joints=15),
}
HICLR_SIZES = dict(batch=128, frames=50, stored_frames=50, joints=25, persons=2, aug_method="12345")
METHODS = ("cmd", "hiclr")
JAX_IMPLS = {"cmd": ("jax_batched",), "hiclr": ("jax_batched", "jax_batched[noise_rng=fast]")}
RATIO_RANGE, MIN_LEN, AMPLITUDE = (0.1, 1.0), 64, 1.0
GOAL = 50.0
REFERENCE = "reference_per_sample"


def sizes_of(args, batch: int, method: str) -> dict:
  if method == "hiclr":
    return dict(HICLR_SIZES, batch=batch)
  s = dict(SIZES[args.size])
  s.update(batch=batch, ratio_range=list(RATIO_RANGE), min_len=MIN_LEN, amplitude=AMPLITUDE)
  return s


def make_clips(n: int, seed: int, s: dict):
  """``n`` stored clips ``[n, 3, T, V, M]`` float32 and num_frames int32 ``[n]``; the same for
  every implementation. CMD: zero after num_frames, num_frames uniform in [1, T]; HiCLR:
  every frame valid (its clips are resampled to 50 frames)."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  t = s["stored_frames"]
  frames = rng.integers(1, t + 1, size=n).astype(np.int32) if "min_len" in s else np.full(n, t, np.int32)
  clips = rng.standard_normal((n, 3, t, s["joints"], s["persons"]), dtype=np.float32)
  clips *= (np.arange(t)[None, :] < frames[:, None]).astype(np.float32)[:, None, :, None, None]
  return clips, frames


def _limit_threads() -> None:
  """One BLAS / OpenMP thread (set before numpy / torch are imported in this process)."""
  for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"


# ----------------------------------------------------------------------------------------
# Workers
# ----------------------------------------------------------------------------------------

def jax_worker(args, s: dict, method: str, impl: str) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from cmd_jax import layouts  # pylint: disable=import-outside-toplevel
  from cmd_jax.methods.cmd import views as cmd_views  # pylint: disable=import-outside-toplevel
  from cmd_jax.methods.hiclr import views as hiclr_views  # pylint: disable=import-outside-toplevel

  base = jax.random.key(args.seed)
  noise_rng = "fast" if impl.endswith("[noise_rng=fast]") else "threefry"

  @jax.jit
  def views(i, x, f):
    key = jax.random.fold_in(base, i)
    if method == "hiclr":
      return hiclr_views.hiclr_views(key, x, layout=layouts.NTU25, aug_method=s["aug_method"], noise_rng=noise_rng)
    return cmd_views.pretrain_views(key, x, f, ratio_range=RATIO_RANGE, min_len=MIN_LEN,
                                    out_len=s["frames"], num_corrupted=s["corrupted_joints"],
                                    shear_amplitude=AMPLITUDE, corruption_amplitude=AMPLITUDE)

  clips, frames = make_clips(s["batch"], args.seed, s)
  x, f = jax.device_put(clips), jax.device_put(frames)
  start = time.perf_counter()
  out = jax.block_until_ready(views(np.int32(0), x, f))
  compile_s = time.perf_counter() - start
  expected = (s["batch"], 3, s["frames"], s["joints"], s["persons"])
  assert all(o.shape == expected and o.dtype == np.float32 for o in out), (out[0].shape, expected)
  counter = {"i": 0}

  def step():
    counter["i"] += 1
    return views(np.int32(counter["i"]), x, f)

  mean, times = common.time_loop(step, jax.block_until_ready, args.steps, args.warmup)
  mean = float(np.median(times))  # per-call median: robust to the host's noise at the ms scale
  dev = jax.devices()[0]
  stats = dev.memory_stats() if dev.platform != "cpu" else None
  gpu_peak = stats and "peak_bytes_in_use" in stats
  return {"name": "augment", "method": method, "impl": impl, "samples_per_s": round(s["batch"] / mean, 1),
          "ms_per_batch": round(1e3 * mean, 3), "sizes": s, "steps": args.steps,
          "compile_s": round(compile_s, 3), "step_s_all": [round(t, 5) for t in times],
          "peak_mem_bytes": int(stats["peak_bytes_in_use"]) if gpu_peak else common.host_peak_rss_bytes(),
          "peak_mem_kind": "device" if gpu_peak else "host_rss", "machine": common.machine("jax")}


def _reference_loop(n: int, warmup: int, seed: int, s: dict, barrier=None) -> tuple[float, int]:
  if "aug_method" in s:
    return _hiclr_reference_loop(n, warmup, seed, s, barrier)
  return _cmd_reference_loop(n, warmup, seed, s, barrier)


def _hiclr_reference_loop(n: int, warmup: int, seed: int, s: dict, barrier=None) -> tuple[float, int]:
  """Per-sample HiCLR feeder views (numpy) of ``n`` samples, after ``warmup`` untimed ones."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  from tests.hiclr_feeder_reference import feeder_views  # pylint: disable=import-outside-toplevel

  clips, _ = make_clips(s["pool"], seed, s)
  rng = np.random.default_rng(seed)
  for i in range(warmup):
    feeder_views(clips[i % len(clips)], rng, aug_method=s["aug_method"])
  if barrier is not None:
    barrier.wait()
  start = time.perf_counter()
  for i in range(n):
    views = feeder_views(clips[i % len(clips)], rng, aug_method=s["aug_method"])
  seconds = time.perf_counter() - start
  assert len(views) == 4 and all(v.shape == (3, s["frames"], s["joints"], s["persons"]) for v in views)
  return seconds, n


def _cmd_reference_loop(n: int, warmup: int, seed: int, s: dict, barrier=None) -> tuple[float, int]:
  """Per-sample reference views of ``n`` samples (cycling the clip pool), after ``warmup``
  untimed ones; waits on ``barrier`` (if any) before timing. Returns (seconds, samples)."""
  import random  # pylint: disable=import-outside-toplevel

  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(1)
  from tests.torch_reference import reference_pretrain_views  # pylint: disable=import-outside-toplevel

  clips, frames = make_clips(s["pool"], seed, s)
  np.random.seed(seed)
  random.seed(seed)
  for i in range(warmup):
    reference_pretrain_views(clips[i % len(clips)], int(frames[i % len(clips)]))
  if barrier is not None:
    barrier.wait()
  start = time.perf_counter()
  for i in range(n):
    v1, v2 = reference_pretrain_views(clips[i % len(clips)], int(frames[i % len(clips)]))
  seconds = time.perf_counter() - start
  assert v1.shape == v2.shape == (3, s["frames"], s["joints"], s["persons"]) and v1.dtype == np.float32
  return seconds, n


def _reference_child(index: int, n: int, warmup: int, seed: int, s: dict, barrier, queue) -> None:
  """One of the ``--workers`` processes (spawned): the loop, then its figures on ``queue``."""
  try:
    seconds, done = _reference_loop(n, warmup, seed + index, s, barrier)
    queue.put({"index": index, "seconds": seconds, "samples": done, "peak_rss": common.host_peak_rss_bytes()})
  except BaseException as e:  # pylint: disable=broad-except
    barrier.abort()
    queue.put({"index": index, "error": f"{type(e).__name__}: {e}"})


def reference_worker(args, s: dict, method: str) -> dict:
  seconds, n = _reference_loop(args.ref_samples, args.ref_warmup, args.seed, s)
  import torch  # pylint: disable=import-outside-toplevel
  return {"name": "augment", "method": method, "impl": REFERENCE, "samples_per_s": round(n / seconds, 1),
          "ms_per_sample": round(1e3 * seconds / n, 4), "sizes": s, "workers": 1, "samples": n,
          "torch_threads": torch.get_num_threads(), "peak_mem_bytes": common.host_peak_rss_bytes(),
          "peak_mem_kind": "host_rss", "machine": common.machine("torch")}


def reference_workers_worker(args, s: dict, method: str) -> dict:
  import multiprocessing  # pylint: disable=import-outside-toplevel

  n, workers = args.ref_samples, args.workers
  context = multiprocessing.get_context("spawn")
  barrier, queue = context.Barrier(workers + 1), context.Queue()
  procs = [context.Process(target=_reference_child, args=(i, n, args.ref_warmup, args.seed, s, barrier, queue))
           for i in range(workers)]
  for p in procs:
    p.start()
  try:
    barrier.wait(timeout=args.timeout)
  except threading.BrokenBarrierError:  # a process failed before timing: say why
    errors = []
    while True:
      try:
        errors.append(queue.get(timeout=10).get("error", "no error message"))
      except Exception:  # pylint: disable=broad-except  (queue.Empty)
        break
    raise RuntimeError("a reference worker process failed: " + "; ".join(errors)) from None
  start = time.perf_counter()
  results = [queue.get(timeout=args.timeout) for _ in procs]
  wall = time.perf_counter() - start
  for p in procs:
    p.join()
  errors = [r["error"] for r in results if "error" in r]
  if errors:
    raise RuntimeError("a reference worker process failed: " + "; ".join(errors))
  total = sum(r["samples"] for r in results)
  return {"name": "augment", "method": method, "impl": f"{REFERENCE}[workers={workers}]", "samples_per_s": round(total / wall, 1),
          "ms_per_sample": round(1e3 * wall / total, 4), "sizes": s, "workers": workers, "samples": total,
          "per_process_samples_per_s": [round(r["samples"] / r["seconds"], 1) for r in results],
          "torch_threads": 1, "peak_mem_bytes": sum(r["peak_rss"] for r in results),
          "peak_mem_kind": "host_rss_sum_of_processes", "machine": common.machine()}


# ----------------------------------------------------------------------------------------

def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
  parser.add_argument("--method", default="cmd,hiclr", help="comma-separated: cmd, hiclr")
  parser.add_argument("--impls", default=f"jax_batched,{REFERENCE}",
                      help=f"comma-separated: jax_batched (every jax row of the method), {REFERENCE} "
                           "(also runs the --workers row)")
  parser.add_argument("--batches", default="64,128", help="comma-separated jax batch sizes")
  parser.add_argument("--steps", type=int, default=100, help="timed jax calls per batch size (the median counts)")
  parser.add_argument("--warmup", type=int, default=3, help="untimed jax calls after the compiling one")
  parser.add_argument("--ref-samples", type=int, default=2048, help="timed samples per reference process")
  parser.add_argument("--ref-warmup", type=int, default=16, help="untimed samples per reference process first")
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                      help="processes of the multi-process reference row (default: all cores; 0: skip it)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--impl", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  try:
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
  except ValueError:
    batches = []
  if not batches or min(batches) <= 0:
    parser.error(f"--batches: positive integers expected, got {args.batches!r}")
  methods = [m.strip() for m in args.method.split(",") if m.strip()]
  for method in methods:
    if method not in METHODS:
      parser.error(f"--method: unknown method {method!r}; expected one of {', '.join(METHODS)}")
  impls = [i.strip() for i in args.impls.split(",") if i.strip()]
  for impl in impls:
    if impl not in ("jax_batched", REFERENCE):
      parser.error(f"--impls: unknown implementation {impl!r}; expected jax_batched or {REFERENCE}")

  if args.worker:
    method = methods[0]
    if args.impl.startswith("jax_batched"):
      row = jax_worker(args, sizes_of(args, args.batch, method), method, args.impl)
    else:
      _limit_threads()
      ref_sizes = dict(sizes_of(args, 1, method), pool=max(batches))
      row = (reference_worker(args, ref_sizes, method) if args.impl == REFERENCE
             else reference_workers_worker(args, ref_sizes, method))
    common.emit(**row)
    return 0

  passthrough = ["--size", args.size, "--steps", str(args.steps), "--warmup", str(args.warmup),
                 "--ref-samples", str(args.ref_samples), "--ref-warmup", str(args.ref_warmup),
                 "--workers", str(args.workers), "--seed", str(args.seed), "--timeout", str(args.timeout),
                 "--batches", ",".join(map(str, batches))]
  failed, all_rows = 0, []
  for method in methods:
    ref_sizes = dict(sizes_of(args, 1, method), pool=max(batches))
    jobs = []
    if "jax_batched" in impls:
      jobs += [(impl, ["--batch", str(b)], sizes_of(args, b, method), impl)
               for impl in JAX_IMPLS[method] for b in batches]
    if REFERENCE in impls:
      jobs.append((REFERENCE, [], ref_sizes, REFERENCE))
      if args.workers > 0:
        jobs.append(("reference_workers", [], ref_sizes, f"{REFERENCE}[workers={args.workers}]"))
    rows = []
    for impl, extra, s, display in jobs:
      for row in common.run_worker(__file__, passthrough + ["--method", method, "--impl", impl, *extra], args.timeout):
        if "error" in row:
          failed += 1
          common.emit(name="augment", method=method, impl=display, error=row["error"], sizes=s)
        else:
          rows.append(row)
    references = [r for r in rows if r["impl"].startswith(REFERENCE)]
    for r in rows:
      if r["impl"].startswith("jax_batched") and references:
        r["ratio_vs"] = common.ratios(r, references, digits=2)
        if REFERENCE in r["ratio_vs"]:
          r["goal_50x"] = {"vs": REFERENCE, "ratio": r["ratio_vs"][REFERENCE], "met": r["ratio_vs"][REFERENCE] >= GOAL}
      elif r["impl"] != REFERENCE and r["impl"].startswith(REFERENCE):
        single = [o for o in references if o["impl"] == REFERENCE]
        if single:
          r["speedup_vs_1_process"] = round(r["samples_per_s"] / single[0]["samples_per_s"], 2)
    for r in rows:
      common.emit(**r)
    all_rows += rows
  return 0 if all_rows and not failed else 1


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.exit(main())
