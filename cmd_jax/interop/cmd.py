"""CMD's PyTorch checkpoints (``{'epoch', 'state_dict', 'optimizer'}``) <-> CMD pretraining states.

The key names and what is restored downstream: docs/references.md#cmd-pretraining-settings and
#cmd-checkpoint-loading; the commands and what is identical: docs/pytorch_interop.md.

This module is the ``cmd`` format of ``cmd_jax.interop`` (the interface:
``cmd_jax/interop/formats.py``): a checkpoint as the reference's ``pretrain_moco_cmd.py``
saves it (or a bare ``state_dict``) <-> a CMD ``TrainState`` and its config.

Key mapping (per-encoder suffixes as in ``cmd_jax.models.gru``; every weight is stored in
PyTorch layout, so the encoders convert by renaming only):

=================================  ===========================================
reference key prefix / key         ``TrainState`` field
=================================  ===========================================
``encoder_q[_motion|_bone].*``     ``params[m]`` / ``batch_stats[m]``
``encoder_k[_motion|_bone].*``     ``key_params[m]`` / ``key_batch_stats[m]``
``queue[_motion|_bone]`` (D, K)    ``queues[m]`` [K, D] (transposed)
``queue_ptr[_motion|_bone]`` [1]   ``queue_ptr`` (one shared int32 scalar)
``*.input_norm.num_batches_tracked``  not in the state: kept in the checkpoint meta
=================================  ===========================================

Decisions:

- Model sizes: with no ``config`` the default ``configs/pretrain_cmd.py:ntu60_xsub`` is
  used with hidden size, layer count, MLP head, embedding size and queue size read off the
  checkpoint's shapes; with an explicit ``config`` (or ``hidden_size``/``num_layers``)
  nothing is inferred and every shape must match. The input width must match the config's
  dataset layout (150 for NTU).
- The checkpoint holds all three streams (``config.modalities``): no ``--stream``.
- Optimizer state: fresh (``tx.init``); the torch SGD momentum buffers are not imported.
  Export writes ``'optimizer': None``.
- ``num_batches_tracked`` (unused with PyTorch's fixed BN momentum, not tracked in JAX) and
  the reference epoch are carried in the checkpoint meta, so an import followed by an
  export is bit-identical; a workdir trained in JAX exports ``num_batches_tracked = step``.
- The three reference queue pointers must be equal (they always are in the reference).
- Downstream-only checkpoints (only ``encoder_q*`` with ``fc = Linear(2H, num_class)``):
  the config gets ``model.mlp = False`` and ``model.embed_dim = num_class`` so the
  classifier is kept (and exported back); the key encoders are copies of the query ones
  and the queues are fresh random ones (said in the meta: ``kind = "downstream"``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cmd_jax import data, modalities as modalities_lib, optim
from cmd_jax.interop.common import (TorchImportError, compare_keys, key_report, load_config, shape_of,
                                    strip_module_prefix, to_numpy)
from cmd_jax.methods import create_train_state

NAME = "cmd"
DEFAULT_CONFIG = "configs/pretrain_cmd.py:ntu60_xsub"
ONE_STREAM = False  # the checkpoint holds every stream of config.modalities, named by its keys
OPTIONS = ("hidden_size", "num_layers")  # the GRU sizes resolve_config may be given

QUERY_PREFIX = {"joint": "encoder_q", "motion": "encoder_q_motion", "bone": "encoder_q_bone"}
KEY_PREFIX = {"joint": "encoder_k", "motion": "encoder_k_motion", "bone": "encoder_k_bone"}
QUEUE_KEY = {"joint": "queue", "motion": "queue_motion", "bone": "queue_bone"}
PTR_KEY = {"joint": "queue_ptr", "motion": "queue_ptr_motion", "bone": "queue_ptr_bone"}
_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


_CMD_KEY = re.compile(r"(encoder_[qk](_motion|_bone)?\.(input_norm|encoder\.gru|fc)\..+|queue(_ptr)?(_motion|_bone)?)")


def detect(state_dict: Mapping[str, Any]) -> bool:
  """Whether the keys are CMD's: a GRU query encoder and no key CMD does not have."""
  return any(".encoder.gru." in k and k.startswith("encoder_q") for k in state_dict) and \
      all(_CMD_KEY.fullmatch(k) for k in state_dict)


