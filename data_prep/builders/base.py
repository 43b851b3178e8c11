"""The TFDS builder logic shared by every skeleton dataset: features, splits, ArrayRecord shards.

Each dataset package (``ntu60``, ``ntu120``, ``pku_mmd2``, ``msr_action3d``, ``synthetic``)
defines ``Builder(SkeletonBuilder, tfds.core.GeneratorBasedBuilder)`` with its dataset
name; two builder configs per benchmark, one per conversion variant (see
``data_prep.datasets``): ``<benchmark>`` (``standard``, CMD's conversion) and
``<benchmark>_frame50`` (``frame50``, HiCLR's). Examples are::

  skeleton    float32 [3, T, V, M]     standard: T = 300, after the reference's pre_normalization
                                       frame50:  T = 50, after HiCLR's 50-frame resize (data_prep.frame50)
  num_frames  int32                    standard: the original frame count (may exceed 300 for PKU)
                                       frame50:  50, the valid frames of the STORED clip (the resize
                                       fills all 50; the original length is not kept)
  label       int64 (ClassLabel)       0-based; the ClassLabel carries the dataset's action names
                                       (DatasetSpec.class_names, written to label.labels.txt beside
                                       the shards), read back as info.features["label"].names
  name        text                     the reference's sample name

Consumers crop within ``min(num_frames, T)``, which is the whole clip in ``frame50``.
Configs built before the names were stored have a ClassLabel with the class count only
(``names`` reads ``"0", "1", ...``); they load as before, and ``cmd_jax.data.class_names``
gives them the names of ``cmd_jax.action_names``. The names change neither
``features.json`` nor ``dataset_info.json``.

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


_VARIANT_DESCRIPTIONS = {
    "standard": "CMD's conversion, 300 frames",
    "frame50": "HiCLR's conversion, 50-frame clips",
}


def builder_configs(dataset: str) -> list[tfds.core.BuilderConfig]:
  """``<benchmark>`` for every benchmark, then ``<benchmark>_frame50`` for every benchmark."""
  spec = datasets.get_spec(dataset)
  configs = []
  for variant in datasets.VARIANTS:
    for b in spec.benchmarks:
      description = f"{spec.name} {b}: train and val parts of the {b} benchmark"
      if variant != "standard":
        description += f" ({_VARIANT_DESCRIPTIONS[variant]})"
      configs.append(tfds.core.BuilderConfig(name=datasets.config_name(b, variant), description=description))
  return configs


def example_features(spec: datasets.DatasetSpec, variant: str) -> tfds.features.FeaturesDict:
  """The features of every example of ``spec``'s ``variant`` configs (module docstring)."""
  v, m = spec.layout.num_joints, spec.layout.num_persons
  return tfds.features.FeaturesDict({
      "skeleton": tfds.features.Tensor(shape=(3, datasets.VARIANT_FRAMES[variant], v, m), dtype=np.float32),
      "num_frames": tfds.features.Scalar(dtype=np.int32),
      "label": tfds.features.ClassLabel(names=spec.class_names),
      "name": tfds.features.Text(),
  })


class SkeletonBuilder:
  """Mixin: put before ``tfds.core.GeneratorBasedBuilder``; set ``DATASET``.

  ``cache_dir`` must be the cache of this config's variant (default:
  ``<data_dir>/.cache/<dataset>/<variant>``).
  """

  DATASET: str = ""
  VERSION = tfds.core.Version("1.0.0")
  # The *_frame50 configs were added under the same version; the note is kept as it was so
  # that the standard configs' dataset_info.json stays exactly what earlier builds wrote.
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

  @property
  def benchmark(self) -> str:
    return datasets.parse_config_name(self.builder_config.name)[0]

  @property
  def variant(self) -> str:
    """The conversion variant of this config: ``standard`` or ``frame50``."""
    return datasets.parse_config_name(self.builder_config.name)[1]

  def _info(self) -> tfds.core.DatasetInfo:
    spec = self.spec
    metadata = {"layout": spec.layout.name}
    if self.variant != "standard":  # the standard configs' metadata is as it always was
      metadata["variant"] = self.variant
    return self.dataset_info_from_configs(
        features=example_features(spec, self.variant),
        description=spec.description,
        metadata=tfds.core.MetadataDict(**metadata),
    )

  def _split_generators(self, dl_manager):
    spec = self.spec
    raw = None
    if spec.needs_raw:
      try:
        raw = Path(dl_manager.manual_dir)
      except AssertionError:  # TFDS's check of an absent or empty manual_dir
        raise FileNotFoundError(f"{spec.name}: the raw directory (manual_dir) does not exist or is empty") from None
    variant, benchmark = self.variant, self.benchmark
    cache_dir = self._cache_dir or convert.cache_folder(Path(self._data_dir_root) / ".cache", spec.name, variant)
    cache = convert.prepare(spec, raw, cache_dir, self._options, self._workers, self._progress, variant=variant)
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
