"""SkeletonCLR's loss: MoCo v2's InfoNCE of the query against its key and the queue.

For the L2-normalised query ``q``, its momentum key ``k`` and the queue (before this step's
enqueue; docs/references.md#skeletonclr-pretraining-step)::

  logits = [q . k, q . queue] / T        (length 1 + K; T = 0.07)
  L = mean_n CE(logits_n, 0)             (the key is the positive, the queue the negatives)

A pure function of arrays returning ``(loss, metrics)``; gradients reach only ``q`` (the key
and the queue are ``stop_gradient``-ed, as the reference computes them under ``no_grad`` and
from a detached queue). The pieces are the SkeletonCLR family's (``cmd_jax.methods.common.moco``).
"""

from __future__ import annotations

import jax

from cmd_jax.losses import Metrics
from cmd_jax.methods.common.moco import branch_logits, info_nce, top1


def skeletonclr_loss(q: jax.Array, k: jax.Array, queue: jax.Array, *,
                     temperature: float = 0.07) -> tuple[jax.Array, Metrics]:
  """InfoNCE of ``q [N, D]`` against ``k [N, D]`` and ``queue [K, D]`` (all L2-normalised).

  Metrics: ``loss`` and ``acc1`` (the fraction of queries whose key is their most similar entry).
  """
  logits, _ = branch_logits(q, k, queue, temperature)
  total = info_nce(logits)
  return total, {"loss": total, "acc1": top1(logits)}
