"""PyTorch interop: reference CMD checkpoints <-> this project's pretraining workdirs.

The key names and what is restored downstream: docs/references.md#cmd-pretraining-settings and
#cmd-checkpoint-loading.

This module owns the conversion between a checkpoint of the PyTorch reference
(``{'epoch', 'state_dict', 'optimizer'}`` as ``pretrain_moco_cmd.py`` saves it, or a bare
``state_dict``; ``module.`` prefixes from DistributedDataParallel are stripped) and a
workdir that ``--config.init_from``, ``cmd_jax.pretrained.load_pretrained`` and
``cmd_jax.api.load_encoder`` accept (``config.json`` + ``checkpoints/<step>/``).

Import::

  python -m cmd_jax.torch_import checkpoint_0450.pth.tar --workdir W \\
      [--config configs/pretrain_cmd.py:ntu60_xsub] [--hidden-size H] [--num-layers L]

Export (the reverse, a ``state_dict`` the reference's ``load_state_dict`` accepts)::

  python -m cmd_jax.torch_import --export W out.pth.tar

Key mapping (docs/references.md#cmd-pretraining-settings; per-encoder suffixes as in ``cmd_jax.models.encoder``; every
weight is stored in PyTorch layout, so the encoders convert by renaming only):

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
- Checkpoint step = the reference ``epoch`` (0 for a bare ``state_dict``); ``TrainState.step``
  is the same number. The data-iterator state is empty, so the workdir is for
  ``init_from``/``load_encoder``/export, not for resuming pretraining with ``launch.py``.
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

Bad input (not a torch file, a truncated file, another architecture) raises
``TorchImportError`` listing the missing and unexpected keys and the shape mismatches;
nothing is written to the target workdir (it is built in a temporary sibling folder and
renamed at the end).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cmd_jax import checkpoint, data, modalities as modalities_lib, optim
from cmd_jax.methods import PRETRAIN_TRAINERS

DEFAULT_CONFIG = "configs/pretrain_cmd.py:ntu60_xsub"
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QUERY_PREFIX = {"joint": "encoder_q", "motion": "encoder_q_motion", "bone": "encoder_q_bone"}
KEY_PREFIX = {"joint": "encoder_k", "motion": "encoder_k_motion", "bone": "encoder_k_bone"}
QUEUE_KEY = {"joint": "queue", "motion": "queue_motion", "bone": "queue_bone"}
PTR_KEY = {"joint": "queue_ptr", "motion": "queue_ptr_motion", "bone": "queue_ptr_bone"}
_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_BN_INV = {v: k for k, v in _BN.items()}


class TorchImportError(ValueError):
  """A file or state_dict that is not a reference CMD checkpoint of the expected architecture."""


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


def flax_path(suffix: str) -> tuple[str, str, str]:
  """``(collection, module, name)`` of a reference per-encoder key suffix (inverse of ``torch_suffix``)."""
  parts = suffix.split(".")
  if parts[0] == "input_norm" and len(parts) == 2 and parts[1] in _BN_INV:
    name = _BN_INV[parts[1]]
    return ("batch_stats" if name in ("mean", "var") else "params"), "input_norm", name
  if parts[:2] == ["encoder", "gru"] and len(parts) == 3:
    return "params", "gru", parts[2]
  if parts[0] == "fc" and len(parts) == 2:
    return "params", "fc", parts[1]
  if parts[0] == "fc" and len(parts) == 3:
    return "params", f"fc_{parts[1]}", parts[2]
  raise KeyError(f"no Flax path for reference key suffix {suffix!r}")


# ----------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------

def load_config(spec: str | ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
  """A config from ``path.py[:arg]`` (relative to the cwd or the repository), or a copy of one."""
  if spec is None:
    spec = DEFAULT_CONFIG
  if isinstance(spec, ml_collections.ConfigDict):
    return ml_collections.ConfigDict(spec.to_dict())
  path, _, arg = str(spec).partition(":")
  if not os.path.isfile(path) and os.path.isfile(os.path.join(_REPO, path)):
    path = os.path.join(_REPO, path)
  if not os.path.isfile(path):
    raise TorchImportError(f"config file {path} does not exist; expected e.g. {DEFAULT_CONFIG}")
  module_spec = importlib.util.spec_from_file_location(f"_torch_import_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  if config.get("trainer") not in PRETRAIN_TRAINERS:
    raise TorchImportError(f"{spec} is a {config.get('trainer')!r} config; expected a pretraining config "
                           f"(trainer pretrain), e.g. {DEFAULT_CONFIG}")
  return ml_collections.ConfigDict(config.to_dict())  # unlocked copy


def _names(config) -> tuple[str, ...]:
  return modalities_lib.parse_names(config.modalities, "config.modalities")


def checkpoint_kind(state_dict: Mapping[str, Any]) -> str:
  """``"pretrain"`` (key encoders or queues present) or ``"downstream"`` (query encoders only)."""
  if any(k.startswith("encoder_k") or k.startswith("queue") for k in state_dict):
    return "pretrain"
  return "downstream"


def _shape(state_dict, key):
  value = state_dict.get(key)
  return tuple(value.shape) if value is not None and hasattr(value, "shape") else None


def resolve_config(state_dict: Mapping[str, Any], config=None, *, hidden_size: int | None = None,
                   num_layers: int | None = None) -> ml_collections.ConfigDict:
  """The pretraining config the checkpoint is imported under (see the module docstring).

  ``config=None``: ``DEFAULT_CONFIG`` with the model sizes read off ``state_dict``;
  otherwise ``config`` as given. ``hidden_size``/``num_layers`` override either. A
  downstream-only checkpoint always gets ``model.mlp=False``, ``model.embed_dim=num_class``.
  """
  infer = config is None
  config = load_config(config)
  names = _names(config)
  prefix = next((QUERY_PREFIX[m] for m in names if f"{QUERY_PREFIX[m]}.encoder.gru.weight_hh_l0" in state_dict),
                QUERY_PREFIX[names[0]])
  kind = checkpoint_kind(state_dict)
  if infer:
    hh = _shape(state_dict, f"{prefix}.encoder.gru.weight_hh_l0")
    if hh is not None and len(hh) == 2:
      config.model.hidden_size = int(hh[1])
    layers = 0
    while f"{prefix}.encoder.gru.weight_hh_l{layers}" in state_dict:
      layers += 1
    if layers:
      config.model.num_layers = layers
    if f"{prefix}.fc.0.weight" in state_dict or f"{prefix}.fc.2.weight" in state_dict:
      config.model.mlp = True
      out = _shape(state_dict, f"{prefix}.fc.2.weight")
    else:
      config.model.mlp = False
      out = _shape(state_dict, f"{prefix}.fc.weight")
    if out is not None and len(out) == 2:
      config.model.embed_dim = int(out[0])
    queue = _shape(state_dict, QUEUE_KEY[names[0]])
    if queue is not None and len(queue) == 2:
      config.moco.queue_size = int(queue[1])
      config.cmd.topk = min(int(config.cmd.topk), int(queue[1]))
  if hidden_size is not None:
    config.model.hidden_size = int(hidden_size)
  if num_layers is not None:
    config.model.num_layers = int(num_layers)
  if kind == "downstream":
    out = _shape(state_dict, f"{prefix}.fc.weight")
    config.model.mlp = False
    if out is not None and len(out) == 2:
      config.model.embed_dim = int(out[0])
    config.cmd.topk = min(int(config.cmd.topk), int(config.moco.queue_size))
  return config


# ----------------------------------------------------------------------------------------
# state_dict <-> TrainState
# ----------------------------------------------------------------------------------------

def _base_state(config):
  from cmd_jax.trainers import pretrain  # pylint: disable=import-outside-toplevel
  return pretrain.create_train_state(config, data.layout_of(config.data), steps_per_epoch=1)


def _leaves(tree) -> list[tuple[str, str, Any]]:
  """``(module, name, leaf)`` of one encoder's params or batch_stats."""
  return [(module, name, leaf) for module, sub in tree.items() for name, leaf in sub.items()]


