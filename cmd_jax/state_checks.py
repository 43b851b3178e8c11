"""Checks of a train state's arrays: shapes against the state a config implies, and finite values.

Shared by the loaders of a checkpoint (``cmd_jax.pretrained`` for the downstream protocols,
``cmd_jax.trainers.pretrain`` when resuming) and the PyTorch import (``cmd_jax.interop``):
a checkpoint that does not fit its config (another hidden size, layer count, layout or
stream set) is reported with what was found and what was expected instead of an orbax
traceback, and a NaN or infinite weight is named instead of silently making every feature NaN.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from cmd_jax import modalities as modalities_lib
from cmd_jax.errors import ConfigError


def _tree_shapes(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(x.shape) for path, x in leaves}


def _describe(params_shapes: dict[str, tuple], state_field: str) -> str:
  """What a state's parameter shapes say about its encoders: for the GRU "modalities ...,
  hidden size H, L layer(s), F input features", otherwise the streams and the array count."""
  names = sorted({k.split("/")[0] for k in params_shapes}, key=lambda m: (
      modalities_lib.MODALITIES.index(m) if m in modalities_lib.MODALITIES else 99, m))
  if not names:
    return "no encoders"
  first = names[0]
  hh = params_shapes.get(f"{first}/gru/weight_hh_l0")
  if hh is None:
    return f"{state_field} {', '.join(names)} ({len(params_shapes)} arrays)"
  ih = params_shapes.get(f"{first}/gru/weight_ih_l0")
  layers = sum(1 for k in params_shapes if k.startswith(f"{first}/gru/weight_hh_l") and not k.endswith("_reverse"))
  hidden = hh[1] if hh and len(hh) == 2 else "?"
  features = ih[1] if ih and len(ih) == 2 else "?"
  return f"modalities {', '.join(names)}, hidden size {hidden}, {layers} layer(s), {features} input features"


_NOT_COMPARED = ("step", "opt_state", "rng")  # opt_state mirrors params; step and rng are scalars/keys


def check_shapes(expected_state, stored_tree, where: str, method: str, *, expected_from: str = "config.json",
                 advice: str = "expected the checkpoint of the run that wrote this config.json") -> None:
  """The checkpoint's state must have the shapes the config (``expected_from``: the
  workdir's ``config.json``, or the config of a run resuming it) implies (every field but
  the optimizer state, the step and the key); ``advice`` ends the error."""
  problems = []
  summary = None
  parts = [f.name for f in dataclasses.fields(expected_state) if f.name not in _NOT_COMPARED]
  for part in parts:
    if part not in stored_tree:
      raise ConfigError(f"{where}: the checkpoint state has no {part!r} (found {', '.join(sorted(stored_tree))}); "
                        f"expected a {method.upper()} pretraining train state")
    expected = _tree_shapes(getattr(expected_state, part))
    found = _tree_shapes(stored_tree[part])
    if part == "params":
      summary = f"found {_describe(found, part)}; {expected_from} implies {_describe(expected, part)}"
    for name in sorted(set(expected) | set(found)):
      if expected.get(name) != found.get(name):
        problems.append(f"{part}/{name}: found {found.get(name, 'nothing')}, expected {expected.get(name, 'nothing')}")
  if problems:
    shown = "; ".join(problems[:4]) + (f"; ... ({len(problems)} in all)" if len(problems) > 4 else "")
    its = "its config.json" if expected_from == "config.json" else expected_from
    raise ConfigError(f"{where} does not match {its}: {summary} ({shown}); {advice}")


def non_finite_leaves(tree) -> list[str]:
  """``"path (k of n)"`` for every floating-point leaf of ``tree`` holding NaN or inf."""
  out = []
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    x = np.asarray(x)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
      name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
      out.append(f"{name} ({int(np.size(x) - np.isfinite(x).sum())} of {x.size})")
  return out
