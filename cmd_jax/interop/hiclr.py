"""HiCLR's PyTorch checkpoints (torchlight ``state_dict``) <-> HiCLR pretraining states.

This module is the ``hiclr`` format of ``cmd_jax.interop`` (the interface:
``cmd_jax/interop/formats.py``): a ``state_dict`` as the HiCLR reference's ``torchlight``
``save_model`` writes it (bare, ``module.`` prefixes stripped) <-> a ``HiCLRState`` and its
config; the torchlight conventions it shares with SkeletonCLR, CrosSCLR and AimCLR are
``cmd_jax.interop.torchlight``'s. Commands and what is identical: docs/pytorch_interop.md.

Key mapping:

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

ST-GCN's edge importances are ``edge_importance1..10`` (HiCLR's own naming, written on
export); the ``edge_importance.0..9`` of the SkeletonCLR/AimCLR family is accepted on import,
as HiCLR's loader accepts it. The constants are rebuilt on export from the layout and the
configuration: ST-GCN's graph and DSTA-Net's zero attention buffers bit for bit, DSTA-Net's
sinusoidal positional encodings to float32 rounding (computed here in float64 and rounded,
by PyTorch in float32); every state tensor round-trips bit for bit.

Two kinds of checkpoint: ``pretrain`` (``encoder_k``, ``queue`` present: the
``epoch<N>_model.pt`` files of pretraining) and ``linear`` (``encoder_q`` only, its ``fc``
the classifier ``Linear(256, num_class)``: the linear-evaluation checkpoints). A linear one
is imported with ``model.mlp = False``, ``model.embed_dim = num_class`` (the classifier
kept), a key encoder that is a copy of the query encoder, a fresh queue and
``mask_param = 0`` (said in the meta).

The config: ``configs/pretrain_hiclr.py:ntu60_xsub`` (or ``..._dsta``, from the keys) with
what the shapes tell (ST-GCN widths, the head, the queue size, the layout from the graph
size) unless one is given; a given config is checked, not adjusted. Its ``stream`` is the
checkpoint's: a checkpoint holds one stream and does not say which, so the import is told
(``cmd_jax.interop.convert.checkpoint_stream``). The checkpoint holds
no epoch: the workdir's step is 0 unless ``epoch`` is given (``--epoch``, e.g. 300 for
``epoch300_model.pt``), and continued pretraining starts after that epoch with a fresh
optimizer state.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cmd_jax import data, optim
from cmd_jax.interop import torchlight
from cmd_jax.interop.common import (TorchImportError, compare_keys, key_report, load_config, shape_of,
                                    strip_module_prefix, to_numpy)
from cmd_jax.interop.torchlight import KEY, QUERY
from cmd_jax.methods import create_train_state

NAME = "hiclr"
DEFAULT_CONFIG = "configs/pretrain_hiclr.py:ntu60_xsub"
DEFAULT_CONFIG_DSTA = "configs/pretrain_hiclr.py:ntu60_xsub_dsta"
ONE_STREAM = True  # one stream per checkpoint, not named in it (config.stream)
OPTIONS = ()
EDGE_IMPORTANCE = torchlight.NUMBERED

_CMD_PREFIXES = ("encoder_q_motion.", "encoder_q_bone.", "encoder_k_motion.", "encoder_k_bone.", "queue_motion",
                 "queue_bone")


def detect(state_dict: Mapping[str, Any]) -> bool:
  """Whether a ``state_dict`` looks like HiCLR's: HiCLR's mask value, or no per-stream
  encoder/queue and an ST-GCN or DSTA-Net ``encoder_q`` (a HiCLR linear-evaluation
  checkpoint). A HiCLR checkpoint of another encoder needs ``--method hiclr``."""
  if "mask_param" in state_dict:
    return True
  if any(k.startswith(_CMD_PREFIXES) for k in state_dict):
    return False
  return torchlight.encoder_name(state_dict) in ("stgcn", "dsta")


def checkpoint_kind(state_dict: Mapping[str, Any]) -> str:
  """``"pretrain"`` (key encoder or queue present) or ``"linear"`` (query encoder only)."""
  if any(k.startswith(KEY + ".") or k in ("queue", "queue_ptr") for k in state_dict):
    return "pretrain"
  return "linear"


def saved_object(state_dict: Mapping[str, Any], epoch: int) -> dict[str, Any]:  # pylint: disable=unused-argument
  """What torchlight's ``save_model`` writes: the bare ``state_dict`` (no epoch)."""
  return state_dict


