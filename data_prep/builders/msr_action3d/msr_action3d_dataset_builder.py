"""TFDS builder for msr_action3d: one config per benchmark, ArrayRecord shards (see data_prep/builders/base.py)."""

import tensorflow_datasets as tfds

from data_prep.builders.base import SkeletonBuilder, builder_configs


class Builder(SkeletonBuilder, tfds.core.GeneratorBasedBuilder):
  """msr_action3d, converted as the reference pipeline converts it."""

  DATASET = "msr_action3d"
  BUILDER_CONFIGS = builder_configs(DATASET)
