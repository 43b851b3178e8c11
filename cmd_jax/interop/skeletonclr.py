"""SkeletonCLR's and AimCLR's PyTorch checkpoints (torchlight ``state_dict``) <-> their pretraining states.

This module is the ``skeletonclr`` and ``aimclr`` formats of ``cmd_jax.interop`` (the
interface: ``cmd_jax/interop/formats.py``): ``SKELETONCLR`` and ``AIMCLR``, two instances of
``OneStreamMoCoFormat`` that differ only in their name and default config. A ``state_dict``
as the references' ``torchlight`` ``save_model`` writes it (bare, ``module.`` prefixes
stripped: CrosSCLR's release ``net/skeletonclr.py`` ``SkeletonCLR``, AimCLR's
``net/aimclr.py`` ``AimCLR``; AimCLR's drop module holds no state, so the two models hold
the same keys) <-> a ``cmd_jax.methods.common.single_stream.MoCoState`` and its config; the
torchlight conventions are ``cmd_jax.interop.torchlight``'s. Commands and decisions:
docs/pytorch_interop.md.

Key mapping:

============================================  ==============================================
reference key                                 ``MoCoState`` field
============================================  ==============================================
``encoder_q.<encoder key>``                   ``params["encoder"]`` / ``batch_stats``
``encoder_k.<encoder key>``                   ``key_params`` / ``key_batch_stats``
``queue`` ``(D, K)``                          ``queues[stream]`` ``[K, D]`` (transposed)
``queue_ptr`` ``[1]``                         ``queue_ptr``
``encoder_*.A``, ``*.atts``, ``*.pes.pe``     constants of the architecture (checked, rebuilt on export)
``*.num_batches_tracked``                     not in the state: kept in the checkpoint meta
============================================  ==============================================

ST-GCN's edge importances are ``edge_importance.0..9`` (the references' ``nn.ParameterList``,
written on export); HiCLR's ``edge_importance1..10`` are accepted on import.

What the keys cannot say: which of the two methods wrote the file (the same keys and
shapes), and the stream (one per run, not recorded). The method comes from ``--method``, or
the ``model:`` class of the reference run's ``config.yaml`` beside the file
(``cmd_jax.interop.formats.detect_format``); the stream as for HiCLR
(``cmd_jax.interop.convert.checkpoint_stream``).

Two kinds of checkpoint: ``pretrain`` (``encoder_k``, ``queue`` present) and ``linear``
(``encoder_q`` only, its ``fc`` the classifier: the linear-evaluation checkpoints), imported
as HiCLR's are (``model.mlp = False``, ``model.embed_dim = num_class``, a key encoder that
is a copy of the query encoder, a fresh queue; said in the meta). The checkpoint holds no
epoch: the workdir's step is N of an ``epoch<N>_model.pt`` name, ``--epoch``, or 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp
import ml_collections

from cmd_jax import optim
from cmd_jax.interop import torchlight
from cmd_jax.interop.common import TorchImportError, compare_keys, key_report, strip_module_prefix, to_numpy
from cmd_jax.interop.torchlight import KEY, QUERY

EDGE_IMPORTANCE = torchlight.PARAMETER_LIST
# Keys of the formats that name several streams (CMD's, CrosSCLR's) or hold HiCLR's mask value.
_OTHER_FORMATS = ("encoder_q_motion.", "encoder_q_bone.", "encoder_k_motion.", "encoder_k_bone.", "queue_motion",
                  "queue_bone", "queue_ptr_motion", "queue_ptr_bone", "mask_param")


def detect(state_dict: Mapping[str, Any]) -> bool:
  """Whether the keys can be SkeletonCLR's or AimCLR's: an ``encoder_q`` of a known encoder,
  no per-stream encoder or queue (CMD, CrosSCLR), no ``mask_param`` (HiCLR) and no edge
  importances in HiCLR's numbered naming."""
  if any(k.startswith(_OTHER_FORMATS) for k in state_dict):
    return False
  if torchlight.edge_importance_naming(state_dict) == torchlight.NUMBERED:
    return False
  return torchlight.encoder_name(state_dict) is not None


def checkpoint_kind(state_dict: Mapping[str, Any]) -> str:
  """``"pretrain"`` (key encoder or queue present) or ``"linear"`` (query encoder only)."""
  return torchlight.one_stream_kind(state_dict)


def saved_object(state_dict: Mapping[str, Any], epoch: int) -> dict[str, Any]:  # pylint: disable=unused-argument
  """What torchlight's ``save_model`` writes: the bare ``state_dict`` (no epoch)."""
  return state_dict


def expected_keys(config, kind: str, like_state) -> dict[str, tuple[tuple[int, ...], str]]:
  """Every reference key of the architecture (edge importances numbered): ``{key: (shape, dtype kind)}``."""
  return torchlight.one_stream_expected_keys(config, kind, like_state)


