"""AimCLR's losses: InfoNCE of the normal view, D3M of the extreme views, nearest-neighbour mining.

For the L2-normalised query features ``q`` (normal view), ``q_e`` (extreme view) and ``q_ed``
(the extreme view's EADM-dropped feature), the momentum key ``k`` and the queue (before this
step's enqueue; docs/references.md#aimclr-losses)::

  logits_x = [x . k, x . queue] / T            (length 1 + K; T = 0.07)

- ``L_info``: cross-entropy of ``logits_q`` with target 0 (MoCo's InfoNCE; the normal view only);
- D3M: ``L_e = -mean_n sum_j sg(p_q)_j log p_e_j`` and ``L_ed`` likewise for ``q_ed``, both
  pulled towards the DETACHED distribution of the normal view ``p_q = softmax(logits_q)`` (not
  chained, unlike HiCLR); same temperature on both sides;
- total ``L = L_info + (L_e + L_ed) / 2``, every term a batch mean;
- nearest-neighbour mining (from ``mining_epoch``): ``L_info`` becomes the multi-positive
  InfoNCE whose positives are the key and, for each of ``q``, ``q_e``, ``q_ed``, its ``topk``
  most similar queue entries by raw similarity (a union: 1 to 3 extra positives for
  ``topk = 1``): ``mean_n [ -sum_{j in P_n} log_softmax(logits_q)_nj / |P_n| ]``; D3M unchanged.

Pure functions of arrays returning ``(loss, metrics)``; gradients reach only the query side.
The branch logits, InfoNCE, D3M and the mining are the SkeletonCLR family's
(``cmd_jax.methods.common``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cmd_jax.losses import Metrics
from cmd_jax.methods.common.ddm import ddm
from cmd_jax.methods.common.mining import mining_positives, multi_positive_nce
from cmd_jax.methods.common.moco import branch_logits, info_nce, top1


def aimclr_loss(q: jax.Array, q_e: jax.Array, q_ed: jax.Array, k: jax.Array, queue: jax.Array, *,
                temperature: float = 0.07, mining: jax.Array | bool = False, topk: int = 1,
                ddm_weight: float = 0.5) -> tuple[jax.Array, Metrics]:
  """AimCLR's total loss (module docstring) and its terms.

  Args:
    q, q_e, q_ed: ``[N, D]`` L2-normalised query features: the normal view, the extreme view,
      the extreme view's dropped copy.
    k: ``[N, D]`` L2-normalised momentum keys (stop-gradient'ed here).
    queue: ``[K, D]``, the state before this step's enqueue.
    mining: whether nearest-neighbour mining is on (a traced bool: both losses are cheap
      to compute, and selecting one keeps a single compiled step across ``mining_epoch``).
    topk: queue entries mined per branch.
    ddm_weight: the weight of ``L_e + L_ed`` (the reference: 1/2).

  Metrics: ``loss``, ``loss_info`` (the InfoNCE used: plain or mined), ``loss_e``, ``loss_ed``,
  ``acc1`` (the key is the normal view's most similar entry), ``mining``.
  """
  logits, l_neg = branch_logits(q, k, queue, temperature)
  logits_e, l_neg_e = branch_logits(q_e, k, queue, temperature)
  logits_ed, l_neg_ed = branch_logits(q_ed, k, queue, temperature)
  mining = jnp.asarray(mining, jnp.bool_)
  info = jnp.where(mining, multi_positive_nce(logits, mining_positives((l_neg, l_neg_e, l_neg_ed), topk)),
                   info_nce(logits))
  l_e, l_ed = ddm(logits, logits_e), ddm(logits, logits_ed)
  total = info + ddm_weight * (l_e + l_ed)
  return total, {"loss": total, "loss_info": info, "loss_e": l_e, "loss_ed": l_ed, "acc1": top1(logits),
                 "mining": mining.astype(jnp.float32)}