def expected_keys(config, kind: str = "pretrain", like_state=None) -> dict[str, tuple[tuple[int, ...], str]]:
  """Every reference key the config's architecture has: ``{key: (shape, dtype kind)}``."""
  if like_state is None:
    from cmd_jax.trainers import pretrain  # pylint: disable=import-outside-toplevel
    like_state = jax.eval_shape(lambda: pretrain.create_train_state(config, data.layout_of(config.data), 1))
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


def strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Removes DistributedDataParallel's ``module.`` prefix from every key that has it."""
  return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def _summarise(items: list[str], limit: int = 12) -> str:
  shown = ", ".join(items[:limit])
  return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _group_missing(missing: list[str], expected) -> list[str]:
  """Missing keys, a wholly missing encoder shown once as ``<prefix>.* (whole encoder, n keys)``."""
  out, done = [], set()
  for key in missing:
    prefix = key.split(".")[0]
    if "." in key and prefix not in done:
      group = [k for k in expected if k.startswith(prefix + ".")]
      if all(k in missing for k in group):
        out.append(f"{prefix}.* (the whole encoder, {len(group)} keys)")
        done.add(prefix)
        continue
    if prefix not in done:
      out.append(key)
  return out


def compare_keys(expected: Mapping[str, tuple[tuple[int, ...], str]], found: Mapping[str, np.ndarray]
                 ) -> tuple[list[str], list[str], list[str]]:
  """``(missing, unexpected, mismatched)``: the keys of ``expected`` (``{key: (shape, dtype
  kind "f" or "i")}``) absent from ``found``, the keys of ``found`` not expected, and a line
  per shape or dtype mismatch."""
  missing = sorted(set(expected) - set(found))
  unexpected = sorted(set(found) - set(expected))
  mismatched = []
  for key in sorted(set(expected) & set(found)):
    shape, dtype_kind = expected[key]
    arr = found[key]
    if tuple(arr.shape) != shape:
      mismatched.append(f"{key}: checkpoint {tuple(arr.shape)}, expected {shape}")
    elif dtype_kind == "f" and arr.dtype.kind != "f":
      mismatched.append(f"{key}: checkpoint dtype {arr.dtype}, expected a float tensor")
    elif dtype_kind == "i" and arr.dtype.kind not in "iu":
      mismatched.append(f"{key}: checkpoint dtype {arr.dtype}, expected an integer tensor")
  return missing, unexpected, mismatched


