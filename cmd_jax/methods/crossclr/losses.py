"""CrosSCLR's losses: per-stream InfoNCE (single-view training) and cross-view consistent knowledge mining.

Follows docs/references.md#crossclr-losses. For every stream ``s`` (joint, motion, bone; the
"views" of the paper are these streams) with L2-normalised query ``q_s``, key ``k_s`` and
queue ``Q_s`` (pre-enqueue, ``[K, D]``, row ``j`` = the same past sample in every stream)::

  S_s = q_s Q_s^T                 (K raw cosine similarities; gradient into q_s only)
  logits_s = [q_s . k_s, S_s] / T (length 1 + K; T = 0.07)

- **Single-view training** (epochs up to ``cross_epoch``): ``L = sum_s CE(logits_s, 0)``, each
  term MoCo's InfoNCE, a plain sum (no division by the stream count).
- **Cross-view training** (after ``cross_epoch``), for every ordered pair ``(u, v)`` of
  distinct streams:

  - the context ``C_uv = S_u * S_v`` (elementwise, ``C_uv = C_vu``; NOT detached: it carries
    gradient into both ``q_u`` and ``q_v``);
  - ``logits_uv = [q_u . k_u, S_u, C_uv] / T`` (length ``1 + 2K``; ``context=False``: the
    ``1 + K`` logits of ``u`` alone);
  - the positives: the key (column 0) and the ``topk`` most similar queue entries of the
    OTHER stream ``v`` (``N_v``, by raw ``S_v``; indices carry no gradient), marked in the
    ``S_u`` block and again in the ``C_uv`` block: ``1 + 2 topk`` positives (``1 + topk``
    without context); ``u``'s own neighbours are not positives;
  - ``l_uv = -sum_{j positive} log_softmax(logits_uv)_j / (number of positives)`` (the mean
    of the positives' log-probabilities, not the log of their summed probability: the
    SkeletonCLR family's multi-positive InfoNCE, ``cmd_jax.methods.common.mining``);
  - per stream ``L_u = mean_batch( mean_{v != u} l_uv )`` (three streams: ``(l_uv + l_uw) / 2``;
    two: ``l_uv``), and ``L = sum_u L_u``.

Pure functions of arrays returning ``(loss, metrics)``; keys and queues get no gradient
(``cmd_jax.methods.common.moco.branch_logits``). The phase is a traced flag: ``crossclr_loss``
selects the computation with ``lax.cond`` so that a single compiled step runs both phases and
single-view steps do not compute the ``1 + 2K``-wide cross-view logits.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from cmd_jax.losses import Metrics
from cmd_jax.methods.common.mining import mining_positives, multi_positive_nce
from cmd_jax.methods.common.moco import branch_logits, info_nce, top1


def stream_logits(q: Mapping[str, jax.Array], k: Mapping[str, jax.Array], queues: Mapping[str, jax.Array],
                  temperature: float) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """``({s: logits_s [N, 1 + K]}, {s: S_s [N, K]})`` of every stream against its own key and queue."""
  out = {s: branch_logits(q[s], k[s], queues[s], temperature) for s in q}
  return {s: v[0] for s, v in out.items()}, {s: v[1] for s, v in out.items()}


def single_view_loss(logits: Mapping[str, jax.Array]) -> tuple[jax.Array, Metrics]:
  """``sum_s InfoNCE(logits_s)``; metrics ``loss``, ``loss_<s>``, ``acc1_<s>``."""
  metrics = {}
  for s, z in logits.items():
    metrics[f"loss_{s}"] = info_nce(z)
    metrics[f"acc1_{s}"] = top1(z)
  total = sum(metrics[f"loss_{s}"] for s in logits)
  metrics["loss"] = total
  return total, metrics


def cross_view_positives(l_neg_other: jax.Array, topk: int, context: bool = True) -> jax.Array:
  """The positive mask of a pair ``(u, v)`` from the partner's similarities ``S_v [N, K]``:
  ``[1, onehot(N_v)]`` (``[N, 1 + K]``), with context ``[1, onehot(N_v), onehot(N_v)]``
  (``[N, 1 + 2K]``); ``N_v`` = the ``topk`` largest entries of ``S_v``."""
  positives = mining_positives((l_neg_other,), topk)
  return jnp.concatenate([positives, positives[:, 1:]], axis=1) if context else positives


def cross_view_logits(logits_u: jax.Array, l_neg_u: jax.Array, l_neg_v: jax.Array, temperature: float,
                      context: bool = True) -> jax.Array:
  """``[q_u . k_u, S_u, S_u * S_v] / T`` (``[N, 1 + 2K]``) from ``logits_u = [q_u . k_u, S_u] / T``;
  without context ``logits_u`` itself."""
  if not context:
    return logits_u
  return jnp.concatenate([logits_u, l_neg_u * l_neg_v / temperature], axis=1)


def cross_view_loss(logits: Mapping[str, jax.Array], l_negs: Mapping[str, jax.Array], *, temperature: float,
                    topk: int = 1, context: bool = True) -> tuple[jax.Array, Metrics]:
  """Cross-view consistent knowledge mining (module docstring) over the streams of ``logits``
  (two or three). Metrics ``loss``, ``loss_<s>`` (``L_s``), ``acc1_<s>`` (the key is ``s``'s
  most similar entry among its own ``1 + K``)."""
  names: Sequence[str] = tuple(logits)
  if len(names) < 2:
    raise ValueError(f"cross_view_loss needs at least two streams, got {list(names)}")
  positives = {v: cross_view_positives(l_negs[v], topk, context) for v in names}
  metrics = {}
  for u in names:
    partners = [v for v in names if v != u]
    terms = [multi_positive_nce(cross_view_logits(logits[u], l_negs[u], l_negs[v], temperature, context),
                                positives[v]) for v in partners]
    metrics[f"loss_{u}"] = sum(terms) / len(terms)
    metrics[f"acc1_{u}"] = top1(logits[u])
  total = sum(metrics[f"loss_{u}"] for u in names)
  metrics["loss"] = total
  return total, metrics


def crossclr_loss(q: Mapping[str, jax.Array], k: Mapping[str, jax.Array], queues: Mapping[str, jax.Array], *,
                  cross: jax.Array | bool, temperature: float = 0.07, topk: int = 1,
                  context: bool = True) -> tuple[jax.Array, Metrics]:
  """CrosSCLR's loss for the streams of ``q`` (joint/motion/bone: ``[N, D]`` L2-normalised
  queries), their keys ``k`` and queues (``[K, D]``, before this step's enqueue).

  ``cross``: whether this is a cross-view step (``True``/``False``, or a traced bool: then
  ``lax.cond`` runs the one phase's computation). Metrics: ``loss``, ``loss_<s>``,
  ``acc1_<s>`` and ``cross`` (0 or 1).
  """
  logits, l_negs = stream_logits(q, k, queues, temperature)

  def single(operands):
    return single_view_loss(operands[0])

  def mined(operands):
    return cross_view_loss(operands[0], operands[1], temperature=temperature, topk=topk, context=context)

  if isinstance(cross, (bool, int)) and not isinstance(cross, jax.Array):
    total, metrics = (mined if cross else single)((logits, l_negs))
  else:
    # The cross-view branch is rematerialised in the backward pass, so that its 1 + 2K-wide
    # intermediates are not kept as residuals (lax.cond's residuals are the union of both
    # branches', zero-filled in the branch not taken: single-view steps would pay for them).
    total, metrics = jax.lax.cond(jnp.asarray(cross, jnp.bool_), jax.checkpoint(mined), single, (logits, l_negs))
  metrics = dict(metrics, cross=jnp.asarray(cross, jnp.float32))
  return total, metrics
