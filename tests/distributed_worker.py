"""Subprocess side of tests/test_distributed.py (JAX must start with the device count it needs).

``python -m tests.distributed_worker sharded_step OUT.npz`` (run with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``): a tiny CMD config, the same fresh
train state and the same batches stepped with ``jit_train_step`` on a 1-device mesh and on
an 8-device mesh. Writes, for each mesh ``mesh1`` / ``mesh8``:

- ``{mesh}/metrics/{name}``: ``[steps]`` every metric of every step;
- ``{mesh}/state/{path}``: every leaf of the final state;
- ``{mesh}/bn_after_1/{q|k}_{mean|var}``: the joint encoders' input BatchNorm running
  statistics after the first step;
- ``{mesh}/batch_shards`` / ``{mesh}/batch_shard_rows``: how many shards the device batch
  has and the rows of each shard;

plus ``input_q`` / ``input_k`` (the first step's joint views, computed outside the mesh with
the step's own PRNG key) for the test's numpy BatchNorm statistics.

``python -m tests.distributed_worker hiclr_sharded_step OUT.npz``: the same for a tiny HiCLR
config (CMD's GRU, small; one step per epoch, mining from the second step on), so that the
views, the batch-shared joint mask, the three BatchNorm batches and the mining switch are
all compared across the two meshes (``{mesh}/metrics``,
``{mesh}/state``). It runs in float64 (state and batches cast): in float32 a ReLU unit whose
input lies within rounding distance of 0 can take a different side on the two meshes and
move a gradient by percents (tests/test_hiclr_parity.py measures it), which would hide any
real difference behind a loose bound.

``python -m tests.distributed_worker crossclr_sharded_step OUT.npz``: the same for a tiny
CrosSCLR config (CMD's GRU, small, three streams in one run; one step per epoch, cross-view
training from the second step on), in float64: the shared view draw, the six encoders' BN
batches, the momentum rule of each phase, the cross-view loss (its top-k over the queue) and
the enqueue at the shared pointer, compared across the two meshes.
"""

from __future__ import annotations

import sys

import numpy as np

STEPS = 3
BATCH = 16


def tiny_config():
  from configs import pretrain_cmd  # pylint: disable=import-outside-toplevel

  config = pretrain_cmd.get_config("synthetic")
  config.model.hidden_size = 8
  config.model.num_layers = 1
  config.model.embed_dim = 8
  config.batch_size = BATCH
  config.moco.queue_size = 64
  config.cmd.topk = 16
  config.augment.frames = 8
  config.augment.min_length = 8
  return config


def tiny_hiclr_config():
  from configs import pretrain_hiclr  # pylint: disable=import-outside-toplevel

  config = pretrain_hiclr.get_config("synthetic")
  # CMD's GRU, small: sharding does not depend on the encoder, and ST-GCN's float64 step
  # compiles about 5x slower on a CPU (its single-device step is checked against PyTorch in
  # tests/test_hiclr_parity.py)
  config.model.name, config.model.init = "gru", "default"
  config.model.hidden_size, config.model.num_layers = 8, 1
  config.model.embed_dim = 8
  config.batch_size = BATCH
  config.moco.queue_size = 64
  config.hiclr.mining_epoch = 1
  return config


def tiny_crossclr_config():
  from configs import pretrain_crossclr  # pylint: disable=import-outside-toplevel

  config = pretrain_crossclr.get_config("synthetic")
  config.model.name, config.model.init = "gru", "default"  # as tiny_hiclr_config
  config.model.hidden_size, config.model.num_layers = 8, 1
  config.model.embed_dim = 8
  config.batch_size = BATCH
  config.moco.queue_size = 64
  config.crossclr.cross_epoch = 1
  return config


def batches(num: int = STEPS, frames: int = 300) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(0)
  return [{"skeleton": rng.standard_normal((BATCH, 3, frames, 25, 2)).astype(np.float32),
           "num_frames": rng.integers(20, frames + 1, BATCH).astype(np.int32),
           "label": rng.integers(0, 10, BATCH).astype(np.int32)} for _ in range(num)]


def _key(path) -> str:
  import jax  # pylint: disable=import-outside-toplevel

  return jax.tree_util.keystr(path, simple=True, separator="/")


