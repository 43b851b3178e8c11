"""Evaluators that score frozen encoders (the online kNN monitor; the downstream protocols reuse them)."""
