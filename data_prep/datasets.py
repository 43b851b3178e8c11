"""The dataset registry: what each convertible dataset is, how its samples are listed and loaded.

A dataset is a ``DatasetSpec`` (``data_prep.spec``): its skeleton layout, class names and benchmarks, a
``list_samples(raw_dir, options)`` that lists every sample with its label and the
benchmarks it trains in, and a ``load(sample)`` that returns the sample's raw joint
coordinates ``(3, T, V, M)`` (before padding and normalisation). The converter
(``data_prep.convert``), the TFDS builders and the npy export work on specs only.

``SPECS`` maps the CLI names (ntu60, ntu120, pku_mmd2, msr_action3d, synthetic) to specs;
each reader module defines its own spec next to its reader.

Every dataset converts in two *variants*:

* ``standard``: CMD's conversion, 300 frames (``data_prep.preprocess.pre_normalization``),
  NTU bodies ranked by motion energy; the TFDS configs are named after the benchmarks
  (``xsub``, ...);
* ``frame50``: HiCLR's conversion, 50 frames (``data_prep.frame50``), bodies in file
  order; the TFDS configs are ``<benchmark>_frame50``. NTU files are read with the first
  two bodies of each frame (``ntu.read_xyz(..., selection="file_order")``) and PKU-MMD II
  instances are cut as HiCLR's scripts cut them (``data_prep.pku.load_hiclr``); MSR Action3D and the
  synthetic set load as in ``standard`` (their readers already keep the bodies in order).
  As in ``standard``, an NTU file longer than 300 frames (none is expected) keeps its first
  300 (HiCLR's converter would fail on it).

``load(spec, sample, variant)`` is the variant's reader; ``VARIANT_FRAMES`` the stored T.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cmd_jax import action_names
from cmd_jax.layouts import NTU25
from data_prep import msr, ntu, pku, synthetic
from data_prep.errors import DataFormatError
from data_prep.spec import MAX_FRAMES, DatasetSpec, Sample

VARIANTS = ("standard", "frame50")
VARIANT_FRAMES = {"standard": MAX_FRAMES, "frame50": 50}  # T of the stored samples of each variant


# ---------------------------------------------------------------------------------------
# NTU RGB+D 60 / 120

MISSING_LIST_NAMES = {
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
  file_name = MISSING_LIST_NAMES[dataset]
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


def load_ntu_file_order(sample: Sample) -> np.ndarray:
  """HiCLR's NTU reading: the first two bodies of each frame, in file order."""
  return ntu.read_xyz(sample.source, selection="file_order")


NTU60 = DatasetSpec(
    name="ntu60", layout=NTU25, class_names=action_names.NTU60, benchmarks=("xsub", "xview"),
    list_samples=_ntu_lister("ntu60", 17, ("xsub", "xview")), load=load_ntu, option_keys=("missing_list",),
    description="NTU RGB+D 60: the .skeleton files of setups S001-S017 in --raw")
NTU120 = DatasetSpec(
    name="ntu120", layout=NTU25, class_names=action_names.NTU120, benchmarks=("xsub", "xset"),
    list_samples=_ntu_lister("ntu120", 32, ("xsub", "xset")), load=load_ntu, option_keys=("missing_list",),
    description="NTU RGB+D 120: the .skeleton files of setups S001-S032 in --raw")

SPECS = {"ntu60": NTU60, "ntu120": NTU120, "pku_mmd2": pku.SPEC, "msr_action3d": msr.SPEC, "synthetic": synthetic.SPEC}
DATASET_NAMES = tuple(SPECS)


def get_spec(name: str) -> DatasetSpec:
  if name not in SPECS:
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
  return SPECS[name]


def check_options(spec: DatasetSpec, options: Mapping[str, Any] | None) -> None:
  """ValueError naming any option key the dataset does not read (a misspelt --option)."""
  unknown = sorted(set(options or {}) - set(spec.option_keys))
  if unknown:
    known = ", ".join(spec.option_keys) or "none"
    raise ValueError(f"{spec.name}: unknown option(s) {', '.join(unknown)}; this dataset reads: {known}")


def check_benchmark(spec: DatasetSpec, benchmark: str) -> None:
  if benchmark not in spec.benchmarks:
    raise ValueError(f"{spec.name} has no benchmark {benchmark!r}; expected one of {', '.join(spec.benchmarks)}")


def check_variant(variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f"unknown conversion variant {variant!r}; expected one of {', '.join(VARIANTS)}")


_FRAME50_SUFFIX = "_frame50"


def config_name(benchmark: str, variant: str) -> str:
  """The TFDS builder config of a benchmark in a variant: ``xsub`` or ``xsub_frame50``."""
  check_variant(variant)
  return benchmark if variant == "standard" else benchmark + _FRAME50_SUFFIX


def parse_config_name(name: str) -> tuple[str, str]:
  """``(benchmark, variant)`` of a TFDS builder config name (inverse of ``config_name``)."""
  if name.endswith(_FRAME50_SUFFIX):
    return name[:-len(_FRAME50_SUFFIX)], "frame50"
  return name, "standard"


# ---------------------------------------------------------------------------------------
# The frame50 variant's readers

_FRAME50_LOADERS = {"ntu60": load_ntu_file_order, "ntu120": load_ntu_file_order, "pku_mmd2": pku.load_hiclr}


def load(spec: DatasetSpec, sample: Sample, variant: str = "standard") -> np.ndarray:
  """The raw coordinates ``(3, T, V, M)`` of a sample as the variant's reference reads them."""
  check_variant(variant)
  if variant == "frame50" and spec.name in _FRAME50_LOADERS:
    return _FRAME50_LOADERS[spec.name](sample)
  return spec.load(sample)


def to_fixed_length(data: np.ndarray, max_frames: int = MAX_FRAMES) -> tuple[np.ndarray, int]:
  """Zero-pads/truncates raw ``(3, T, V, M)`` to ``(3, max_frames, V, M)`` float32.

  Returns the array and the original T, which the reference stores as ``num_frame``
  even when it exceeds ``max_frames`` (docs/references.md#cmd-splits-and-files,
  #cmd-pku-mmd-ii-conversion).
  """
  c, t, v, m = data.shape
  out = np.zeros((c, max_frames, v, m), np.float32)
  out[:, :min(t, max_frames)] = data[:, :max_frames]
  return out, t


__all__ = ["Sample", "DatasetSpec", "get_spec", "check_benchmark", "check_variant", "config_name",
           "parse_config_name", "load", "to_fixed_length", "DATASET_NAMES", "MAX_FRAMES", "VARIANTS",
           "VARIANT_FRAMES", "DataFormatError"]
