"""Conversion throughput: the vectorised NTU reader and ``pre_normalization`` against the naive loops.

Measures, on the real NTU ``.skeleton`` files (``../shared/data/ntu_skeletons``), files/s of
parse + body selection + ``pre_normalization`` for

* ``vectorised``: ``data_prep.ntu.read_xyz`` + ``data_prep.preprocess.pre_normalization``,
  called per file (batch 1) and, as the converter calls it, on batches of ``--batch``;
* ``loop``: ``tests/spec_reference.py``, the straightforward per-line / per-joint loop
  implementation of the same spec,

side by side in one run (each figure is the best of ``--repeat`` interleaved rounds, which
keeps the ratio meaningful on a busy machine), then the throughput of ``--workers``
processes running the converter's path, measured with multiprocessing, and the wall time
it gives for all 56,880 NTU-60 files.

Then the writing that follows (``write_example``): one converted NTU clip encoded and
serialized as a TFDS example with the builders' features, by TFDS's own serializer and
through ``data_prep.float_lists.fast_float_lists`` (what ``build_dataset`` uses; the same
bytes), and the single-process time this gives for NTU-60's two benchmarks (each config
writes every sample once: 113,760 examples).

Prints one JSON object per line; ``ratio_vs`` is vectorised files/s over loop files/s.
BLAS is limited to one thread per process (as in the converter's worker processes).

  python bench/bench_conversion.py [--data DIR] [--repeat 3] [--batch 64] [--workers 2]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from cmd_jax.layouts import NTU25  # noqa: E402
from data_prep import ntu  # noqa: E402
from data_prep.preprocess import pre_normalization  # noqa: E402
from tests import spec_reference  # noqa: E402

NTU60_FILES = 56_880
MAX_FRAMES = 300


def emit(**fields) -> None:
  print(json.dumps(fields), flush=True)


def best_of(repeat: int, rounds: dict) -> dict:
  """Runs every callable of ``rounds`` once per round, interleaved; the best time of each."""
  best = {name: float("inf") for name in rounds}
  for _ in range(repeat):
    for name, fn in rounds.items():
      start = time.perf_counter()
      fn()
      best[name] = min(best[name], time.perf_counter() - start)
  return best


# ----------------------------------------------------------------------------------------
# The pipelines: parse + select + (N, 3, 300, 25, 2) float32 buffer + pre_normalization
# ----------------------------------------------------------------------------------------

def vectorised_pipeline(paths, batch: int) -> np.ndarray:
  """The converter's path: files parsed into a buffer, normalised ``batch`` samples at a time."""
  out = []
  for lo in range(0, len(paths), batch):
    chunk = paths[lo:lo + batch]
    buffer = np.zeros((len(chunk), 3, MAX_FRAMES, 25, 2), np.float32)
    for i, path in enumerate(chunk):
      data = ntu.read_xyz(path)
      buffer[i, :, :data.shape[1]] = data
    out.append(pre_normalization(buffer, NTU25))
  return np.concatenate(out)


def loop_pipeline(paths) -> np.ndarray:
  return spec_reference.pre_normalization(spec_reference.to_buffer([spec_reference.read_xyz(p) for p in paths]))


def _worker(job) -> int:
  impl, paths, batch = job
  if impl == "vectorised":
    vectorised_pipeline(paths, batch)
  else:
    loop_pipeline(paths)
  return len(paths)


def parallel_rate(pool, impl: str, paths, workers: int, batch: int, repeat: int) -> float:
  """Files/s of ``workers`` processes, each converting ``paths``."""
  best = float("inf")
  for _ in range(repeat):
    start = time.perf_counter()
    done = sum(pool.map(_worker, [(impl, paths, batch)] * workers, chunksize=1))
    best = min(best, time.perf_counter() - start)
  return done / best


# ----------------------------------------------------------------------------------------

