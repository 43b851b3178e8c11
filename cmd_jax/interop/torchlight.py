"""The torchlight family's checkpoint conventions, shared by its formats (HiCLR; SkeletonCLR, CrosSCLR, AimCLR).

The references built on ``torchlight`` (HiCLR, and the SkeletonCLR, CrosSCLR and AimCLR
releases it derives from) save ``model.state_dict()`` bare, ``module.`` prefixes removed
(``torchlight/io.py`` ``save_model``), as ``epoch<N>_model.pt``. Their models hold the same
pieces under the same names, which this module maps:

- an encoder under a prefix (``encoder_q``, ``encoder_k``; CrosSCLR also
  ``encoder_q_motion`` ...): every Flax variable at its PyTorch key
  (``cmd_jax.models.torch_key``: ``name_<i>`` modules are ``name.<i>``, BatchNorm's
  ``scale``/``mean``/``var`` are ``weight``/``running_mean``/``running_var``), one
  ``num_batches_tracked`` per BatchNorm (kept in the checkpoint meta), and the architecture's
  constant buffers (ST-GCN's graph ``A``, DSTA-Net's ``atts``/``pes.pe``: checked on import,
  rebuilt on export);
- ST-GCN's edge importances in one of two namings: ``edge_importance1..10`` (separate
  parameters: HiCLR, and this project's Flax names) or ``edge_importance.0..9`` (an
  ``nn.ParameterList``: SkeletonCLR, CrosSCLR, AimCLR). Both are accepted on import (HiCLR's
  own loader reads the list naming too); each format exports its own;
- a queue ``(D, K)`` (columns are keys; ``[K, D]`` rows here) with its pointer ``[1]``;
- the stream of a one-stream checkpoint (HiCLR, SkeletonCLR, AimCLR train one stream per
  run and do not record it in the file): a ``joint``/``motion``/``bone`` token of the file
  name (AimCLR's released ``ntu60_xsub_motion.pt``), or the top-level ``stream`` of the
  ``config.yaml`` that torchlight writes into the run's ``work_dir`` beside the checkpoints
  (``IO.save_arg``: every processor argument, ``--stream`` included, default ``joint``).

What the shapes tell about the encoder (ST-GCN widths, the GRU's sizes, the head, the
skeleton layout from the graph's size, the queue size) is read off here too.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from cmd_jax import data, models
from cmd_jax.modalities import MODALITIES as STREAMS
from cmd_jax.interop.common import TorchImportError, shape_of

QUERY, KEY = "encoder_q", "encoder_k"
ENCODER_MARKERS = {"stgcn": ".st_gcn_networks.", "dsta": ".graph_layers.", "gru": ".encoder.gru."}
NUMBERED, PARAMETER_LIST = "numbered", "parameter_list"  # edge_importance1..10 / edge_importance.0..9
_LAYOUT_DATASETS = {25: ("ntu60", "xsub"), 20: ("msr_action3d", "xsub")}
_LIST_EDGE_IMPORTANCE = re.compile(r"(?P<prefix>(?:.+\.)?)edge_importance\.(?P<index>\d+)")
_NUMBERED_EDGE_IMPORTANCE = re.compile(r"edge_importance(?P<number>\d+)")
RUN_CONFIG = "config.yaml"  # torchlight's record of a run's arguments, in its work_dir


# ----------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------

def encoder_name(state_dict: Mapping[str, Any], prefix: str = QUERY) -> str | None:
  """The encoder (``stgcn``, ``dsta``, ``gru``) under ``prefix``, from its keys; None if none."""
  for name, marker in ENCODER_MARKERS.items():
    if any(k.startswith(prefix + marker) for k in state_dict):
      return name
  return None


def with_numbered_edge_importance(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """``state_dict`` with every ``<prefix>.edge_importance.<i>`` (ParameterList) key renamed
  ``<prefix>.edge_importance<i+1>`` (the numbered naming); numbered keys are kept."""
  out: dict[str, Any] = {}
  for key, value in state_dict.items():
    match = _LIST_EDGE_IMPORTANCE.fullmatch(key)
    new = f"{match['prefix']}edge_importance{int(match['index']) + 1}" if match else key
    if new in out:
      raise TorchImportError(f"the state_dict holds {new} in both namings ({key} too); expected one naming of "
                             "the edge importances")
    out[new] = value
  return out


def encoder_key(model_config, path: tuple[str, ...], naming: str = NUMBERED) -> str:
  """The PyTorch key suffix of the encoder variable at ``path``, edge importances in ``naming``."""
  key = models.torch_key(model_config, path)
  match = _NUMBERED_EDGE_IMPORTANCE.fullmatch(key)
  if naming == PARAMETER_LIST and match:
    return f"edge_importance.{int(match['number']) - 1}"
  return key


def flat(tree, prefix=()) -> dict[tuple[str, ...], Any]:
  """``{path: leaf}`` of a nested dict."""
  out = {}
  for name, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flat(value, prefix + (name,)))
    else:
      out[prefix + (name,)] = value
  return out


def unflat(paths: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  """The nested dict of ``{path: leaf}`` (inverse of ``flat``)."""
  tree: dict[str, Any] = {}
  for path, value in paths.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


def batch_norm_modules(stats) -> list[tuple[str, ...]]:
  """The module paths of every BatchNorm (those holding running statistics)."""
  return sorted({path[:-1] for path in flat(stats)})


def _batch_norm_key(model_config, module: tuple[str, ...]) -> str:
  return models.torch_key(model_config, module + ("x",))[:-len(".x")]


# ----------------------------------------------------------------------------------------
# One encoder
# ----------------------------------------------------------------------------------------

def encoder_expected_keys(config, prefix: str, params, stats) -> dict[str, tuple[tuple[int, ...], str]]:
  """Every key of one encoder under ``prefix`` (numbered naming): ``{key: (shape, dtype kind)}``."""
  out: dict[str, tuple[tuple[int, ...], str]] = {}
  for tree in (params, stats):
    for path, leaf in flat(tree).items():
      out[f"{prefix}.{encoder_key(config.model, path)}"] = (tuple(leaf.shape), "f")
  for module in batch_norm_modules(stats):
    out[f"{prefix}.{_batch_norm_key(config.model, module)}.num_batches_tracked"] = ((), "i")
  for key, value in models.torch_buffers(config.model, data.layout_of(config.data)).items():
    out[f"{prefix}.{key}"] = (tuple(np.shape(value)), "f")
  return out


def constant_mismatches(found: Mapping[str, np.ndarray], config, prefixes: tuple[str, ...]) -> list[str]:
  """A line per constant buffer of the encoders under ``prefixes`` that differs from this architecture's.

  Constants agree to float32 evaluation error: PyTorch computes DSTA-Net's positional
  encodings in float32 (arguments up to ~25, two roundings: up to ~3e-6 off); another graph
  or joint count differs by far more.
  """
  out = []
  for suffix, value in models.torch_buffers(config.model, data.layout_of(config.data)).items():
    for prefix in prefixes:
      key = f"{prefix}.{suffix}"
      if key in found and found[key].shape == np.shape(value) and \
          not np.allclose(found[key], value, rtol=0, atol=1e-5):
        out.append(f"{key}: the checkpoint's constant differs from this architecture's (max |diff| "
                   f"{float(np.max(np.abs(found[key] - value))):.3g}); another graph or layout?")
  return out


def read_encoder(found: Mapping[str, np.ndarray], config, prefix: str, like) -> dict[str, Any]:
  """The Flax tree shaped like ``like`` (params or batch_stats) of the encoder under ``prefix``."""
  return unflat({path: jnp.asarray(found[f"{prefix}.{encoder_key(config.model, path)}"].astype(np.float32))
                 for path in flat(like)})


def read_batch_counts(found: Mapping[str, np.ndarray], config, prefix: str, stats) -> dict[str, int]:
  """``{"<prefix>.<bn>": num_batches_tracked}`` of the encoder under ``prefix``."""
  out = {}
  for module in batch_norm_modules(stats):
    bn = f"{prefix}.{_batch_norm_key(config.model, module)}"
    out[bn] = int(found[f"{bn}.num_batches_tracked"])
  return out


def write_encoder(out: dict[str, Any], config, prefix: str, params, stats, batch_counts: Mapping[str, int],
                  default_count: int, naming: str = NUMBERED) -> None:
  """Adds one encoder's torch tensors under ``prefix`` to ``out``: float32 variables (edge
  importances in ``naming``), int64 ``num_batches_tracked`` (from ``batch_counts``, else
  ``default_count``) and the constant buffers."""
  import torch  # pylint: disable=import-outside-toplevel

  for tree in (params, stats):
    for path, leaf in flat(tree).items():
      out[f"{prefix}.{encoder_key(config.model, path, naming)}"] = to_torch(leaf)
  for module in batch_norm_modules(stats):
    bn = f"{prefix}.{_batch_norm_key(config.model, module)}"
    out[f"{bn}.num_batches_tracked"] = torch.tensor(int(batch_counts.get(bn, default_count)), dtype=torch.int64)
  for key, value in models.torch_buffers(config.model, data.layout_of(config.data)).items():
    out[f"{prefix}.{key}"] = to_torch(value)


def to_torch(x, dtype=np.float32):
  """A float32 (or ``dtype``) torch tensor copy of a host or device array."""
  import torch  # pylint: disable=import-outside-toplevel
  return torch.from_numpy(np.array(jax.device_get(x), dtype=dtype, copy=True))


# ----------------------------------------------------------------------------------------
# Queues
# ----------------------------------------------------------------------------------------

def queue_from_torch(queue: np.ndarray) -> jax.Array:
  """The reference's ``(D, K)`` queue (columns are keys) as this project's ``[K, D]``."""
  return jnp.asarray(np.ascontiguousarray(queue.astype(np.float32).T))


def queue_to_torch(queue):
  """This project's ``[K, D]`` queue as the reference's ``(D, K)`` float32 tensor."""
  import torch  # pylint: disable=import-outside-toplevel
  return torch.from_numpy(np.ascontiguousarray(np.asarray(jax.device_get(queue), np.float32).T))


def pointer_to_torch(ptr):
  """The queue pointer as the reference's int64 ``[1]`` buffer."""
  import torch  # pylint: disable=import-outside-toplevel
  return torch.tensor([int(np.asarray(jax.device_get(ptr)))], dtype=torch.int64)


