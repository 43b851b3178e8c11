"""What every PyTorch checkpoint format shares: reading and writing torch files, key checks, configs, workdirs.

This module owns the format-independent pieces of the conversion (``cmd_jax.interop``):
the error type, reading a reference checkpoint file (``{'epoch', 'state_dict', ...}`` or a
bare ``state_dict``; DistributedDataParallel's ``module.`` prefixes stripped) and writing one
atomically, comparing a ``state_dict``'s keys, shapes and dtypes with an architecture's
expected ones (and summarising the differences in one message), loading the pretraining
config an import runs under, and building the target workdir in a temporary sibling folder
that is renamed only when complete (``write_atomically``; a killed import's leftover folder is
removed by the next import into that target, ``remove_unfinished_imports``), and an exported
file through a temporary file renamed when complete.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Callable, Mapping

import ml_collections
import numpy as np

from cmd_jax import checkpoint, disk_full
from cmd_jax.methods import PRETRAIN_TRAINERS

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ExpectedKeys = Mapping[str, tuple[tuple[int, ...], str]]  # {key: (shape, dtype kind "f" or "i")}


class TorchImportError(ValueError):
  """A file or state_dict that is not a reference checkpoint of the expected format and architecture."""


# ----------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------

def load_config(spec: str | ml_collections.ConfigDict, default: str) -> ml_collections.ConfigDict:
  """An unlocked copy of a pretraining config: ``spec`` as ``path.py[:arg]`` (relative to the
  cwd or the repository) or a ConfigDict. ``default`` is named in the errors."""
  if isinstance(spec, ml_collections.ConfigDict):
    return ml_collections.ConfigDict(spec.to_dict())
  path, _, arg = str(spec).partition(":")
  if not os.path.isfile(path) and os.path.isfile(os.path.join(_REPO, path)):
    path = os.path.join(_REPO, path)
  if not os.path.isfile(path):
    raise TorchImportError(f"config file {path} does not exist; expected e.g. {default}")
  module_spec = importlib.util.spec_from_file_location(f"_torch_import_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  if config.get("trainer") not in PRETRAIN_TRAINERS:
    raise TorchImportError(f"{spec} is a {config.get('trainer')!r} config; expected a pretraining config "
                           f"(trainer pretrain), e.g. {default}")
  return ml_collections.ConfigDict(config.to_dict())


# ----------------------------------------------------------------------------------------
# state_dicts
# ----------------------------------------------------------------------------------------

def strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Removes DistributedDataParallel's ``module.`` prefix from every key that has it."""
  return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def to_numpy(value) -> np.ndarray:
  """A host numpy array of a torch tensor (or anything array-like)."""
  if hasattr(value, "detach"):
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def shape_of(state_dict: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
  """The shape of ``state_dict[key]``, None if absent."""
  value = state_dict.get(key)
  return tuple(value.shape) if value is not None and hasattr(value, "shape") else None


def summarise(items: list[str], limit: int = 12) -> str:
  """The first ``limit`` items, comma-separated, and how many there are in all."""
  shown = ", ".join(items[:limit])
  return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def group_missing(missing: list[str], expected: ExpectedKeys) -> list[str]:
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


def compare_keys(expected: ExpectedKeys, found: Mapping[str, np.ndarray]) -> tuple[list[str], list[str], list[str]]:
  """``(missing, unexpected, mismatched)``: the keys of ``expected`` absent from ``found``,
  the keys of ``found`` not expected, and a line per shape or dtype mismatch."""
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


def key_report(header: str, expected: ExpectedKeys, missing: list[str], unexpected: list[str],
               mismatched: list[str], notes: tuple[str, ...] = ()) -> str:
  """The message of a ``state_dict`` that does not fit: ``header``, then one line each for the
  missing keys (grouped by encoder), the unexpected keys, ``notes`` and the mismatches."""
  lines = [header]
  if missing:
    lines.append(f"missing keys ({len(missing)}): {summarise(group_missing(missing, expected))}")
  if unexpected:
    lines.append(f"unexpected keys ({len(unexpected)}): {summarise(unexpected)}")
  lines.extend(notes)
  if mismatched:
    lines.append(f"shape mismatches ({len(mismatched)}): {summarise(mismatched, 6)}")
  return "\n  ".join(lines)


# ----------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------

def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], int | None]:
  """``(state_dict without module. prefixes, epoch or None)`` of a reference checkpoint file:
  ``{'epoch', 'state_dict', ...}`` (CMD) or a bare ``state_dict`` (torchlight)."""
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
    raise TorchImportError(f"{path}: the state_dict has entries that are not named tensors: {summarise(bad)}")
  if epoch is not None:
    try:
      epoch = int(epoch)
    except (TypeError, ValueError):
      raise TorchImportError(f"{path}: 'epoch' is {epoch!r}; expected an integer") from None
  return strip_module_prefix(state_dict), epoch


def save_torch_file(obj: Any, path: str | os.PathLike) -> str:
  """``torch.save(obj)`` to ``path`` through a hidden temporary file beside it (``.<name>.exporting``,
  flushed to disk) renamed at the end, so ``path`` is absent or complete; returns the path. The
  caller holds ``path``'s lock (two writers would share the temporary file). A failed write
  removes the temporary file; torch is given a Python file object, so a full disk surfaces as
  the ``OSError`` it is (a path would give a bare ``RuntimeError``)."""
  import torch  # pylint: disable=import-outside-toplevel

  path = os.path.abspath(os.fspath(path))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.exporting")
  try:
    with open(tmp, "wb") as f:
      torch.save(obj, f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as err:
    if os.path.exists(tmp):
      os.remove(tmp)
    code = disk_full.errno_of(err)
    if code is not None:  # torch's error names neither the errno's text nor the file
      raise OSError(code, os.strerror(code), tmp) from err
    raise
  return path


_EPOCH_IN_NAME = re.compile(r"epoch(\d+)_model\.pt$")


def epoch_from_name(path: str | os.PathLike) -> int | None:
  """The epoch of a torchlight file name ``epoch<N>_model.pt``, else None."""
  match = _EPOCH_IN_NAME.search(os.fspath(path))
  return int(match.group(1)) if match else None


# ----------------------------------------------------------------------------------------
# Workdirs
# ----------------------------------------------------------------------------------------

def check_new_workdir(workdir: str) -> None:
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


IMPORTING = ".importing-"  # in the name of the temporary sibling folder an import is written in


def remove_unfinished_imports(workdir: str, say: Callable[[str], None]) -> list[str]:
  """Removes the temporary ``.<name>.importing-*`` folders of imports into ``workdir`` that did
  not finish (killed), saying so; only the run holding ``workdir``'s lock may."""
  parent, name = os.path.dirname(workdir), os.path.basename(workdir)
  prefix = f".{name}{IMPORTING}"
  left = sorted(e for e in os.listdir(parent) if e.startswith(prefix)) if os.path.isdir(parent) else []
  for entry in left:
    shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    say(f"removed {os.path.join(parent, entry)}, left by an import into {workdir} that did not finish")
  return left


def write_atomically(workdir: str, write: Callable[[str], None]) -> None:
  """Runs ``write(tmp_dir)`` in a temporary sibling folder, then renames it to ``workdir``.
  The caller holds ``workdir``'s lock."""
  check_new_workdir(workdir)
  parent = os.path.dirname(workdir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(workdir)}{IMPORTING}", dir=parent)
  try:
    write(tmp)
    if os.path.isdir(workdir):
      os.rmdir(workdir)
    os.rename(tmp, workdir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
