"""HiCLR's losses: InfoNCE of the basic branch, the hierarchical consistency terms, nearest-neighbour mining.

For a query feature ``x`` of a branch (``q``: basic, ``q1``: + the normal augmentations,
``q2``: + the joint mask), all L2-normalised, and the momentum key ``k`` with the queue
(pre-enqueue)::

  logits_x = [x . k, x . queue] / T            (length 1 + K; T = 0.07)
  p_x = softmax(logits_x)

- ``L_info``: cross-entropy of ``logits_q`` with target 0 (MoCo's InfoNCE, branch 0 only);
- ``L_h1 = -sum_j sg(p_q)_j log p_q1_j`` and ``L_h2 = -sum_j sg(p_q1)_j log p_q2_j``: each
  branch's similarity distribution pulled towards the one of the branch with the weaker
  augmentation, the weaker side detached (the reference's "DDM" terms, chained); same
  temperature on both sides;
- total ``L = L_info + (L_h1 + L_h2) / 2``, every term a batch mean;
- nearest-neighbour mining (after ``mining_epoch``): ``L_info`` becomes a multi-positive
  InfoNCE whose positives are the key plus, for each of ``q``, ``q1``, ``q2``, its
  ``topk`` most similar queue entries by raw similarity (a union: 1 to 3 extra positives
  for ``topk = 1``): ``mean_n [ -sum_{j in P_n} log_softmax(logits_q)_nj / |P_n| ]``;
  ``L_h1`` and ``L_h2`` are unchanged.

The reference computes ``log(softmax(.))`` of the stronger branches; ``log_softmax`` is the
same function without the underflow of ``log(0)`` (equal to float32 rounding at the
reference's logit range). Pure functions of arrays returning ``(loss, metrics)``;
gradients reach only the query side (keys and queue are ``stop_gradient``-ed). The branch
logits, InfoNCE, the consistency term and the mining are the SkeletonCLR family's
(``cmd_jax.methods.common``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cmd_jax.losses import Metrics
from cmd_jax.methods.common.ddm import ddm as consistency  # one hierarchical term
from cmd_jax.methods.common.mining import mining_positives, multi_positive_nce
from cmd_jax.methods.common.moco import branch_logits, info_nce, top1


def hiclr_loss(q: jax.Array, q1: jax.Array | None, q2: jax.Array | None, k: jax.Array, queue: jax.Array, *,
               temperature: float = 0.07, mining: jax.Array | bool = False, topk: int = 1,
               consistency_weight: float = 0.5) -> tuple[jax.Array, Metrics]:
  """HiCLR's total loss (module docstring) and its terms.

  Args:
    q, q1, q2: ``[N, D]`` L2-normalised query features of the three branches; ``q1 = q2 =
      None`` is branch 0 alone (MoCo with the basic views: the ablation of the hierarchy),
      whose mining uses ``q``'s neighbours only.
    k: ``[N, D]`` L2-normalised momentum keys (stop-gradient'ed here).
    queue: ``[K, D]``, the state before this step's enqueue.
    mining: whether nearest-neighbour mining is on (a traced bool: both losses are cheap
      to compute, and selecting one keeps a single compiled step across ``mining_epoch``).
    topk: queue entries mined per branch.
    consistency_weight: the weight of ``L_h1 + L_h2`` (the reference: 1/2).

  Metrics: ``loss``, ``loss_info`` (the InfoNCE used: plain or mined), ``loss_h1``,
  ``loss_h2`` (with three branches), ``acc1`` (the key is branch 0's most similar entry),
  ``mining``.
  """
  if (q1 is None) != (q2 is None):
    raise ValueError("hiclr_loss: give both strong branches q1 and q2, or neither (branch 0 alone)")
  logits, l_neg = branch_logits(q, k, queue, temperature)
  l_negs = [l_neg]
  if q1 is not None:
    logits_1, l_neg_1 = branch_logits(q1, k, queue, temperature)
    logits_2, l_neg_2 = branch_logits(q2, k, queue, temperature)
    l_negs += [l_neg_1, l_neg_2]
  plain = info_nce(logits)
  mined = multi_positive_nce(logits, mining_positives(tuple(l_negs), topk))
  mining = jnp.asarray(mining, jnp.bool_)
  info = jnp.where(mining, mined, plain)
  metrics = {"loss_info": info, "acc1": top1(logits),
             "mining": mining.astype(jnp.float32)}
  total = info
  if q1 is not None:
    h1 = consistency(logits, logits_1)
    h2 = consistency(logits_1, logits_2)
    total = info + consistency_weight * (h1 + h2)
    metrics.update(loss_h1=h1, loss_h2=h2)
  metrics["loss"] = total
  return total, metrics