def check_state_dict(state_dict: Mapping[str, Any], config, kind: str, like_state=None) -> None:
  """Raises ``TorchImportError`` listing missing/unexpected keys and shape mismatches."""
  expected = expected_keys(config, kind, like_state)
  found = {k: _to_numpy(v) for k, v in state_dict.items()}
  missing, unexpected, mismatched = compare_keys(expected, found)
  if missing or unexpected or mismatched:
    layout = data.layout_of(config.data)
    lines = [f"the state_dict is not a reference CMD {kind} checkpoint of the expected architecture "
             f"(hidden size {config.model.hidden_size}, {config.model.num_layers} layer(s), "
             f"{layout.num_joints * 3 * layout.num_persons} input features ({config.data.dataset}), "
             f"{'MLP head' if config.model.mlp else 'linear head'} to {config.model.embed_dim}"
             + (f", queue {config.moco.queue_size}" if kind == "pretrain" else "") + f", modalities {config.modalities}):"]
    if missing:
      lines.append(f"missing keys ({len(missing)}): {_summarise(_group_missing(missing, expected))}")
    if unexpected:
      lines.append(f"unexpected keys ({len(unexpected)}): {_summarise(unexpected)}")
    if mismatched:
      hh = next((tuple(found[k].shape) for k in found if k.endswith(".encoder.gru.weight_hh_l0")), None)
      ih = next((tuple(found[k].shape) for k in found if k.endswith(".encoder.gru.weight_ih_l0")), None)
      if hh is not None and ih is not None and len(hh) == 2 and len(ih) == 2:
        lines.append(f"the checkpoint's first encoder has hidden size {hh[1]} and {ih[1]} input features")
      lines.append(f"shape mismatches ({len(mismatched)}): {_summarise(mismatched, 6)}")
    raise TorchImportError("\n  ".join(lines))


