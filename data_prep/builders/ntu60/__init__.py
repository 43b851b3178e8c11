"""TFDS builder package for the ntu60 dataset."""
