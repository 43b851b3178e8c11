"""TFDS builder for synthetic: one config per benchmark, ArrayRecord shards (see data_prep/builders/base.py)."""

import tensorflow_datasets as tfds

from data_prep.builders.base import SkeletonBuilder, builder_configs


class Builder(SkeletonBuilder, tfds.core.GeneratorBasedBuilder):
  """synthetic, converted as the reference pipeline converts it."""

  DATASET = "synthetic"
  BUILDER_CONFIGS = builder_configs(DATASET)
