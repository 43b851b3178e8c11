"""CrosSCLR's PyTorch checkpoints (torchlight ``state_dict``) <-> CrosSCLR pretraining states.

This module is the ``crossclr`` format of ``cmd_jax.interop`` (the interface:
``cmd_jax/interop/formats.py``): a ``state_dict`` of the release's three-stream
``CrosSCLR`` (``net/crossclr_3views.py``) or two-stream one (``net/crossclr.py``: no bone
entries) as torchlight's ``save_model`` writes it (bare, ``module.`` prefixes stripped) <->
a ``cmd_jax.methods.crossclr.CrosSCLRState`` and its config (docs/references.md#crossclr-checkpoints).

Key mapping (``s`` = joint, motion, bone; ``_s`` = ``""``, ``_motion``, ``_bone``):

==================================================  ========================================
reference key                                       ``CrosSCLRState`` field
==================================================  ========================================
``encoder_q_s.<encoder key>``                       ``params[s]`` / ``batch_stats[s]``
``encoder_k_s.<encoder key>``                       ``key_params[s]`` / ``key_batch_stats[s]``
``encoder_q.fc.0.*``, ``encoder_q.fc.2.*``          the shared head H: ``params["joint"]["fc_0"]``, ``["fc_2"]``
``encoder_q_motion.fc.0.*`` (and bone)              the private layer P: ``params["motion"]["fc_0"]``
``encoder_q_motion.fc.2.0.*``, ``fc.2.2.*``         H again (the shared module, saved once per
                                                    stream): must equal ``encoder_q.fc.0/2``
``queue_s`` ``(D, K)``                              ``queues[s]`` ``[K, D]`` (transposed)
``queue_ptr_s`` ``[1]``                             ``queue_ptr`` (one: the three must be equal)
``encoder_*.A``, ``*.atts``, ``*.pes.pe``           constants of the architecture (checked, rebuilt on export)
``*.num_batches_tracked``                           not in the state: kept in the checkpoint meta
==================================================  ========================================

The key side mirrors it (``encoder_k.fc.*`` = H_k). ST-GCN's edge importances are
``edge_importance.0..9`` (the release's ``nn.ParameterList``, written on export);
``edge_importance1..10`` are accepted on import. The keys name every stream: no ``--stream``.

Only pretraining checkpoints: the release's linear-evaluation model (three ``encoder_q*`` with
a classifier ``fc``, no heads, keys or queues) has no CrosSCLR pretraining state (whose head
is the shared MLP) and is refused in one line. The config: ``configs/pretrain_crossclr.py:
ntu60_xsub`` (``..._dsta`` for DSTA-Net) with what the shapes tell, or the given one (checked,
not adjusted); ``config.modalities`` is the checkpoint's streams. The checkpoint holds no
epoch: the workdir's step is N of an ``epoch<N>_model.pt`` name, ``--epoch``, or 0.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cmd_jax import optim
from cmd_jax.interop import torchlight
from cmd_jax.interop.common import (TorchImportError, compare_keys, key_report, load_config, strip_module_prefix,
                                    to_numpy)

NAME = "crossclr"
DEFAULT_CONFIG = "configs/pretrain_crossclr.py:ntu60_xsub"
DEFAULT_CONFIG_DSTA = "configs/pretrain_crossclr.py:ntu60_xsub_dsta"
ONE_STREAM = False  # the keys name every stream
OPTIONS = ()
EDGE_IMPORTANCE = torchlight.PARAMETER_LIST
SUFFIX = {"joint": "", "motion": "_motion", "bone": "_bone"}
HEAD_OWNER = "joint"          # the stream whose encoder holds the shared head H (fc_0, fc_2)
SHARED_HEAD = ("fc_0", "fc_2")
NESTED_HEAD = "fc.2."         # motion's and bone's saved copy of H: encoder_q_<s>.fc.2.0.*, fc.2.2.*


def prefix(side: str, stream: str) -> str:
  """The reference's attribute of ``stream``'s query (``side="q"``) or key encoder."""
  return f"encoder_{side}{SUFFIX[stream]}"


def streams_in(state_dict: Mapping[str, Any]) -> tuple[str, ...]:
  """The streams whose query encoder the keys hold, in the release's order."""
  return tuple(s for s in SUFFIX if any(k.startswith(prefix("q", s) + ".") for k in state_dict))


def ordered(names) -> tuple[str, ...]:
  """``names`` in the release's stream order (joint, motion, bone): the shared head is the
  joint encoder's, written before the other streams' copies of it."""
  return tuple(s for s in SUFFIX if s in names)


def detect(state_dict: Mapping[str, Any]) -> bool:
  """Whether the keys can be CrosSCLR's: per-stream encoders (``encoder_q_motion``) of ST-GCN
  or DSTA-Net, or of any encoder with the nested shared head (``encoder_q_motion.fc.2.0``;
  CMD's GRU checkpoints have per-stream encoders too, with their own heads)."""
  if not any(k.startswith(prefix("q", "motion") + ".") for k in state_dict):
    return False
  return (torchlight.encoder_name(state_dict, prefix("q", "motion")) in ("stgcn", "dsta")
          or f"{prefix('q', 'motion')}.{NESTED_HEAD}0.weight" in state_dict)


