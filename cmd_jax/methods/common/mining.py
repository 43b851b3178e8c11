"""Nearest-neighbour mining (NNM): the queue entries most similar to a query become extra positives.

AimCLR introduced it and HiCLR keeps it unchanged (docs/references.md#hiclr-pretraining-step):
after a warm-up epoch, each query branch's ``topk`` most similar queue entries (by raw cosine
similarity, the key excluded) are marked as positives, their union over the branches (a
duplicate counts once), and InfoNCE becomes a multi-positive cross-entropy that averages the
log-probabilities of the positives (the mean of ``log p`` over the positives, not the log of
their summed probability)::

  L = mean_n [ -sum_{j in P_n} log_softmax(logits_n)_j / |P_n| ]

with ``P_n`` the key (column 0) and the mined columns. Pure functions of arrays; the mined
indices carry no gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mining_positives(l_negs: tuple[jax.Array, ...], topk: int) -> jax.Array:
  """The positive mask ``[N, 1 + K]``: the key (column 0) and the union of each branch's
  ``topk`` most similar queue entries (by raw similarity ``l_neg [N, K]``)."""
  n, size = l_negs[0].shape
  mined = jnp.zeros((n, size), jnp.bool_)
  rows = jnp.arange(n)[:, None]
  for l_neg in l_negs:
    _, idx = jax.lax.top_k(jax.lax.stop_gradient(l_neg), topk)
    mined = mined.at[rows, idx].set(True)
  return jnp.concatenate([jnp.ones((n, 1), jnp.bool_), mined], axis=1)


def multi_positive_nce(logits: jax.Array, positives: jax.Array) -> jax.Array:
  """``mean_n [ -sum_j positives_nj log_softmax(logits)_nj / sum_j positives_nj ]``."""
  log_p = jax.nn.log_softmax(logits, axis=-1)
  pos = positives.astype(log_p.dtype)
  return jnp.mean(-jnp.sum(log_p * pos, axis=-1) / jnp.sum(pos, axis=-1))
