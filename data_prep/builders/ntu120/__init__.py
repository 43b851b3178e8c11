"""TFDS builder package for the ntu120 dataset."""