def saved_object(state_dict: Mapping[str, Any], epoch: int) -> dict[str, Any]:
  """What the reference's ``torch.save`` writes: ``{'epoch', 'state_dict', 'optimizer'}``."""
  return {"epoch": int(epoch), "state_dict": state_dict, "optimizer": None}


# ----------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------

def torch_suffix(module: str, name: str) -> str:
  """The reference key suffix of one Flax leaf ``<module>/<name>`` of an ``Encoder``."""
  if module == "input_norm":
    return f"input_norm.{_BN[name]}"
  if module == "gru":
    return f"encoder.gru.{name}"
  if module == "fc":
    return f"fc.{name}"
  if module.startswith("fc_"):
    return f"fc.{module[3:]}.{name}"
  raise KeyError(f"no reference name for encoder leaf {module}/{name}")



# ----------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------

def _names(config) -> tuple[str, ...]:
  return modalities_lib.parse_names(config.modalities, "config.modalities")


def checkpoint_kind(state_dict: Mapping[str, Any]) -> str:
  """``"pretrain"`` (key encoders or queues present) or ``"downstream"`` (query encoders only)."""
  if any(k.startswith("encoder_k") or k.startswith("queue") for k in state_dict):
    return "pretrain"
  return "downstream"


def resolve_config(state_dict: Mapping[str, Any], config=None, *, hidden_size: int | None = None,
                   num_layers: int | None = None) -> ml_collections.ConfigDict:
  """The pretraining config the checkpoint is imported under (see the module docstring).

  ``config=None``: ``DEFAULT_CONFIG`` with the model sizes read off ``state_dict``;
  otherwise ``config`` as given. ``hidden_size``/``num_layers`` override either. A
  downstream-only checkpoint always gets ``model.mlp=False``, ``model.embed_dim=num_class``.
  """
  infer = config is None
  config = load_config(DEFAULT_CONFIG if config is None else config, DEFAULT_CONFIG)
  names = _names(config)
  prefix = next((QUERY_PREFIX[m] for m in names if f"{QUERY_PREFIX[m]}.encoder.gru.weight_hh_l0" in state_dict),
                QUERY_PREFIX[names[0]])
  kind = checkpoint_kind(state_dict)
  if infer:
    hh = shape_of(state_dict, f"{prefix}.encoder.gru.weight_hh_l0")
    if hh is not None and len(hh) == 2:
      config.model.hidden_size = int(hh[1])
    layers = 0
    while f"{prefix}.encoder.gru.weight_hh_l{layers}" in state_dict:
      layers += 1
    if layers:
      config.model.num_layers = layers
    if f"{prefix}.fc.0.weight" in state_dict or f"{prefix}.fc.2.weight" in state_dict:
      config.model.mlp = True
      out = shape_of(state_dict, f"{prefix}.fc.2.weight")
    else:
      config.model.mlp = False
      out = shape_of(state_dict, f"{prefix}.fc.weight")
    if out is not None and len(out) == 2:
      config.model.embed_dim = int(out[0])
    queue = shape_of(state_dict, QUEUE_KEY[names[0]])
    if queue is not None and len(queue) == 2:
      config.moco.queue_size = int(queue[1])
      config.cmd.topk = min(int(config.cmd.topk), int(queue[1]))
  if hidden_size is not None:
    config.model.hidden_size = int(hidden_size)
  if num_layers is not None:
    config.model.num_layers = int(num_layers)
  if kind == "downstream":
    out = shape_of(state_dict, f"{prefix}.fc.weight")
    config.model.mlp = False
    if out is not None and len(out) == 2:
      config.model.embed_dim = int(out[0])
    config.cmd.topk = min(int(config.cmd.topk), int(config.moco.queue_size))
  return config


# ----------------------------------------------------------------------------------------
# state_dict <-> TrainState
# ----------------------------------------------------------------------------------------

def _base_state(config):
  return create_train_state(config, data.layout_of(config.data), steps_per_epoch=1)


