"""HiCLR's PyTorch checkpoints <-> this project's HiCLR pretraining workdirs.

This module owns the conversion between a ``state_dict`` of the HiCLR reference (as its
``torchlight`` ``save_model`` writes it: a bare ``state_dict``, ``module.`` prefixes
stripped) and a workdir that ``--config.init_from``, ``cmd_jax.pretrained.load_pretrained``,
``cmd_jax.api.load_encoder`` and continued pretraining (``launch.py`` with the workdir's
config) accept. ``python -m cmd_jax.torch_import`` calls it when the checkpoint is a HiCLR
one (detected from its keys, or ``--method hiclr``).

Key mapping (every encoder stores its parameters in PyTorch's layout under PyTorch's names,
``cmd_jax.models.torch_key``):

============================================  ==============================================
reference key                                 ``HiCLRState`` field
============================================  ==============================================
``encoder_q.<encoder key>``                   ``params["encoder"]`` / ``batch_stats``
``encoder_k.<encoder key>``                   ``key_params`` / ``key_batch_stats``
``mask_param`` ``[1]``                        ``params["mask_param"]``
``queue`` ``(D, K)``                          ``queues[stream]`` ``[K, D]`` (transposed)
``queue_ptr`` ``[1]``                         ``queue_ptr``
``encoder_*.A``, ``*.atts``, ``*.pes.pe``     constants of the architecture (checked, rebuilt on export)
``*.num_batches_tracked``                     not in the state: kept in the checkpoint meta
============================================  ==============================================

The constants are rebuilt on export from the layout and the configuration: ST-GCN's graph
and DSTA-Net's zero attention buffers bit for bit, DSTA-Net's sinusoidal positional
encodings to float32 rounding (computed here in float64 and rounded, by PyTorch in
float32); every state tensor round-trips bit for bit.

Two kinds of checkpoint: ``pretrain`` (``encoder_k``, ``queue`` present: the
``epoch<N>_model.pt`` files of pretraining) and ``linear`` (``encoder_q`` only, its ``fc``
the classifier ``Linear(256, num_class)``: the linear-evaluation checkpoints). A linear one
is imported with ``model.mlp = False``, ``model.embed_dim = num_class`` (the classifier
kept), a key encoder that is a copy of the query encoder, a fresh queue and
``mask_param = 0`` (said in the meta).

The config: ``configs/pretrain_hiclr.py:ntu60_xsub`` (or ``..._dsta``, from the keys) with
what the shapes tell (ST-GCN widths, the head, the queue size, the layout from the graph
size) unless one is given; a given config is checked, not adjusted. The checkpoint holds
no epoch: the workdir's step is 0 unless ``epoch`` is given (``--epoch``, e.g. 300 for
``epoch300_model.pt``), and continued pretraining starts after that epoch with a fresh
optimizer state. Bad input raises ``TorchImportError`` listing the missing and unexpected
keys and the shape mismatches; nothing is written.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cmd_jax import data, models, optim

DEFAULT_CONFIG = "configs/pretrain_hiclr.py:ntu60_xsub"
DEFAULT_CONFIG_DSTA = "configs/pretrain_hiclr.py:ntu60_xsub_dsta"
QUERY, KEY = "encoder_q", "encoder_k"
ENCODER_MARKERS = {"stgcn": ".st_gcn_networks.", "dsta": ".graph_layers.", "gru": ".encoder.gru."}
_LAYOUT_DATASETS = {25: ("ntu60", "xsub"), 20: ("msr_action3d", "xsub")}


_CMD_PREFIXES = ("encoder_q_motion.", "encoder_q_bone.", "encoder_k_motion.", "encoder_k_bone.", "queue_motion",
                 "queue_bone")


def is_hiclr(state_dict: Mapping[str, Any]) -> bool:
  """Whether a ``state_dict`` looks like HiCLR's rather than CMD's: HiCLR's mask value, or no
  per-modality CMD encoder/queue and an ST-GCN or DSTA-Net ``encoder_q`` (a HiCLR
  linear-evaluation checkpoint). A HiCLR checkpoint of another encoder needs ``--method hiclr``."""
  if "mask_param" in state_dict:
    return True
  if any(k.startswith(_CMD_PREFIXES) for k in state_dict):
    return False
  return any(k.startswith(QUERY + ENCODER_MARKERS["stgcn"]) or k.startswith(QUERY + ENCODER_MARKERS["dsta"])
             for k in state_dict)


def checkpoint_kind(state_dict: Mapping[str, Any]) -> str:
  """``"pretrain"`` (key encoder or queue present) or ``"linear"`` (query encoder only)."""
  if any(k.startswith(KEY + ".") or k in ("queue", "queue_ptr") for k in state_dict):
    return "pretrain"
  return "linear"


def encoder_name(state_dict: Mapping[str, Any]) -> str | None:
  for name, marker in ENCODER_MARKERS.items():
    if any(k.startswith(QUERY + marker) for k in state_dict):
      return name
  return None


def _shape(state_dict, key):
  value = state_dict.get(key)
  return tuple(value.shape) if value is not None and hasattr(value, "shape") else None


def resolve_config(state_dict: Mapping[str, Any], config=None) -> ml_collections.ConfigDict:
  """The HiCLR pretraining config the checkpoint is imported under (module docstring)."""
  from cmd_jax.torch_import import TorchImportError, load_config  # pylint: disable=import-outside-toplevel

  name = encoder_name(state_dict)
  infer = config is None
  if infer:
    if name is None:
      raise TorchImportError("the state_dict has no encoder_q of a known architecture (no encoder_q.st_gcn_networks.*, "
                             "encoder_q.graph_layers.* or encoder_q.encoder.gru.* keys); expected a HiCLR checkpoint")
    config = load_config(DEFAULT_CONFIG_DSTA if name == "dsta" else DEFAULT_CONFIG)
    if name == "gru":
      config.model.name = "gru"
  else:
    config = load_config(config)
  if str(config.get("method", "cmd")) != "hiclr":
    raise TorchImportError(f"the config is a {config.get('method', 'cmd')!r} config; expected a HiCLR pretraining "
                           f"config (method hiclr), e.g. {DEFAULT_CONFIG}")
  kind = checkpoint_kind(state_dict)
  if infer:
    _infer_sizes(state_dict, config, name)
  if kind == "linear":
    out = _shape(state_dict, f"{QUERY}.fc.weight")
    config.model.mlp = False
    if out is not None and len(out) == 2:
      config.model.embed_dim = int(out[0])
  return config


def _infer_sizes(state_dict, config, name) -> None:
  """Sizes read off the shapes (only what the shapes tell; the rest is the release's)."""
  if name == "stgcn":
    w = _shape(state_dict, f"{QUERY}.st_gcn_networks.0.gcn.conv.weight")
    a = _shape(state_dict, f"{QUERY}.A")
    last = _shape(state_dict, f"{QUERY}.st_gcn_networks.9.tcn.2.weight")
    if w is not None and a is not None and len(w) == 4 and len(a) == 3:
      config.model.stgcn.hidden_channels = int(w[0]) // int(a[0])
    if last is not None and len(last) == 4:
      config.model.stgcn.hidden_dim = int(last[0])
      config.model.stgcn.temporal_kernel = int(last[2])
    config.model.stgcn.edge_importance = f"{QUERY}.edge_importance1" in state_dict
    joints = a[-1] if a is not None else None
  elif name == "dsta":
    att = _shape(state_dict, f"{QUERY}.graph_layers.0.attention0s")
    joints = att[-1] if att is not None and len(att) == 4 else None
  else:
    ih = _shape(state_dict, f"{QUERY}.encoder.gru.weight_ih_l0")
    hh = _shape(state_dict, f"{QUERY}.encoder.gru.weight_hh_l0")
    if hh is not None:
      config.model.hidden_size = int(hh[1])
    layers = 0
    while f"{QUERY}.encoder.gru.weight_hh_l{layers}" in state_dict:
      layers += 1
    config.model.num_layers = max(layers, 1)
    joints = None if ih is None else {150: 25, 60: 20}.get(int(ih[1]))
  if joints is not None and int(joints) in _LAYOUT_DATASETS and \
      data.layout_of(config.data).num_joints != int(joints):
    config.data.dataset, config.data.benchmark = _LAYOUT_DATASETS[int(joints)]
  if f"{QUERY}.fc.0.weight" in state_dict or f"{QUERY}.fc.2.weight" in state_dict:
    config.model.mlp = True
    out = _shape(state_dict, f"{QUERY}.fc.2.weight")
  else:
    config.model.mlp = False
    out = _shape(state_dict, f"{QUERY}.fc.weight")
  if out is not None and len(out) == 2:
    config.model.embed_dim = int(out[0])
  queue = _shape(state_dict, "queue")
  if queue is not None and len(queue) == 2:
    config.moco.queue_size = int(queue[1])


# ----------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------

def _flat(tree, prefix=()) -> dict[tuple[str, ...], Any]:
  out = {}
  for name, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flat(value, prefix + (name,)))
    else:
      out[prefix + (name,)] = value
  return out


