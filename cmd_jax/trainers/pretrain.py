"""The generic pretraining loop: any method (``config.method``) with any encoder (``config.model.name``).

This module owns what every pretraining run shares; the method (``cmd_jax.methods``) owns
its views, losses and the state it adds. One step:

1. the step's key ``fold_in(state.rng, state.step)``;
2. ``method.loss(params, state, batch, key)`` differentiated w.r.t. the trainable
   ``state.params``: the method builds its views on the device, runs its encoders, updates
   its key encoders, BatchNorm statistics and queues (returned as state updates, no
   gradient) and returns its loss;
3. SGD with momentum and coupled weight decay on every trainable parameter, lr per epoch
   (``cmd_jax.optim``);
4. ``step + 1``.

``train_step`` is jitted over a 1-D ``data`` mesh: batch sharded, state replicated and
donated; BatchNorm statistics of a sharded batch are global (what the references get from
one GPU or SyncBatchNorm). ``train_and_evaluate(config, workdir)`` is the loop: resume
from the latest checkpoint (train state and data iterator), log metrics, checkpoint every
``checkpoint_every_steps`` and at the end, stop with the step and the loss terms on a
non-finite loss (the last checkpoint stays the last good one), and run the online kNN
monitor every ``evaluator.every_epochs`` epochs and at random initialisation; it holds the
workdir's lock, stops on SIGTERM/SIGINT after the step in progress with a checkpoint of that
step, and reports a full disk in one line (docs/runs.md#running-on-clusters).

Known deviations (also in the configs): PRNG streams differ from the references'
numpy/random ones (augmentations match in distribution, not bit by bit); batches are cut
from a stream of per-epoch permutations, so a batch may straddle two epochs where the
references drop each epoch's last partial batch (an epoch is still ``N // B`` steps).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
import optax
import tqdm

from cmd_jax import checkpoint, data, disk_full, input_pipeline, metrics as metrics_lib, models, optim, preemption
from cmd_jax import sharding, workdir_lock
from cmd_jax.errors import ConfigError
from cmd_jax.evaluators import knn
from cmd_jax.layouts import SkeletonLayout
from cmd_jax.methods import create_train_state, method_name, method_of
from cmd_jax.state_checks import check_shapes


def validate_config(config, *, num_train: int | None, num_devices: int, process_count: int) -> None:
  """Every impossible setup, with a clear message, before anything is compiled.

  ``num_train=None`` skips the one check that needs the data (batch vs training set size).
  Raises ``ConfigError`` (a ValueError).
  """
  try:
    _validate_config(config, num_train, num_devices, process_count)
  except ConfigError:
    raise
  except ValueError as err:
    raise ConfigError(str(err)) from None


def _validate_config(config, num_train, num_devices, process_count) -> None:
  method = method_of(config)
  data.validate(config.data)
  models.validate(config.model, data.layout_of(config.data))
  b = int(config.batch_size)
  if b <= 0 or b % num_devices or b % process_count:
    raise ValueError(f"config.batch_size={b} must be a positive multiple of the {num_devices} devices and "
                     f"{process_count} processes")
  if num_train is not None and b > num_train:
    raise ValueError(f"config.batch_size={b} is larger than the {num_train} training samples")
  optim.validate(config)
  # A run that would train nothing, keep no trained model, or divide by zero.
  for field, what in (("num_epochs", "epochs to train"), ("keep_checkpoints", "checkpoints to keep"),
                      ("checkpoint_every_steps", "steps between checkpoints"),
                      ("log_every_steps", "steps between metrics")):
    if int(config[field]) < 1:
      raise ValueError(f"config.{field}={config[field]}: expected at least 1 ({what})")
  if not float(config.moco.temperature) > 0:
    raise ValueError(f"config.moco.temperature={config.moco.temperature} must be positive")
  if config.evaluator.name not in ("", "knn"):
    raise ValueError(f"config.evaluator.name={config.evaluator.name!r}; expected 'knn' or '' (none)")
  if config.evaluator.name and (int(config.evaluator.every_epochs) < 1 or int(config.evaluator.batch_size) < 1):
    raise ValueError(f"config.evaluator.every_epochs={config.evaluator.every_epochs} and batch_size="
                     f"{config.evaluator.batch_size}: expected at least 1 (or config.evaluator.name='' for none)")
  method.validate(config, num_train=num_train, num_devices=num_devices, process_count=process_count)


def train_step(state, batch: Mapping[str, jax.Array], *, config, layout: SkeletonLayout,
               tx: optax.GradientTransformation, schedule, steps_per_epoch: int) -> tuple[Any, dict[str, jax.Array]]:
  """One step (module docstring). Pure: same state and batch, same result."""
  method = method_of(config)
  key = jax.random.fold_in(state.rng, state.step)
  loss_fn = functools.partial(method.loss, state=state, batch=batch, key=key, config=config, layout=layout,
                              steps_per_epoch=steps_per_epoch)
  (_, (metrics, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  tx_updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, tx_updates)
  metrics = dict(metrics, lr=schedule(state.step))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state, **updates), metrics


def jit_train_step(config, layout: SkeletonLayout, steps_per_epoch: int, mesh) -> Callable:
  """``train_step`` jitted on the mesh: batch sharded on ``data``, state replicated and donated."""
  tx = optim.make_optimizer(config, steps_per_epoch)
  step = functools.partial(train_step, config=config, layout=layout, tx=tx,
                           schedule=optim.lr_schedule(config, steps_per_epoch), steps_per_epoch=steps_per_epoch)
  rep, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(rep, batch_sh), out_shardings=(rep, rep), donate_argnums=(0,))


class NonFiniteLossError(FloatingPointError):
  """A loss term became NaN or infinite."""


def count_parameters(tree) -> int:
  """The number of values in ``tree``'s arrays (or ``jax.ShapeDtypeStruct`` leaves)."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def describe_encoders(config, state) -> str:
  """One line per pretrained stream: the encoder, its parameter count without and with the head."""
  method = method_of(config)
  lines = []
  for stream, variables in method.query_encoders(state, config).items():
    backbone = count_parameters(models.strip_head(variables["params"]))
    total = count_parameters(variables["params"])
    lines.append(f"{method.__name__.rsplit('.', 1)[-1]} {stream} encoder {models.model_name(config.model)}: "
                 f"{backbone:,} parameters + head {total - backbone:,} = {total:,}")
  return "\n".join(lines)


