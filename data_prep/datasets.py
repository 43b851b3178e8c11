"""The dataset registry: what each convertible dataset is, how its samples are listed and loaded.

A dataset is a ``DatasetSpec``: its skeleton layout, class count and benchmarks, a
``list_samples(raw_dir, options)`` that lists every sample with its label and the
benchmarks it trains in, and a ``load(sample)`` that returns the sample's raw joint
coordinates ``(3, T, V, M)`` (before padding and normalisation). The converter
(``data_prep.convert``), the TFDS builders and the npy export work on specs only.

``SPECS`` maps the CLI names (ntu60, ntu120, pku_mmd2, msr_action3d, synthetic) to specs;
each reader module defines its own spec next to its reader.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from cmd_jax.layouts import NTU25, SkeletonLayout
from data_prep import ntu
from data_prep.errors import DataFormatError

MAX_FRAMES = 300  # T of every stored sample, as in the reference


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
    num_classes: labels are in [0, num_classes).
    benchmarks: benchmark names (TFDS builder configs).
    list_samples: ``(raw_dir or None, options) -> [Sample]``, sorted by name; raises
      ``FileNotFoundError``/``DataFormatError`` for a missing raw directory or bad split
      files. ``options`` holds dataset-specific CLI options (e.g. ``missing_list``).
    load: ``Sample -> float (3, T, V, M)`` raw coordinates; raises ``DataFormatError``.
    drop_all_zero: whether samples whose coordinates are all zero are skipped (and
      reported) rather than kept as all-zero inputs.
    needs_raw: False for generated datasets.
    description: one line for --help.
  """
  name: str
  layout: SkeletonLayout
  num_classes: int
  benchmarks: tuple[str, ...]
  list_samples: Callable[[Path | None, Mapping[str, Any]], list[Sample]]
  load: Callable[[Sample], np.ndarray]
  drop_all_zero: bool = False
  needs_raw: bool = True
  description: str = ""


# ---------------------------------------------------------------------------------------
# NTU RGB+D 60 / 120

_MISSING_LIST_NAMES = {
    "ntu60": "NTU_RGBD_samples_with_missing_skeletons.txt",
    "ntu120": "NTU_RGBD120_samples_with_missing_skeletons.txt",
}


def _find_missing_list(dataset: str, raw_dir: Path, option: str | None) -> frozenset[str]:
  """The missing-skeleton names to skip: from ``option``, or found beside the raw files."""
  if option is not None and str(option).lower() == "none":
    return frozenset()
  if option is not None:
    if not os.path.isfile(option):
      raise FileNotFoundError(f"--missing-list {option}: no such file")
    return ntu.read_missing_list(option)
  file_name = _MISSING_LIST_NAMES[dataset]
  for folder in (raw_dir, raw_dir.parent):
    if (folder / file_name).is_file():
      return ntu.read_missing_list(folder / file_name)
  raise FileNotFoundError(
      f"{dataset}: the official missing-skeleton list {file_name} is neither in {raw_dir} nor in "
      f"{raw_dir.parent}. The reference skips the samples it lists; pass --missing-list FILE "
      f"(the list published with NTU RGB+D by its authors), or --missing-list none to keep every file.")


def _ntu_lister(dataset: str, max_setup: int, benchmarks: tuple[str, ...]):
  def list_samples(raw_dir: Path | None, options: Mapping[str, Any]) -> list[Sample]:
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
      raise FileNotFoundError(f"{dataset}: raw directory {raw_dir} does not exist")
    missing = _find_missing_list(dataset, raw_dir, options.get("missing_list"))
    samples = []
    for entry in sorted(os.listdir(raw_dir)):
      if not entry.endswith(".skeleton"):
        continue
      try:
        fields = ntu.parse_name(entry)
      except ValueError:
        continue  # not a sample file
      if fields.setup > max_setup or entry[:-len(".skeleton")] in missing:
        continue
      train = frozenset(b for b in benchmarks if ntu.is_training(fields, b))
      samples.append(Sample(entry, fields.label, train, str(raw_dir / entry)))
    if not samples:
      raise FileNotFoundError(f"{dataset}: no SsssCcccPpppRrrrAaaa.skeleton files with setup <= {max_setup} in {raw_dir}")
    return samples
  return list_samples


def load_ntu(sample: Sample) -> np.ndarray:
  return ntu.read_xyz(sample.source)


NTU60 = DatasetSpec(
    name="ntu60", layout=NTU25, num_classes=60, benchmarks=("xsub", "xview"),
    list_samples=_ntu_lister("ntu60", 17, ("xsub", "xview")), load=load_ntu,
    description="NTU RGB+D 60: the .skeleton files of setups S001-S017 in --raw")
NTU120 = DatasetSpec(
    name="ntu120", layout=NTU25, num_classes=120, benchmarks=("xsub", "xset"),
    list_samples=_ntu_lister("ntu120", 32, ("xsub", "xset")), load=load_ntu,
    description="NTU RGB+D 120: the .skeleton files of setups S001-S032 in --raw")

# Specs defined in their reader modules, imported on first use.
_SPEC_MODULES = {
    "pku_mmd2": ("data_prep.pku", "SPEC"),
    "msr_action3d": ("data_prep.msr", "SPEC"),
    "synthetic": ("data_prep.synthetic", "SPEC"),
}
DATASET_NAMES = ("ntu60", "ntu120", "pku_mmd2", "msr_action3d", "synthetic")


def get_spec(name: str) -> DatasetSpec:
  if name == "ntu60":
    return NTU60
  if name == "ntu120":
    return NTU120
  if name in _SPEC_MODULES:
    module, attr = _SPEC_MODULES[name]
    return getattr(importlib.import_module(module), attr)
  raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")


def check_benchmark(spec: DatasetSpec, benchmark: str) -> None:
  if benchmark not in spec.benchmarks:
    raise ValueError(f"{spec.name} has no benchmark {benchmark!r}; expected one of {', '.join(spec.benchmarks)}")


def to_fixed_length(data: np.ndarray, max_frames: int = MAX_FRAMES) -> tuple[np.ndarray, int]:
  """Zero-pads/truncates raw ``(3, T, V, M)`` to ``(3, max_frames, V, M)`` float32.

  Returns the array and the original T, which the reference stores as ``num_frame``
  even when it exceeds ``max_frames`` (reference_cmd.md 1.5, 1.7).
  """
  c, t, v, m = data.shape
  out = np.zeros((c, max_frames, v, m), np.float32)
  out[:, :min(t, max_frames)] = data[:, :max_frames]
  return out, t


__all__ = ["Sample", "DatasetSpec", "get_spec", "check_benchmark", "to_fixed_length",
           "DATASET_NAMES", "MAX_FRAMES", "DataFormatError"]
