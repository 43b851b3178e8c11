"""What a convertible dataset is: ``DatasetSpec`` (a dataset's layout, classes, benchmarks,
sample lister and loader) and ``Sample`` (one sample before loading).

The reader modules (``data_prep.ntu`` through ``data_prep.datasets``, ``pku``, ``msr``,
``synthetic``) define their specs with these types; the registry of specs and the
conversion variants are ``data_prep.datasets``'s.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from cmd_jax.layouts import SkeletonLayout

MAX_FRAMES = 300  # T of every stored sample of the standard conversion, as in the reference


@dataclasses.dataclass(frozen=True)
class Sample:
  """One sample of a dataset, before loading.

  Attributes:
    name: the reference's sample name (``S001C001P001R001A001.skeleton``,
      ``<video>.txt_<row>``, ...), unique within the dataset.
    label: 0-based class.
    train: the benchmarks in which this sample is a training sample; in every other
      benchmark of the dataset it is a val (test) sample.
    source: whatever the spec's ``load`` needs (picklable: a path, a row, a seed).
  """
  name: str
  label: int
  train: frozenset[str]
  source: Any


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A convertible dataset.

  Attributes:
    name: CLI name, also the TFDS dataset name.
    layout: the skeleton layout of every sample.
    class_names: the action names, index = label (``cmd_jax.action_names``); labels are
      in [0, num_classes) with ``num_classes = len(class_names)``.
    benchmarks: benchmark names (TFDS builder configs).
    list_samples: ``(raw_dir or None, options) -> [Sample]``, sorted by name; raises
      ``FileNotFoundError``/``DataFormatError`` for a missing raw directory or bad split
      files. ``options`` holds dataset-specific CLI options (e.g. ``missing_list``).
    load: ``Sample -> float (3, T, V, M)`` raw coordinates; raises ``DataFormatError``.
    drop_all_zero: whether samples whose coordinates are all zero are skipped (and
      reported) rather than kept as all-zero inputs.
    needs_raw: False for generated datasets.
    description: one line for --help.
    option_keys: the ``options`` keys ``list_samples`` reads (any other is an error).
  """
  name: str
  layout: SkeletonLayout
  class_names: tuple[str, ...]
  benchmarks: tuple[str, ...]
  list_samples: Callable[[Path | None, Mapping[str, Any]], list[Sample]]
  load: Callable[[Sample], np.ndarray]
  drop_all_zero: bool = False
  needs_raw: bool = True
  description: str = ""
  option_keys: tuple[str, ...] = ()

  @property
  def num_classes(self) -> int:
    return len(self.class_names)