@dataclasses.dataclass(frozen=True)
class OneStreamMoCoFormat:
  """The format of one method whose state is a ``MoCoState`` (the interface of
  ``cmd_jax/interop/formats.py``)."""
  NAME: str                 # config.method, --method
  DISPLAY: str              # the method's name in messages
  DEFAULT_CONFIG: str
  DEFAULT_CONFIG_DSTA: str
  ONE_STREAM: bool = True   # one stream per checkpoint, not named in it (config.stream)
  OPTIONS: tuple[str, ...] = ()

  detect = staticmethod(detect)
  checkpoint_kind = staticmethod(checkpoint_kind)
  saved_object = staticmethod(saved_object)

  def resolve_config(self, state_dict: Mapping[str, Any], config=None, *, stream: str) -> ml_collections.ConfigDict:
    """The method's pretraining config the checkpoint is imported under (module docstring),
    its ``config.stream`` the checkpoint's ``stream``."""
    return torchlight.resolve_one_stream_config(state_dict, config, method=self.DISPLAY, default=self.DEFAULT_CONFIG,
                                                default_dsta=self.DEFAULT_CONFIG_DSTA, stream=stream)

  def check_state_dict(self, state_dict: Mapping[str, Any], config, kind: str, like_state) -> None:
    """Raises ``TorchImportError`` listing missing/unexpected keys and shape mismatches, and
    constants (the graph, the positional encodings) that differ from this architecture's."""
    expected = expected_keys(config, kind, like_state)
    found = {k: to_numpy(v) for k, v in torchlight.with_numbered_edge_importance(state_dict).items()}
    missing, unexpected, mismatched = compare_keys(expected, found)
    if not mismatched:
      mismatched = torchlight.constant_mismatches(found, config, (QUERY, KEY))
    if missing or unexpected or mismatched:
      header = (f"the state_dict is not a {self.DISPLAY} {kind} checkpoint of the expected architecture "
                f"({torchlight.describe(config)}):")
      raise TorchImportError(key_report(header, expected, missing, unexpected, mismatched))

  def state_dict_to_state(self, state_dict: Mapping[str, Any], config, *, epoch: int | None = None):
    """A ``state_dict`` -> ``(MoCoState, meta)`` under ``config`` (already resolved)."""
    state_dict = torchlight.with_numbered_edge_importance(strip_module_prefix(state_dict))
    kind = checkpoint_kind(state_dict)
    base, rng, fresh_queues = torchlight.fresh_state(config)
    self.check_state_dict(state_dict, config, kind, base)
    fields, nbt = torchlight.read_one_stream({k: to_numpy(v) for k, v in state_dict.items()}, config, kind, base,
                                             fresh_queues)
    params = {"encoder": fields.pop("encoder")}
    tx = optim.make_optimizer(config, 1)
    state = torchlight.filled_state(base, step=jnp.asarray(int(epoch or 0), jnp.int32), params=params,
                                    opt_state=tx.init(params), rng=rng, **fields)
    meta = {"kind": kind, "format": self.NAME, "torch_epoch": epoch, "num_batches_tracked": nbt,
            "optimizer": "fresh: the torch optimizer state is not imported"}
    if kind == "linear":
      meta["key_encoders"] = "a copy of the query encoder (the checkpoint has none)"
      meta["queues"] = "fresh random (the checkpoint has none)"
      meta["head"] = f"the linear-evaluation classifier fc [{config.model.embed_dim}, feature] (config.model.mlp=False)"
    else:
      meta["key_encoders"] = meta["queues"] = "imported"
    return state, meta

  def state_to_state_dict(self, state, config, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ``MoCoState`` -> the reference ``state_dict`` (torch tensors: float32; ``queue``
    ``(D, K)``; ``queue_ptr`` int64 ``[1]``; ``num_batches_tracked`` int64 from ``meta`` or
    the step count; the architecture's constant buffers; edge importances
    ``edge_importance.<i>``). ``meta["kind"] == "linear"`` exports the query encoder only."""
    meta = dict(meta or {})
    out: dict[str, Any] = {}
    torchlight.write_one_stream(out, config, state, meta.get("kind", "pretrain"), meta.get("num_batches_tracked") or {},
                                EDGE_IMPORTANCE)
    return out


SKELETONCLR = OneStreamMoCoFormat("skeletonclr", "SkeletonCLR", "configs/pretrain_skeletonclr.py:ntu60_xsub",
                                  "configs/pretrain_skeletonclr.py:ntu60_xsub_dsta")
AIMCLR = OneStreamMoCoFormat("aimclr", "AimCLR", "configs/pretrain_aimclr.py:ntu60_xsub",
                             "configs/pretrain_aimclr.py:ntu60_xsub_dsta")
