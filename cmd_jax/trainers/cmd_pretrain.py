"""CMD pretraining (and single-modality MoCo): the train state, the jitted step, the training loop.

Follows reference_cmd.md 4.1-4.3 and 5.1 (``moco/builder_cmd.py`` and
``pretrain_moco_cmd.py``). One step, as the reference orders it:

1. two views of every clip: temporal crop-resize then a 50/50 spatial augmentation
   (``cmd_jax.augment.pretrain_views``, on the device, keyed by ``fold_in(rng, step)``);
2. the modalities (joint, motion, bone) of each view, flattened to ``[N, T, V*C*M]``;
3. the momentum update of the key encoders' *parameters* (not BatchNorm statistics):
   ``k = m*k + (1-m)*q`` with the current query parameters, before the keys are computed;
4. keys: the key encoders in train mode (batch-statistic BN, their own running stats
   updated), L2-normalised, no gradient;
5. queries and the loss: the query encoders in train mode; per-modality InfoNCE against the
   modality's queue (pre-enqueue) plus ``cmd.weight`` x the six directed KL terms
   (``cmd_jax.losses.cmd_loss``); gradients reach only the query encoders;
6. SGD with momentum and coupled weight decay on every query parameter (biases and BN
   included), lr per epoch (step or cosine schedule);
7. enqueue the global batch's keys in every modality queue at the shared pointer.

``TrainState`` holds all of it as one pytree. ``train_step`` is jitted over a 1-D
``data`` mesh: batch sharded, state replicated and donated; BatchNorm statistics of a
sharded batch are global. ``train_and_evaluate(config, workdir)`` is the loop: resume
from the latest checkpoint (train state and data iterator), log metrics, checkpoint every
``checkpoint_every_steps`` and at the end, stop with the step and the loss term on a
non-finite loss (the last checkpoint stays the last good one), and run the online kNN
monitor every ``evaluator.every_epochs`` epochs.

Speed options (``config.model``; bench/RESULTS.md): ``stack_modalities`` (one ``vmap``-ed
encoder for all modalities), ``input_projection`` and ``scan_unroll`` (``Encoder``) leave the
function unchanged; ``compute_dtype="bfloat16"`` (off by default) is a numerical deviation.

Known deviations (also in the config docstring): PRNG streams differ from the reference's
numpy/random ones (augmentations match in distribution, not bit by bit); batches are cut
from a stream of per-epoch permutations, so a batch may straddle two epochs where the
reference drops each epoch's last partial batch (an epoch is still ``N // B`` steps).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from cmd_jax import augment, checkpoint, data, input_pipeline, losses, metrics as metrics_lib, modalities
from cmd_jax import queue as queue_lib
from cmd_jax import sharding
from cmd_jax.errors import ConfigError
from cmd_jax.evaluators import knn
from cmd_jax.layouts import SkeletonLayout
from cmd_jax.models import Encoder
from cmd_jax.models import encoder as encoder_lib


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. Dicts are keyed by modality."""
  step: jax.Array                    # int32 scalar: optimizer steps taken
  params: dict[str, Any]             # query encoders
  key_params: dict[str, Any]         # momentum (key) encoders
  batch_stats: dict[str, Any]        # query encoders' BN running statistics
  key_batch_stats: dict[str, Any]    # key encoders' BN running statistics
  queues: dict[str, jax.Array]       # [K, D] each
  queue_ptr: jax.Array               # int32 scalar, shared by the queues
  opt_state: Any
  rng: jax.Array                     # uint32[2]: the run's base key; step keys are fold_in(rng, step)


def modality_names(config) -> tuple[str, ...]:
  return modalities.parse_names(config.modalities, "config.modalities")


def make_model(config, training: bool = False) -> Encoder:
  """The pretraining encoder. ``training=True`` adds the step's speed options
  (``config.model.compute_dtype``, ``scan_unroll``, ``input_projection``); evaluation and
  feature extraction (``training=False``) always compute in float32."""
  speed = {}
  if training:
    speed = dict(compute_dtype=str(config.model.get("compute_dtype", "float32")),
                 scan_unroll=int(config.model.get("scan_unroll", 1)),
                 input_projection=str(config.model.get("input_projection", "auto")))
  return Encoder(hidden_size=config.model.hidden_size, num_layers=config.model.num_layers,
                 num_outputs=config.model.embed_dim, mlp=config.model.mlp,
                 bidirectional=config.model.bidirectional, fc_init="xavier", **speed)


