"""The data a config names: its skeleton layout, its data sources, and the embedded default set.

``config.data`` selects a TFDS dataset (``data_dir``/``dataset``/``benchmark``, as
``python -m data_prep build`` writes it) or a folder in the PyTorch reference's npy format
(``npy_folder``). The synthetic set is built on first use when ``prepare_synthetic`` is set,
so the default configs run with no download and no separate preparation step.
"""

from __future__ import annotations

import os

import jax

from cmd_jax import input_pipeline
from cmd_jax.layouts import SkeletonLayout, get_layout
from cmd_jax.npy_source import NpySource

# The layout of each dataset (the converter's DatasetSpec has the same; kept here so the
# training side does not import the conversion code).
DATASET_LAYOUTS = {"ntu60": "ntu25", "ntu120": "ntu25", "pku_mmd2": "ntu25", "synthetic": "ntu25",
                   "msr_action3d": "msr20"}
SPLITS = ("train", "val")


def layout_of(data_config) -> SkeletonLayout:
  dataset = data_config.dataset
  if dataset not in DATASET_LAYOUTS:
    raise ValueError(f"config.data.dataset={dataset!r} is unknown; expected one of {', '.join(DATASET_LAYOUTS)}")
  return get_layout(DATASET_LAYOUTS[dataset])


def validate(data_config) -> None:
  """Checks the data fields of a config (before anything is compiled)."""
  layout_of(data_config)
  if data_config.source not in ("tfds", "npy"):
    raise ValueError(f"config.data.source={data_config.source!r}; expected 'tfds' or 'npy'")
  if data_config.source == "npy" and not data_config.npy_folder:
    raise ValueError("config.data.source='npy' needs config.data.npy_folder (the folder of {train,val}_data_joint.npy)")


def ensure_prepared(data_config) -> None:
  """Builds the synthetic set into ``data_dir`` if it is asked for and missing (process 0 builds)."""
  if data_config.source != "tfds" or data_config.dataset != "synthetic" or not data_config.prepare_synthetic:
    return
  try:
    input_pipeline.find_version_dir(data_config.data_dir, "synthetic", data_config.benchmark)
    return
  except FileNotFoundError:
    pass
  if jax.process_index() == 0:
    from data_prep import cli  # pylint: disable=import-outside-toplevel
    print(f"The synthetic dataset is not in {data_config.data_dir}: building it (about 10 s)")
    cli.main(["build", "synthetic", "--out", str(data_config.data_dir), "--quiet"])
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("synthetic dataset prepared")


def open_split(data_config, split: str):
  """The random-access source of one split (``train`` or ``val``)."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  if data_config.source == "npy":
    return NpySource(data_config.npy_folder, split)
  return input_pipeline.tfds_source(os.fspath(data_config.data_dir), data_config.dataset,
                                    data_config.benchmark, split)
