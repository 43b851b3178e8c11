"""TFDS builder package for the synthetic dataset."""