def lr_schedule(config, steps_per_epoch: int) -> Callable[[jax.Array], jax.Array]:
  """The reference's per-epoch lr: ``lr * gamma^(#milestones <= epoch)`` or MoCo's cosine."""
  opt = config.optimizer
  base, epochs = float(opt.lr), int(config.num_epochs)
  if opt.schedule == "step":
    milestones = jnp.asarray(sorted(int(m) for m in opt.milestones), jnp.int32)  # may be empty: constant lr

    def schedule(step):
      epoch = step // steps_per_epoch
      return base * jnp.power(float(opt.gamma), jnp.sum(epoch >= milestones))
  elif opt.schedule == "cosine":
    def schedule(step):
      epoch = step // steps_per_epoch
      return base * 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / epochs))
  else:
    raise ValueError(f"config.optimizer.schedule={opt.schedule!r}; expected 'step' or 'cosine'")
  return schedule


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """PyTorch SGD(momentum, dampening 0, weight_decay) = add_decayed_weights then sgd."""
  opt = config.optimizer
  return optax.chain(optax.add_decayed_weights(float(opt.weight_decay)),
                     optax.sgd(lr_schedule(config, steps_per_epoch), momentum=float(opt.momentum)))


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
  names = modality_names(config)
  data.validate(config.data)
  b = int(config.batch_size)
  if b <= 0 or b % num_devices or b % process_count:
    raise ValueError(f"config.batch_size={b} must be a positive multiple of the {num_devices} devices and "
                     f"{process_count} processes")
  if num_train is not None and b > num_train:
    raise ValueError(f"config.batch_size={b} is larger than the {num_train} training samples")
  topk = int(config.cmd.topk) if (float(config.cmd.weight) != 0 and len(names) > 1) else 1
  queue_lib.validate_queue_config(int(config.moco.queue_size), b, topk)
  if config.optimizer.schedule not in ("step", "cosine"):
    raise ValueError(f"config.optimizer.schedule={config.optimizer.schedule!r}; expected 'step' or 'cosine'")
  if not 0 <= float(config.moco.momentum) <= 1:
    raise ValueError(f"config.moco.momentum={config.moco.momentum} must be in [0, 1]")
  if int(config.augment.min_length) > 300 or int(config.augment.frames) <= 0:
    raise ValueError("config.augment: min_length must be <= 300 and frames > 0")
  for field, allowed, default in (("compute_dtype", tuple(encoder_lib.COMPUTE_DTYPES), "float32"),
                                  ("input_projection", encoder_lib.PROJECTIONS, "auto")):
    if str(config.model.get(field, default)) not in allowed:
      choices = ", ".join(repr(a) for a in allowed[:-1]) + f" or {allowed[-1]!r}"
      raise ValueError(f"config.model.{field}={config.model[field]!r}; expected {choices}")
  if int(config.model.get("scan_unroll", 1)) < 1:
    raise ValueError(f"config.model.scan_unroll={config.model.scan_unroll} must be >= 1")
  if config.evaluator.name not in ("", "knn"):
    raise ValueError(f"config.evaluator.name={config.evaluator.name!r}; expected 'knn' or '' (none)")


def create_train_state(config, layout: SkeletonLayout, steps_per_epoch: int) -> TrainState:
  """A fresh state (host arrays). Each query encoder is initialised independently, as the
  reference's; the key encoders' parameters are copies, their BN statistics the defaults."""
  names = modality_names(config)
  model = make_model(config)
  rng = jax.random.PRNGKey(int(config.seed))
  init_key, queue_key, run_key = jax.random.split(rng, 3)
  features = layout.num_joints * 3 * layout.num_persons
  dummy = jnp.zeros((2, int(config.augment.frames), features), jnp.float32)
  params, stats = {}, {}
  for i, name in enumerate(names):
    variables = model.init(jax.random.fold_in(init_key, i), dummy, train=False)
    params[name], stats[name] = variables["params"], variables["batch_stats"]
  queues, ptr = queue_lib.init_queues(queue_key, names, int(config.model.embed_dim), int(config.moco.queue_size))
  tx = make_optimizer(config, steps_per_epoch)
  copy = lambda tree: jax.tree.map(jnp.array, tree)  # pylint: disable=unnecessary-lambda-assignment
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, key_params=copy(params), batch_stats=stats,
                    key_batch_stats=copy(stats), queues=queues, queue_ptr=ptr, opt_state=tx.init(params),
                    rng=run_key)


