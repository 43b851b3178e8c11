"""SkeletonCLR's pretraining views: two independent normal views of every clip.

The reference's dual feeder (CrosSCLR's ``Feeder_dual``; docs/references.md#skeletonclr-views)
returns two independently augmented copies of each stored 50-frame clip, both a temporal crop
(mirrored padding of ``T // 6`` frames) followed by a shear (amplitude 0.5): the query view
and the key view. The transforms and their formulas are the family's
(``cmd_jax.methods.common.views``); the views are in joint space, before the stream
conversion. Deliberate deviations: those of ``cmd_jax.methods.common.views`` (JAX's random
streams, a fresh key every step).
"""

from __future__ import annotations

import jax

from cmd_jax.methods.common.views import SHEAR_AMPLITUDE, TEMPORAL_PADDING_RATIO, branch_views


def skeletonclr_views(key: jax.Array, x: jax.Array, *, temporal_padding_ratio: int = TEMPORAL_PADDING_RATIO,
                      shear_amplitude: float = SHEAR_AMPLITUDE) -> tuple[jax.Array, jax.Array]:
  """``(query view, key view)`` of a batch ``x [B, 3, T, V, M]``: crop + shear, drawn independently."""
  return branch_views(key, x, (False, False), mirror=None, temporal_padding_ratio=temporal_padding_ratio,
                      shear_amplitude=shear_amplitude, aug_method="")
