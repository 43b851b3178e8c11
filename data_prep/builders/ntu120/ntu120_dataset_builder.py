"""TFDS builder for ntu120: one config per benchmark, ArrayRecord shards (see data_prep/builders/base.py)."""

import tensorflow_datasets as tfds

from data_prep.builders.base import SkeletonBuilder, builder_configs


class Builder(SkeletonBuilder, tfds.core.GeneratorBasedBuilder):
  """ntu120, converted as the reference pipeline converts it."""

  DATASET = "ntu120"
  BUILDER_CONFIGS = builder_configs(DATASET)