def _embed(model, params, stats, x):
  """Encoder in train mode: (L2-normalised embedding, updated BN statistics)."""
  out, updated = model.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
  return losses.l2_normalize(out), updated["batch_stats"]


def embed_modalities(model, params, stats, inputs, names, stacked: bool):
  """Every modality's encoder on its input: ``({m: embedding}, {m: BN stats})``.

  ``stacked=False`` runs the encoders one after another (one scan per encoder and layer);
  ``stacked=True`` stacks the modalities' parameters, statistics and inputs on a new leading
  axis and runs ONE ``vmap``-ed encoder, so each layer is one scan whose matmuls cover all
  modalities at once (batched GEMMs: fewer, larger kernels and loop iterations). Both
  compute the same function; gradients flow back through the stacking to each modality.
  """
  if not stacked or len(names) == 1:
    out = {m: _embed(model, params[m], stats[m], inputs[m]) for m in names}
    return {m: out[m][0] for m in names}, {m: out[m][1] for m in names}
  stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)  # pylint: disable=unnecessary-lambda-assignment
  emb, new_stats = jax.vmap(functools.partial(_embed, model))(
      stack([params[m] for m in names]), stack([stats[m] for m in names]), jnp.stack([inputs[m] for m in names]))
  return ({m: emb[i] for i, m in enumerate(names)},
          {m: jax.tree.map(lambda a, i=i: a[i], new_stats) for i, m in enumerate(names)})


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, config, layout: SkeletonLayout,
               tx: optax.GradientTransformation, schedule) -> tuple[TrainState, dict[str, jax.Array]]:
  """One CMD step (module docstring, steps 1-7). Pure: same state and batch, same result."""
  names = modality_names(config)
  model = make_model(config, training=True)
  stacked = bool(config.model.get("stack_modalities", False))
  aug = config.augment
  step_key = jax.random.fold_in(state.rng, state.step)
  view_q, view_k = augment.pretrain_views(
      step_key, batch["skeleton"], batch["num_frames"], ratio_range=(aug.crop_ratio_min, aug.crop_ratio_max),
      min_len=int(aug.min_length), out_len=int(aug.frames), num_corrupted=int(aug.num_corrupted_joints),
      shear_amplitude=float(aug.shear_amplitude), corruption_amplitude=float(aug.corruption_amplitude))
  inputs_q = {m: modalities.flatten(modalities.modality(view_q, m, layout)) for m in names}
  inputs_k = {m: modalities.flatten(modalities.modality(view_k, m, layout)) for m in names}

  momentum = float(config.moco.momentum)
  key_params = jax.tree.map(lambda k, q: momentum * k + (1.0 - momentum) * q, state.key_params, state.params)
  keys, key_stats = embed_modalities(model, key_params, state.key_batch_stats, inputs_k, names, stacked)
  keys = jax.lax.stop_gradient(keys)

  def loss_fn(params):
    queries, stats = embed_modalities(model, params, state.batch_stats, inputs_q, names, stacked)
    loss, metrics = losses.cmd_loss(
        queries, keys, state.queues, topk=int(config.cmd.topk), temperature=float(config.moco.temperature),
        teacher_temperature=float(config.cmd.teacher_temperature),
        student_temperature=float(config.cmd.student_temperature), cmd_weight=float(config.cmd.weight))
    return loss, (metrics, stats)

  (_, (metrics, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  queues, ptr = queue_lib.enqueue(state.queues, state.queue_ptr, keys)
  metrics = dict(metrics, lr=schedule(state.step))
  new_state = state.replace(step=state.step + 1, params=params, key_params=key_params, batch_stats=stats,
                            key_batch_stats=key_stats, queues=queues, queue_ptr=ptr, opt_state=opt_state)
  return new_state, metrics


def jit_train_step(config, layout: SkeletonLayout, steps_per_epoch: int, mesh) -> Callable:
  """``train_step`` jitted on the mesh: batch sharded on ``data``, state replicated and donated."""
  tx = make_optimizer(config, steps_per_epoch)
  step = functools.partial(train_step, config=config, layout=layout, tx=tx,
                           schedule=lr_schedule(config, steps_per_epoch))
  rep, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(rep, batch_sh), out_shardings=(rep, rep), donate_argnums=(0,))


class NonFiniteLossError(FloatingPointError):
  """A loss term became NaN or infinite."""


def check_finite(step: int, metrics: Mapping[str, Any]) -> None:
  bad = sorted(k for k, v in metrics.items() if (k == "loss" or k.startswith(("loss_", "kl_")))
               and not math.isfinite(float(v)))
  if bad:
    raise NonFiniteLossError(f"non-finite loss at step {step}: {', '.join(f'{k}={float(metrics[k])}' for k in bad)}; "
                             "the last checkpoint in the workdir is the last good state")


def _knn_monitor(config, layout, mesh):
  """``evaluate(state) -> metrics`` of the frozen joint (or first) query encoder, or None."""
  if not config.evaluator.name:
    return None
  bank, queries = data.open_split(config.data, "train"), data.open_split(config.data, "val")
  names = modality_names(config)
  modality = "joint" if "joint" in names else names[0]
  fn = knn.make_feature_fn(make_model(config), layout, modality, int(config.augment.frames),
                           float(config.evaluator.crop_ratio))

  def evaluate(state: TrainState) -> dict[str, float]:
    variables = {"params": state.params[modality], "batch_stats": state.batch_stats[modality]}
    return knn.evaluate(fn, variables, bank, queries, batch_size=int(config.evaluator.batch_size), mesh=mesh)

  return evaluate


@dataclasses.dataclass
class RunResult:
  state: TrainState
  step: int
  eval_metrics: dict[str, float]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       stop_after_step: int | None = None) -> RunResult:
  """Pretrains per ``config`` in ``workdir``, resuming from its latest checkpoint.

  ``stop_after_step`` ends the run after that step (with a checkpoint), as a preemption
  would: rerunning the same call resumes and ends in the same state as an uninterrupted run.
  """
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(int(config.mesh.data))
  validate_config(config, num_train=None, num_devices=mesh.devices.size, process_count=jax.process_count())
  layout = data.layout_of(config.data)
  data.ensure_prepared(config.data)
  source = data.open_split(config.data, "train")
  validate_config(config, num_train=len(source), num_devices=mesh.devices.size, process_count=jax.process_count())
  global_batch = int(config.batch_size)
  steps_per_epoch = input_pipeline.steps_per_epoch(len(source), global_batch)
  total_steps = steps_per_epoch * int(config.num_epochs)

  if jax.process_index() == 0:  # what downstream protocols rebuild the encoders from
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
  state = create_train_state(config, layout, steps_per_epoch)
  dataset = input_pipeline.global_batches(source, global_batch_size=global_batch, seed=int(config.seed),
                                          read_threads=int(config.data.read_threads),
                                          prefetch_batches=int(config.data.prefetch_batches))
  iterator = iter(dataset)
  ckpt = checkpoint.Checkpointer(workdir, int(config.keep_checkpoints))
  start = ckpt.latest_step() or 0
  if start:
    state, data_state, meta = ckpt.restore(start, state, mesh)
    if not data_state and "torch_epoch" in meta:
      # A checkpoint imported from the PyTorch reference (cmd_jax.torch_import): its step is
      # the reference's completed-epoch count and it has no data position. Continue after
      # those epochs: step and data position at epoch * steps_per_epoch (fresh optimizer state).
      completed = max(int(meta.get("torch_epoch") or 0), 0)
      start = completed * steps_per_epoch
      state = state.replace(step=sharding.put_replicated(np.int32(start), mesh))
      data_state = {"next_index": start}
      if jax.process_index() == 0:
        print(f"Continuing the imported PyTorch checkpoint after epoch {completed} (step {start})")
    iterator.set_state(data_state)
    if jax.process_index() == 0:
      print(f"Resumed from {ckpt.directory} at step {start}")
  else:
    state = sharding.put_replicated(state, mesh)
  step_fn = jit_train_step(config, layout, steps_per_epoch, mesh)
  evaluate = _knn_monitor(config, layout, mesh)
  writer = metrics_lib.MetricWriter(workdir)
  last = total_steps if stop_after_step is None else min(total_steps, int(stop_after_step))

  def save(step):
    ckpt.save(step, state, iterator.get_state(),
              {"config": config.get("name", ""), "epoch": step / steps_per_epoch, "step": step})

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
  finally:
    bar.close()
    ckpt.close()
    writer.close()
  return RunResult(state, last, eval_metrics)