LOSS_PREFIXES = ("loss", "kl_")  # metric names that are loss terms (checked for NaN/inf)


def check_finite(step: int, metrics: Mapping[str, Any]) -> None:
  bad = sorted(k for k, v in metrics.items() if k.startswith(LOSS_PREFIXES) and not math.isfinite(float(v)))
  if bad:
    raise NonFiniteLossError(f"non-finite loss at step {step}: {', '.join(f'{k}={float(metrics[k])}' for k in bad)}; "
                             "the last checkpoint in the workdir is the last good state")


def _knn_monitor(config, layout, mesh):
  """``evaluate(state) -> metrics`` of the frozen joint (or first) query encoder, or None."""
  if not config.evaluator.name:
    return None
  method = method_of(config)
  bank, queries = data.open_split(config.data, "train"), data.open_split(config.data, "val")
  names = method.streams(config)
  stream = "joint" if "joint" in names else names[0]
  frames, crop = method.eval_view(config)
  model = models.build_encoder(config.model, layout, num_outputs=None)
  fn = knn.make_feature_fn(model, layout, stream, frames, crop)

  def evaluate(state) -> dict[str, float]:
    variables = method.query_encoders(state, config)[stream]
    variables = {"params": models.strip_head(variables["params"]), "batch_stats": variables["batch_stats"]}
    return knn.evaluate(fn, variables, bank, queries, batch_size=int(config.evaluator.batch_size), mesh=mesh)

  return evaluate


# What makes a workdir's run: resuming it with another value would mix two runs.
_RUN_IDENTITY = ("method", "data.dataset", "data.benchmark", "data.variant", "modalities", "stream", "model.name")


def check_same_run(config, workdir: str) -> None:
  """Refuses (``ConfigError``, one line) to resume a workdir whose ``config.json`` names
  another method, dataset, benchmark, data variant, stream(s) or encoder; nothing is written.
  (Differing shapes, e.g. another hidden size, are refused by the checkpoint's own check.)"""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) or not checkpoint.saved_steps(workdir):
    return  # nothing to resume: a new run (config.json alone is rewritten)
  with open(path, encoding="utf-8") as f:
    there = json.load(f)
  asked = config.to_dict()

  def get(tree, dotted):
    for part in dotted.split("."):
      if not isinstance(tree, dict) or part not in tree:
        return None
      tree = tree[part]
    return tree

  differ = [f"{field}: {get(there, field)!r} there, {get(asked, field)!r} asked" for field in _RUN_IDENTITY
            if get(there, field) is not None and get(asked, field) is not None
            and str(get(there, field)) != str(get(asked, field))]
  if differ:
    raise ConfigError(f"{workdir} holds another run ({'; '.join(differ)}); nothing was changed: use a new "
                      "--workdir for this config, or the workdir's own settings to resume it")


