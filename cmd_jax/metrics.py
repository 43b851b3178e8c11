"""Metric writing: JSON lines (``<workdir>/metrics.jsonl``) and TensorBoard events, process 0 only.

A writer opening a ``metrics.jsonl`` whose last line was cut short (a full disk, a kill)
removes that partial line before appending.

Every record is ``{"step": int, "split": str, <name>: float, ...}``; TensorBoard gets one
scalar per name under ``<split>/<name>``. tensorboardX is used (clu's writers import
TensorFlow).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from typing import Any, Mapping

import jax
import numpy as np


def _scalar(value: Any) -> float | None:
  """A JSON-safe float; non-finite values become None (JSON has no NaN)."""
  value = float(np.asarray(value))
  return value if math.isfinite(value) else None


class MetricWriter:
  """Appends metrics to ``metrics.jsonl`` and TensorBoard event files in ``workdir``."""

  def __init__(self, workdir: str | os.PathLike, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      _drop_partial_line(self.path)
      self._tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "split": split}
    record.update({k: _scalar(v) for k, v in metrics.items()})
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
    for name, value in record.items():
      if name not in ("step", "split") and value is not None:
        self._tb.add_scalar(f"{split}/{name}", value, int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _summary_writer_class():
  """tensorboardX's ``SummaryWriter``, imported without PyTorch where PyTorch is not loaded yet.

  tensorboardX imports ``torch`` whenever it is installed, only to accept torch tensors in
  its type hints and converters; that import is ~2.4 s of every run's start-up (measured on
  a 2-core CPU, a sixth of a tiny run's). This writer passes Python floats, so ``torch`` is
  hidden while tensorboardX loads (``import torch`` raises ImportError there, which
  tensorboardX handles) and visible again right after; a process that has already loaded
  torch keeps it.
  """
  if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None  # the import system's "not importable" marker
    try:
      importlib.import_module("tensorboardX")
    finally:
      if "torch" in sys.modules and sys.modules["torch"] is None:
        del sys.modules["torch"]
  from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  return SummaryWriter


def _drop_partial_line(path: str) -> None:
  """Cuts a last line without its newline (a write that a full disk or a kill cut short), so
  that the records appended next start on a line of their own."""
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    size = f.seek(0, os.SEEK_END)
    if size == 0:
      return
    f.seek(size - 1)
    if f.read(1) == b"\n":
      return
    end = size
    while end > 0:
      start = max(0, end - 65536)
      f.seek(start)
      chunk = f.read(end - start)
      newline = chunk.rfind(b"\n")
      if newline >= 0:
        f.truncate(start + newline + 1)
        return
      end = start
    f.truncate(0)


def read_metrics(workdir: str | os.PathLike, split: str | None = None) -> list[dict[str, Any]]:
  """The records of ``metrics.jsonl`` (optionally one split's), in order."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if split is None or r.get("split") == split]
