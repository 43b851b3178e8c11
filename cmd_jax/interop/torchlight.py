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
skeleton layout from the graph's size, the queue size) is read off here too, and the
one-stream MoCo state (``encoder_q``, ``encoder_k``, ``queue``, ``queue_ptr``: HiCLR's,
SkeletonCLR's and AimCLR's, ``cmd_jax.methods.common.single_stream``) is mapped here for
their formats; the ``model:`` class of the run's ``config.yaml`` names the reference's
model (``net.aimclr.AimCLR``) where the keys do not tell the method.
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
from cmd_jax.methods import create_train_state
from cmd_jax.modalities import MODALITIES as STREAMS
from cmd_jax.interop.common import TorchImportError, load_config, shape_of

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


def edge_importance_naming(state_dict: Mapping[str, Any]) -> str | None:
  """``PARAMETER_LIST`` when some key is ``<prefix>.edge_importance.<i>``, ``NUMBERED`` when
  some key is ``<prefix>.edge_importance<i>``, None when there are no edge importances
  (another encoder, or ST-GCN without edge-importance weighting)."""
  if any(_LIST_EDGE_IMPORTANCE.fullmatch(k) for k in state_dict):
    return PARAMETER_LIST
  if any(_NUMBERED_EDGE_IMPORTANCE.fullmatch(k.rpartition(".")[2]) for k in state_dict):
    return NUMBERED
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
# One-stream MoCo states (HiCLR, SkeletonCLR, AimCLR)
# ----------------------------------------------------------------------------------------

def fresh_state(config) -> tuple[Any, jax.Array, dict[str, jax.Array]]:
  """``(like, rng, queues)`` of a fresh train state of ``config``: its shapes
  (``jax.eval_shape``), and the run key and fresh queues ``create_train_state`` draws. Only
  these two are computed (``jax.jit`` keeps what they depend on, not the encoders'
  initialisation, which an import replaces: many times faster); the queues are fresh random
  ones (equal to ``create_train_state``'s up to float rounding), the key bit for bit."""
  layout = data.layout_of(config.data)
  like = jax.eval_shape(lambda: create_train_state(config, layout, 1))
  rng, queues = jax.jit(lambda: (lambda s: (s.rng, s.queues))(create_train_state(config, layout, 1)))()
  return like, rng, queues


def filled_state(like, **fields):
  """``like`` (a state of shapes) with every field replaced by ``fields``; an error naming
  any field left without a value."""
  state = like.replace(**fields)
  empty = [str(path) for path, leaf in jax.tree_util.tree_leaves_with_path(state)
           if isinstance(leaf, jax.ShapeDtypeStruct)]
  if empty:
    raise TorchImportError(f"no value for {', '.join(empty[:3])} of the {type(like).__name__}; expected every "
                           "field from the checkpoint or a fresh state")
  return state


def one_stream_kind(state_dict: Mapping[str, Any]) -> str:
  """``"pretrain"`` (key encoder or queue present) or ``"linear"`` (query encoder only: the
  linear-evaluation model)."""
  if any(k.startswith(KEY + ".") or k in ("queue", "queue_ptr") for k in state_dict):
    return "pretrain"
  return "linear"


def one_stream_expected_keys(config, kind: str, like_state) -> dict[str, tuple[tuple[int, ...], str]]:
  """Every reference key (edge importances numbered) of a one-stream MoCo model:
  ``encoder_q.*`` and, for ``pretrain``, ``encoder_k.*``, ``queue`` ``(D, K)``, ``queue_ptr``."""
  out = encoder_expected_keys(config, QUERY, like_state.params["encoder"], like_state.batch_stats)
  if kind == "pretrain":
    out.update(encoder_expected_keys(config, KEY, like_state.key_params, like_state.key_batch_stats))
    (stream,) = like_state.queues
    k, d = like_state.queues[stream].shape
    out["queue"] = ((d, k), "f")
    out["queue_ptr"] = ((1,), "i")
  return out


def read_one_stream(found: Mapping[str, np.ndarray], config, kind: str, base,
                    fresh_queues: Mapping[str, jax.Array]) -> tuple[dict[str, Any], dict[str, int]]:
  """``(state fields, num_batches_tracked)`` of a checked one-stream ``state_dict`` (numpy
  values, numbered naming) shaped like the state ``base`` (shapes suffice): ``encoder`` (the
  query encoder's params), ``batch_stats``, ``key_params``, ``key_batch_stats``, ``queues``,
  ``queue_ptr``. A ``linear`` checkpoint's key encoder is a copy of the query encoder, its
  queues ``fresh_queues``, pointer 0."""
  query = read_encoder(found, config, QUERY, base.params["encoder"])
  stats = read_encoder(found, config, QUERY, base.batch_stats)
  counts = read_batch_counts(found, config, QUERY, base.batch_stats)
  (stream,) = base.queues
  if kind == "pretrain":
    key_params = read_encoder(found, config, KEY, base.key_params)
    key_stats = read_encoder(found, config, KEY, base.key_batch_stats)
    counts.update(read_batch_counts(found, config, KEY, base.key_batch_stats))
    queues = {stream: queue_from_torch(found["queue"])}
    ptr = int(found["queue_ptr"].reshape(-1)[0])
    if not 0 <= ptr < int(config.moco.queue_size):
      raise TorchImportError(f"queue_ptr = {ptr}; expected a position in [0, {config.moco.queue_size})")
  else:
    key_params, key_stats = jax.tree.map(jnp.array, query), jax.tree.map(jnp.array, stats)
    queues, ptr = dict(fresh_queues), 0
  fields = {"encoder": query, "batch_stats": stats, "key_params": key_params, "key_batch_stats": key_stats,
            "queues": queues, "queue_ptr": jnp.asarray(ptr, jnp.int32)}
  return fields, counts


