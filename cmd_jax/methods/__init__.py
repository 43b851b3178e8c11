"""Pretraining methods by name: ``config.method`` picks one, and it runs with any encoder.

===============  ================================  ============================================
name             package                           what
===============  ================================  ============================================
``cmd``          ``cmd_jax.methods.cmd``           CMD: per-modality MoCo + cross-modal mutual distillation
``hiclr``        ``cmd_jax.methods.hiclr``         HiCLR: growing augmentations, hierarchical consistency
``skeletonclr``  ``cmd_jax.methods.skeletonclr``   SkeletonCLR: MoCo v2 on one stream, crop + shear views
``crossclr``     ``cmd_jax.methods.crossclr``      CrosSCLR: three streams in one run, cross-view mining
``aimclr``       ``cmd_jax.methods.aimclr``        AimCLR: extreme views, EADM, D3M, nearest-neighbour mining
===============  ================================  ============================================

A method owns what makes it that method: its views, its losses, what its train state adds
(key encoders, queues, learnable mask values) and its step pieces. The generic loop
(``cmd_jax.trainers.pretrain``) owns everything else: the optimizer, the sharded jitted
step, checkpoints and resuming, metrics, the kNN monitor. A method package provides:

- ``State``: its train state, a ``flax.struct.dataclass`` with at least ``step``,
  ``params`` (everything the optimizer trains), ``opt_state`` and ``rng`` (the run's base
  key; the step's key is ``fold_in(rng, step)``);
- ``streams(config)``: the streams (joint/motion/bone) it pretrains encoders for;
- ``validate(config, *, num_train, num_devices, process_count)``: one-line ``ValueError``\\ s
  for impossible setups, before anything is compiled (``num_train`` may be None);
- ``create_state(config, layout, tx)``: a fresh state (host arrays), deterministic in
  ``config.seed``;
- ``loss(params, state, batch, key, *, config, layout, steps_per_epoch)``:
  ``(loss, (metrics, updates))``:
  the loss to differentiate w.r.t. ``params``, scalar metrics, and the new values of the
  state's other fields (``state.replace(**updates)``: key encoders, BatchNorm statistics,
  queues); everything in ``updates`` must be computed under ``stop_gradient``;
- ``query_encoders(state, config)``: ``{stream: {"params", "batch_stats"}}``, the encoders
  the downstream protocols start from (heads included; the loader drops them);
- ``eval_view(config)``: ``(frames, crop_ratio)``, how the kNN monitor and the protocols'
  test view feed a stored clip: a centre crop of ``crop_ratio`` resized to ``frames``, or
  ``crop_ratio=None`` for the stored clip as it is.

Adding a method = a package here with those names + an entry in ``METHODS`` + a config file.

``create_train_state(config, layout, steps_per_epoch)`` is the method's fresh state with its
optimizer (``cmd_jax.optim``): what the loop starts from, and the structure a checkpoint is
restored into (``cmd_jax.pretrained``, ``cmd_jax.interop``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from cmd_jax import optim

METHODS = {
    "cmd": "cmd_jax.methods.cmd",
    "hiclr": "cmd_jax.methods.hiclr",
    "skeletonclr": "cmd_jax.methods.skeletonclr",
    "crossclr": "cmd_jax.methods.crossclr",
    "aimclr": "cmd_jax.methods.aimclr",
}
# Trainer names of pretraining runs: "pretrain" (any method, config.method), and
# "cmd_pretrain", what CMD runs were called before there was a choice (their config.json).
PRETRAIN_TRAINERS = ("pretrain", "cmd_pretrain")


def method_name(config) -> str:
  """``config.method`` (``cmd`` for configs written before there was a choice)."""
  return str(config.get("method", "cmd"))


def get_method(name: str) -> ModuleType:
  if name not in METHODS:
    raise ValueError(f"config.method={name!r}; expected one of {', '.join(METHODS)}")
  return importlib.import_module(METHODS[name])


def method_of(config) -> ModuleType:
  return get_method(method_name(config))


def create_train_state(config, layout, steps_per_epoch: int):
  """A fresh state of ``config.method`` (host arrays) with its optimizer's state for
  ``steps_per_epoch`` (``cmd_jax.optim``), deterministic in ``config.seed``."""
  return method_of(config).create_state(config, layout, optim.make_optimizer(config, steps_per_epoch))
