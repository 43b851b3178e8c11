"""TFDS builder package for the msr_action3d dataset."""