# ----------------------------------------------------------------------------------------
# What the shapes tell
# ----------------------------------------------------------------------------------------

def infer_sizes(state_dict: Mapping[str, Any], config, name: str, prefix: str = QUERY,
                queue_key: str = "queue") -> None:
  """Sets in ``config`` what the shapes of the encoder under ``prefix`` (numbered naming)
  tell: ST-GCN's widths, temporal kernel and edge importance; the GRU's hidden size and
  layer count; the skeleton layout from the joint count (NTU's 25 or MSR's 20); the head
  (MLP or linear) and its output size; the queue size. The rest stays the config's."""
  if name == "stgcn":
    w = shape_of(state_dict, f"{prefix}.st_gcn_networks.0.gcn.conv.weight")
    a = shape_of(state_dict, f"{prefix}.A")
    last = shape_of(state_dict, f"{prefix}.st_gcn_networks.9.tcn.2.weight")
    if w is not None and a is not None and len(w) == 4 and len(a) == 3:
      config.model.stgcn.hidden_channels = int(w[0]) // int(a[0])
    if last is not None and len(last) == 4:
      config.model.stgcn.hidden_dim = int(last[0])
      config.model.stgcn.temporal_kernel = int(last[2])
    config.model.stgcn.edge_importance = f"{prefix}.edge_importance1" in state_dict
    joints = a[-1] if a is not None else None
  elif name == "dsta":
    att = shape_of(state_dict, f"{prefix}.graph_layers.0.attention0s")
    joints = att[-1] if att is not None and len(att) == 4 else None
  else:
    ih = shape_of(state_dict, f"{prefix}.encoder.gru.weight_ih_l0")
    hh = shape_of(state_dict, f"{prefix}.encoder.gru.weight_hh_l0")
    if hh is not None:
      config.model.hidden_size = int(hh[1])
    layers = 0
    while f"{prefix}.encoder.gru.weight_hh_l{layers}" in state_dict:
      layers += 1
    config.model.num_layers = max(layers, 1)
    joints = None if ih is None else {150: 25, 60: 20}.get(int(ih[1]))
  if joints is not None and int(joints) in _LAYOUT_DATASETS and \
      data.layout_of(config.data).num_joints != int(joints):
    config.data.dataset, config.data.benchmark = _LAYOUT_DATASETS[int(joints)]
  if f"{prefix}.fc.0.weight" in state_dict or f"{prefix}.fc.2.weight" in state_dict:
    config.model.mlp = True
    out = shape_of(state_dict, f"{prefix}.fc.2.weight")
  else:
    config.model.mlp = False
    out = shape_of(state_dict, f"{prefix}.fc.weight")
  if out is not None and len(out) == 2:
    config.model.embed_dim = int(out[0])
  queue = shape_of(state_dict, queue_key)
  if queue is not None and len(queue) == 2:
    config.moco.queue_size = int(queue[1])


