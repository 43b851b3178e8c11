"""Loading a pretraining workdir's query encoders for the downstream protocols (reference_cmd.md 5.2, 4.4).

This module owns the step from "a CMD pretraining workdir" to "the encoders a downstream
protocol starts from". The reference's ``load_pretrained`` keeps every key of the
pretraining ``state_dict`` that starts with ``encoder_q`` (the joint, motion and bone
*query* encoders), drops the projection head (every ``.fc`` key) and loads the rest, BN
running statistics included, into ``MoCo(pretrain=False)``, whose three ``fc`` layers are
new. Here the same selection is made on our train state:

- ``TrainState.params[m]`` minus its head (``fc``, ``fc_0``, ``fc_2``) -> ``Pretrained.params[m]``
  (input BatchNorm scale/bias and every GRU weight and bias);
- ``TrainState.batch_stats[m]`` (the query encoder's BN running mean/var) ->
  ``Pretrained.batch_stats[m]``;
- the key (momentum) encoders, queues and optimizer state are not used.

A pretraining workdir (``cmd_jax.trainers.cmd_pretrain.train_and_evaluate``) holds
``config.json`` (the pretraining config, from which the encoders are rebuilt) and orbax
checkpoints ``checkpoints/<step>/{state,data,meta}`` (``cmd_jax.checkpoint``). The train
state is restored with the structure ``create_train_state(config, layout, 1)`` gives, after
its shapes have been checked against the checkpoint's metadata, so a checkpoint that does
not fit its ``config.json`` (another hidden size, layer count, layout or modality set) is
reported with what was found and what was expected instead of an orbax traceback.

``load_pretrained(workdir, random_init=True)`` returns the encoders the pretraining
*started* from (``create_train_state`` is deterministic in ``config.seed``): the "same
encoder at random initialisation" baseline of the protocols, without reading a checkpoint.

``check_compatible(pretrained, data_config, streams)`` is the downstream side's check:
the downstream dataset must have the pretraining's skeleton layout (the encoders' input
width is ``V * 3 * M``) and every requested stream must have been pretrained.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from etils import epath
import orbax.checkpoint as ocp

from cmd_jax import checkpoint, data, modalities as modalities_lib, sharding
from cmd_jax.errors import ConfigError
from cmd_jax.layouts import SkeletonLayout
from cmd_jax.models import Encoder

HEAD_PREFIX = "fc"  # fc (plain head), fc_0 / fc_2 (the pretraining MLP): all dropped (spec 5.2 step 2)


@dataclasses.dataclass
class Pretrained:
  """The query encoders of a pretraining run, without their heads (host numpy leaves).

  Attributes:
    workdir: the pretraining workdir (absolute).
    config: the pretraining config (``config.json``).
    layout: the skeleton layout the encoders were pretrained on.
    step: the checkpoint step restored (0 for ``random_init``).
    params: ``{modality: encoder params without the head}``.
    batch_stats: ``{modality: BN running statistics}``.
    random_init: whether these are the pretraining's initial (random) weights.
  """

  workdir: str
  config: ml_collections.ConfigDict
  layout: SkeletonLayout
  step: int
  params: dict[str, Any]
  batch_stats: dict[str, Any]
  random_init: bool = False

  @property
  def modalities(self) -> tuple[str, ...]:
    return tuple(self.params)

  @property
  def hidden_size(self) -> int:
    return int(self.config.model.hidden_size)

  @property
  def feature_dim(self) -> int:
    """The 2H-d last-step feature the protocols use."""
    return 2 * self.hidden_size

  @property
  def frames(self) -> int:
    """The clip length (``augment.frames``) the encoders were pretrained on."""
    return int(self.config.augment.frames)

  @property
  def min_length(self) -> int:
    """The pretraining's minimum crop length (``augment.min_length``)."""
    return int(self.config.augment.min_length)

  @property
  def dataset(self) -> str:
    return f"{self.config.data.dataset}/{self.config.data.benchmark}"

  def model(self, num_outputs: int | None = None, fc_init: str = "normal_0.01") -> Encoder:
    """The encoder architecture; ``num_outputs=None``: no head (the call returns the 2H feature);
    otherwise a new downstream ``fc`` (``N(0, 0.01)`` weight, zero bias by default, spec 5.3)."""
    model_config = self.config.model
    return Encoder(hidden_size=int(model_config.hidden_size), num_layers=int(model_config.num_layers),
                   num_outputs=num_outputs, mlp=False, bidirectional=bool(model_config.bidirectional),
                   fc_init=fc_init)

  def variables(self, modality: str) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` of one modality's encoder (no head)."""
    if modality not in self.params:
      raise ConfigError(f"modality {modality!r} was not pretrained in {self.workdir} (pretrained: "
                        f"{', '.join(self.modalities)})")
    return {"params": self.params[modality], "batch_stats": self.batch_stats[modality]}


def read_pretrain_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The pretraining config of a workdir (``config.json``); clear errors if it is not one."""
  workdir = os.path.abspath(os.fspath(workdir))
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"{workdir} does not exist; expected a pretraining workdir holding "
                            "config.json and checkpoints/<step>/ (python launch.py --config "
                            "configs/pretrain_cmd.py:<name> --workdir <dir>)")
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    found = sorted(os.listdir(workdir))
    raise FileNotFoundError(f"{path} does not exist (the workdir holds: {', '.join(found) or 'nothing'}); "
                            "expected the config.json a pretraining run writes: is init_from a pretraining "
                            "workdir? (runs from before config.json was written must be rerun or given one)")
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except (OSError, ValueError) as err:
    raise ConfigError(f"{path} is not readable JSON ({err}); expected the pretraining config") from None
  if not isinstance(raw, dict):
    raise ConfigError(f"{path} holds a JSON {type(raw).__name__}; expected the pretraining config (an object)")
  config = ml_collections.ConfigDict(raw)
  missing = [f for f in ("modalities", "seed", "model.hidden_size", "model.num_layers", "model.embed_dim",
                         "model.mlp", "model.bidirectional", "data.dataset", "augment.frames")
             if not _has_field(config, f)]
  if missing:
    raise ConfigError(f"{path} lacks {', '.join(missing)}; expected a CMD pretraining config "
                      f"(trainer cmd_pretrain), found trainer={config.get('trainer')!r}")
  trainer = config.get("trainer", "cmd_pretrain")
  if trainer != "cmd_pretrain":
    raise ConfigError(f"{path} is the config of a {trainer!r} run; expected a pretraining workdir "
                      "(trainer cmd_pretrain)")
  return config


def _has_field(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def strip_head(params: dict[str, Any]) -> dict[str, Any]:
  """An encoder's params without its head (``fc``, ``fc_0``, ``fc_2``): spec 5.2 step 2."""
  return {k: v for k, v in params.items() if not (k == HEAD_PREFIX or k.startswith(HEAD_PREFIX + "_"))}


def _tree_shapes(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(x.shape) for path, x in leaves}


def _describe(params_shapes: dict[str, tuple]) -> str:
  """"modalities ..., hidden size H, L layer(s), F input features" read off encoder param shapes."""
  names = sorted({k.split("/")[0] for k in params_shapes}, key=lambda m: (
      modalities_lib.MODALITIES.index(m) if m in modalities_lib.MODALITIES else 99, m))
  if not names:
    return "no encoders"
  first = names[0]
  hh = params_shapes.get(f"{first}/gru/weight_hh_l0")
  ih = params_shapes.get(f"{first}/gru/weight_ih_l0")
  layers = sum(1 for k in params_shapes if k.startswith(f"{first}/gru/weight_hh_l") and not k.endswith("_reverse"))
  hidden = hh[1] if hh and len(hh) == 2 else "?"
  features = ih[1] if ih and len(ih) == 2 else "?"
  return f"modalities {', '.join(names)}, hidden size {hidden}, {layers} layer(s), {features} input features"


def _check_shapes(expected_state, stored_tree, where: str) -> None:
  """The checkpoint's query encoders must have the shapes ``config.json`` implies."""
  problems = []
  summary = None
  for part in ("params", "batch_stats"):
    if part not in stored_tree:
      raise ConfigError(f"{where}: the checkpoint state has no {part!r} (found {', '.join(sorted(stored_tree))}); "
                        "expected a CMD pretraining train state")
    expected = _tree_shapes(getattr(expected_state, part))
    found = _tree_shapes(stored_tree[part])
    if part == "params":
      summary = f"found {_describe(found)}; config.json implies {_describe(expected)}"
    for name in sorted(set(expected) | set(found)):
      if expected.get(name) != found.get(name):
        problems.append(f"{part}/{name}: found {found.get(name, 'nothing')}, expected {expected.get(name, 'nothing')}")
  if problems:
    shown = "; ".join(problems[:4]) + (f"; ... ({len(problems)} in all)" if len(problems) > 4 else "")
    raise ConfigError(f"{where} does not match its config.json: {summary} ({shown}); expected the checkpoint "
                      "of the run that wrote this config.json")


def load_pretrained(workdir: str | os.PathLike, step: int | None = None, *, random_init: bool = False,
                    mesh: jax.sharding.Mesh | None = None) -> Pretrained:
  """The query encoders (no heads, BN running stats kept) of a pretraining workdir.

  Args:
    workdir: a pretraining workdir (``config.json`` + ``checkpoints/``).
    step: the checkpoint step; None (or a negative number): the latest.
    random_init: return the pretraining's initial weights instead (no checkpoint is read).
    mesh: the mesh the checkpoint is restored on (default: all devices).

  Raises:
    FileNotFoundError: no such workdir, no ``config.json``, no checkpoint, no such step.
    ConfigError: ``config.json`` is not a CMD pretraining config, or the checkpoint's
      arrays do not have the shapes it implies.
  """
  # Imported here: the trainer module imports the whole training stack.
  from cmd_jax.trainers import cmd_pretrain  # pylint: disable=import-outside-toplevel

  workdir = os.path.abspath(os.fspath(workdir))
  config = read_pretrain_config(workdir)
  try:
    names = cmd_pretrain.modality_names(config)
    layout = data.layout_of(config.data)
  except ValueError as err:
    raise ConfigError(f"{workdir}/config.json: {err}") from None
  expected = jax.eval_shape(lambda: cmd_pretrain.create_train_state(config, layout, steps_per_epoch=1))

  if random_init:
    state = cmd_pretrain.create_train_state(config, layout, steps_per_epoch=1)
    restored_step = 0
  else:
    ckpt_dir = os.path.join(workdir, "checkpoints")
    steps = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit()) if os.path.isdir(ckpt_dir) else []
    if not steps:
      raise FileNotFoundError(f"{workdir} has no checkpoint (expected checkpoints/<step>/state); has its "
                              "pretraining run saved one yet?")
    if step is None or int(step) < 0:
      restored_step = steps[-1]
    elif int(step) in steps:
      restored_step = int(step)
    else:
      raise FileNotFoundError(f"{ckpt_dir} has no step {step} (steps there: {', '.join(map(str, steps))})")
    state_dir = os.path.join(ckpt_dir, str(restored_step), "state")
    try:
      stored = ocp.StandardCheckpointHandler().metadata(epath.Path(state_dir)).tree
    except (FileNotFoundError, ValueError, OSError) as err:
      raise FileNotFoundError(f"{state_dir} is not a readable orbax checkpoint ({err})") from None
    _check_shapes(expected, stored, f"checkpoint {state_dir}")
    mesh = mesh if mesh is not None else sharding.make_mesh()
    ckpt = checkpoint.Checkpointer(workdir, keep=len(steps) + 1)
    try:
      state, _, _ = ckpt.restore(restored_step, expected, mesh)
    finally:
      ckpt.close()

  params = {m: to_host(strip_head(state.params[m])) for m in names}
  stats = {m: to_host(state.batch_stats[m]) for m in names}
  return Pretrained(workdir=workdir, config=config, layout=layout, step=restored_step, params=params,
                    batch_stats=stats, random_init=random_init)


def to_host(tree):
  """Host numpy copies of (replicated, possibly multi-process) arrays."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.array(x.addressable_data(0), copy=True)
    return np.array(jax.device_get(x), copy=True)
  return jax.tree.map(one, tree)


def check_compatible(pretrained: Pretrained, data_config, streams: Sequence[str]) -> None:
  """The downstream dataset and streams must fit the pretrained encoders (ConfigError otherwise)."""
  try:
    layout = data.layout_of(data_config)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  if layout.name != pretrained.layout.name:
    features = lambda l: l.num_joints * 3 * l.num_persons  # pylint: disable=unnecessary-lambda-assignment
    raise ConfigError(
        f"init_from={pretrained.workdir} was pretrained on {pretrained.dataset} (layout {pretrained.layout.name}: "
        f"{pretrained.layout.num_joints} joints x {pretrained.layout.num_persons} persons, "
        f"{features(pretrained.layout)} input features) but config.data.dataset={data_config.dataset!r} has "
        f"layout {layout.name} ({layout.num_joints} joints x {layout.num_persons} persons, {features(layout)} "
        "features); expected a downstream dataset with the pretraining's layout")
  unknown = [s for s in streams if s not in modalities_lib.MODALITIES]
  if unknown:
    raise ConfigError(f"config.streams: unknown stream(s) {', '.join(unknown)}; expected names from "
                      f"{', '.join(modalities_lib.MODALITIES)}")
  missing = [s for s in streams if s not in pretrained.params]
  if missing:
    raise ConfigError(f"config.streams asks for {', '.join(missing)}, but init_from={pretrained.workdir} "
                      f"pretrained only {', '.join(pretrained.modalities)} (its config.modalities="
                      f"{pretrained.config.modalities!r})")