def _leaves(tree) -> list[tuple[str, str, Any]]:
  """``(module, name, leaf)`` of one encoder's params or batch_stats."""
  return [(module, name, leaf) for module, sub in tree.items() for name, leaf in sub.items()]


def expected_keys(config, kind: str = "pretrain", like_state=None) -> dict[str, tuple[tuple[int, ...], str]]:
  """Every reference key the config's architecture has: ``{key: (shape, dtype kind)}``."""
  if like_state is None:
    like_state = jax.eval_shape(lambda: create_train_state(config, data.layout_of(config.data), 1))
  out: dict[str, tuple[tuple[int, ...], str]] = {}
  encoders = [(QUERY_PREFIX, like_state.params, like_state.batch_stats)]
  if kind == "pretrain":
    encoders.append((KEY_PREFIX, like_state.key_params, like_state.key_batch_stats))
  for m in _names(config):
    for prefixes, params, stats in encoders:
      p = prefixes[m]
      for tree in (params[m], stats[m]):
        for module, name, leaf in _leaves(tree):
          out[f"{p}.{torch_suffix(module, name)}"] = (tuple(leaf.shape), "f")
      out[f"{p}.input_norm.num_batches_tracked"] = ((), "i")
  if kind == "pretrain":
    for m in _names(config):
      k, d = like_state.queues[m].shape
      out[QUEUE_KEY[m]] = ((d, k), "f")
      out[PTR_KEY[m]] = ((1,), "i")
  return out


def check_state_dict(state_dict: Mapping[str, Any], config, kind: str, like_state=None) -> None:
  """Raises ``TorchImportError`` listing missing/unexpected keys and shape mismatches."""
  expected = expected_keys(config, kind, like_state)
  found = {k: to_numpy(v) for k, v in state_dict.items()}
  missing, unexpected, mismatched = compare_keys(expected, found)
  if missing or unexpected or mismatched:
    layout = data.layout_of(config.data)
    header = (f"the state_dict is not a reference CMD {kind} checkpoint of the expected architecture "
              f"(hidden size {config.model.hidden_size}, {config.model.num_layers} layer(s), "
              f"{layout.num_joints * 3 * layout.num_persons} input features ({config.data.dataset}), "
              f"{'MLP head' if config.model.mlp else 'linear head'} to {config.model.embed_dim}"
              + (f", queue {config.moco.queue_size}" if kind == "pretrain" else "")
              + f", modalities {config.modalities}):")
    notes = ()
    hh = next((tuple(found[k].shape) for k in found if k.endswith(".encoder.gru.weight_hh_l0")), None)
    ih = next((tuple(found[k].shape) for k in found if k.endswith(".encoder.gru.weight_ih_l0")), None)
    if mismatched and hh is not None and ih is not None and len(hh) == 2 and len(ih) == 2:
      notes = (f"the checkpoint's first encoder has hidden size {hh[1]} and {ih[1]} input features",)
    raise TorchImportError(key_report(header, expected, missing, unexpected, mismatched, notes))