def checkpoint_kind(state_dict: Mapping[str, Any]) -> str:
  """``"pretrain"`` (key encoders or queues present) or ``"linear"`` (query encoders only)."""
  if any(k.startswith("encoder_k") or k.startswith("queue") for k in state_dict):
    return "pretrain"
  return "linear"


def saved_object(state_dict: Mapping[str, Any], epoch: int) -> dict[str, Any]:  # pylint: disable=unused-argument
  """What torchlight's ``save_model`` writes: the bare ``state_dict`` (no epoch)."""
  return state_dict


def resolve_config(state_dict: Mapping[str, Any], config=None) -> ml_collections.ConfigDict:
  """The CrosSCLR pretraining config the checkpoint is imported under (module docstring)."""
  state_dict = torchlight.with_numbered_edge_importance(state_dict)
  if checkpoint_kind(state_dict) == "linear":
    raise TorchImportError("the state_dict holds query encoders only (a CrosSCLR linear-evaluation checkpoint); "
                           "expected a CrosSCLR pretraining checkpoint (encoder_q*, encoder_k*, queue*): a "
                           "classifier has no place in a CrosSCLR pretraining state")
  name = torchlight.encoder_name(state_dict)
  infer = config is None
  if infer:
    if name is None:
      raise TorchImportError("the state_dict has no encoder_q of a known architecture (no encoder_q.st_gcn_networks.*, "
                             "encoder_q.graph_layers.* or encoder_q.encoder.gru.* keys); expected a CrosSCLR checkpoint")
    config = load_config(DEFAULT_CONFIG_DSTA if name == "dsta" else DEFAULT_CONFIG, DEFAULT_CONFIG)
    if name == "gru":
      config.model.name = "gru"
  else:
    config = load_config(config, DEFAULT_CONFIG)
  if str(config.get("method", "cmd")) != NAME:
    raise TorchImportError(f"the config is a {config.get('method', 'cmd')!r} config; expected a CrosSCLR pretraining "
                           f"config (method crossclr), e.g. {DEFAULT_CONFIG}")
  if infer:
    torchlight.infer_sizes(state_dict, config, name)
  config.modalities = ",".join(streams_in(state_dict))
  return config


# ----------------------------------------------------------------------------------------
# state_dict <-> CrosSCLRState
# ----------------------------------------------------------------------------------------

def _nested_head_keys(config, stream_prefix: str, head_params) -> dict[str, str]:
  """``{nested key: the owner's key suffix}`` of H's copy saved under ``stream_prefix``
  (``encoder_q_motion.fc.2.0.weight`` <- ``fc.0.weight``)."""
  out = {}
  for path in torchlight.flat({n: head_params[n] for n in SHARED_HEAD}):
    suffix = torchlight.encoder_key(config.model, path)  # fc.0.weight
    out[f"{stream_prefix}.{NESTED_HEAD}{suffix[len('fc.'):]}"] = suffix
  return out


def expected_keys(config, like_state) -> dict[str, tuple[tuple[int, ...], str]]:
  """Every reference key of the architecture (edge importances numbered): ``{key: (shape, dtype kind)}``."""
  out: dict[str, tuple[tuple[int, ...], str]] = {}
  for side, params, stats in (("q", like_state.params, like_state.batch_stats),
                              ("k", like_state.key_params, like_state.key_batch_stats)):
    for s in ordered(like_state.queues):
      out.update(torchlight.encoder_expected_keys(config, prefix(side, s), params[s], stats[s]))
      if s != HEAD_OWNER:
        for key, suffix in _nested_head_keys(config, prefix(side, s), params[HEAD_OWNER]).items():
          out[key] = out[f"{prefix(side, HEAD_OWNER)}.{suffix}"]
  for s in ordered(like_state.queues):
    k, d = like_state.queues[s].shape
    out[f"queue{SUFFIX[s]}"] = ((d, k), "f")
    out[f"queue_ptr{SUFFIX[s]}"] = ((1,), "i")
  return out


