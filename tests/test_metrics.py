"""cmd_jax.metrics: the JSON lines and TensorBoard scalars it writes, and that opening the
TensorBoard writer does not load PyTorch (tensorboardX would, at ~2.4 s of every run's start-up)."""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys

import pytest

from cmd_jax import metrics
from tests.conftest import REPO


_WRITE = """
import sys
if sys.argv[2] == "torch_first":
  import torch
from cmd_jax import metrics
w = metrics.MetricWriter(sys.argv[1])
w.write(3, {"loss": 0.25, "lr": 0.5})
w.write(4, {"loss": float("nan")}, split="eval")
w.close()
print("torch loaded:", "torch" in sys.modules)
import torch  # still importable afterwards
print("torch usable:", float(torch.ones(2).sum()))
"""


def _scalars(workdir) -> list[tuple[int, str, float]]:
  """Every scalar of the TensorBoard event files: each record is a little-endian uint64 length,
  its CRC, an ``Event`` protocol buffer and its CRC (the TFRecord framing)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  out = []
  for path in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
  return out


@pytest.mark.parametrize("order", ["fresh", "torch_first"])
def test_writer_records_and_torch_stays_unloaded(tmp_path, order):
  """In a fresh interpreter (PyTorch installed, as in this suite) the writer leaves ``torch``
  unloaded and importable; where torch was loaded first it is used as it is. Both write the
  same JSON lines (a non-finite value as null) and TensorBoard scalars (finite ones only)."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-c", _WRITE, str(tmp_path), order], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"torch loaded: {order == 'torch_first'}" in done.stdout, done.stdout
  assert "torch usable: 2.0" in done.stdout, done.stdout
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines == [{"step": 3, "split": "train", "loss": 0.25, "lr": 0.5}, {"step": 4, "split": "eval", "loss": None}]
  assert sorted(_scalars(tmp_path)) == [(3, "train/loss", 0.25), (3, "train/lr", 0.5)]
  assert metrics.read_metrics(tmp_path, "train") == [lines[0]]
