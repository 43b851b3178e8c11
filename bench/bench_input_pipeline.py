"""Input-pipeline throughput: samples/s the project's grain loader delivers from ArrayRecord shards.

Measures what ``cmd_jax.trainers.pretrain.train_and_evaluate`` feeds its training step:
``cmd_jax.input_pipeline.global_batches`` over the train split of a TFDS dataset built by
``python -m data_prep build`` (ArrayRecord reads, TFDS decoding, ``ToBatchable``, stacking
into global batches ``{"skeleton": float32 [B, 3, 300, V, M], "num_frames", "label",
"valid"}`` in host memory), shuffled, repeating over epochs, as one process of one host
(``process_index 0 of 1``). ``--loaders make_loader`` adds the per-process sharded
``grain.DataLoader`` of ``input_pipeline.make_loader`` (``worker_count 0``, reader threads
in this process; its read buffer is ``prefetch x batch`` records). Nothing is copied to a
device and nothing is augmented (the augmentation runs inside the jitted step; see
bench/bench_augment.py).

Data: by default the embedded synthetic dataset (``synthetic/xsub``, 720 train records of
``[3, 300, 25, 2]``), built with the project's builder into ``--data-dir`` (default
``/tmp/cmd_jax_bench_data``, outside the repository) when it is missing; ``--dataset`` /
``--benchmark`` / ``--split`` / ``--version`` point at any built dataset instead (e.g.
``--data-dir data --dataset ntu60 --benchmark xsub``).

For every loader and every ``--read-threads`` x ``--prefetch`` setting, in a fresh worker
process each: ``--warmup-batches`` untimed batches (thread start-up, first reads; the first
batch's latency is ``first_batch_s``), then ``--batches`` timed batches (or ``--epochs``
passes over the split). Each row: ``samples_per_s`` (timed records / wall time),
``batches_per_s``, ``decoded_mb_per_s``, ``record_bytes`` (per sample: ``on_disk`` shard
bytes, ``serialized`` TFDS example bytes, ``decoded`` batch bytes), ``sizes``,
``peak_mem_bytes`` (the worker's peak RSS), ``machine``.

Then the margin against the training step: ``--step-json FILE`` (the JSON lines of
bench/bench_step.py; its first ``jax`` row whose ``sizes.batch`` is this batch) and/or
``--step-samples-per-s X`` give one ``{"name": "input_pipeline_margin", ...}`` row each,
``margin = pipeline samples/s / step samples/s`` with the fastest setting's samples/s
(``margins`` lists every setting's); > 1 means the pipeline keeps up. The pipeline figure is
THIS host's (its cores, one process); the step figure is whatever was given, e.g. a
full-size step measured on a GPU: the margin printed is this host's pipeline against it.

Sizes (``--size``): ``full`` = the reference's global batch of 64 records of 300 stored
frames; ``cpu`` is identical for this benchmark (reading does not depend on the model size).

  python bench/bench_input_pipeline.py --size full
  python bench/bench_input_pipeline.py --read-threads 1,2,4 --prefetch 2,8 --loaders global_batches,make_loader
  python bench/bench_step.py --size full > step.jsonl   # on the GPU host
  python bench/bench_input_pipeline.py --step-json step.jsonl
  python bench/bench_input_pipeline.py --data-dir data --dataset ntu60 --benchmark xsub --step-samples-per-s 900
  python bench/bench_input_pipeline.py --read-threads 2 --batches 10 --warmup-batches 2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=wrong-import-position

SIZES = {
    "full": dict(batch=64, stored_frames=300),
    "cpu": dict(batch=64, stored_frames=300),
}
LOADERS = ("global_batches", "make_loader")
DEFAULT_DATA_DIR = "/tmp/cmd_jax_bench_data"


def int_list(text: str) -> list[int]:
  values = [int(v) for v in text.split(",") if v.strip()]
  if not values or min(values) <= 0:
    raise argparse.ArgumentTypeError(f"{text!r}: comma-separated positive integers expected")
  return values


def setting_name(impl: str, read_threads: int, prefetch: int) -> str:
  return f"{impl}[read_threads={read_threads},prefetch={prefetch}]"


def ensure_data(args) -> None:
  """Builds the synthetic dataset into ``--data-dir`` when it is asked for and missing."""
  from cmd_jax import input_pipeline  # pylint: disable=import-outside-toplevel

  try:
    input_pipeline.find_version_dir(args.data_dir, args.dataset, args.benchmark, args.version)
    return
  except FileNotFoundError:
    if args.dataset != "synthetic" or args.no_build:
      raise
  print(f"building synthetic/{args.benchmark} into {args.data_dir} (once)", file=sys.stderr, flush=True)
  cmd = [sys.executable, "-m", "data_prep", "build", "synthetic", "--out", str(args.data_dir),
         "--benchmarks", args.benchmark, "--quiet"]
  subprocess.run(cmd, stdout=sys.stderr, cwd=common.REPO, check=True)


# ----------------------------------------------------------------------------------------
# Worker: one loader setting
# ----------------------------------------------------------------------------------------

def pipeline_worker(args, s: dict) -> dict:
  import numpy as np  # pylint: disable=import-outside-toplevel

  from cmd_jax import input_pipeline  # pylint: disable=import-outside-toplevel

  path = input_pipeline.find_version_dir(args.data_dir, args.dataset, args.benchmark, args.version)
  source = input_pipeline.TfdsSource(path, args.split)
  num_records, batch = len(source), s["batch"]
  per_epoch = input_pipeline.steps_per_epoch(num_records, batch)
  if per_epoch < 1:
    raise ValueError(f"{source!r} holds fewer records than one batch of {batch}")
  timed = max(1, round(args.epochs * per_epoch)) if args.epochs else args.batches
  if args.impl == "global_batches":
    dataset = input_pipeline.global_batches(source, global_batch_size=batch, seed=args.seed, process_index=0,
                                            process_count=1, read_threads=args.read_threads,
                                            prefetch_batches=args.prefetch)
  else:
    dataset = input_pipeline.make_loader(source, global_batch_size=batch, seed=args.seed, shard=False,
                                         read_threads=args.read_threads, read_buffer_size=args.prefetch * batch)
  start = time.perf_counter()
  iterator = iter(dataset)
  first = next(iterator)
  first_batch_s = time.perf_counter() - start
  for _ in range(max(args.warmup_batches - 1, 0)):
    next(iterator)
  decoded = 0
  start = time.perf_counter()
  for _ in range(timed):
    b = next(iterator)
    decoded += sum(v.nbytes for v in b.values() if isinstance(v, np.ndarray))
  seconds = time.perf_counter() - start
  assert b["skeleton"].shape[0] == batch and b["skeleton"].dtype == np.float32, b["skeleton"].shape
  split_info = source.info.splits[args.split]
  shard_files = sorted(path.glob(f"*-{args.split}.array_record-*"))
  sizes = dict(s, stored_frames=int(first["skeleton"].shape[2]), joints=int(first["skeleton"].shape[3]),
               persons=int(first["skeleton"].shape[4]), num_records=num_records, steps_per_epoch=per_epoch)
  return {
      "name": "input_pipeline", "impl": args.impl, "read_threads": args.read_threads, "prefetch": args.prefetch,
      "samples_per_s": round(timed * batch / seconds, 1), "batches_per_s": round(timed / seconds, 2),
      "decoded_mb_per_s": round(decoded / seconds / 1e6, 1), "batches": timed,
      "epochs": round(timed / per_epoch, 2), "first_batch_s": round(first_batch_s, 3),
      "record_bytes": {"on_disk": round(sum(f.stat().st_size for f in shard_files) / num_records),
                       "serialized": round(int(split_info.num_bytes) / max(int(split_info.num_examples), 1)),
                       "decoded": round(decoded / (timed * batch))},
      "sizes": sizes, "dataset": f"{args.dataset}/{args.benchmark}/{path.name}:{args.split}",
      "peak_mem_bytes": common.host_peak_rss_bytes(), "peak_mem_kind": "host_rss", "machine": common.machine(),
  }


# ----------------------------------------------------------------------------------------
# Margin against the training step
# ----------------------------------------------------------------------------------------

def step_from_json(path: Path, batch: int) -> dict:
  """The first ``jax`` row of bench_step.py's JSON lines with ``sizes.batch == batch``."""
  rows = []
  for line in path.read_text(encoding="utf-8").splitlines():
    line = line.strip()
    if line.startswith("{"):
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  for row in rows:
    if (str(row.get("impl", "")).startswith("jax") and "samples_per_s" in row
        and (row.get("sizes") or {}).get("batch") == batch):
      machine = row.get("machine") or {}
      return {"samples_per_s": float(row["samples_per_s"]), "source": str(path), "impl": row["impl"],
              "device": machine.get("device"), "platform": machine.get("platform"), "sizes": row.get("sizes")}
  raise ValueError(f"--step-json {path}: no row with impl 'jax...', samples_per_s and sizes.batch == {batch} "
                   f"among its {len(rows)} JSON rows")