def write_one_stream(out: dict[str, Any], config, state, kind: str, batch_counts: Mapping[str, int],
                     naming: str) -> None:
  """Adds a one-stream MoCo state's torch tensors to ``out`` in the reference's order:
  ``encoder_q.*`` and, for ``pretrain``, ``encoder_k.*``, ``queue`` ``(D, K)``, ``queue_ptr``
  (edge importances in ``naming``; ``num_batches_tracked`` from ``batch_counts``, else the
  step count)."""
  step = int(np.asarray(jax.device_get(state.step)))
  write_encoder(out, config, QUERY, state.params["encoder"], state.batch_stats, batch_counts, step, naming)
  if kind == "pretrain":
    write_encoder(out, config, KEY, state.key_params, state.key_batch_stats, batch_counts, step, naming)
    (stream,) = state.queues
    out["queue"] = queue_to_torch(state.queues[stream])
    out["queue_ptr"] = pointer_to_torch(state.queue_ptr)


def resolve_one_stream_config(state_dict: Mapping[str, Any], config, *, method: str, default: str,
                              default_dsta: str, stream: str):
  """The pretraining config of ``method`` a one-stream checkpoint is imported under:
  ``default`` (``default_dsta`` for a DSTA-Net encoder, the GRU's name set for a GRU) with
  what the shapes tell (``infer_sizes``), or the given ``config`` (a spec or ConfigDict:
  checked on conversion, not adjusted; refused when it is another method's). Its ``stream``
  is the checkpoint's; a ``linear`` checkpoint gets ``model.mlp = False`` and
  ``model.embed_dim`` = its classifier's output size."""
  state_dict = with_numbered_edge_importance(state_dict)
  name = encoder_name(state_dict)
  infer = config is None
  if infer:
    if name is None:
      raise TorchImportError("the state_dict has no encoder_q of a known architecture (no encoder_q.st_gcn_networks.*, "
                             f"encoder_q.graph_layers.* or encoder_q.encoder.gru.* keys); expected a {method} checkpoint")
    config = load_config(default_dsta if name == "dsta" else default, default)
    if name == "gru":
      config.model.name = "gru"
  else:
    config = load_config(config, default)
  if str(config.get("method", "cmd")) != method.lower():
    raise TorchImportError(f"the config is a {config.get('method', 'cmd')!r} config; expected a {method} pretraining "
                           f"config (method {method.lower()}), e.g. {default}")
  if infer:
    infer_sizes(state_dict, config, name)
  config.stream = stream
  if one_stream_kind(state_dict) == "linear":
    out = shape_of(state_dict, f"{QUERY}.fc.weight")
    config.model.mlp = False
    if out is not None and len(out) == 2:
      config.model.embed_dim = int(out[0])
  return config


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


def read_run_config(path: str | os.PathLike) -> tuple[dict[str, Any] | None, str]:
  """``(arguments or None, the config's path)``: the ``config.yaml`` beside the checkpoint
  file, as torchlight's ``IO.save_arg`` writes it (None: no such file, or not a mapping).
  A config that is not YAML is an error naming it."""
  config_path = os.path.join(os.path.dirname(os.path.abspath(os.fspath(path))), RUN_CONFIG)
  if not os.path.isfile(config_path):
    return None, config_path
  try:
    with open(config_path, encoding="utf-8") as f:
      args = yaml.safe_load(f)
  except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    raise TorchImportError(f"{config_path} (beside {os.fspath(path)}) is not readable YAML ({first}); expected the "
                           "reference run's config.yaml (torchlight's record of the run's arguments)") from None
  return (args if isinstance(args, dict) else None), config_path


def stream_in_run_config(path: str | os.PathLike) -> tuple[str | None, str]:
  """``(stream or None, the config's path)``: the top-level ``stream`` of the
  ``config.yaml`` beside the checkpoint file (None: no such file, or no ``stream`` in it).
  A config that is not YAML, or names another stream, is an error naming it."""
  args, config_path = read_run_config(path)
  stream = args.get("stream") if args is not None else None
  if stream is None:
    return None, config_path
  if stream not in STREAMS:
    raise TorchImportError(f"{config_path}: stream: {stream!r}; expected one of {', '.join(STREAMS)}")
  return str(stream), config_path


def model_class_in_run_config(path: str | os.PathLike) -> tuple[str | None, str]:
  """``(class name lower-cased or None, the config's path)``: the class of the top-level
  ``model`` of the ``config.yaml`` beside the checkpoint file (the reference's model, e.g.
  ``net.aimclr.AimCLR`` -> ``aimclr``, ``net.skeletonclr.SkeletonCLR`` -> ``skeletonclr``,
  ``net.crossclr_3views.CrosSCLR`` -> ``crossclr``); None when there is no such file or key."""
  args, config_path = read_run_config(path)
  model = args.get("model") if args is not None else None
  if not isinstance(model, str) or not model.strip():
    return None, config_path
  return model.strip().rsplit(".", 1)[-1].lower(), config_path
