"""Labelled subsets of a training split: which records a semi-supervised run trains on.

This module owns docs/references.md#cmd-labelled-subsets and HiCLR's semi-supervised feeder
(#hiclr-downstream-protocols): the label ratio's check (``validate_ratio``), the seeded
subset (``labelled_subset``: ``global``, ``stratified`` or ``class_balanced`` sampling) and
the grain source that reads it (``SubsetSource``), whose length is the epoch length
(``config.epoch_length``: ``subset`` = the subset's size, ``full`` = the whole split's, the
subset revisited about ``1 / ratio`` times per epoch).
"""

from __future__ import annotations

import math

import numpy as np

from cmd_jax.errors import ConfigError

SAMPLINGS = ("global", "stratified", "class_balanced")
EPOCH_LENGTHS = ("subset", "full")


def validate_ratio(ratio) -> float:
  """A label ratio must be a fraction in (0, 1]."""
  try:
    value = float(ratio)
  except (TypeError, ValueError):
    raise ConfigError(f"config.label_ratio={ratio!r}: expected a number in (0, 1]") from None
  if not 0.0 < value <= 1.0 or not math.isfinite(value):
    raise ConfigError(f"config.label_ratio={ratio!r}: expected a fraction of the training labels in (0, 1], "
                      "e.g. 0.01 for 1% or 1.0 for all")
  return value


def split_labels(source) -> np.ndarray:
  """Every record's label, in index order (a source's ``labels`` array when it has one)."""
  labels = getattr(source, "labels", None)
  if labels is not None:
    return np.asarray(labels, np.int64)
  return np.array([int(source[i]["label"]) for i in range(len(source))], np.int64)


def labelled_subset(labels: np.ndarray, ratio: float, seed: int, sampling: str = "global",
                    num_classes: int | None = None) -> np.ndarray:
  """The indices (sorted) of a seeded labelled subset of a training split.

  ``global`` (the reference's ``random_select_data``): a uniform random permutation of the
  ``N`` indices, of which the first ``int(N * ratio)`` are kept; some classes may get none.
  ``stratified``: per class ``c`` (``0..num_classes-1``), ``max(1, int(n_c * ratio))`` of
  its ``n_c`` samples, uniformly; every class must have an example.
  ``class_balanced`` (HiCLR's semi-supervised feeder): per class ``round(n_c * ratio)``
  of its samples (Python's round: halves to even), uniformly; a class may get none.
  The same ``(labels, ratio, seed, sampling)`` always gives the same subset
  (``np.random.default_rng(seed)``).

  Raises:
    ConfigError: ratio outside (0, 1], an empty subset, an unknown sampling, or (stratified)
      a class with no example.
  """
  ratio = validate_ratio(ratio)
  labels = np.asarray(labels, np.int64)
  n = len(labels)
  rng = np.random.default_rng(int(seed))
  if sampling == "global":
    keep = int(n * ratio)
    if keep < 1:
      raise ConfigError(f"label_ratio={ratio} of the {n} training samples keeps int({n} * {ratio}) = 0 samples; "
                        "expected a ratio that keeps at least one (or sampling='stratified')")
    return np.sort(rng.permutation(n)[:keep])
  if sampling not in ("stratified", "class_balanced"):
    raise ConfigError(f"sampling={sampling!r}; expected one of {', '.join(SAMPLINGS)}")
  if num_classes is None:
    num_classes = int(labels.max()) + 1 if n else 0
  counts = np.bincount(labels, minlength=num_classes) if n else np.zeros(num_classes, np.int64)
  if sampling == "class_balanced":
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:round(int(counts[c]) * ratio)]
              for c in range(num_classes)]
    subset = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    if not len(subset):
      raise ConfigError(f"label_ratio={ratio}: round(class count * ratio) is 0 for every class; expected a ratio "
                        "that keeps at least one sample")
    return subset
  empty = [c for c in range(num_classes) if counts[c] == 0]
  if empty:
    raise ConfigError(f"stratified sampling: class {empty[0]} has no example in the training split"
                      + (f" (nor classes {', '.join(map(str, empty[1:]))})" if len(empty) > 1 else "")
                      + f"; expected at least one example of each of the {num_classes} classes "
                      f"({n} samples, classes present: {int(np.sum(counts > 0))})")
  chosen = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    k = max(1, int(len(members) * ratio))
    chosen.append(rng.permutation(members)[:k])
  return np.sort(np.concatenate(chosen))


class SubsetSource:
  """The records ``indices`` of ``source`` (a grain random-access source).

  ``length`` (default: the subset's size) is the epoch length: HiCLR's semi-supervised
  feeder reports the FULL training split's length and reads record ``i`` as subset entry
  ``i mod size``, so one of its epochs revisits the labelled subset about ``1 / ratio`` times.
  """

  def __init__(self, source, indices: np.ndarray, length: int | None = None):
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    self.length = len(self.indices) if length is None else int(length)

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, i):
    return self.source[int(self.indices[int(i) % len(self.indices)])]

  def __repr__(self) -> str:
    return f"SubsetSource({self.source!r}, {len(self)} records)"
