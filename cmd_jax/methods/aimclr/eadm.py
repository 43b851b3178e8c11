"""AimCLR's EADM: the energy-based attention-guided drop module on an encoder's last feature map.

Parameter-free (docs/references.md#aimclr-eadm): SimAM's inverse energy gives every element of
the map an attention value; the most salient joints, then the most salient elements, are set
to zero, and the rest rescaled. On a channels-last map ``x [R, T, V, C]`` (``R`` = samples x
persons; the reference's ``(N*M, C, T, V)`` map transposed), per row ``r`` and channel ``c``
over the ``T*V`` positions::

  n     = T*V - 1
  d2    = (x - mean_{t,v} x)^2
  var   = sum_{t,v} d2 / n                         (unbiased)
  att   = sigmoid(d2 / (4 (var + lambda)) + 0.5)   (lambda = 1e-4; att in [0.6225, 1))
  att_s = mean_{t,c} att                           [R, V], per joint
  keep_s = att_s < threshold                       (threshold 0.7: a joint is dropped at >= 0.7)
  x1    = x * keep_s[r, v] * numel(keep_s) / sum(keep_s)
  keep  = att < threshold                          (every element: the reference's "temporal"
                                                    drop is elementwise, not whole frames)
  out   = x1 * keep * numel(keep) / sum(keep)

Both masks come from ``att`` of ``x`` (before the joint drop). The rescale factors are
BATCH-GLOBAL scalars (``numel`` and ``sum`` over every row, absent persons included), not per
sample: under ``jit`` with a batch sharded on the ``data`` mesh axis the sums are global, as on
the reference's single GPU. The masks and factors carry no gradient (the reference builds them
by assigning constants in place): ``stop_gradient``; the gradient reaches ``x`` through both
products. ``threshold`` is an attention level, not a probability (the reference calls it
``keep_prob``).

``mode="identity"`` is the first public release's EADM: its mask assignments (``m[m >= t] = 0``
then ``m[m < t] = 1``) set every entry to 1, so the module returned its input (and the dropped
feature equalled the extreme one).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

THRESHOLD = 0.7   # the release's Simam_Drop(keep_prob=0.7) (hard-coded in its ST-GCN)
E_LAMBDA = 1e-4   # SimAM's lambda
MODES = ("threshold", "identity")


def attention(x: jax.Array, e_lambda: float = E_LAMBDA) -> jax.Array:
  """SimAM's attention ``sigmoid(1 / e*)`` of every element of ``x [R, T, V, C]`` (module docstring)."""
  if x.ndim != 4:
    raise ValueError(f"EADM: expected a feature map [R, T, V, C], got shape {x.shape}")
  n = x.shape[1] * x.shape[2] - 1
  d2 = jnp.square(x - jnp.mean(x, axis=(1, 2), keepdims=True))
  var = jnp.sum(d2, axis=(1, 2), keepdims=True) / n
  return jax.nn.sigmoid(d2 / (4.0 * (var + e_lambda)) + 0.5)


def _drop(x: jax.Array, keep: jax.Array) -> jax.Array:
  """``x * keep * numel(keep) / sum(keep)`` in the reference's order; ``keep`` float 0/1,
  broadcastable to ``x``; the factor a batch-global scalar."""
  return x * keep * keep.size / jnp.sum(keep)


def eadm(x: jax.Array, threshold: float = THRESHOLD, e_lambda: float = E_LAMBDA) -> jax.Array:
  """The dropped copy of the map ``x [R, T, V, C]`` (module docstring)."""
  att = jax.lax.stop_gradient(attention(x, e_lambda))
  keep_joints = (jnp.mean(att, axis=(1, 3)) < threshold).astype(x.dtype)      # [R, V]
  x1 = _drop(x, keep_joints[:, None, :, None])
  return _drop(x1, (att < threshold).astype(x.dtype))


def map_transform(mode: str = "threshold", threshold: float = THRESHOLD) -> Callable[[jax.Array], jax.Array]:
  """The encoder's ``map_transform`` for ``config.aimclr.eadm``: ``"threshold"`` (the
  release's HEAD: ``eadm``) or ``"identity"`` (its first public release: the map unchanged)."""
  if mode == "identity":
    return lambda x: x
  if mode != "threshold":
    raise ValueError(f"EADM mode {mode!r}; expected one of {', '.join(MODES)}")
  return lambda x: eadm(x, threshold)
