"""Dataset preparation: raw-format readers, reference-faithful preprocessing, TFDS builders, npy export.

Command line: ``python -m data_prep --help`` (data_prep/cli.py).
"""