def _unflat(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


def _bn_modules(stats) -> list[tuple[str, ...]]:
  """The module paths of every BatchNorm (those holding running statistics)."""
  return sorted({path[:-1] for path in _flat(stats)})


def expected_keys(config, kind: str, like_state) -> dict[str, tuple[tuple[int, ...], str]]:
  """Every reference key of the architecture: ``{key: (shape, dtype kind)}``."""
  layout = data.layout_of(config.data)
  out: dict[str, tuple[tuple[int, ...], str]] = {}
  encoders = [(QUERY, like_state.params["encoder"], like_state.batch_stats)]
  if kind == "pretrain":
    encoders.append((KEY, like_state.key_params, like_state.key_batch_stats))
  for prefix, params, stats in encoders:
    for tree in (params, stats):
      for path, leaf in _flat(tree).items():
        out[f"{prefix}.{models.torch_key(config.model, path)}"] = (tuple(leaf.shape), "f")
    for module in _bn_modules(stats):
      bn = models.torch_key(config.model, module + ("x",))[:-len(".x")]
      out[f"{prefix}.{bn}.num_batches_tracked"] = ((), "i")
    for key, value in models.torch_buffers(config.model, layout).items():
      out[f"{prefix}.{key}"] = (tuple(np.shape(value)), "f")
  if kind == "pretrain":
    (stream,) = like_state.queues
    k, d = like_state.queues[stream].shape
    out["queue"] = ((d, k), "f")
    out["queue_ptr"] = ((1,), "i")
    out["mask_param"] = ((1,), "f")
  return out


def check_state_dict(state_dict: Mapping[str, Any], config, kind: str, like_state) -> None:
  """Raises ``TorchImportError`` listing missing/unexpected keys and shape mismatches, and
  constants (the graph, the positional encodings) that differ from this architecture's."""
  from cmd_jax.torch_import import (  # pylint: disable=import-outside-toplevel
      TorchImportError, _group_missing, _summarise, _to_numpy, compare_keys)

  expected = expected_keys(config, kind, like_state)
  found = {k: _to_numpy(v) for k, v in state_dict.items()}
  missing, unexpected, mismatched = compare_keys(expected, found)
  if not mismatched:
    # Constants agree to float32 evaluation error: PyTorch computes DSTA-Net's positional
    # encodings in float32 (arguments up to ~25, two roundings: up to ~3e-6 off); another
    # graph or joint count differs by far more.
    for suffix, value in models.torch_buffers(config.model, data.layout_of(config.data)).items():
      for prefix in (QUERY, KEY):
        key = f"{prefix}.{suffix}"
        if key in found and found[key].shape == np.shape(value) and \
            not np.allclose(found[key], value, rtol=0, atol=1e-5):
          mismatched.append(f"{key}: the checkpoint's constant differs from this architecture's (max |diff| "
                            f"{float(np.max(np.abs(found[key] - value))):.3g}); another graph or layout?")
  if missing or unexpected or mismatched:
    lines = [f"the state_dict is not a HiCLR {kind} checkpoint of the expected architecture ({_describe(config)}):"]
    if missing:
      lines.append(f"missing keys ({len(missing)}): {_summarise(_group_missing(missing, expected))}")
    if unexpected:
      lines.append(f"unexpected keys ({len(unexpected)}): {_summarise(unexpected)}")
    if mismatched:
      lines.append(f"shape mismatches ({len(mismatched)}): {_summarise(mismatched, 6)}")
    raise TorchImportError("\n  ".join(lines))


def _describe(config) -> str:
  name = models.model_name(config.model)
  layout = data.layout_of(config.data)
  if name == "stgcn":
    what = f"ST-GCN, {config.model.stgcn.hidden_channels} base channels, feature {config.model.stgcn.hidden_dim}"
  elif name == "dsta":
    what = f"DSTA-Net, {len(config.model.dsta.blocks)} blocks, feature {models.feature_dim(config.model)}"
  else:
    what = f"GRU, hidden size {config.model.hidden_size}, {config.model.num_layers} layer(s)"
  return (f"{what}, layout {layout.name} ({layout.num_joints} joints x {layout.num_persons} persons), "
          f"{'MLP head' if config.model.mlp else 'linear head'} to {config.model.embed_dim}, "
          f"queue {config.moco.queue_size}")


# ----------------------------------------------------------------------------------------
# state_dict <-> HiCLRState
# ----------------------------------------------------------------------------------------

def state_dict_to_state(state_dict: Mapping[str, Any], config, *, epoch: int | None = None):
  """A HiCLR ``state_dict`` -> ``(HiCLRState, meta)`` under ``config`` (already resolved)."""
  from cmd_jax.torch_import import TorchImportError, _to_numpy, strip_module_prefix  # pylint: disable=import-outside-toplevel
  from cmd_jax.trainers import pretrain  # pylint: disable=import-outside-toplevel

  state_dict = strip_module_prefix(state_dict)
  kind = checkpoint_kind(state_dict)
  base = pretrain.create_train_state(config, data.layout_of(config.data), steps_per_epoch=1)
  check_state_dict(state_dict, config, kind, base)
  sd = {k: _to_numpy(v) for k, v in state_dict.items()}

  def encoder(prefix, like):
    return _unflat({path: jnp.asarray(sd[f"{prefix}.{models.torch_key(config.model, path)}"].astype(np.float32))
                    for path in _flat(like)})

  def counts(prefix, stats):
    out = {}
    for module in _bn_modules(stats):
      bn = models.torch_key(config.model, module + ("x",))[:-len(".x")]
      out[f"{prefix}.{bn}"] = int(sd[f"{prefix}.{bn}.num_batches_tracked"])
    return out

  query = encoder(QUERY, base.params["encoder"])
  stats = encoder(QUERY, base.batch_stats)
  nbt = counts(QUERY, base.batch_stats)
  (stream,) = base.queues
  if kind == "pretrain":
    key_params, key_stats = encoder(KEY, base.key_params), encoder(KEY, base.key_batch_stats)
    nbt.update(counts(KEY, base.key_batch_stats))
    queues = {stream: jnp.asarray(np.ascontiguousarray(sd["queue"].astype(np.float32).T))}
    ptr = int(sd["queue_ptr"].reshape(-1)[0])
    if not 0 <= ptr < int(config.moco.queue_size):
      raise TorchImportError(f"queue_ptr = {ptr}; expected a position in [0, {config.moco.queue_size})")
    mask_param = jnp.asarray(sd["mask_param"].astype(np.float32).reshape(1))
  else:
    key_params, key_stats = jax.tree.map(jnp.array, query), jax.tree.map(jnp.array, stats)
    queues, ptr, mask_param = base.queues, 0, base.params["mask_param"]
  params = {"encoder": query, "mask_param": mask_param}
  tx = optim.make_optimizer(config, 1)
  state = base.replace(step=jnp.asarray(int(epoch or 0), jnp.int32), params=params, key_params=key_params,
                       batch_stats=stats, key_batch_stats=key_stats, queues=queues,
                       queue_ptr=jnp.asarray(ptr, jnp.int32), opt_state=tx.init(params))
  meta = {"kind": kind, "format": "hiclr", "torch_epoch": epoch, "num_batches_tracked": nbt,
          "optimizer": "fresh: the torch optimizer state is not imported"}
  if kind == "linear":
    meta["key_encoders"] = "a copy of the query encoder (the checkpoint has none)"
    meta["queues"] = "fresh random (the checkpoint has none); mask_param 0"
    meta["head"] = f"the linear-evaluation classifier fc [{config.model.embed_dim}, feature] (config.model.mlp=False)"
  else:
    meta["key_encoders"] = meta["queues"] = "imported"
  return state, meta


def state_to_state_dict(state, config, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """A ``HiCLRState`` -> the reference ``state_dict`` (torch tensors: float32; ``queue``
  ``(D, K)``; ``queue_ptr`` int64 ``[1]``; ``num_batches_tracked`` int64 from ``meta`` or
  the step count; the architecture's constant buffers). ``meta["kind"] == "linear"``
  exports the query encoder only, as the reference's linear-evaluation model holds it."""
  import torch  # pylint: disable=import-outside-toplevel

  meta = dict(meta or {})
  kind = meta.get("kind", "pretrain")
  nbt = meta.get("num_batches_tracked") or {}
  step = int(np.asarray(jax.device_get(state.step)))
  layout = data.layout_of(config.data)
  buffers = models.torch_buffers(config.model, layout)

  def tensor(x, dtype=np.float32):
    return torch.from_numpy(np.array(jax.device_get(x), dtype=dtype, copy=True))

  out: dict[str, Any] = {}

  def encoder(prefix, params, stats):
    for tree in (params, stats):
      for path, leaf in _flat(tree).items():
        out[f"{prefix}.{models.torch_key(config.model, path)}"] = tensor(leaf)
    for module in _bn_modules(stats):
      bn = f"{prefix}.{models.torch_key(config.model, module + ('x',))[:-len('.x')]}"
      out[f"{bn}.num_batches_tracked"] = torch.tensor(int(nbt.get(bn, step)), dtype=torch.int64)
    for key, value in buffers.items():
      out[f"{prefix}.{key}"] = tensor(value)

  if kind == "pretrain":
    out["mask_param"] = tensor(state.params["mask_param"])
  encoder(QUERY, state.params["encoder"], state.batch_stats)
  if kind == "pretrain":
    encoder(KEY, state.key_params, state.key_batch_stats)
    (stream,) = state.queues
    out["queue"] = torch.from_numpy(np.ascontiguousarray(np.asarray(jax.device_get(state.queues[stream]),
                                                                    np.float32).T))
    out["queue_ptr"] = torch.tensor([int(np.asarray(jax.device_get(state.queue_ptr)))], dtype=torch.int64)
  return out


_EPOCH_IN_NAME = re.compile(r"epoch(\d+)_model\.pt$")


def epoch_from_name(path: str) -> int | None:
  """The epoch of a torchlight file name ``epoch<N>_model.pt``, else None."""
  match = _EPOCH_IN_NAME.search(str(path))
  return int(match.group(1)) if match else None