def describe(config) -> str:
  """The architecture ``config`` implies, for error messages."""
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
# The stream of a one-stream checkpoint
# ----------------------------------------------------------------------------------------

def streams_in_name(path: str | os.PathLike) -> tuple[str, ...]:
  """The stream names among the tokens of the file name (split at every character other
  than a letter or digit, lower-cased): ``ntu60_xsub_motion.pt`` -> ``("motion",)``; a name
  naming several streams gives them all (it says nothing then)."""
  tokens = set(re.split(r"[^0-9a-z]+", os.path.basename(os.fspath(path)).lower()))
  return tuple(s for s in STREAMS if s in tokens)


def stream_in_run_config(path: str | os.PathLike) -> tuple[str | None, str]:
  """``(stream or None, the config's path)``: the top-level ``stream`` of the
  ``config.yaml`` beside the checkpoint file (None: no such file, or no ``stream`` in it).
  A config that is not YAML, or names another stream, is an error naming it."""
  config_path = os.path.join(os.path.dirname(os.path.abspath(os.fspath(path))), RUN_CONFIG)
  if not os.path.isfile(config_path):
    return None, config_path
  try:
    with open(config_path, encoding="utf-8") as f:
      args = yaml.safe_load(f)
  except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    raise TorchImportError(f"{config_path} (beside {os.fspath(path)}) is not readable YAML ({first}); expected the "
                           "reference run's config.yaml, whose top-level 'stream' names the checkpoint's stream") from None
  stream = args.get("stream") if isinstance(args, dict) else None
  if stream is None:
    return None, config_path
  if stream not in STREAMS:
    raise TorchImportError(f"{config_path}: stream: {stream!r}; expected one of {', '.join(STREAMS)}")
  return str(stream), config_path
