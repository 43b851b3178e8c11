"""Dataset preparation: raw-format readers, reference-faithful preprocessing, TFDS builders, npy export.

Command line: ``python -m data_prep --help`` (data_prep/cli.py). From Python:
``data_prep.build_dataset(...)`` and ``data_prep.export_npy(...)`` (data_prep/build.py).
"""


def build_dataset(*args, **kwargs):
  """``data_prep.build.build_dataset`` (imported on first use: it needs tensorflow_datasets)."""
  from data_prep.build import build_dataset as build  # pylint: disable=import-outside-toplevel
  return build(*args, **kwargs)


def export_npy(*args, **kwargs):
  """``data_prep.build.export_npy``."""
  from data_prep.build import export_npy as export  # pylint: disable=import-outside-toplevel
  return export(*args, **kwargs)
