"""Subprocess side of tests/test_skeletonclr_aimclr_pretrain.py (JAX must start with 8 devices).

``python -m tests.single_stream_worker OUT.npz`` (run with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``): for SkeletonCLR and AimCLR, a tiny
config (CMD's GRU, small; one step per epoch; AimCLR mining from the second step, its EADM
on), the same fresh train state and the same batches (tests/distributed_worker.py's)
stepped with ``jit_train_step`` on a 1-device and on an 8-device mesh. Writes, for each
method and mesh, ``{method}/{mesh}/metrics/{name}`` (``[steps]``) and
``{method}/{mesh}/state/{path}``. Float64 (state and batches cast), for the reason
tests/distributed_worker.py gives: in float32 a ReLU unit at the rounding boundary can take
another side on the other mesh and hide a real difference behind a loose bound. What the
8-device mesh could get wrong: the BatchNorm statistics of the normal and the extreme batch,
the views, the mining switch, and EADM's batch-global rescale factors (a per-device factor
would differ).
"""

from __future__ import annotations

import sys

import numpy as np

from tests.distributed_worker import BATCH, _key, batches


def tiny_config(method: str):
  from configs import pretrain_aimclr, pretrain_skeletonclr  # pylint: disable=import-outside-toplevel

  config = {"skeletonclr": pretrain_skeletonclr, "aimclr": pretrain_aimclr}[method].get_config("synthetic")
  config.model.name, config.model.init = "gru", "default"
  config.model.hidden_size, config.model.num_layers = 8, 1
  config.model.embed_dim = 8
  config.batch_size = BATCH
  config.moco.queue_size = 64
  if method == "aimclr":
    config.aimclr.mining_epoch = 1
  return config


def main(out_path: str) -> None:
  import jax  # pylint: disable=import-outside-toplevel

  from cmd_jax import data, sharding  # pylint: disable=import-outside-toplevel
  from cmd_jax.trainers import pretrain  # pylint: disable=import-outside-toplevel

  if jax.device_count() != 8:
    raise SystemExit(f"expected 8 fake CPU devices, got {jax.device_count()} (XLA_FLAGS not set?)")
  jax.config.update("jax_enable_x64", True)
  to64 = lambda tree: jax.tree.map(  # pylint: disable=unnecessary-lambda-assignment
      lambda a: np.asarray(a, np.float64) if np.asarray(a).dtype.kind == "f" else np.asarray(a), tree)
  host_batches = [to64(b) for b in batches(frames=50)]
  out: dict[str, np.ndarray] = {}
  for method in ("skeletonclr", "aimclr"):
    config = tiny_config(method)
    layout = data.layout_of(config.data)
    for num_devices in (1, 8):
      tag = f"{method}/mesh{num_devices}"
      mesh = sharding.make_mesh(num_devices)
      state = sharding.put_replicated(to64(jax.device_get(pretrain.create_train_state(config, layout, 1))), mesh)
      step_fn = pretrain.jit_train_step(config, layout, 1, mesh)
      history = []
      for host_batch in host_batches:
        state, metrics = step_fn(state, sharding.put_batch(host_batch, mesh))
        history.append(jax.device_get(metrics))
      for name in history[0]:
        out[f"{tag}/metrics/{name}"] = np.asarray([h[name] for h in history])
      leaves, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(state))
      for path, leaf in leaves:
        out[f"{tag}/state/{_key(path)}"] = np.asarray(leaf)
  np.savez(out_path, **out)


if __name__ == "__main__":
  if len(sys.argv) != 2:
    raise SystemExit("usage: python -m tests.single_stream_worker OUT.npz")
  main(sys.argv[1])
