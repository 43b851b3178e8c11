"""The TFDS builder logic shared by every skeleton dataset: features, splits, ArrayRecord shards.

Each dataset package (``ntu60``, ``ntu120``, ``pku_mmd2``, ``msr_action3d``, ``synthetic``)
defines ``Builder(SkeletonBuilder, tfds.core.GeneratorBasedBuilder)`` with its dataset
name; one builder config per benchmark. Examples are::

  skeleton    float32 [3, 300, V, M]   after the reference's pre_normalization
  num_frames  int32                    the original frame count (may exceed 300 for PKU)
  label       int64 (ClassLabel)       0-based
  name        text                     the reference's sample name

Splits are ``train`` and ``val``, as in the reference's file names. Raw files are read
from the download config's ``manual_dir``. The parsing and normalisation is done by
``data_prep.convert.prepare`` (parallel, resumable) into a cache shared by the benchmarks;
TFDS then writes the shards into an ``incomplete.*`` folder that it renames only when
the whole config is written, so an interrupted build never looks complete. The
conversion summary (skipped samples and why) is stored in the dataset's metadata.
Always build with ``file_format="array_record"`` (the default writer needs TensorFlow).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from data_prep import convert, datasets


def builder_configs(dataset: str) -> list[tfds.core.BuilderConfig]:
  spec = datasets.get_spec(dataset)
  return [tfds.core.BuilderConfig(name=b, description=f"{spec.name} {b}: train and val parts of the {b} benchmark")
          for b in spec.benchmarks]


class SkeletonBuilder:
  """Mixin: put before ``tfds.core.GeneratorBasedBuilder``; set ``DATASET``."""

  DATASET: str = ""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Reference-faithful conversion (CMD / skeleton-contrast pre_normalization)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the folder of raw files as the download config's manual_dir (--raw)."

  def __init__(self, *, options: Mapping[str, Any] | None = None, workers: int | None = None,
               cache_dir: str | os.PathLike | None = None, progress: bool = True, **kwargs):
    """Extra arguments: dataset options, worker processes, the conversion cache folder."""
    self._options = dict(options or {})
    self._workers = workers
    self._cache_dir = cache_dir
    self._progress = progress
    super().__init__(**kwargs)

  @property
  def spec(self) -> datasets.DatasetSpec:
    return datasets.get_spec(self.DATASET)

  def _info(self) -> tfds.core.DatasetInfo:
    spec = self.spec
    v, m = spec.layout.num_joints, spec.layout.num_persons
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "skeleton": tfds.features.Tensor(shape=(3, datasets.MAX_FRAMES, v, m), dtype=np.float32),
            "num_frames": tfds.features.Scalar(dtype=np.int32),
            "label": tfds.features.ClassLabel(num_classes=spec.num_classes),
            "name": tfds.features.Text(),
        }),
        description=spec.description,
        metadata=tfds.core.MetadataDict(layout=spec.layout.name),
    )

  def _split_generators(self, dl_manager):
    spec = self.spec
    raw = None
    if spec.needs_raw:
      try:
        raw = Path(dl_manager.manual_dir)
      except AssertionError:  # TFDS's check of an absent or empty manual_dir
        raise FileNotFoundError(f"{spec.name}: the raw directory (manual_dir) does not exist or is empty") from None
    cache_dir = self._cache_dir or Path(self._data_dir_root) / ".cache" / spec.name
    cache = convert.prepare(spec, raw, cache_dir, self._options, self._workers, self._progress)
    benchmark = self.builder_config.name
    for part, train in (("train", True), ("val", False)):
      if not cache.split_names(benchmark, train):
        raise ValueError(f"{spec.name} {benchmark}: the {part} split is empty: none of the "
                         f"{len(cache.samples)} samples found belongs to it")
    summary = cache.summary()
    self.info.metadata.update(
        skipped=[list(s) for s in summary.skipped], all_zero_kept=summary.all_zero_kept,
        listed=summary.listed, converted=summary.converted)
    return {"train": self._generate_examples(cache, benchmark, True),
            "val": self._generate_examples(cache, benchmark, False)}

  def _generate_examples(self, cache: convert.Cache, benchmark: str, train: bool):
    for record in cache.iter_split(benchmark, train):
      yield record["name"], record
