"""Linear evaluation: a new classifier trained on the frozen pretrained encoders' features.

Follows docs/references.md#cmd-linear-evaluation (the reference's ``action_classification_cmd.py``)
and HiCLR's linear evaluation (#hiclr-downstream-protocols; ``configs/linear_hiclr.py``): the
pretrained query encoder frozen, BatchNorm in inference mode (pretraining running
statistics), a new ``Linear(feature_dim, classes)`` (``cmd_jax.protocols.heads.init_head``)
on the pooled feature; SGD with the config's lr, momentum and schedule (CMD: lr 0.1, batch
64, 80 epochs, x0.1 at 50 and 70, random crop-resizes; HiCLR: lr 3.0, batch 128, 100 epochs,
the stored clips). The encoder forward runs inside the jitted step under ``stop_gradient``
(the crop is random each step); only the heads are in the optimizer state, so every encoder
parameter and statistic stays bit-identical. The streams of ``config.streams`` train in the
same step from the same batches and crops, each with its own head (disjoint parameters and
optimizers: the same as training them one by one).

``config.joint_probe = True`` (2+ streams) adds CrosSCLR's multi-stream linear evaluation
(its ``processor/linear_evaluation.py`` with ``view='all'``, ``net/crossclr_3views.py``; its
"3s" number): one more head per stream, trained jointly with ONE cross-entropy on the mean
of these heads' logits (``heads.mean_logits``) and predicting the arg-max of that mean. It
is trained in the same step as the per-stream heads, from the same batches and the same
initial heads, with its
own parameters and optimizer (``params["mean_logit_probe"] = {stream: head}``), so the
per-stream heads are exactly those of a run without it. It is reported as
``results["mean_logit_probe"]`` (and in the printed table) and its heads are saved to
``heads_mean_logit_probe.msgpack``.

Written in the workdir besides ``results.json`` (``cmd_jax.protocols.outputs``):
``heads.msgpack`` (``{stream: {"weight" [C, D], "bias" [C]}}``, torch layout) and
``model.msgpack`` (``{stream: {"params", "batch_stats"}}`` of ``Encoder(num_outputs=C)``: the
frozen encoder + trained head).

``config.drop_last`` (``cmd_jax.protocols.batches``): HiCLR's, CrosSCLR's and AimCLR's linear
evaluations drop the last partial batch of every epoch (``N // B`` steps); CMD's keeps it.
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

from cmd_jax import data, metrics as metrics_lib, modalities, optim
from cmd_jax import pretrained as pretrained_lib, sharding
from cmd_jax.layouts import SkeletonLayout
from cmd_jax.protocols import batches, common, heads, outputs, training, views


PROBE_HEADS_FILE = "heads_mean_logit_probe.msgpack"


def train_step(state: training.DownstreamState, frozen: Mapping[str, Any], batch: Mapping[str, jax.Array], *,
               model, layout: SkeletonLayout, streams: Sequence[str], tx: optax.GradientTransformation,
               schedule: Callable, view: Mapping[str, Any],
               joint_probe: bool = False) -> tuple[training.DownstreamState, dict[str, jax.Array]]:
  """One linear-evaluation step (#cmd-linear-evaluation): the random crop of ``fold_in(rng, step)``, the frozen
  encoders' features (inference-mode BN, ``stop_gradient``), mean cross-entropy of every
  stream's head (and, ``joint_probe``, of the mean logits of ``params["mean_logit_probe"]``),
  one SGD step on the heads only."""
  key = jax.random.fold_in(state.rng, state.step)
  clip = views.train_clip(key, batch, view)
  feats = {m: jax.lax.stop_gradient(model.apply(frozen[m], modalities.modality(clip, m, layout), train=False,
                                                features_only=True)) for m in streams}
  labels = batch["label"]

  def loss_fn(params):
    out = {m: training.ce_and_accuracy(heads.head_logits(params[m], feats[m]), labels) for m in streams}
    if joint_probe:
      out[heads.MEAN_LOGIT_PROBE] = training.ce_and_accuracy(
          heads.mean_logits(params[heads.MEAN_LOGIT_PROBE], feats), labels)
    return sum(v[0] for v in out.values()), out

  (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"lr": schedule(state.step)}
  for name in out:
    metrics[f"loss_{name}"], metrics[f"train_top1_{name}"] = out[name]
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def run(config, workdir: str) -> dict[str, Any]:
  """Linear evaluation of ``config.init_from`` in ``workdir``; returns the results."""
  mesh, streams, pre, train_source, test_source, num_classes = common.setup(config, workdir, "linear")
  view = views.train_view_params(config, pre)
  model = pre.model(num_outputs=None)
  frozen = {m: pre.variables(m) for m in streams}
  fusion = heads.fusion_name(streams)
  joint_probe = bool(config.get("joint_probe", False))
  n_train, batch = len(train_source), int(config.batch_size)
  spe = batches.steps_per_epoch(n_train, batch, bool(config.get("drop_last", False)))
  key = jax.random.PRNGKey(int(config.seed))
  head_key, run_key = jax.random.split(key)
  head_init = str(config.get("head_init", "normal_0.01"))
  head_params = {m: heads.init_head(jax.random.fold_in(head_key, i), num_classes, pre.feature_dim, head_init)
                 for i, m in enumerate(streams)}
  if joint_probe:  # the same initial heads, copied: the probe differs from the per-stream heads by its loss only
    head_params[heads.MEAN_LOGIT_PROBE] = jax.tree.map(jnp.copy, {m: head_params[m] for m in streams})
  tx = training.stream_optimizer(config, spe, list(head_params))
  schedule = optim.lr_schedule(config, spe)
  state = training.DownstreamState(step=jnp.zeros((), jnp.int32), params=head_params, batch_stats={},
                                   opt_state=tx.init(head_params), rng=run_key)
  state = sharding.put_replicated(state, mesh)
  frozen_device = sharding.put_replicated(frozen, mesh)
  rep = sharding.replicated(mesh)
  step = jax.jit(functools.partial(train_step, model=model, layout=pre.layout, streams=streams, tx=tx,
                                   schedule=schedule, view=view, joint_probe=joint_probe),
                 out_shardings=(rep, rep), donate_argnums=(0,))

  # The encoders are frozen: the test features are computed once.
  extractor = batches.StreamFeatures(model, pre.layout, streams, *views.evaluation_view(config, pre),
                                     pre.feature_dim)
  test_feats, test_labels = extractor(frozen, test_source, batch_size=int(config.eval_batch_size), mesh=mesh)
  common.check_labels(test_labels, num_classes, "the test split")
  logits_fn = jax.jit(lambda params, feats: {m: heads.head_logits(params[m], feats[m]) for m in streams})
  probe_fn = jax.jit(lambda params, feats: heads.mean_logits(params[heads.MEAN_LOGIT_PROBE], feats))
  test_feats_device = sharding.put_replicated(test_feats, mesh)

  def evaluate(s):
    logits = jax.device_get(logits_fn(s.params, test_feats_device))
    out = {"logits": {m: np.asarray(v) for m, v in logits.items()}, "labels": test_labels, "features": test_feats}
    if joint_probe:
      out["probes"] = {heads.MEAN_LOGIT_PROBE: np.asarray(jax.device_get(probe_fn(s.params, test_feats_device)))}
    return out

  writer = metrics_lib.MetricWriter(workdir)
  bar = tqdm.tqdm(total=spe * int(config.num_epochs), unit="step", desc=config.get("name", "linear"),
                  disable=not outputs.is_writer())
  try:
    state, curve, last = training.run_epochs(state, lambda s, b: step(s, frozen_device, b), train_source,
                                             config=config, mesh=mesh, seed=int(config.seed), evaluate=evaluate,
                                             writer=writer, bar=bar, tag={})
  finally:
    bar.close()
    writer.close()

  heads_host = pretrained_lib.to_host(state.params)
  frozen_host = pretrained_lib.to_host(frozen_device)
  outputs.save_msgpack(os.path.join(workdir, "heads.msgpack"), {m: heads_host[m] for m in streams})
  outputs.save_msgpack(os.path.join(workdir, outputs.MODEL_FILE),
                       {m: {"params": dict(frozen_host[m]["params"], fc=heads_host[m]),
                            "batch_stats": frozen_host[m]["batch_stats"]} for m in streams})
  outputs.save_outputs(workdir, last["features"], last["logits"], last["labels"], fusion,
                       probes=last.get("probes"))
  results = outputs.base_results(config, "linear", pre, streams, n_train, len(test_labels), num_classes)
  results.update(epochs=int(config.num_epochs), eval_every_epochs=int(config.eval_every_epochs),
                 notes={"best_of_evals_top1": outputs.BEST_NOTE, "fusion": heads.FUSION_NOTE})
  if joint_probe:
    results["notes"][heads.MEAN_LOGIT_PROBE] = heads.MEAN_LOGIT_PROBE_NOTE
  summary = outputs.summarize_curve(curve, list(streams) + ([fusion] if fusion else [])
                                    + ([heads.MEAN_LOGIT_PROBE] if joint_probe else []))
  results["streams"] = {m: summary[m] for m in streams}
  if fusion:
    results[fusion] = dict(summary[fusion], streams=list(streams), method=heads.FUSION_NOTE)
  if joint_probe:
    outputs.save_msgpack(os.path.join(workdir, PROBE_HEADS_FILE), heads_host[heads.MEAN_LOGIT_PROBE])
    results[heads.MEAN_LOGIT_PROBE] = dict(summary[heads.MEAN_LOGIT_PROBE], streams=list(streams),
                                           heads=PROBE_HEADS_FILE, note=heads.MEAN_LOGIT_PROBE_NOTE)
  weight_sets = heads.parse_fusion_weights(config.get("fusion_weights", ""), streams)
  if weight_sets:
    results["weighted_logit_fusion"] = dict(
        heads.weighted_logit_fusion(last["best_logits"], last["labels"], weight_sets),
        note=heads.WEIGHTED_FUSION_NOTE)
  results["files"] = {"heads": "heads.msgpack", "model": outputs.MODEL_FILE,
                      "predictions": "predictions_<stream>.npz", "features": "features_<stream>.npz"}
  outputs.print_table(results)
  final = {m: np.argmax(v, axis=-1) for m, v in last["logits"].items()}
  if fusion:
    final[fusion] = np.argmax(heads.fused_probabilities(last["logits"]), axis=-1)
  for name, v in (last.get("probes") or {}).items():
    final[name] = np.argmax(v, axis=-1)
  outputs.add_per_class(results, last["labels"], final, num_classes,
                        data.class_names(config.data, train_source, num_classes))
  outputs.save_json(os.path.join(workdir, "results.json"), results)
  return results


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict[str, Any]:
  """The ``linear`` trainer: ``run`` once per config and pretraining (``common.run_once``)."""
  return common.run_once(config, workdir, run)