def resolve_config(state_dict: Mapping[str, Any], config=None, *, stream: str) -> ml_collections.ConfigDict:
  """The HiCLR pretraining config the checkpoint is imported under (module docstring), its
  ``config.stream`` the checkpoint's ``stream`` (whatever a given config says)."""
  state_dict = torchlight.with_numbered_edge_importance(state_dict)
  name = torchlight.encoder_name(state_dict)
  infer = config is None
  if infer:
    if name is None:
      raise TorchImportError("the state_dict has no encoder_q of a known architecture (no encoder_q.st_gcn_networks.*, "
                             "encoder_q.graph_layers.* or encoder_q.encoder.gru.* keys); expected a HiCLR checkpoint")
    default = DEFAULT_CONFIG_DSTA if name == "dsta" else DEFAULT_CONFIG
    config = load_config(default, default)
    if name == "gru":
      config.model.name = "gru"
  else:
    config = load_config(config, DEFAULT_CONFIG)
  if str(config.get("method", "cmd")) != "hiclr":
    raise TorchImportError(f"the config is a {config.get('method', 'cmd')!r} config; expected a HiCLR pretraining "
                           f"config (method hiclr), e.g. {DEFAULT_CONFIG}")
  if infer:
    torchlight.infer_sizes(state_dict, config, name)
  config.stream = stream
  if checkpoint_kind(state_dict) == "linear":
    out = shape_of(state_dict, f"{QUERY}.fc.weight")
    config.model.mlp = False
    if out is not None and len(out) == 2:
      config.model.embed_dim = int(out[0])
  return config


# ----------------------------------------------------------------------------------------
# state_dict <-> HiCLRState
# ----------------------------------------------------------------------------------------

def expected_keys(config, kind: str, like_state) -> dict[str, tuple[tuple[int, ...], str]]:
  """Every reference key of the architecture (edge importances numbered): ``{key: (shape, dtype kind)}``."""
  out = torchlight.encoder_expected_keys(config, QUERY, like_state.params["encoder"], like_state.batch_stats)
  if kind == "pretrain":
    out.update(torchlight.encoder_expected_keys(config, KEY, like_state.key_params, like_state.key_batch_stats))
    (stream,) = like_state.queues
    k, d = like_state.queues[stream].shape
    out["queue"] = ((d, k), "f")
    out["queue_ptr"] = ((1,), "i")
    out["mask_param"] = ((1,), "f")
  return out


def check_state_dict(state_dict: Mapping[str, Any], config, kind: str, like_state) -> None:
  """Raises ``TorchImportError`` listing missing/unexpected keys and shape mismatches, and
  constants (the graph, the positional encodings) that differ from this architecture's."""
  expected = expected_keys(config, kind, like_state)
  found = {k: to_numpy(v) for k, v in torchlight.with_numbered_edge_importance(state_dict).items()}
  missing, unexpected, mismatched = compare_keys(expected, found)
  if not mismatched:
    mismatched = torchlight.constant_mismatches(found, config, (QUERY, KEY))
  if missing or unexpected or mismatched:
    header = f"the state_dict is not a HiCLR {kind} checkpoint of the expected architecture ({torchlight.describe(config)}):"
    raise TorchImportError(key_report(header, expected, missing, unexpected, mismatched))


def state_dict_to_state(state_dict: Mapping[str, Any], config, *, epoch: int | None = None):
  """A HiCLR ``state_dict`` -> ``(HiCLRState, meta)`` under ``config`` (already resolved)."""
  state_dict = torchlight.with_numbered_edge_importance(strip_module_prefix(state_dict))
  kind = checkpoint_kind(state_dict)
  base = create_train_state(config, data.layout_of(config.data), steps_per_epoch=1)
  check_state_dict(state_dict, config, kind, base)
  sd = {k: to_numpy(v) for k, v in state_dict.items()}

  query = torchlight.read_encoder(sd, config, QUERY, base.params["encoder"])
  stats = torchlight.read_encoder(sd, config, QUERY, base.batch_stats)
  nbt = torchlight.read_batch_counts(sd, config, QUERY, base.batch_stats)
  (stream,) = base.queues
  if kind == "pretrain":
    key_params = torchlight.read_encoder(sd, config, KEY, base.key_params)
    key_stats = torchlight.read_encoder(sd, config, KEY, base.key_batch_stats)
    nbt.update(torchlight.read_batch_counts(sd, config, KEY, base.key_batch_stats))
    queues = {stream: torchlight.queue_from_torch(sd["queue"])}
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
  meta = {"kind": kind, "format": NAME, "torch_epoch": epoch, "num_batches_tracked": nbt,
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
  meta = dict(meta or {})
  kind = meta.get("kind", "pretrain")
  nbt = meta.get("num_batches_tracked") or {}
  step = int(np.asarray(jax.device_get(state.step)))
  out: dict[str, Any] = {}
  if kind == "pretrain":
    out["mask_param"] = torchlight.to_torch(state.params["mask_param"])
  torchlight.write_encoder(out, config, QUERY, state.params["encoder"], state.batch_stats, nbt, step,
                           EDGE_IMPORTANCE)
  if kind == "pretrain":
    torchlight.write_encoder(out, config, KEY, state.key_params, state.key_batch_stats, nbt, step, EDGE_IMPORTANCE)
    (stream,) = state.queues
    out["queue"] = torchlight.queue_to_torch(state.queues[stream])
    out["queue_ptr"] = torchlight.pointer_to_torch(state.queue_ptr)
  return out