def sharded_step(out_path: str) -> None:
  import jax  # pylint: disable=import-outside-toplevel

  from cmd_jax import augment, data, sharding  # pylint: disable=import-outside-toplevel
  from cmd_jax.methods.cmd import views as cmd_views  # pylint: disable=import-outside-toplevel
  from cmd_jax.trainers import pretrain as cmd_pretrain  # pylint: disable=import-outside-toplevel

  if jax.device_count() != 8:
    raise SystemExit(f"expected 8 fake CPU devices, got {jax.device_count()} (XLA_FLAGS not set?)")
  config = tiny_config()
  layout = data.layout_of(config.data)
  steps_per_epoch = 10
  host_batches = batches()
  out: dict[str, np.ndarray] = {}

  for num_devices in (1, 8):
    tag = f"mesh{num_devices}"
    mesh = sharding.make_mesh(num_devices)
    state = sharding.put_replicated(cmd_pretrain.create_train_state(config, layout, steps_per_epoch), mesh)
    step_fn = cmd_pretrain.jit_train_step(config, layout, steps_per_epoch, mesh)
    history = []
    for i, host_batch in enumerate(host_batches):
      batch = sharding.put_batch(host_batch, mesh)
      if i == 0:
        shards = batch["skeleton"].addressable_shards
        out[f"{tag}/batch_shards"] = np.asarray(len(shards))
        out[f"{tag}/batch_shard_rows"] = np.asarray([s.data.shape[0] for s in shards])
        out[f"{tag}/batch_shard_devices"] = np.asarray(len({s.device for s in shards}))
      state, metrics = step_fn(state, batch)
      history.append(jax.device_get(metrics))
      if i == 0:
        out[f"{tag}/bn_after_1/q_mean"] = np.asarray(state.batch_stats["joint"]["input_norm"]["mean"])
        out[f"{tag}/bn_after_1/q_var"] = np.asarray(state.batch_stats["joint"]["input_norm"]["var"])
        out[f"{tag}/bn_after_1/k_mean"] = np.asarray(state.key_batch_stats["joint"]["input_norm"]["mean"])
        out[f"{tag}/bn_after_1/k_var"] = np.asarray(state.key_batch_stats["joint"]["input_norm"]["var"])
    for name in history[0]:
      out[f"{tag}/metrics/{name}"] = np.asarray([h[name] for h in history])
    leaves, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(state))
    for path, leaf in leaves:
      out[f"{tag}/state/{_key(path)}"] = np.asarray(leaf)

  # The first step's views, with the step's key (fold_in(rng, 0)), on one device outside any mesh.
  fresh = cmd_pretrain.create_train_state(config, layout, steps_per_epoch)
  aug = config.augment
  view_q, view_k = cmd_views.pretrain_views(
      jax.random.fold_in(fresh.rng, 0), host_batches[0]["skeleton"], host_batches[0]["num_frames"],
      ratio_range=(aug.crop_ratio_min, aug.crop_ratio_max), min_len=int(aug.min_length),
      out_len=int(aug.frames), num_corrupted=int(aug.num_corrupted_joints),
      shear_amplitude=float(aug.shear_amplitude), corruption_amplitude=float(aug.corruption_amplitude))
  out["input_q"], out["input_k"] = np.asarray(view_q), np.asarray(view_k)
  np.savez(out_path, **out)


def _float64_sharded_steps(config, out_path: str) -> None:
  """A config's steps on 1 and 8 devices in float64 (module docstring)."""
  import jax  # pylint: disable=import-outside-toplevel

  from cmd_jax import data, sharding  # pylint: disable=import-outside-toplevel
  from cmd_jax.trainers import pretrain  # pylint: disable=import-outside-toplevel

  if jax.device_count() != 8:
    raise SystemExit(f"expected 8 fake CPU devices, got {jax.device_count()} (XLA_FLAGS not set?)")
  jax.config.update("jax_enable_x64", True)
  to64 = lambda tree: jax.tree.map(  # pylint: disable=unnecessary-lambda-assignment
      lambda a: np.asarray(a, np.float64) if np.asarray(a).dtype.kind == "f" else np.asarray(a), tree)
  layout = data.layout_of(config.data)
  host_batches = [to64(b) for b in batches(frames=50)]
  out: dict[str, np.ndarray] = {}
  for num_devices in (1, 8):
    tag = f"mesh{num_devices}"
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


def hiclr_sharded_step(out_path: str) -> None:
  _float64_sharded_steps(tiny_hiclr_config(), out_path)


def crossclr_sharded_step(out_path: str) -> None:
  _float64_sharded_steps(tiny_crossclr_config(), out_path)


if __name__ == "__main__":
  modes = {"sharded_step": sharded_step, "hiclr_sharded_step": hiclr_sharded_step,
           "crossclr_sharded_step": crossclr_sharded_step}
  if len(sys.argv) != 3 or sys.argv[1] not in modes:
    raise SystemExit(f"usage: python -m tests.distributed_worker {{{'|'.join(modes)}}} OUT.npz")
  modes[sys.argv[1]](sys.argv[2])