def state_dict_to_state(state_dict: Mapping[str, Any], config, *, epoch: int | None = None):
  """A reference ``state_dict`` -> ``(TrainState, meta)`` under ``config`` (already resolved).

  ``meta`` holds what the train state has no place for (``num_batches_tracked``, the
  reference epoch, what was imported); ``export`` reads it back. Raises ``TorchImportError``.
  """
  state_dict = strip_module_prefix(state_dict)
  kind = checkpoint_kind(state_dict)
  base = _base_state(config)
  check_state_dict(state_dict, config, kind, like_state=base)
  sd = {k: _to_numpy(v) for k, v in state_dict.items()}
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


# ----------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------

def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], int | None]:
  """``(state_dict without module. prefixes, epoch or None)`` of a reference checkpoint file."""
  import torch  # pylint: disable=import-outside-toplevel

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise TorchImportError(f"{path} does not exist; expected a reference checkpoint (e.g. checkpoint_0450.pth.tar)")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as err:  # pylint: disable=broad-except
    raise TorchImportError(f"{path} is not a readable torch checkpoint ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}); expected a file written by torch.save "
                           "holding {'epoch', 'state_dict', 'optimizer'} or a state_dict (truncated or "
                           "not a torch file?)") from None
  epoch = None
  if isinstance(obj, Mapping) and "state_dict" in obj:
    epoch = obj.get("epoch")
    state_dict = obj["state_dict"]
  else:
    state_dict = obj
  if not isinstance(state_dict, Mapping) or not state_dict:
    raise TorchImportError(f"{path} holds a {type(state_dict).__name__}; expected a dict with a 'state_dict' or a "
                           "non-empty state_dict of tensors")
  bad = sorted(str(k) for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
  if bad:
    raise TorchImportError(f"{path}: the state_dict has entries that are not named tensors: {_summarise(bad)}")
  if epoch is not None:
    try:
      epoch = int(epoch)
    except (TypeError, ValueError):
      raise TorchImportError(f"{path}: 'epoch' is {epoch!r}; expected an integer") from None
  return strip_module_prefix(state_dict), epoch


def _check_new_workdir(workdir: str) -> None:
  """Refuses an existing ``workdir`` that is not an empty folder; one that holds a finished
  import (the folder appears only complete, by the final rename, so a rerun of an import
  killed after that rename finds it) is named as such."""
  if not os.path.exists(workdir) or (os.path.isdir(workdir) and not os.listdir(workdir)):
    return
  try:
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
      source = json.load(f)["torch_import"]["source"]
  except (OSError, ValueError, KeyError, TypeError):
    source = None
  if source is not None and checkpoint.saved_steps(workdir):
    raise TorchImportError(f"{workdir} already holds a complete import (of {source}); nothing was written. Use it as "
                           f"it is (--config.init_from={workdir}), or remove it to import again")
  raise TorchImportError(f"{workdir} already exists and is not empty; expected a new workdir")


def _write_atomically(workdir: str, write) -> None:
  """Runs ``write(tmp_dir)`` in a temporary sibling folder, then renames it to ``workdir``."""
  _check_new_workdir(workdir)
  parent = os.path.dirname(workdir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(workdir)}.importing-", dir=parent)
  try:
    write(tmp)
    if os.path.isdir(workdir):
      os.rmdir(workdir)
    os.rename(tmp, workdir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def import_checkpoint(path: str | os.PathLike, workdir: str | os.PathLike, config=None, *,
                      hidden_size: int | None = None, num_layers: int | None = None, method: str | None = None,
                      epoch: int | None = None) -> dict[str, Any]:
  """Converts a reference checkpoint file into a new pretraining workdir; returns the meta written.

  ``method``: ``"cmd"`` or ``"hiclr"``; None detects it from the keys (``cmd_jax.torch_hiclr.is_hiclr``).
  ``config``: None (the method's default config, sizes from the checkpoint), a
  ``path.py[:arg]`` spec or a ConfigDict (sizes checked). ``epoch`` overrides the
  checkpoint's epoch (HiCLR files hold none: it is read from ``epoch<N>_model.pt`` names).
  Raises ``TorchImportError`` with nothing written.
  """
  from cmd_jax import torch_hiclr  # pylint: disable=import-outside-toplevel

  path = os.path.abspath(os.fspath(path))
  workdir = os.path.abspath(os.fspath(workdir))
  _check_new_workdir(workdir)
  if method not in (None, "cmd", "hiclr"):
    raise TorchImportError(f"method {method!r}; expected 'cmd' or 'hiclr' (or none: detected from the keys)")
  state_dict, stored_epoch = read_checkpoint(path)
  if method is None:
    method = "hiclr" if torch_hiclr.is_hiclr(state_dict) else "cmd"
  if epoch is None:
    epoch = stored_epoch if stored_epoch is not None else torch_hiclr.epoch_from_name(path)
  if method == "hiclr":
    if hidden_size is not None or num_layers is not None:
      raise TorchImportError("--hidden-size/--num-layers are CMD's GRU sizes; a HiCLR checkpoint's sizes are read "
                             "off its shapes (or give --config)")
    config = torch_hiclr.resolve_config(state_dict, config)
    convert = torch_hiclr.state_dict_to_state
  else:
    config = resolve_config(state_dict, config, hidden_size=hidden_size, num_layers=num_layers)
    convert = state_dict_to_state
  try:
    data.layout_of(config.data)
  except ValueError as err:
    raise TorchImportError(str(err)) from None
  state, meta = convert(state_dict, config, epoch=epoch)
  from cmd_jax.pretrained import non_finite_leaves  # pylint: disable=import-outside-toplevel
  bad = non_finite_leaves({"params": state.params, "key_params": state.key_params,
                           "batch_stats": state.batch_stats, "queues": state.queues})
  if bad:
    raise TorchImportError(f"{path} holds non-finite values ({'; '.join(bad[:3])}{'; ...' if len(bad) > 3 else ''}); "
                           "expected a finite checkpoint (nothing was written)")
  step = int(epoch or 0)
  config.torch_import = ml_collections.ConfigDict(
      {"source": path, "epoch": -1 if epoch is None else epoch, "kind": meta["kind"]})
  config.name = f"{config.name}_torch_import_epoch{epoch if epoch is not None else 'unknown'}"
  meta.update({"config": config.name, "epoch": step, "step": step, "source": path, "method": method})

  def write(tmp):
    with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
    ckpt = checkpoint.Checkpointer(tmp, keep=1)
    try:
      ckpt.save(step, state, {}, meta)
    finally:
      ckpt.close()

  _write_atomically(workdir, write)
  return meta


def export_checkpoint(workdir: str | os.PathLike, out_path: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
  """Writes the latest (or ``step``) checkpoint of a pretraining workdir as the reference
  of its method writes one: CMD ``{'epoch', 'state_dict', 'optimizer': None}``; HiCLR a bare
  ``state_dict`` (torchlight's ``save_model``). Returns ``{'epoch', 'state_dict', ...}``."""
  import torch  # pylint: disable=import-outside-toplevel
  from cmd_jax import pretrained, sharding, torch_hiclr  # pylint: disable=import-outside-toplevel
  from cmd_jax.methods import method_name  # pylint: disable=import-outside-toplevel
  from cmd_jax.trainers import pretrain  # pylint: disable=import-outside-toplevel

  workdir = os.path.abspath(os.fspath(workdir))
  config = pretrained.read_pretrain_config(workdir)
  ckpt = checkpoint.Checkpointer(workdir, keep=1000)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise FileNotFoundError(f"{workdir} has no checkpoint (expected checkpoints/<step>/)")
    step = max(steps) if step is None else int(step)
    if step not in steps:
      raise FileNotFoundError(f"{workdir} has no step {step} (steps: {', '.join(map(str, sorted(steps)))})")
    like = jax.eval_shape(lambda: pretrain.create_train_state(config, data.layout_of(config.data), 1))
    state, _, meta = ckpt.restore(step, like, sharding.make_mesh())
  finally:
    ckpt.close()
  hiclr = method_name(config) == "hiclr"
  state_dict = (torch_hiclr.state_to_state_dict if hiclr else state_to_state_dict)(state, config, meta)
  epoch = meta.get("torch_epoch")
  if epoch is None:
    epoch = int(math.floor(float(meta.get("epoch", step))))
  out = {"epoch": int(epoch), "state_dict": state_dict, "optimizer": None}
  out_path = os.path.abspath(os.fspath(out_path))
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  tmp = out_path + ".tmp"
  torch.save(state_dict if hiclr else out, tmp)
  os.replace(tmp, out_path)
  return out


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------

def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m cmd_jax.torch_import",
      description="Import a PyTorch reference CMD or HiCLR checkpoint into a workdir, or --export a workdir to one.")
  parser.add_argument("checkpoint", nargs="?", help="reference checkpoint to import (CMD: checkpoint_0450.pth.tar; "
                      "HiCLR: epoch300_model.pt)")
  parser.add_argument("--workdir", help="the new workdir to write (import)")
  parser.add_argument("--method", choices=("cmd", "hiclr"), default=None,
                      help="the checkpoint's method (default: detected from its keys)")
  parser.add_argument("--config", default=None, help=f"pretraining config (default {DEFAULT_CONFIG}, or "
                      "configs/pretrain_hiclr.py:ntu60_xsub[_dsta] for HiCLR, with the model sizes read off the "
                      "checkpoint; given: sizes are checked)")
  parser.add_argument("--epoch", type=int, default=None, help="the checkpoint's epoch (default: its own 'epoch', or "
                      "N of an epoch<N>_model.pt name, else 0)")
  parser.add_argument("--hidden-size", type=int, default=None, help="CMD: expected GRU hidden size")
  parser.add_argument("--num-layers", type=int, default=None, help="CMD: expected GRU layer count")
  parser.add_argument("--export", nargs=2, metavar=("WORKDIR", "OUT"), help="export WORKDIR to OUT (.pth.tar)")
  args = parser.parse_args(argv)
  try:
    if args.export:
      if args.checkpoint or args.workdir:
        parser.error("--export takes WORKDIR OUT and no checkpoint/--workdir")
      out = export_checkpoint(*args.export)
      print(f"wrote {args.export[1]}: epoch {out['epoch']}, {len(out['state_dict'])} tensors")
    else:
      if not args.checkpoint or not args.workdir:
        parser.error("give a checkpoint and --workdir (import), or --export WORKDIR OUT")
      meta = import_checkpoint(args.checkpoint, args.workdir, args.config, hidden_size=args.hidden_size,
                               num_layers=args.num_layers, method=args.method, epoch=args.epoch)
      print(f"wrote {args.workdir}: {meta['method'].upper()} {meta['kind']} checkpoint, epoch {meta['torch_epoch']}, "
            f"step {meta['step']}; "
            f"key encoders {meta['key_encoders']}; queues {meta['queues']}; optimizer {meta['optimizer']}")
  except (TorchImportError, FileNotFoundError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
