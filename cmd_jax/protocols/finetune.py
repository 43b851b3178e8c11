"""The fine-tuning protocols: semi-supervised, transfer and full fine-tuning, one run per seed.

Follows docs/references.md#cmd-semi-supervised (the reference's
``action_classification_cmd_semi.py``), #cmd-transfer and HiCLR's fine-tuning and
semi-supervised processors (#hiclr-downstream-protocols; ``configs/finetune_hiclr.py``,
``configs/semi_hiclr.py``):

- ``semi``: full fine-tuning (BN in train mode, running statistics updated; the encoder's
  dropout on; eval mode for testing) of encoder + new head on a labelled subset of the
  training split (``cmd_jax.protocols.subsets``: ``config.sampling``, ``config.label_ratio``,
  ``config.epoch_length``); CMD: SGD lr 0.01, momentum 0.9, no weight decay, 80 epochs, x0.1
  at 50 and 70. Several seeds run in one command (``config.seeds``: each draws its own subset,
  head and crops); mean and sample standard deviation (ddof=1; 0 for one seed) are reported;
- ``transfer``: the same fine-tuning on another dataset's split (``config.data``, e.g.
  PKU-MMD II xsub) from a checkpoint pretrained elsewhere (``init_from``), with a new
  classifier for the target's class count and all its labels (ratio 1.0);
- ``finetune``: the same with every label of the pretraining's dataset (HiCLR's fine-tuning:
  warmup, Nesterov, weight decay, optionally frozen modules ``config.freeze``).

Options of the contrastive family's processors (each off by default):

- ``config.finetune_mode = "eval"``: AimCLR's fine-tuning and semi-supervised processors call
  ``model.eval()`` while training (``processor/finetune_evaluation.py``): BatchNorm normalises with the
  pretrained running statistics and never updates them, dropout is off; every parameter is
  still trained. ``"train"`` (default; CMD's and HiCLR's): batch statistics, running
  statistics updated, dropout on;
- ``config.optimizer.clip_grad_norm = 2``: AimCLR's semi-supervised processor clips the
  gradients' global L2 norm before the SGD step (``cmd_jax.optim``), each stream by the norm
  of its own gradients (``training.stream_optimizer``);
- ``config.drop_last = True``: the torchlight family's train loader (``N // B`` batches per
  epoch; with ``epoch_length = "full"`` the whole split's ``N``); ``sampling =
  "class_balanced"`` with ``epoch_length = "subset"`` is AimCLR's ``Feeder_semi``
  (``round(ratio * class count)`` per class, an epoch as long as the subset).

Written in the workdir besides ``results.json``: ``model.msgpack`` (the fine-tuned
``Encoder(num_outputs=C)`` variables per stream) and the npz files, all of the first seed.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from cmd_jax import metrics as metrics_lib, modalities, optim
from cmd_jax import pretrained as pretrained_lib, sharding
from cmd_jax.errors import ConfigError
from cmd_jax.layouts import SkeletonLayout
from cmd_jax.protocols import batches, common, heads, outputs, subsets, training, views


def train_step(state: training.DownstreamState, batch: Mapping[str, jax.Array], *, model, layout: SkeletonLayout,
               streams: Sequence[str], tx: optax.GradientTransformation, schedule: Callable,
               view: Mapping[str, Any], mode: str = "train") -> tuple[training.DownstreamState, dict[str, jax.Array]]:
  """One fine-tuning step (#cmd-semi-supervised): every parameter trained, mean cross-entropy, SGD;
  ``mode="train"``: BN in train mode (batch statistics, running statistics updated), the
  encoder's dropout on; ``mode="eval"`` (AimCLR's ``model.eval()``): BN with the running
  statistics, left unchanged, dropout off."""
  key = jax.random.fold_in(state.rng, state.step)
  clip = views.train_clip(key, batch, view)
  inputs = {m: modalities.modality(clip, m, layout) for m in streams}
  labels = batch["label"]
  dropout_keys = jax.random.split(jax.random.fold_in(key, 1), len(streams))

  def loss_fn(params):
    out, stats = {}, {}
    for i, m in enumerate(streams):
      variables = {"params": params[m], "batch_stats": state.batch_stats[m]}
      if mode == "eval":
        logits, stats[m] = model.apply(variables, inputs[m], train=False), state.batch_stats[m]
      else:
        logits, updated = model.apply(variables, inputs[m], train=True, mutable=["batch_stats"],
                                      rngs={"dropout": dropout_keys[i]})
        stats[m] = updated["batch_stats"]
      out[m] = training.ce_and_accuracy(logits, labels)
    return sum(v[0] for v in out.values()), (out, stats)

  (_, (out, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"lr": schedule(state.step)}
  for m in streams:
    metrics[f"loss_{m}"], metrics[f"train_top1_{m}"] = out[m]
  return state.replace(step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state), metrics


def run(config, workdir: str) -> dict[str, Any]:
  """Semi-supervised (#cmd-semi-supervised), transfer (#cmd-transfer) or full fine-tuning, one run per seed."""
  protocol = str(config.trainer)
  if protocol not in common.FINETUNE_PROTOCOLS:
    raise ConfigError(f"config.trainer={protocol!r}: expected one of {', '.join(common.FINETUNE_PROTOCOLS)}")
  mesh, streams, pre, train_source, test_source, num_classes = common.setup(config, workdir, protocol)
  view = views.train_view_params(config, pre)
  dropout = float(config.get("encoder_dropout", -1.0))
  try:
    model = pre.model(num_outputs=num_classes, dropout=None if dropout < 0 else dropout)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  frozen = tuple(n.strip() for n in str(config.get("freeze", "")).split(",") if n.strip())
  fusion = heads.fusion_name(streams)
  labels = subsets.split_labels(train_source)
  common.check_labels(labels, num_classes, "the training split")
  ratio, seeds = subsets.validate_ratio(config.label_ratio), [int(s) for s in config.seeds]
  chosen = {s: subsets.labelled_subset(labels, ratio, s, str(config.sampling), num_classes) for s in seeds}
  full_epochs = str(config.get("epoch_length", "subset")) == "full"
  epoch_size = {s: (len(labels) if full_epochs else len(v)) for s, v in chosen.items()}
  batch, drop_last = int(config.batch_size), bool(config.get("drop_last", False))
  sizes = {len(v) for v in chosen.values()}
  total_steps = sum(batches.steps_per_epoch(n, batch, drop_last) for n in epoch_size.values()) * int(config.num_epochs)
  rep = sharding.replicated(mesh)
  extractor = batches.StreamFeatures(model, pre.layout, streams, *views.evaluation_view(config, pre),
                                     pre.feature_dim)
  logits_fn = jax.jit(lambda params, feats: {m: heads.head_logits(params[m]["fc"], feats[m]) for m in streams})

  def evaluate(s):
    variables = {m: {"params": s.params[m], "batch_stats": s.batch_stats[m]} for m in streams}
    feats, test_labels = extractor(variables, test_source, batch_size=int(config.eval_batch_size), mesh=mesh)
    logits = jax.device_get(logits_fn(s.params, sharding.put_replicated(feats, mesh)))
    return {"logits": {m: np.asarray(v) for m, v in logits.items()}, "labels": test_labels, "features": feats}

  steps = {}  # one jitted step per steps-per-epoch (the optimizer's schedule depends on it)
  writer = metrics_lib.MetricWriter(workdir)
  bar = tqdm.tqdm(total=total_steps, unit="step", desc=config.get("name", protocol), disable=not outputs.is_writer())
  per_seed = []
  try:
    for index, seed in enumerate(seeds):
      subset = subsets.SubsetSource(train_source, chosen[seed], epoch_size[seed])
      spe = batches.steps_per_epoch(len(subset), batch, drop_last)
      if spe not in steps:
        tx = training.stream_optimizer(config, spe, streams, frozen)
        step_fn = functools.partial(train_step, model=model, layout=pre.layout, streams=streams, tx=tx,
                                    schedule=optim.lr_schedule(config, spe), view=view,
                                    mode=str(config.get("finetune_mode", "train")))
        steps[spe] = (tx, jax.jit(step_fn, out_shardings=(rep, rep), donate_argnums=(0,)))
      tx, step = steps[spe]
      head_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
      params = {m: dict(pre.params[m], fc=heads.init_head(jax.random.fold_in(head_key, i), num_classes,
                                                          pre.feature_dim,
                                                          str(config.get("head_init", "normal_0.01"))))
                for i, m in enumerate(streams)}
      state = training.DownstreamState(step=jnp.zeros((), jnp.int32), params=params,
                                       batch_stats={m: pre.batch_stats[m] for m in streams},
                                       opt_state=tx.init(params), rng=run_key)
      state = sharding.put_replicated(state, mesh)
      tag = {"seed": seed}
      split = "" if len(seeds) == 1 else f"_seed{seed}"
      bar.set_description(f"{config.get('name', protocol)} seed {seed}")
      state, curve, last = training.run_epochs(state, step, subset, config=config, mesh=mesh, seed=seed,
                                               evaluate=evaluate, writer=writer, bar=bar, tag=tag,
                                               log_split="train" + split, eval_split="eval" + split)
      summary = outputs.summarize_curve(curve, list(streams) + ([fusion] if fusion else []))
      per_seed.append({"seed": seed, "num_labelled": len(chosen[seed]),
                       "labelled_per_class": np.bincount(labels[chosen[seed]], minlength=num_classes).tolist(),
                       "summary": summary})
      if index == 0:
        host = pretrained_lib.to_host({"params": state.params, "batch_stats": state.batch_stats})
        outputs.save_msgpack(os.path.join(workdir, outputs.MODEL_FILE),
                             {m: {"params": host["params"][m], "batch_stats": host["batch_stats"][m]}
                              for m in streams})
        outputs.save_outputs(workdir, last["features"], last["logits"], last["labels"], fusion)
        num_test = len(last["labels"])
  finally:
    bar.close()
    writer.close()

  results = outputs.base_results(config, protocol, pre, streams, len(labels), num_test, num_classes)
  results.update(epochs=int(config.num_epochs), eval_every_epochs=int(config.eval_every_epochs),
                 label_ratio=ratio, sampling=str(config.sampling), seeds=seeds,
                 num_labelled=sorted(sizes)[0] if len(sizes) == 1 else sorted(sizes),
                 notes={"best_of_evals_top1": outputs.BEST_NOTE, "fusion": heads.FUSION_NOTE,
                        "std": "sample standard deviation over seeds (ddof=1; 0 for one seed)",
                        "files": f"{outputs.MODEL_FILE}, predictions_*.npz and features_*.npz are of the first seed"})

  def aggregate(name):
    finals = [p["summary"][name]["final_top1"] for p in per_seed]
    bests = [p["summary"][name]["best_of_evals_top1"] for p in per_seed]
    final_mean, final_std = outputs.mean_std(finals)
    best_mean, best_std = outputs.mean_std(bests)
    return {"final_top1": final_mean, "final_top1_std": final_std, "best_of_evals_top1": best_mean,
            "best_of_evals_top1_std": best_std,
            "per_seed": [dict(p["summary"][name], seed=p["seed"], num_labelled=p["num_labelled"]) for p in per_seed]}

  results["streams"] = {m: aggregate(m) for m in streams}
  if fusion:
    results[fusion] = dict(aggregate(fusion), streams=list(streams), method=heads.FUSION_NOTE)
  results["labelled_per_class"] = {str(p["seed"]): p["labelled_per_class"] for p in per_seed}
  results["files"] = {"model": outputs.MODEL_FILE, "predictions": "predictions_<stream>.npz",
                      "features": "features_<stream>.npz"}
  outputs.save_json(os.path.join(workdir, "results.json"), results)
  outputs.print_table(results)
  return results


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict[str, Any]:
  """The ``semi``, ``transfer`` and ``finetune`` trainers: ``run`` once per config and pretraining."""
  return common.run_once(config, workdir, run)