def check_state_dict(found: Mapping[str, np.ndarray], config, like_state) -> None:
  """Raises ``TorchImportError`` listing missing/unexpected keys and shape mismatches,
  constants that differ from this architecture's, copies of the shared head that differ from
  ``encoder_q.fc``/``encoder_k.fc``, and queue pointers that differ."""
  expected = expected_keys(config, like_state)
  missing, unexpected, mismatched = compare_keys(expected, found)
  if not mismatched:
    prefixes = tuple(prefix(side, s) for side in "qk" for s in ordered(like_state.queues))
    mismatched = torchlight.constant_mismatches(found, config, prefixes)
  if missing or unexpected or mismatched:
    header = (f"the state_dict is not a CrosSCLR pretrain checkpoint of the expected architecture "
              f"({torchlight.describe(config)}, streams {config.modalities}):")
    raise TorchImportError(key_report(header, expected, missing, unexpected, mismatched))
  for side in "qk":
    for s in ordered(like_state.queues):
      if s == HEAD_OWNER:
        continue
      for key, suffix in _nested_head_keys(config, prefix(side, s), like_state.params[HEAD_OWNER]).items():
        owner = f"{prefix(side, HEAD_OWNER)}.{suffix}"
        if not np.array_equal(found[key], found[owner]):
          raise TorchImportError(f"{key} differs from {owner} (max |diff| "
                                 f"{float(np.max(np.abs(found[key] - found[owner]))):.3g}); expected the same tensor: "
                                 "the release's motion and bone heads end in the joint encoder's shared head")
  pointers = {f"queue_ptr{SUFFIX[s]}": int(found[f"queue_ptr{SUFFIX[s]}"].reshape(-1)[0]) for s in ordered(like_state.queues)}
  if len(set(pointers.values())) > 1:
    raise TorchImportError(f"the queue pointers differ ({', '.join(f'{k} = {v}' for k, v in pointers.items())}); "
                           "expected equal pointers (the release enqueues every stream's keys at once)")


def state_dict_to_state(state_dict: Mapping[str, Any], config, *, epoch: int | None = None):
  """A CrosSCLR ``state_dict`` -> ``(CrosSCLRState, meta)`` under ``config`` (already resolved)."""
  state_dict = torchlight.with_numbered_edge_importance(strip_module_prefix(state_dict))
  base, rng, _ = torchlight.fresh_state(config)
  found = {k: to_numpy(v) for k, v in state_dict.items()}
  check_state_dict(found, config, base)
  names = ordered(base.queues)
  params, key_params, stats, key_stats, queues, nbt = {}, {}, {}, {}, {}, {}
  for s in names:
    q, k = prefix("q", s), prefix("k", s)
    params[s] = torchlight.read_encoder(found, config, q, base.params[s])
    key_params[s] = torchlight.read_encoder(found, config, k, base.key_params[s])
    stats[s] = torchlight.read_encoder(found, config, q, base.batch_stats[s])
    key_stats[s] = torchlight.read_encoder(found, config, k, base.key_batch_stats[s])
    nbt.update(torchlight.read_batch_counts(found, config, q, base.batch_stats[s]))
    nbt.update(torchlight.read_batch_counts(found, config, k, base.key_batch_stats[s]))
    queues[s] = torchlight.queue_from_torch(found[f"queue{SUFFIX[s]}"])
  ptr = int(found["queue_ptr"].reshape(-1)[0])
  if not 0 <= ptr < int(config.moco.queue_size):
    raise TorchImportError(f"queue_ptr = {ptr}; expected a position in [0, {config.moco.queue_size})")
  tx = optim.make_optimizer(config, 1)
  state = torchlight.filled_state(base, step=jnp.asarray(int(epoch or 0), jnp.int32), params=params,
                                  key_params=key_params, batch_stats=stats, key_batch_stats=key_stats, queues=queues,
                                  queue_ptr=jnp.asarray(ptr, jnp.int32), opt_state=tx.init(params), rng=rng)
  meta = {"kind": "pretrain", "format": NAME, "torch_epoch": epoch, "num_batches_tracked": nbt,
          "optimizer": "fresh: the torch optimizer state is not imported", "key_encoders": "imported",
          "queues": "imported", "streams": list(names)}
  return state, meta


def state_to_state_dict(state, config, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """A ``CrosSCLRState`` -> the reference ``state_dict`` (torch tensors: float32; queues
  ``(D, K)``; three equal int64 ``[1]`` pointers; ``num_batches_tracked`` int64 from ``meta``
  or the step count; the shared head saved again under motion's and bone's ``fc.2``; the
  architecture's constant buffers; edge importances ``edge_importance.<i>``)."""
  nbt = dict(meta or {}).get("num_batches_tracked") or {}
  step = int(np.asarray(jax.device_get(state.step)))
  names = ordered(state.queues)
  out: dict[str, Any] = {}
  for s in names:  # the release's own buffers come first
    out[f"queue{SUFFIX[s]}"] = torchlight.queue_to_torch(state.queues[s])
    out[f"queue_ptr{SUFFIX[s]}"] = torchlight.pointer_to_torch(state.queue_ptr)
  for s in names:
    for side, params, stats in (("q", state.params, state.batch_stats), ("k", state.key_params,
                                                                          state.key_batch_stats)):
      torchlight.write_encoder(out, config, prefix(side, s), params[s], stats[s], nbt, step, EDGE_IMPORTANCE)
      if s != HEAD_OWNER:
        for key, suffix in _nested_head_keys(config, prefix(side, s), params[HEAD_OWNER]).items():
          out[key] = out[f"{prefix(side, HEAD_OWNER)}.{suffix}"].clone()
  return out
