"""TFDS builder package for the pku_mmd2 dataset."""