def margin_row(rows: list[dict], step: dict, s: dict) -> dict:
  best = max(rows, key=lambda r: r["samples_per_s"])
  pipeline = best["samples_per_s"]
  machine = best["machine"]
  return {
      "name": "input_pipeline_margin", "impl": best["impl"], "samples_per_s": pipeline,
      "step_samples_per_s": step["samples_per_s"], "margin": round(pipeline / step["samples_per_s"], 3),
      "keeps_up": pipeline >= step["samples_per_s"],
      "pipeline_setting": setting_name(best["impl"], best["read_threads"], best["prefetch"]),
      "margins": {setting_name(r["impl"], r["read_threads"], r["prefetch"]): round(r["samples_per_s"] / step["samples_per_s"], 3)
                  for r in rows},
      "step": step, "sizes": dict(best["sizes"], batch=s["batch"]),
      "note": (f"pipeline measured on this host ({machine.get('cpu')}, {machine.get('cores')} cores, one process) "
               f"against the step figure given ({step.get('device') or 'device not stated'})"),
  }


# ----------------------------------------------------------------------------------------

def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
  parser.add_argument("--batch", type=int, default=None, help="override the size's global batch")
  parser.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR),
                      help=f"TFDS data_dir (default {DEFAULT_DATA_DIR}; the synthetic set is built there if missing)")
  parser.add_argument("--dataset", default="synthetic")
  parser.add_argument("--benchmark", default="xsub")
  parser.add_argument("--split", default="train")
  parser.add_argument("--version", default=None, help="dataset version (default: the latest finished one)")
  parser.add_argument("--no-build", action="store_true", help="fail instead of building a missing synthetic set")
  parser.add_argument("--loaders", default="global_batches", help=f"comma-separated: {', '.join(LOADERS)}")
  parser.add_argument("--read-threads", type=int_list, default=[1, 2, 4], help="comma-separated reader thread counts")
  parser.add_argument("--prefetch", type=int_list, default=[4], help="comma-separated batches prefetched")
  parser.add_argument("--batches", type=int, default=100, help="timed batches per setting")
  parser.add_argument("--epochs", type=float, default=None, help="timed passes over the split instead of --batches")
  parser.add_argument("--warmup-batches", type=int, default=5, help="untimed batches first")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--step-json", type=Path, action="append", default=[],
                      help="JSON lines of bench/bench_step.py: margin against its first jax row of this batch")
  parser.add_argument("--step-samples-per-s", type=float, action="append", default=[],
                      help="margin against this training-step samples/s")
  parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--impl", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  s = dict(SIZES[args.size])
  if args.batch is not None:
    s["batch"] = args.batch
  loaders = [name.strip() for name in args.loaders.split(",") if name.strip()]
  for name in loaders:
    if name not in LOADERS:
      parser.error(f"--loaders: unknown loader {name!r}; expected {' or '.join(LOADERS)}")

  if args.worker:
    args.read_threads, args.prefetch = args.read_threads[0], args.prefetch[0]
    common.emit(**pipeline_worker(args, s))
    return 0

  steps = []
  try:
    steps += [step_from_json(p, s["batch"]) for p in args.step_json]
  except (OSError, ValueError) as e:
    parser.error(str(e))
  steps += [{"samples_per_s": x, "source": "--step-samples-per-s"} for x in args.step_samples_per_s]
  if any(st["samples_per_s"] <= 0 for st in steps):
    parser.error("a step samples/s must be positive")
  try:
    ensure_data(args)
  except (FileNotFoundError, subprocess.CalledProcessError) as e:
    common.emit(name="input_pipeline", impl="data", error=str(e), sizes=s)
    return 1

  passthrough = ["--size", args.size, "--batch", str(s["batch"]), "--data-dir", str(args.data_dir),
                 "--dataset", args.dataset, "--benchmark", args.benchmark, "--split", args.split,
                 "--batches", str(args.batches), "--warmup-batches", str(args.warmup_batches), "--seed", str(args.seed)]
  if args.version:
    passthrough += ["--version", args.version]
  if args.epochs:
    passthrough += ["--epochs", str(args.epochs)]
  rows, failed = [], 0
  for impl in loaders:
    for threads in args.read_threads:
      for prefetch in args.prefetch:
        extra = ["--impl", impl, "--read-threads", str(threads), "--prefetch", str(prefetch)]
        for row in common.run_worker(__file__, passthrough + extra, args.timeout):
          if "error" in row:
            failed += 1
            common.emit(name="input_pipeline", impl=impl, read_threads=threads, prefetch=prefetch,
                        error=row["error"], sizes=s)
          else:
            rows.append(row)
            common.emit(**row)
  if rows:
    for step in steps:
      common.emit(**margin_row(rows, step, s))
  return 0 if rows and not failed else 1


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.exit(main())
