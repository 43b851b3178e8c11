"""1-nearest-neighbour baseline on the generated default dataset (data_prep/synthetic.py).

For each benchmark (xsub, xview): generate every sample, zero-pad to 300 frames and apply
the reference's ``pre_normalization`` (as the converter does), resample each clip's valid
frames to a fixed length by linear interpolation, flatten, and classify every test sample
by its nearest training sample. Prints one JSON line per benchmark with the accuracy and
the chance level (the most frequent test class' share). The generator is tuned so that
this is clearly above chance and clearly below 100%: the classes are learnable but not
trivially separable.

  python bench/synthetic_baseline.py [--seed 0] [--subjects 10] [--repetitions 4]
                                     [--frames 32] [--metric euclidean|cosine]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep import synthetic  # noqa: E402
from data_prep.datasets import MAX_FRAMES, to_fixed_length  # noqa: E402
from data_prep.preprocess import pre_normalization  # noqa: E402


def resample(data: np.ndarray, num_frames: np.ndarray, length: int) -> np.ndarray:
  """Linearly resamples frames [0, num_frames) of data [N, C, T, V, M] to ``length`` frames."""
  n = data.shape[0]
  last = np.minimum(num_frames, data.shape[2]) - 1
  pos = np.linspace(0.0, 1.0, length)[None, :] * last[:, None]  # [N, L]
  lo = np.floor(pos).astype(np.int64)
  hi = np.minimum(lo + 1, last[:, None])
  w = (pos - lo)[:, None, :, None, None]
  rows = np.arange(n)[:, None]
  x = data.transpose(0, 2, 1, 3, 4)  # N, T, C, V, M
  out = x[rows, lo] * (1.0 - w.transpose(0, 2, 1, 3, 4)) + x[rows, hi] * w.transpose(0, 2, 1, 3, 4)
  return out.transpose(0, 2, 1, 3, 4)


def nearest_neighbour(train: np.ndarray, test: np.ndarray, metric: str) -> np.ndarray:
  """Index of the nearest training row for each test row."""
  if metric == "cosine":
    train = train / np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    test = test / np.maximum(np.linalg.norm(test, axis=1, keepdims=True), 1e-12)
    return np.argmax(test @ train.T, axis=1)
  dist = (test ** 2).sum(1)[:, None] - 2.0 * test @ train.T + (train ** 2).sum(1)[None, :]
  return np.argmin(dist, axis=1)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seed", type=int, default=synthetic.DEFAULT_SEED)
  parser.add_argument("--subjects", type=int, default=synthetic.DEFAULT_SUBJECTS)
  parser.add_argument("--repetitions", type=int, default=synthetic.DEFAULT_REPETITIONS)
  parser.add_argument("--frames", type=int, default=32)
  parser.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean")
  args = parser.parse_args(argv)

  start = time.perf_counter()
  samples = synthetic.list_samples(None, {"synthetic_seed": args.seed,
                                          "synthetic_subjects": args.subjects,
                                          "synthetic_repetitions": args.repetitions})
  padded = np.zeros((len(samples), 3, MAX_FRAMES, 25, 2), np.float32)
  num_frames = np.zeros(len(samples), np.int64)
  for i, sample in enumerate(samples):
    padded[i], num_frames[i] = to_fixed_length(synthetic.load(sample))
  generate_s = time.perf_counter() - start
  features = np.concatenate([  # in chunks: pre_normalization works in float64
      resample(pre_normalization(padded[i:i + 128], synthetic.SPEC.layout), num_frames[i:i + 128],
               args.frames).reshape(-1, 3 * args.frames * 25 * 2)
      for i in range(0, len(samples), 128)]).astype(np.float64)
  labels = np.array([s.label for s in samples])
  prep_s = time.perf_counter() - start - generate_s

  for benchmark in synthetic.SPEC.benchmarks:
    is_train = np.array([benchmark in s.train for s in samples])
    nearest = nearest_neighbour(features[is_train], features[~is_train], args.metric)
    predicted = labels[is_train][nearest]
    truth = labels[~is_train]
    print(json.dumps({
        "dataset": "synthetic", "benchmark": benchmark, "method": f"1-NN {args.metric}",
        "frames": args.frames, "train": int(is_train.sum()), "test": int((~is_train).sum()),
        "accuracy": round(float((predicted == truth).mean()), 4),
        "chance": round(float(np.bincount(truth).max() / truth.size), 4),
        "seed": args.seed, "generate_s": round(generate_s, 2), "preprocess_s": round(prep_s, 2),
    }))


if __name__ == "__main__":
  main()