def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  shared = Path(os.environ.get("CMD_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))
  parser.add_argument("--data", type=Path, default=shared / "ntu_skeletons",
                      help="folder of NTU .skeleton files (default: ../shared/data/ntu_skeletons)")
  parser.add_argument("--repeat", type=int, default=3, help="rounds per measurement; the best is kept")
  parser.add_argument("--batch", type=int, default=64, help="samples per pre_normalization call in the converter path")
  parser.add_argument("--workers", type=int, default=2, help="processes for the parallel measurement")
  parser.add_argument("--files-per-worker", type=int, default=256,
                      help="files each worker converts in the parallel measurement (the real files, cycled)")
  args = parser.parse_args(argv)

  paths = sorted(args.data.glob("*.skeleton"))
  if not paths:
    sys.exit(f"no .skeleton files in {args.data}")
  n = len(paths)
  emit(name="environment", cpus=os.cpu_count(), load_avg_1min=round(os.getloadavg()[0], 2),
       numpy=np.__version__, python=sys.version.split()[0], data=str(args.data), n_files=n,
       repeat=args.repeat, batch=args.batch)

  # Warm-up (imports, page cache) and a check that both implementations agree.
  vec = vectorised_pipeline(paths, args.batch)
  loop = loop_pipeline(paths)
  max_diff = float(np.abs(vec.astype(np.float64) - loop).max())

  # Inputs for the pre_normalization-only measurements.
  raw = [ntu.read_xyz(p) for p in paths]
  buffer = spec_reference.to_buffer(raw)
  big = spec_reference.to_buffer([raw[i % n] for i in range(args.batch)])

  t = best_of(args.repeat, {
      "parse_loop": lambda: [spec_reference.read_xyz(p) for p in paths],
      "parse_vec": lambda: [ntu.read_xyz(p) for p in paths],
      "prep_loop": lambda: spec_reference.pre_normalization(buffer),
      "prep_vec_1": lambda: [pre_normalization(buffer[i:i + 1], NTU25) for i in range(n)],
      "prep_vec_batch": lambda: pre_normalization(big, NTU25),
      "pipe_loop": lambda: loop_pipeline(paths),
      "pipe_vec_1": lambda: vectorised_pipeline(paths, 1),
      "pipe_vec_batch": lambda: vectorised_pipeline(paths, args.batch),
  })
  per = {k: v / (args.batch if k == "prep_vec_batch" else n) for k, v in t.items()}

  def line(name, impl, key, loop_key, count, **extra):
    emit(name=name, impl=impl, files_per_s=round(1 / per[key], 1), ms_per_file=round(per[key] * 1e3, 3),
         n_files=count, ratio_vs=round(per[loop_key] / per[key], 1), **extra)

  line("parse_select", "loop", "parse_loop", "parse_loop", n)
  line("parse_select", "vectorised", "parse_vec", "parse_loop", n)
  for key, impl, count, batch in (("prep_loop", "loop", n, n), ("prep_vec_1", "vectorised", n, 1),
                                  ("prep_vec_batch", "vectorised", args.batch, args.batch)):
    line("pre_normalization", impl, key, "prep_loop", count, batch=batch, ms_per_sample=round(per[key] * 1e3, 3))
  line("pipeline", "loop", "pipe_loop", "pipe_loop", n)
  line("pipeline", "vectorised", "pipe_vec_1", "pipe_loop", n, batch=1, max_abs_diff_vs_loop=max_diff)
  line("pipeline", "vectorised", "pipe_vec_batch", "pipe_loop", n, batch=args.batch, max_abs_diff_vs_loop=max_diff)

  # Parallel throughput of the converter path, and the loop's, with `workers` processes.
  context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
  vec_files = [paths[i % n] for i in range(args.files_per_worker)]
  with context.Pool(args.workers) as pool:
    pool.map(_worker, [("vectorised", paths[:2], args.batch)] * args.workers)  # start and warm the workers
    rate_vec = parallel_rate(pool, "vectorised", vec_files, args.workers, args.batch, args.repeat)
    rate_loop = parallel_rate(pool, "loop", paths, args.workers, args.batch, args.repeat)
  single_vec = len(vec_files) / best_of(args.repeat, {"v": lambda: vectorised_pipeline(vec_files, args.batch)})["v"]
  for impl, rate, single in (("loop", rate_loop, 1 / per["pipe_loop"]), ("vectorised", rate_vec, single_vec)):
    emit(name="ntu60_extrapolation", impl=impl, workers=args.workers, files_per_s=round(rate, 1),
         ms_per_file=round(1e3 / rate, 3), n_files=NTU60_FILES, ratio_vs=round(rate / rate_loop, 1),
         speedup_vs_1_process=round(rate / single, 2), wall_s=round(NTU60_FILES / rate, 1),
         wall_min=round(NTU60_FILES / rate / 60, 2), load_avg_1min=round(os.getloadavg()[0], 2))

  write_rows(vec[0], args.repeat)


def write_rows(clip: np.ndarray, repeat: int, rounds: int = 20) -> None:
  """``write_example`` rows: ms per example of TFDS's serializer and of ``fast_float_lists``."""
  from tensorflow_datasets.core import example_serializer  # pylint: disable=import-outside-toplevel
  from data_prep import datasets, float_lists  # pylint: disable=import-outside-toplevel
  from data_prep.builders.base import example_features  # pylint: disable=import-outside-toplevel

  features = example_features(datasets.get_spec("ntu60"), "standard")  # what the NTU-60 builder writes
  serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
  example = {"skeleton": clip, "num_frames": MAX_FRAMES, "label": 0, "name": "S001C001P001R001A001"}
  written = {}

  def write(impl):
    def fn():
      context = float_lists.fast_float_lists() if impl == "fast_float_lists" else contextlib.nullcontext()
      with context:
        for _ in range(rounds):
          written[impl] = serializer.serialize_example(features.encode_example(example))
    return fn

  t = best_of(repeat, {impl: write(impl) for impl in ("tfds", "fast_float_lists")})
  examples = 2 * NTU60_FILES  # xsub and xview: each config writes every sample
  for impl in ("tfds", "fast_float_lists"):
    per = t[impl] / rounds
    emit(name="write_example", impl=impl, ms_per_example=round(per * 1e3, 2), bytes=len(written[impl]),
         same_bytes_as_tfds=written[impl] == written["tfds"], ratio_vs=round(t["tfds"] / t[impl], 1),
         ntu60_examples=examples, wall_min_1_process=round(examples * per / 60, 1),
         load_avg_1min=round(os.getloadavg()[0], 2))


if __name__ == "__main__":
  main()