def state_dict_to_state(state_dict: Mapping[str, Any], config, *, epoch: int | None = None):
  """A reference ``state_dict`` -> ``(TrainState, meta)`` under ``config`` (already resolved).

  ``meta`` holds what the train state has no place for (``num_batches_tracked``, the
  reference epoch, what was imported); ``export`` reads it back. Raises ``TorchImportError``.
  """
  state_dict = strip_module_prefix(state_dict)
  kind = checkpoint_kind(state_dict)
  base = _base_state(config)
  check_state_dict(state_dict, config, kind, like_state=base)
  sd = {k: to_numpy(v) for k, v in state_dict.items()}
  names = _names(config)

  def encoder(prefix, params_like, stats_like):
    params = {mod: {name: jnp.asarray(sd[f"{prefix}.{torch_suffix(mod, name)}"].astype(np.float32))
                    for name in sub} for mod, sub in params_like.items()}
    stats = {mod: {name: jnp.asarray(sd[f"{prefix}.{torch_suffix(mod, name)}"].astype(np.float32))
                   for name in sub} for mod, sub in stats_like.items()}
    return params, stats

  params, stats, key_params, key_stats, queues = {}, {}, {}, {}, {}
  nbt = {}
  for m in names:
    params[m], stats[m] = encoder(QUERY_PREFIX[m], base.params[m], base.batch_stats[m])
    nbt[QUERY_PREFIX[m]] = int(sd[f"{QUERY_PREFIX[m]}.input_norm.num_batches_tracked"])
    if kind == "pretrain":
      key_params[m], key_stats[m] = encoder(KEY_PREFIX[m], base.key_params[m], base.key_batch_stats[m])
      nbt[KEY_PREFIX[m]] = int(sd[f"{KEY_PREFIX[m]}.input_norm.num_batches_tracked"])
      queues[m] = jnp.asarray(np.ascontiguousarray(sd[QUEUE_KEY[m]].astype(np.float32).T))
    else:
      key_params[m] = jax.tree.map(jnp.array, params[m])
      key_stats[m] = jax.tree.map(jnp.array, stats[m])
  if kind == "pretrain":
    ptrs = {PTR_KEY[m]: int(sd[PTR_KEY[m]].reshape(-1)[0]) for m in names}
    if len(set(ptrs.values())) != 1:
      raise TorchImportError(f"the queue pointers differ ({', '.join(f'{k}={v}' for k, v in ptrs.items())}); the "
                             "reference advances them together and this project keeps one shared pointer")
    ptr = jnp.asarray(next(iter(ptrs.values())), jnp.int32)
  else:
    queues, ptr = base.queues, base.queue_ptr
  tx = optim.make_optimizer(config, 1)
  step = int(epoch or 0)
  state = base.replace(step=jnp.asarray(step, jnp.int32), params=params, key_params=key_params, batch_stats=stats,
                       key_batch_stats=key_stats, queues=queues, queue_ptr=ptr, opt_state=tx.init(params))
  meta = {"kind": kind, "torch_epoch": epoch, "num_batches_tracked": nbt,
          "optimizer": "fresh: the torch optimizer state is not imported"}
  if kind == "downstream":
    meta["key_encoders"] = "copies of the query encoders (the checkpoint has none)"
    meta["queues"] = "fresh random (the checkpoint has none)"
    meta["head"] = f"the downstream classifier fc [{config.model.embed_dim}, 2H] (config.model.mlp=False)"
  else:
    meta["key_encoders"] = meta["queues"] = "imported"
  return state, meta


def state_to_state_dict(state, config, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """A ``TrainState`` -> the reference ``state_dict`` (torch tensors, float32; queues ``(D, K)``;
  ``queue_ptr*`` int64 ``[1]``; ``num_batches_tracked`` int64 from ``meta`` or the step count).

  ``meta["kind"] == "downstream"`` exports the query encoders only, as the reference's
  downstream model holds them.
  """
  import torch  # pylint: disable=import-outside-toplevel

  meta = dict(meta or {})
  kind = meta.get("kind", "pretrain")
  nbt = meta.get("num_batches_tracked") or {}
  step = int(np.asarray(jax.device_get(state.step)))
  names = _names(config)

  def tensor(x, dtype=np.float32):
    return torch.from_numpy(np.array(jax.device_get(x), dtype=dtype, copy=True))

  out: dict[str, Any] = {}

  def encoder(prefix, params, stats):
    for tree in (params, stats):
      for module, name, leaf in _leaves(tree):
        out[f"{prefix}.{torch_suffix(module, name)}"] = tensor(leaf)
    out[f"{prefix}.input_norm.num_batches_tracked"] = torch.tensor(int(nbt.get(prefix, step)), dtype=torch.int64)

  for m in names:
    encoder(QUERY_PREFIX[m], state.params[m], state.batch_stats[m])
  if kind == "pretrain":
    for m in names:
      encoder(KEY_PREFIX[m], state.key_params[m], state.key_batch_stats[m])
    ptr = int(np.asarray(jax.device_get(state.queue_ptr)))
    for m in names:
      out[QUEUE_KEY[m]] = torch.from_numpy(np.ascontiguousarray(np.asarray(jax.device_get(state.queues[m]),
                                                                           np.float32).T))
      out[PTR_KEY[m]] = torch.tensor([ptr], dtype=torch.int64)
  return out


