"""What the trained protocols (linear; semi, transfer, finetune) share: state, loss, epoch loop.

This module owns ``DownstreamState`` (the pytree a protocol's jitted step changes), the
mean softmax cross-entropy and train accuracy of one head (``ce_and_accuracy``), the
optimizer of the streams (``stream_optimizer``), and ``run_epochs``: train every epoch on
``cmd_jax.protocols.batches.epoch_batches`` (``config.drop_last``: the torchlight family's
loaders drop the last partial batch), log the epoch's mean metrics, evaluate every
``config.eval_every_epochs`` epochs and after the last (the reference evaluates on the test
split every 5 epochs: docs/references.md#cmd-quirks item 6), and keep each stream's test
logits at its best evaluation (HiCLR's ensemble reads them); after every step it checks for a
stop request (``cmd_jax.preemption.check``: SIGTERM, SIGINT).

The streams are trained side by side but each is the reference's model of its own:
``stream_optimizer`` gives every top-level group of the parameters (a stream; the linear
protocol's mean-logit probe) its own ``cmd_jax.optim.make_optimizer``, so that
``config.optimizer.clip_grad_norm`` clips each group by the norm of its own gradients, as
the reference clips the one model it trains (with no clipping this is the same update as
one optimizer over everything: SGD is elementwise).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cmd_jax import optim, preemption
from cmd_jax.protocols import batches, heads, outputs


@flax.struct.dataclass
class DownstreamState:
  """Everything a downstream step changes. Dicts are keyed by stream.

  linear: ``params[m]`` is the head ``{"weight", "bias"}`` and ``batch_stats`` is empty (the
  frozen encoders are a separate argument of the step). semi/transfer: ``params[m]`` is the
  whole ``Encoder(num_outputs=C)`` params (``input_norm``, ``gru``, ``fc``) and
  ``batch_stats[m]`` its BN running statistics.
  """
  step: jax.Array
  params: dict[str, Any]
  batch_stats: dict[str, Any]
  opt_state: Any
  rng: jax.Array


def ce_and_accuracy(logits, labels):
  """Mean softmax cross-entropy and top-1 of ``logits`` against integer ``labels``."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
  return loss, accuracy


def stream_optimizer(config, steps_per_epoch: int, groups: Sequence[str],
                     frozen: tuple[str, ...] = ()) -> optax.GradientTransformation:
  """``cmd_jax.optim.make_optimizer`` for each group of ``params = {group: subtree}``, separately."""
  return optax.multi_transform({g: optim.make_optimizer(config, steps_per_epoch, frozen) for g in groups},
                               {g: g for g in groups})


def run_epochs(state, step_fn, source, *, config, mesh, seed: int, evaluate: Callable, writer, bar,
               tag: dict[str, float], log_split: str = "train", eval_split: str = "eval"):
  """The epoch loop: train, log, evaluate every ``eval_every_epochs`` epochs and after the last.
  ``evaluate(state)`` returns ``{"logits": {stream: [N, C]}, "labels", "features"}`` and
  optionally ``"probes": {name: [N, C] scores}`` (evaluated beside the streams, not fused).
  Returns the final state, the curve of evaluations and the last evaluation's outputs, with
  ``best_logits``: each stream's test logits at its best evaluation (the first to reach it)."""
  epochs, every = int(config.num_epochs), int(config.eval_every_epochs)
  drop_last = bool(config.get("drop_last", False))
  spe = batches.steps_per_epoch(len(source), int(config.batch_size), drop_last)
  curve, last, best = [], None, {}
  for epoch in range(1, epochs + 1):
    window = []
    for batch in batches.epoch_batches(source, batch_size=int(config.batch_size), seed=seed, epoch=epoch, mesh=mesh,
                                       read_threads=int(config.data.read_threads),
                                       prefetch_batches=int(config.data.prefetch_batches), drop_last=drop_last):
      state, metrics = step_fn(state, batch)
      window.append(metrics)
      bar.update(1)
      preemption.check(f"in epoch {epoch} of {epochs}")
    window = jax.device_get(window)
    summary = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
    if not all(math.isfinite(v) for k, v in summary.items() if k.startswith("loss")):
      raise FloatingPointError(f"non-finite loss in epoch {epoch}: {summary}")
    writer.write(epoch * spe, dict(summary, epoch=epoch, **tag), split=log_split)
    bar.set_postfix({k[5:]: f"{v:.3f}" for k, v in summary.items() if k.startswith("loss_")})
    if epoch % every == 0 or epoch == epochs:
      last = evaluate(state)
      accs = heads.evaluation(last["logits"], last["labels"], heads.fusion_name(last["logits"]))
      accs.update({name: heads.top1(scores, last["labels"]) for name, scores in last.get("probes", {}).items()})
      curve.append(dict(accs, epoch=epoch))
      for m, logits in last["logits"].items():
        if m not in best or accs[m] > best[m][0]:
          best[m] = (accs[m], logits)
      last["best_logits"] = {m: v[1] for m, v in best.items()}
      writer.write(epoch * spe, dict({f"top1_{k}": v for k, v in accs.items()}, epoch=epoch, **tag),
                   split=eval_split)
      if outputs.is_writer():
        bar.write(f"epoch {epoch}: test top-1 " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in accs.items()))
  return state, curve, last
