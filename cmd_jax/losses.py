"""The contrastive pieces every MoCo-style method shares: L2 normalisation, similarities, InfoNCE.

MoCo v2's InfoNCE as CMD's reference computes it (the SkeletonCLR family's form, from a
branch's logits, is ``cmd_jax.methods.common.moco``). Pure ``jnp`` functions of arrays:
they never call a model or read a config, and the losses return ``(loss, metrics)`` with
scalar metrics. Each method's own terms live with the method
(``cmd_jax.methods.<method>.losses``).

Shapes and conventions:

- queries ``q`` and keys ``k`` are ``[N, D]``, L2-normalised (``l2_normalize``);
- a queue is ``[K, D]``, row ``j`` = one past sample's key (see ``cmd_jax.queue``), so the
  similarities of a batch to a queue are ``q @ queue.T`` -> ``[N, K]`` (``similarities``);
- gradients flow only to the query side, as in the reference: keys, queues and the
  teacher similarities are ``stop_gradient``-ed here (the reference computes them under
  ``no_grad`` / from detached buffers), so a caller cannot leak gradient into them;
- loss arithmetic is float32 (inputs of lower precision are upcast), and the similarity
  matmul defaults to ``Precision.HIGHEST``: it is cheap (N*D*K) and TF32 rounding would
  perturb top-k choices and low-temperature logits on GPUs.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp


Metrics = dict[str, jax.Array]

NORM_EPS = 1e-12  # torch.nn.functional.normalize's default eps


def at_least_float32(x: jax.Array) -> jax.Array:
  """``x`` as float32, or as is when it is already float32 or wider."""
  x = jnp.asarray(x)
  return x.astype(jnp.result_type(x.dtype, jnp.float32))


def as_int(value, what: str) -> int:
  """``value`` as a Python int (ints and numpy integers), else a ValueError naming ``what``."""
  if isinstance(value, bool):
    raise ValueError(f"{what} must be an int, got {value!r}")
  try:
    return operator.index(value)
  except TypeError:
    raise ValueError(f"{what} must be an int, got {value!r} ({type(value).__name__})") from None


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = NORM_EPS) -> jax.Array:
  """``x / max(||x||, eps)`` along ``axis``: ``torch.nn.functional.normalize``."""
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.maximum(norm, eps)


def similarities(q: jax.Array, queue: jax.Array, *,
                 precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST) -> jax.Array:
  """Dot products of each row of ``q`` ``[N, D]`` with each queue row ``[K, D]`` -> ``[N, K]``.

  The queue is ``stop_gradient``-ed (a detached buffer in the reference); ``q`` is not, so
  the same helper serves the query side (``l_neg``) and, on stop-gradient'ed keys, the
  teacher side (``lk_neg``).
  """
  if q.ndim != 2 or queue.ndim != 2 or q.shape[1] != queue.shape[1]:
    raise ValueError(f"similarities: expected q [N, D] and queue [K, D], got {q.shape} and "
                     f"{queue.shape}")
  queue = jax.lax.stop_gradient(queue)
  return jnp.matmul(at_least_float32(q), at_least_float32(queue).T, precision=precision)


def info_nce_from_similarities(l_pos: jax.Array, l_neg: jax.Array,
                               temperature: float) -> tuple[jax.Array, Metrics]:
  """InfoNCE from the positive ``[N]`` or ``[N, 1]`` and negative ``[N, K]`` similarities.

  ``logits = [l_pos, l_neg] / temperature``; cross-entropy with target 0, mean over the
  batch. Metrics (fractions in [0, 1], ties counted in the positive's favour):
  ``acc1`` = positive logit is the largest, ``acc5`` = fewer than 5 negatives beat it.
  """
  l_pos = at_least_float32(l_pos).reshape(-1, 1)
  l_neg = at_least_float32(l_neg)
  if l_neg.ndim != 2 or l_neg.shape[0] != l_pos.shape[0]:
    raise ValueError(f"info_nce: l_pos {l_pos.shape} and l_neg {l_neg.shape} do not match "
                     f"(expected [N, 1] and [N, K])")
  logits = jnp.concatenate([l_pos, l_neg], axis=1) / temperature
  loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])
  rank = jnp.sum(logits[:, 1:] > logits[:, :1], axis=1)  # negatives strictly above the positive
  metrics = {
      "loss": loss,
      "acc1": jnp.mean((rank < 1).astype(jnp.float32)),
      "acc5": jnp.mean((rank < 5).astype(jnp.float32)),
  }
  return loss, metrics


def info_nce(q: jax.Array, k: jax.Array, queue: jax.Array,
             temperature: float) -> tuple[jax.Array, Metrics]:
  """MoCo's InfoNCE for one modality (docs/references.md#cmd-step-order, step 4).

  ``q``, ``k``: ``[N, D]`` L2-normalised queries and keys; ``queue``: ``[K, D]``, the state
  before this step's enqueue. ``l_pos = sum(q * k, -1)``, ``l_neg = q @ queue.T``; the key
  and the queue get no gradient. Returns ``(loss, {"loss", "acc1", "acc5"})``.
  """
  if q.shape != k.shape:
    raise ValueError(f"info_nce: q {q.shape} and k {k.shape} must have the same shape [N, D]")
  k = jax.lax.stop_gradient(k)
  l_pos = jnp.sum(at_least_float32(q) * at_least_float32(k), axis=-1)
  return info_nce_from_similarities(l_pos, similarities(q, queue), temperature)
