"""TFDS builders, one package per dataset, sharing ``SkeletonBuilder`` (see base.py)."""

import importlib


def load_builder_class(dataset: str):
  """The ``Builder`` class of a dataset's package (imports tensorflow_datasets)."""
  module = importlib.import_module(f"data_prep.builders.{dataset}.{dataset}_dataset_builder")
  return module.Builder
