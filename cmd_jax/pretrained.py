"""Loading any pretraining workdir's query encoders for the downstream protocols.

This module owns the step from "a pretraining workdir" (any method, any encoder) to "the
encoders a downstream protocol starts from", as the references' ``load_pretrained`` does:
the *query* encoders of every pretrained stream, without their projection heads (every
``fc``/``fc_0``/``fc_2``), BatchNorm running statistics included; key encoders, queues,
method parameters (e.g. HiCLR's mask value) and optimizer state are not used.

A pretraining workdir (``cmd_jax.trainers.pretrain.train_and_evaluate``) holds
``config.json`` (the pretraining config, from which the method's state and the encoders are
rebuilt: ``config.method``, ``config.model.name``; configs written before those fields
existed are CMD with the GRU) and orbax checkpoints ``checkpoints/<step>/{state,data,meta}``
(``cmd_jax.checkpoint``). The train state is restored with the structure the method's
``create_state`` gives, after its shapes have been checked against the checkpoint's
metadata, so a checkpoint that does not fit its ``config.json`` (another hidden size, layer
count, layout or stream set) is reported with what was found and what was expected
instead of an orbax traceback. The method picks the encoders
(``method.query_encoders``).

``load_pretrained(workdir, random_init=True)`` returns the encoders the pretraining
*started* from (``create_state`` is deterministic in ``config.seed``): the "same encoder
at random initialisation" baseline of the protocols, without reading a checkpoint.

``check_compatible(pretrained, data_config, streams)`` is the downstream side's check:
the downstream dataset must have the pretraining's skeleton layout and data variant, and
every requested stream must have been pretrained.
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

from cmd_jax import checkpoint, data, models, modalities as modalities_lib, sharding
from cmd_jax.errors import ConfigError
from cmd_jax.layouts import SkeletonLayout
from cmd_jax.methods import PRETRAIN_TRAINERS, create_train_state, get_method, method_name
from cmd_jax.models import strip_head
from cmd_jax.state_checks import check_shapes, non_finite_leaves


@dataclasses.dataclass
class Pretrained:
  """The query encoders of a pretraining run, without their heads (host numpy leaves).

  Attributes:
    workdir: the pretraining workdir (absolute).
    config: the pretraining config (``config.json``).
    layout: the skeleton layout the encoders were pretrained on.
    step: the checkpoint step restored (0 for ``random_init``).
    params: ``{stream: encoder params without the head}``.
    batch_stats: ``{stream: BN running statistics}``.
    random_init: whether these are the pretraining's initial (random) weights.
  """

  workdir: str
  config: ml_collections.ConfigDict
  layout: SkeletonLayout
  step: int
  params: dict[str, Any]
  batch_stats: dict[str, Any]
  random_init: bool = False
  workdirs: list[str] = dataclasses.field(default_factory=list)  # every workdir merged (load_pretrained_streams)

  @property
  def modalities(self) -> tuple[str, ...]:
    return tuple(self.params)

  @property
  def method(self) -> str:
    return method_name(self.config)

  @property
  def model_name(self) -> str:
    return models.model_name(self.config.model)

  @property
  def feature_dim(self) -> int:
    """The size of the pooled feature the protocols use (CMD's GRU: 2H)."""
    return models.feature_dim(self.config.model)

  @property
  def frames(self) -> int:
    """The clip length the encoders were pretrained on."""
    return get_method(self.method).eval_view(self.config)[0]

  @property
  def eval_crop(self) -> float | None:
    """The test view's centre-crop ratio (None: the stored clip as it is)."""
    return get_method(self.method).eval_view(self.config)[1]

  @property
  def min_length(self) -> int:
    """The pretraining's minimum crop length (the downstream train view's default)."""
    return get_method(self.method).min_length(self.config)

  @property
  def variant(self) -> str:
    """The data variant the encoders were pretrained on (``config.data.variant``)."""
    return str(self.config.data.get("variant", "standard"))

  @property
  def dataset(self) -> str:
    return f"{self.config.data.dataset}/{self.config.data.benchmark}"

  def model(self, num_outputs: int | None = None, fc_init: str = "normal_0.01", dropout: float | None = None):
    """The encoder architecture; ``num_outputs=None``: no head (the call returns the pooled
    feature); otherwise a new downstream ``fc`` of that size (by default ``N(0, 0.01)``
    weight and zero bias, the CMD protocols' classifier). ``dropout``: the encoder's
    training-time dropout rate (None: the pretraining's)."""
    model_config = self.config.model if dropout is None else models.with_dropout(self.config.model, dropout)
    return models.build_encoder(model_config, self.layout, num_outputs=num_outputs, mlp=False, fc_init=fc_init)

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
  trainer = config.get("trainer", "cmd_pretrain")
  try:
    method = get_method(method_name(config))
  except ValueError as err:
    raise ConfigError(f"{path}: {err}") from None
  missing = [f for f in (*method.REQUIRED_FIELDS, "seed", "data.dataset", "model.embed_dim")
             if not _has_field(config, f)]
  if missing:
    raise ConfigError(f"{path} lacks {', '.join(missing)}; expected a {method_name(config).upper()} pretraining "
                      f"config (trainer pretrain), found trainer={trainer!r}")
  if trainer not in PRETRAIN_TRAINERS:
    raise ConfigError(f"{path} is the config of a {trainer!r} run; expected a pretraining workdir "
                      "(trainer pretrain)")
  return config


def _has_field(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


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
    ConfigError: ``config.json`` is not a pretraining config, or the checkpoint's arrays
      do not have the shapes it implies.
  """
  workdir = os.path.abspath(os.fspath(workdir))
  config = read_pretrain_config(workdir)
  method = get_method(method_name(config))
  try:
    names = method.streams(config)
    layout = data.layout_of(config.data)
    models.validate(config.model, layout)
  except ValueError as err:
    raise ConfigError(f"{workdir}/config.json: {err}") from None
  expected = jax.eval_shape(lambda: create_train_state(config, layout, steps_per_epoch=1))

  if random_init:
    state = create_train_state(config, layout, steps_per_epoch=1)
    restored_step = 0
  else:
    ckpt_dir = os.path.join(workdir, "checkpoints")
    steps = checkpoint.saved_steps(workdir)
    if not steps:
      raise FileNotFoundError(f"{workdir} has no checkpoint (expected checkpoints/<step>/state); has its "
                              "pretraining run saved one yet?")
    mesh = mesh if mesh is not None else sharding.make_mesh()
    if step is None or int(step) < 0:  # the newest readable one (a damaged newer one is reported)
      ckpt = checkpoint.Checkpointer(workdir, keep=len(steps) + 1)
      try:
        restored_step, state, _, _ = ckpt.restore_newest_readable(
            expected, mesh, set_aside=False, log=lambda line: print(f"{workdir}: {line}"),
            check=lambda stored, step_dir: check_shapes(expected, stored, f"checkpoint {step_dir}/state",
                                                        method_name(config)))
      finally:
        ckpt.close()
    elif int(step) in steps:
      restored_step = int(step)
      state_dir = os.path.join(ckpt_dir, str(restored_step), "state")
      try:
        stored = ocp.StandardCheckpointHandler().metadata(epath.Path(state_dir)).tree
      except (FileNotFoundError, ValueError, OSError) as err:
        raise FileNotFoundError(f"{state_dir} is not a readable orbax checkpoint ({err})") from None
      check_shapes(expected, stored, f"checkpoint {state_dir}", method_name(config))
      ckpt = checkpoint.Checkpointer(workdir, keep=len(steps) + 1)
      try:
        state, _, _ = ckpt.restore(restored_step, expected, mesh)
      finally:
        ckpt.close()
    else:
      raise FileNotFoundError(f"{ckpt_dir} has no step {step} (steps there: {', '.join(map(str, steps))})")

  encoders = method.query_encoders(state, config)
  params = {m: to_host(strip_head(encoders[m]["params"])) for m in names}
  stats = {m: to_host(encoders[m]["batch_stats"]) for m in names}
  bad = non_finite_leaves({"params": params, "batch_stats": stats})
  if bad:  # a NaN weight would make every feature NaN, silently
    raise ConfigError(f"{workdir}: checkpoint step {restored_step} holds non-finite encoder weights "
                      f"({'; '.join(bad[:3])}{'; ...' if len(bad) > 3 else ''}); expected a finite model: an "
                      "earlier step (--config.init_step=<step>) or a rerun of that pretraining")
  return Pretrained(workdir=workdir, config=config, layout=layout, step=restored_step, params=params,
                    batch_stats=stats, random_init=random_init)


def load_pretrained_streams(init_from: str, step: int | None = None, *, random_init: bool = False,
                            mesh: jax.sharding.Mesh | None = None) -> Pretrained:
  """``load_pretrained`` of one workdir, or of several (comma-separated) whose streams are
  merged: HiCLR pretrains one stream per run, so its three-stream protocols take
  ``init_from=W_joint,W_motion,W_bone``. The workdirs must share the encoder configuration,
  the layout and the data variant, and pretrain distinct streams; the result's ``config`` and
  ``step`` are the first workdir's (``workdirs`` lists them all)."""
  paths = [p.strip() for p in str(init_from).split(",") if p.strip()]
  parts = [load_pretrained(p, step, random_init=random_init, mesh=mesh) for p in paths]
  first = parts[0]
  if len(parts) == 1:
    return first
  for other in parts[1:]:
    if other.config.model.to_dict() != first.config.model.to_dict() or other.layout.name != first.layout.name \
        or other.variant != first.variant:
      raise ConfigError(f"init_from: {other.workdir} ({other.model_name}, layout {other.layout.name}, "
                        f"{other.variant} data) and {first.workdir} ({first.model_name}, layout {first.layout.name}, "
                        f"{first.variant} data) differ in their encoder, layout or data variant; expected "
                        "pretrainings of the same encoder on the same data")
    shared = sorted(set(other.params) & set(first.params))
    if shared:
      raise ConfigError(f"init_from: {', '.join(shared)} is pretrained in more than one of {', '.join(paths)}; "
                        "expected one workdir per stream")
    first.params.update(other.params)
    first.batch_stats.update(other.batch_stats)
  first.workdirs = [p.workdir for p in parts]
  return first


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
                      f"pretrained only {', '.join(pretrained.modalities)} ({pretrained.method} pretraining; "
                      f"{get_method(pretrained.method).STREAMS_FIELD}="
                      f"{pretrained.config.get(get_method(pretrained.method).STREAMS_FIELD.split('.', 1)[1])!r})")
  variant = str(data_config.get("variant", "") or pretrained.variant)
  if variant != pretrained.variant:
    raise ConfigError(f"config.data.variant={variant!r}, but init_from={pretrained.workdir} was pretrained on the "
                      f"{pretrained.variant!r} variant of its data; expected the same variant (leave "
                      "config.data.variant empty to use the pretraining's)")
