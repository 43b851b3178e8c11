"""The data a config names: its skeleton layout, its data sources, and the embedded default set.

``config.data`` selects a TFDS dataset (``data_dir``/``dataset``/``benchmark``/``variant``,
as ``python -m data_prep build`` writes it) or a folder in one of the PyTorch references'
npy formats (``npy_folder``; CMD's or HiCLR's, detected from the files). ``variant`` is
the conversion: ``"standard"`` (CMD's 300-frame clips, TFDS config ``<benchmark>``) or
``"frame50"`` (HiCLR's 50-frame clips, TFDS config ``<benchmark>_frame50``); a config
without the field (an old ``config.json``) or with ``""`` means ``"standard"``, except
where a caller resolves ``""`` to a pretraining's variant (``with_variant``). The
synthetic set is built on first use, in the variant asked for, when ``prepare_synthetic``
is set, so the default configs run with no download and no separate preparation step.
``class_names`` gives the action names of the classes a data config reads.
"""

from __future__ import annotations

import os

import jax

from cmd_jax import action_names, input_pipeline
from cmd_jax.layouts import SkeletonLayout, get_layout
from cmd_jax.npy_source import NpySource

# The layout of each dataset (the converter's DatasetSpec has the same; kept here so the
# training side does not import the conversion code).
DATASET_LAYOUTS = {"ntu60": "ntu25", "ntu120": "ntu25", "pku_mmd2": "ntu25", "synthetic": "ntu25",
                   "msr_action3d": "msr20"}
SPLITS = ("train", "val")
VARIANTS = ("standard", "frame50")  # as data_prep.datasets.VARIANTS
_FORMAT_VARIANTS = {"cmd": "standard", "hiclr": "frame50"}  # the variant each npy format holds


def variant_of(data_config, default: str = "standard") -> str:
  """``config.data.variant``; ``default`` when the field is absent or empty."""
  value = data_config.get("variant", "") if hasattr(data_config, "get") else getattr(data_config, "variant", "")
  return str(value or default)


def with_variant(data_config, default: str):
  """A copy of ``data_config`` whose ``variant`` is its own, or ``default`` when absent or empty."""
  variant = variant_of(data_config, default)
  out = data_config.copy_and_resolve_references()
  with out.unlocked():
    out.variant = variant
  return out


def tfds_config_name(data_config) -> str:
  """The TFDS builder config a data config reads: ``benchmark`` or ``benchmark + "_frame50"``."""
  variant = variant_of(data_config)
  return str(data_config.benchmark) + ("" if variant == "standard" else f"_{variant}")


def layout_of(data_config) -> SkeletonLayout:
  dataset = data_config.dataset
  if dataset not in DATASET_LAYOUTS:
    raise ValueError(f"config.data.dataset={dataset!r} is unknown; expected one of {', '.join(DATASET_LAYOUTS)}")
  return get_layout(DATASET_LAYOUTS[dataset])


def validate(data_config) -> None:
  """Checks the data fields of a config (before anything is compiled)."""
  layout_of(data_config)
  variant = variant_of(data_config)
  if variant not in VARIANTS:
    raise ValueError(f"config.data.variant={variant!r}; expected one of {', '.join(VARIANTS)} (or empty)")
  if data_config.source not in ("tfds", "npy"):
    raise ValueError(f"config.data.source={data_config.source!r}; expected 'tfds' or 'npy'")
  if data_config.source == "npy" and not data_config.npy_folder:
    raise ValueError("config.data.source='npy' needs config.data.npy_folder (the folder of {train,val}_data_joint.npy, "
                     "or of {train,val}_position.npy in HiCLR's format)")


def ensure_prepared(data_config) -> None:
  """Builds the synthetic set into ``data_dir`` if it is asked for and missing (process 0
  builds), in the config's variant."""
  if data_config.source != "tfds" or data_config.dataset != "synthetic" or not data_config.prepare_synthetic:
    return
  variant = variant_of(data_config)
  try:
    input_pipeline.find_version_dir(data_config.data_dir, "synthetic", tfds_config_name(data_config))
    return
  except FileNotFoundError:
    pass
  if jax.process_index() == 0:
    import data_prep  # pylint: disable=import-outside-toplevel
    what = "" if variant == "standard" else f" ({variant} variant)"
    print(f"The synthetic dataset{what} is not in {data_config.data_dir}: building it (about 10 s)")
    data_prep.build_dataset("synthetic", os.fspath(data_config.data_dir), variant=variant, progress=False,
                            lock_wait=600.0)  # another run building it: wait, then find it built
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("synthetic dataset prepared")


def open_split(data_config, split: str):
  """The random-access source of one split (``train`` or ``val``)."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  if data_config.source == "npy":
    source = NpySource(data_config.npy_folder, split)
    variant, stored = variant_of(data_config), _FORMAT_VARIANTS[source.format]
    if variant != stored:
      raise ValueError(f"config.data.variant={variant!r}, but config.data.npy_folder={data_config.npy_folder} holds "
                       f"the {source.format} format ({stored} clips); expected config.data.variant={stored!r}")
    return source
  return input_pipeline.tfds_source(os.fspath(data_config.data_dir), data_config.dataset,
                                    tfds_config_name(data_config), split)


def class_names(data_config, source=None, num_classes: int | None = None) -> list[str] | None:
  """The action names of the classes, index = label, for plots and per-class tables.

  The names stored with the data (a TFDS source's ``info.features["label"].names``) when it
  has real ones; else those of ``config.data.dataset`` (``cmd_jax.action_names``: npy
  folders, and TFDS configs built before names were stored); else None. With
  ``num_classes`` (the class count a protocol trains with), names of another count are
  not the classes' names: the indices ``"0", "1", ...`` are returned instead.
  """
  stored = None
  info = getattr(source, "info", None)
  try:
    stored = list(info.features["label"].names)
  except (AttributeError, KeyError, TypeError):
    pass
  names = action_names.names_or_default(stored, getattr(data_config, "dataset", None))
  if num_classes is not None and (names is None or len(names) != int(num_classes)):
    return [str(i) for i in range(int(num_classes))]
  return None if names is None else list(names)
