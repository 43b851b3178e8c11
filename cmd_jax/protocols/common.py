"""What every protocol run starts and ends with: config checks, setup, and the run-once rule.

This module owns:

- ``validate``: every config check that needs no data or checkpoint (streams, init_from,
  batch sizes against the mesh, epochs, the optimizer, label ratio and sampling, head
  initialisation, training view, fusion weights, and the options of the contrastive
  family's processors: ``drop_last``, ``joint_probe``, ``finetune_mode``, ``knn_k``,
  ``knn_temperature``), one-line ``ConfigError``s;
- ``setup``: the device mesh, the pretrained encoders of ``config.init_from``
  (``cmd_jax.pretrained``), their fit to the downstream dataset and to the config's
  ``expected_method`` / ``expected_encoder`` (``check_settings_fit``), the train and test
  splits, the class count (``num_classes_of``), ``config.json`` in the workdir;
- ``run_once``: a workdir whose ``results.json`` comes from the same config and pretraining
  checkpoints (``run_inputs``, ``finished_results``) is returned as it is; otherwise the
  protocol runs, its plots are drawn, and ``results.json`` is rewritten with ``inputs``
  last (the mark of a complete run); the run holds the workdir's lock, stops cleanly on
  SIGTERM/SIGINT and reports a full disk in one line.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from typing import Any, Callable

import ml_collections
import numpy as np

from cmd_jax import action_names, checkpoint, data, disk_full, modalities, optim, preemption
from cmd_jax import pretrained as pretrained_lib, sharding, workdir_lock
from cmd_jax.errors import ConfigError
from cmd_jax.protocols import heads, outputs, subsets, views

PROTOCOLS = ("linear", "knn", "semi", "transfer", "finetune")
FINETUNE_PROTOCOLS = ("semi", "transfer", "finetune")
FINETUNE_MODES = ("train", "eval")

# Class counts by dataset (the action names' counts; a TFDS source's own metadata wins).
DATASET_CLASSES = {dataset: len(names) for dataset, names in action_names.ACTION_NAMES.items()}


def stream_names(config) -> tuple[str, ...]:
  """``config.streams`` ("joint", "joint,motion,bone", ...) as a tuple; ConfigError if malformed."""
  try:
    return modalities.parse_names(config.streams, "config.streams")
  except ValueError as err:
    raise ConfigError(str(err)) from None


def validate(config, protocol: str, mesh) -> tuple[str, ...]:
  """Every config check that needs no data or checkpoint; returns the streams."""
  if protocol not in PROTOCOLS or str(config.trainer) != protocol:
    raise ConfigError(f"config.trainer={config.trainer!r}: expected {protocol!r} (cmd_jax.trainers.TRAINERS "
                      "names the module of each protocol)")
  streams = stream_names(config)
  if not str(config.init_from):
    raise ConfigError("config.init_from is empty: pass --config.init_from=<pretraining workdir> (the --workdir of "
                      "a configs/pretrain_cmd.py run: it holds config.json and checkpoints/)")
  try:
    data.validate(config.data)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  sizes = [("config.eval_batch_size", int(config.eval_batch_size))]
  if protocol != "knn":
    sizes.append(("config.batch_size", int(config.batch_size)))
    if int(config.num_epochs) <= 0 or int(config.eval_every_epochs) <= 0:
      raise ConfigError(f"config.num_epochs={config.num_epochs} and config.eval_every_epochs="
                        f"{config.eval_every_epochs} must be positive")
    try:
      optim.validate(config)
    except ValueError as err:
      raise ConfigError(str(err)) from None
    if not isinstance(config.get("drop_last", False), bool):
      raise ConfigError(f"config.drop_last={config.drop_last!r}: expected True (drop each epoch's last partial "
                        "batch, the torchlight family's loaders) or False (keep it, CMD's)")
  for what, b in sizes:
    if b <= 0:
      raise ConfigError(f"{what}={b} must be positive")
    try:
      sharding.check_batch_divisible(b, mesh, what)
    except ValueError as err:
      raise ConfigError(str(err)) from None
  if protocol in FINETUNE_PROTOCOLS:
    subsets.validate_ratio(config.label_ratio)
    if config.sampling not in subsets.SAMPLINGS:
      raise ConfigError(f"config.sampling={config.sampling!r}; expected one of {', '.join(subsets.SAMPLINGS)}")
    if not list(config.seeds):
      raise ConfigError("config.seeds is empty; expected at least one seed, e.g. (0, 1, 2, 3, 4)")
    if str(config.get("epoch_length", "subset")) not in subsets.EPOCH_LENGTHS:
      raise ConfigError(f"config.epoch_length={config.epoch_length!r}; expected one of "
                        f"{', '.join(subsets.EPOCH_LENGTHS)}")
  if str(config.get("head_init", "normal_0.01")) not in heads.HEAD_INITS:
    raise ConfigError(f"config.head_init={config.head_init!r}; expected one of {', '.join(heads.HEAD_INITS)}")
  if str(config.augment.get("train_view", "")) not in views.TRAIN_VIEWS:
    raise ConfigError(f"config.augment.train_view={config.augment.train_view!r}; expected one of "
                      f"{', '.join(repr(v) for v in views.TRAIN_VIEWS)} ('' = the pretraining method's)")
  heads.parse_fusion_weights(config.get("fusion_weights", ""), streams)
  _validate_family_options(config, protocol, streams)
  return streams


def _validate_family_options(config, protocol: str, streams: tuple[str, ...]) -> None:
  """The options of the contrastive family's processors (``joint_probe``, ``finetune_mode``,
  ``knn_k``, ``knn_temperature``), each a one-line ConfigError."""
  joint_probe = config.get("joint_probe", False)
  if not isinstance(joint_probe, bool):
    raise ConfigError(f"config.joint_probe={joint_probe!r}: expected True or False")
  if joint_probe and (protocol != "linear" or len(streams) < 2):
    raise ConfigError(f"config.joint_probe=True with config.trainer={protocol!r} and config.streams="
                      f"{config.streams!r}: expected the linear protocol and 2+ streams (CrosSCLR's probe on the "
                      "mean of the streams' logits)")
  if str(config.get("finetune_mode", "train")) not in FINETUNE_MODES:
    raise ConfigError(f"config.finetune_mode={config.finetune_mode!r}: expected 'train' (BatchNorm batch statistics, "
                      "dropout on) or 'eval' (AimCLR's model.eval() fine-tuning)")
  knn_k = config.get("knn_k", 1)
  if isinstance(knn_k, bool) or not isinstance(knn_k, int) or knn_k < 1:
    raise ConfigError(f"config.knn_k={knn_k!r}: expected a neighbour count >= 1 (1: the nearest neighbour; "
                      "SimSiam's weighted kNN: 200)")
  temperature = config.get("knn_temperature", 0.1)
  if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
    raise ConfigError(f"config.knn_temperature={temperature!r}: expected a finite temperature > 0 (SimSiam's: 0.1)")


def num_classes_of(config, source) -> int:
  """``config.num_classes`` if set, else the TFDS metadata's class count, else the dataset's."""
  if int(config.get("num_classes", 0)) > 0:
    return int(config.num_classes)
  info = getattr(source, "info", None)
  try:
    return int(info.features["label"].num_classes)
  except (AttributeError, KeyError, TypeError):
    pass
  if config.data.dataset in DATASET_CLASSES:
    return DATASET_CLASSES[config.data.dataset]
  raise ConfigError(f"cannot tell the class count of {config.data.dataset!r}; set config.num_classes")


def check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
  """Every label must be a class index below ``num_classes``."""
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise ConfigError(f"{what}: labels span [{labels.min()}, {labels.max()}]; expected [0, {num_classes}) "
                      "(set config.num_classes?)")


def check_settings_fit(config, pre: pretrained_lib.Pretrained) -> None:
  """A protocol config carrying one method's settings (``expected_method``) or written for one
  encoder (``expected_encoder``) refuses a pretraining of another: CMD's linear evaluation
  (lr 0.1, crops) is not HiCLR's (lr 3.0, no augmentation). Empty fields accept any."""
  for field, found in (("expected_method", pre.method), ("expected_encoder", pre.model_name)):
    wanted = str(config.get(field, ""))
    if wanted and wanted != found:
      what = "method" if field == "expected_method" else "encoder"
      configs = "configs/<protocol>_hiclr.py" if found in ("hiclr", "stgcn", "dsta") else "configs/<protocol>.py"
      raise ConfigError(f"init_from={pre.workdir} is a {found!r} pretraining ({what}), but this config "
                        f"({config.get('name', '')}) carries the settings for {wanted!r}; expected a {wanted} "
                        f"pretraining, a config for {found} ({configs}), or --config.{field}= to run these "
                        "settings anyway")


