"""The similarity-distribution consistency term: AimCLR's D3M and HiCLR's hierarchical terms.

AimCLR introduced it (its code calls it "DDM"; the paper D3M) and HiCLR chains it across its
branches (docs/references.md#hiclr-pretraining-step): a query branch's distribution over
{key, queue} is pulled towards that of a branch with weaker augmentation, whose distribution
is a detached target::

  L = -mean_n sum_j softmax(sg(target_logits))_nj * log_softmax(logits)_nj

(the gradient of KL(sg(p_target) || p); the same temperature on both sides, no sharpening).
The references compute ``log(softmax(.))``; ``log_softmax`` is the same function without the
underflow of ``log(0)`` (equal to float32 rounding at their logit range, |logit| <= 1/0.07).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ddm(target_logits: jax.Array, logits: jax.Array) -> jax.Array:
  """``-mean_n sum_j softmax(sg(target_logits))_nj * log_softmax(logits)_nj``."""
  target = jax.nn.softmax(jax.lax.stop_gradient(target_logits), axis=-1)
  return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits, axis=-1), axis=-1))