@dataclasses.dataclass
class RunResult:
  state: Any
  step: int
  eval_metrics: dict[str, float]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       stop_after_step: int | None = None) -> RunResult:
  """Pretrains per ``config`` in ``workdir``, resuming from its latest checkpoint.

  ``stop_after_step`` ends the run after that step (with a checkpoint), as a preemption
  would: rerunning the same call resumes and ends in the same state as an uninterrupted run.

  While it runs it holds the workdir's lock (``cmd_jax.workdir_lock``: a second run there
  is refused in one line) and watches for SIGTERM/SIGINT (``cmd_jax.preemption``): the step
  in progress finishes (its compilation, its kNN evaluation, a checkpoint being written
  included), a checkpoint of that step is written and waited for, and ``RunStopped`` is
  raised (one line; ``launch.py`` exits with its status); the previous signal handlers come
  back when it returns. A write that finds the disk full raises ``DiskFullError`` (one line:
  the folder, the file, the intact checkpoints) after removing the unfinished checkpoint.
  """
  workdir = os.fspath(workdir)
  with workdir_lock.hold_across_processes(workdir, "pretraining"):
    saved = checkpoint.saved_steps(workdir)
    with preemption.watch(first_step=saved[-1] if saved else 0) as stop:
      try:
        return _train_and_evaluate(config, workdir, stop_after_step, stop)
      except Exception as err:  # pylint: disable=broad-except
        if disk_full.errno_of(err) is None:
          raise
        removed = checkpoint.remove_unfinished(workdir)  # its space back; never a complete-looking step
        kept = checkpoint.saved_steps(workdir)
        raise disk_full.reported(err, workdir, (
            ("the unfinished checkpoint was removed; " if removed else "")
            + (f"the checkpoint{'s' if len(kept) > 1 else ''} of step{'s' if len(kept) > 1 else ''} "
               f"{', '.join(map(str, kept))} {'are' if len(kept) > 1 else 'is'} intact" if kept else
               "no checkpoint was kept")
            + "; free space (or raise the quota) and run the same command again to continue"
            + (f" from step {kept[-1]}" if kept else ""))) from None