def setup(config, workdir, protocol):
  """Checks, the pretrained encoders, the splits; everything a protocol starts from:
  ``(mesh, streams, pretrained, train_source, test_source, num_classes)``."""
  mesh = sharding.make_mesh(int(config.mesh.data))
  streams = validate(config, protocol, mesh)
  if os.path.abspath(workdir) in [os.path.abspath(p.strip()) for p in str(config.init_from).split(",")]:
    raise ConfigError(f"--workdir {workdir} is the pretraining workdir (init_from); expected another folder "
                      "for the downstream run's results")
  pre = pretrained_lib.load_pretrained_streams(config.init_from,
                                               None if int(config.init_step) < 0 else int(config.init_step),
                                               random_init=bool(config.random_init), mesh=mesh)
  pretrained_lib.check_compatible(pre, config.data, streams)
  check_settings_fit(config, pre)
  data_config = data.with_variant(config.data, pre.variant)  # the pretraining's variant unless one is named
  data.ensure_prepared(data_config)
  train_source, test_source = data.open_split(data_config, "train"), data.open_split(data_config, "val")
  num_classes = num_classes_of(config, train_source)
  os.makedirs(workdir, exist_ok=True)
  if outputs.is_writer():
    _remove_stale_logs(workdir)
    with open(os.path.join(workdir, "config.json.tmp"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(os.path.join(workdir, "config.json.tmp"), os.path.join(workdir, "config.json"))
  return mesh, streams, pre, train_source, test_source, num_classes


def _remove_stale_logs(workdir: str) -> None:
  """A protocol run starts from scratch (nothing resumes), so the ``metrics.jsonl`` and
  TensorBoard events of an earlier run in ``workdir`` (killed, or with other inputs) are
  removed, not appended to; a folder holding checkpoints (a pretraining's) is left alone."""
  if checkpoint.saved_steps(workdir):
    return
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    os.remove(os.path.join(workdir, "metrics.jsonl"))
  shutil.rmtree(os.path.join(workdir, "tensorboard"), ignore_errors=True)


def run_inputs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What a protocol run's results depend on: a hash of its config and, per ``init_from``
  workdir, its newest checkpoint step (stored in ``results.json`` as ``inputs``)."""
  text = json.dumps(config.to_dict(), sort_keys=True, default=str)
  steps = {}
  for path in [p.strip() for p in str(config.get("init_from", "")).split(",") if p.strip()]:
    found = checkpoint.saved_steps(path)
    steps[os.path.abspath(path)] = found[-1] if found else None
  return {"config_sha256": hashlib.sha256(text.encode()).hexdigest(), "init_from_steps": steps}


def finished_results(workdir: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
  """The stored results when ``<workdir>/results.json`` was written by a complete run with the
  same ``run_inputs`` (config and pretraining checkpoints); None otherwise (the protocol reruns)."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      stored = json.load(f)
  except (OSError, ValueError):
    return None  # damaged: rerun
  return stored if stored.get("inputs") == inputs else None


def run_once(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
             run: Callable[[ml_collections.ConfigDict, str], dict[str, Any]]) -> dict[str, Any]:
  """``run(config, workdir)`` unless ``workdir`` holds the results of a complete run with the same
  config and pretraining checkpoints (then those are returned); the results are also in
  ``<workdir>/results.json``, with the plots (t-SNE, confusion matrices) beside it.

  The run holds the workdir's lock (``cmd_jax.workdir_lock``) and stops cleanly on SIGTERM or
  SIGINT (``cmd_jax.preemption``: checked after every training step and evaluation batch):
  ``RunStopped`` in one line, nothing kept (protocols recompute: the rerun redoes it; no
  ``results.json`` with its ``inputs`` was written). A full disk: ``DiskFullError`` in one line."""
  workdir = os.fspath(workdir)
  protocol = str(config.get("trainer", "protocol"))
  with workdir_lock.hold_across_processes(workdir, f"the {protocol} protocol"), preemption.watch() as stop:
    try:
      return _run_once(config, workdir, run)
    except preemption.RunStopped as err:
      raise preemption.RunStopped(
          f"{workdir}: the {protocol} protocol stopped by {stop.cause} ({err}); protocols keep no checkpoint and "
          "this run wrote no complete results.json: run the same command again to redo it", err.signum) from None
    except Exception as err:  # pylint: disable=broad-except
      if disk_full.errno_of(err) is None:
        raise
      raise disk_full.reported(err, workdir, "no complete results.json was written; free space (or raise the quota) "
                               "and run the same command again to redo it") from None


def _run_once(config, workdir: str, run) -> dict[str, Any]:
  inputs = run_inputs(config)
  done = finished_results(workdir, inputs)
  if done is not None:
    if outputs.is_writer():
      print(f"{workdir}: already done with this config and pretraining (results.json); skipped. Delete "
            "results.json to recompute it")
    return done
  results = run(config, workdir)
  if config.get("plots", True) and outputs.is_writer():
    # t-SNE of the test features and confusion matrices, as PNG files beside results.json.
    from cmd_jax import plots  # pylint: disable=import-outside-toplevel
    for path in plots.plot_workdir(workdir, tsne=bool(config.get("tsne", True))):
      print(f"wrote {path}")
  results = dict(results, inputs=inputs)  # last: marks the run complete (finished_results)
  outputs.save_json(os.path.join(workdir, "results.json"), results)
  return results