def _train_and_evaluate(config, workdir: str, stop_after_step: int | None, stop: preemption.Watcher) -> RunResult:
  """``train_and_evaluate`` in a workdir this run holds, watched by ``stop``."""
  mesh = sharding.make_mesh(int(config.mesh.data))
  validate_config(config, num_train=None, num_devices=mesh.devices.size, process_count=jax.process_count())
  check_same_run(config, workdir)  # before anything is prepared or written
  layout = data.layout_of(config.data)
  data.ensure_prepared(config.data)
  source = data.open_split(config.data, "train")
  validate_config(config, num_train=len(source), num_devices=mesh.devices.size, process_count=jax.process_count())
  global_batch = int(config.batch_size)
  steps_per_epoch = input_pipeline.steps_per_epoch(len(source), global_batch)
  total_steps = steps_per_epoch * int(config.num_epochs)

  # A run that resumes takes every value from its checkpoint: the state's structure, shapes and
  # dtypes are all it needs, so the initialisation is traced (jax.eval_shape), not compiled or
  # run (seconds of a resume's start-up); a new run initialises for real.
  make_state = functools.partial(create_train_state, config, layout, steps_per_epoch)
  resuming = bool(checkpoint.saved_steps(workdir))
  state = jax.eval_shape(make_state) if resuming else make_state()
  if jax.process_index() == 0:
    print(describe_encoders(config, state))
  dataset = input_pipeline.global_batches(source, global_batch_size=global_batch, seed=int(config.seed),
                                          read_threads=int(config.data.read_threads),
                                          prefetch_batches=int(config.data.prefetch_batches))
  iterator = iter(dataset)
  ckpt = checkpoint.Checkpointer(workdir, int(config.keep_checkpoints), writer=True)
  log = print if jax.process_index() == 0 else (lambda _: None)

  def same_shapes(stored, step_dir):
    check_shapes(state, stored, f"{workdir}: checkpoint {step_dir}", method_name(config),
                 expected_from="this config", advice="nothing was changed: use a new --workdir for this config, "
                 "or the workdir's own settings to resume it")

  restored = ckpt.restore_newest_readable(state, mesh, check=same_shapes, log=log)
  start = restored[0] if restored else 0
  if jax.process_index() == 0:  # what downstream protocols rebuild the encoders from; written
    with open(os.path.join(workdir, "config.json.tmp"), "w", encoding="utf-8") as f:  # once the run can proceed
      f.write(config.to_json_best_effort(indent=2))
    os.replace(os.path.join(workdir, "config.json.tmp"), os.path.join(workdir, "config.json"))
  if restored:
    _, state, data_state, meta = restored
    if not data_state and "torch_epoch" in meta:
      # A checkpoint imported from the PyTorch reference (cmd_jax.interop): its step is
      # the reference's completed-epoch count and it has no data position. Continue after
      # those epochs: step and data position at epoch * steps_per_epoch (fresh optimizer state).
      completed = max(int(meta.get("torch_epoch") or 0), 0)
      start = completed * steps_per_epoch
      state = state.replace(step=sharding.put_replicated(np.int32(start), mesh))
      data_state = {"next_index": start}
      if jax.process_index() == 0:
        print(f"Continuing the imported PyTorch checkpoint after epoch {completed} (step {start})")
    iterator.set_state(data_state)
    ptr = int(np.asarray(jax.device_get(getattr(state, "queue_ptr", 0))))
    if ptr % global_batch:  # the enqueue writes whole batches at the pointer
      raise ConfigError(f"{ckpt.directory}: the queue pointer {ptr} is not a multiple of config.batch_size="
                        f"{global_batch}; expected the batch size the checkpoint was trained (or imported) with")
    if jax.process_index() == 0:
      print(f"Resumed from {ckpt.directory} at step {start}")
  else:
    if resuming:  # its checkpoints were removed meanwhile: a new run after all
      state = make_state()
    state = sharding.put_replicated(state, mesh)
  step_fn = jit_train_step(config, layout, steps_per_epoch, mesh)
  evaluate = _knn_monitor(config, layout, mesh)
  writer = metrics_lib.MetricWriter(workdir)
  last = total_steps if stop_after_step is None else min(total_steps, int(stop_after_step))

  saved_step = start

  def save(step):
    nonlocal saved_step
    ckpt.save(step, state, iterator.get_state(),
              {"config": config.get("name", ""), "epoch": step / steps_per_epoch, "step": step})
    saved_step = step

  pending, window, eval_metrics = None, [], {}
  if evaluate is not None and start == 0:  # the same encoder at random initialisation, for comparison
    initial = evaluate(state)
    writer.write(0, dict(initial, epoch=0), split="eval")
    if jax.process_index() == 0:
      print("epoch 0 (random init): " + ", ".join(f"{k} {v:.4f}" for k, v in initial.items()))
  tick, tick_step = time.time(), start
  bar = tqdm.tqdm(total=total_steps, initial=start, unit="step", desc=config.get("name", "pretrain"),
                  disable=jax.process_index() != 0)
  try:
    for step in range(start + 1, last + 1):
      batch = sharding.put_batch(next(iterator), mesh)
      state, step_metrics = step_fn(state, batch)
      if pending is not None:  # read the previous step's metrics while this one runs
        window.append(jax.device_get(pending[1]))
        check_finite(pending[0], window[-1])
      pending = (step, step_metrics)
      bar.update(1)
      if step % int(config.log_every_steps) == 0 or step == last or step % int(config.checkpoint_every_steps) == 0:
        window.append(jax.device_get(pending[1]))
        check_finite(step, window[-1])
        pending = None
      if window and (step % int(config.log_every_steps) == 0 or step == last):
        now = time.time()
        summary = {k: float(np.mean([w[k] for w in window])) for k in window[-1]}
        summary["steps_per_s"] = (step - tick_step) / max(now - tick, 1e-9)
        summary["epoch"] = step / steps_per_epoch
        writer.write(step, summary)
        bar.set_postfix(loss=f"{summary['loss']:.3f}")
        window, tick, tick_step = [], now, step
      if step % int(config.checkpoint_every_steps) == 0 or step == last:
        save(step)
      if evaluate is not None and step % steps_per_epoch == 0:
        epoch = step // steps_per_epoch
        if epoch % int(config.evaluator.every_epochs) == 0 or step == total_steps:
          eval_metrics = evaluate(state)
          writer.write(step, dict(eval_metrics, epoch=epoch), split="eval")
          if jax.process_index() == 0:
            bar.write(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))
      if step < last and stop.requested(step, sync_point=ckpt.reached_preemption):
        if pending is not None:  # the step's loss must be finite before it is kept
          check_finite(pending[0], jax.device_get(pending[1]))
        if saved_step != step:
          save(step)
        ckpt.wait()
        bar.close()
        raise preemption.RunStopped(
            f"{workdir}: stopped by {stop.cause} after step {step} of {total_steps}; "
            f"{ckpt.directory}/{step} holds it (train state and data position): run the same command again "
            "to continue from there", stop.exit_signum)
  finally:
    bar.close()
    ckpt.close()
    writer.close()
  return RunResult(state, last, eval_metrics)
