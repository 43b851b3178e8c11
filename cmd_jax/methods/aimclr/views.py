"""AimCLR's pretraining views: the extreme view, the normal query view, the key view.

The reference's triple feeder (``Feeder_triple``; docs/references.md#aimclr-views) returns,
per stored 50-frame clip, three independently drawn views:

- ``extreme`` (its ``data1``): temporal crop, shear, then the extreme augmentations of
  ``aug_method`` (the release's ``'12345'``: spatial flip, rotation, Gaussian noise, Gaussian
  blur, axis mask), each with its probability;
- ``q`` (``data2``) and ``k`` (``data3``): the normal view, temporal crop then shear.

``time_flip=True`` adds the time reversal (p 0.5) to the extreme view: the first public
release drew it after the rotation, before the noise; here it comes last, which is the same
distribution (reversal commutes with i.i.d. noise, the symmetric zero-padded blur and the axis
mask). The transforms and their formulas are the family's (``cmd_jax.methods.common.views``);
the views are in joint space, before the stream conversion. Deliberate deviations: those of
``cmd_jax.methods.common.views`` (JAX's random streams, a fresh key every step).
"""

from __future__ import annotations

import jax

from cmd_jax.layouts import SkeletonLayout
from cmd_jax.methods.common.views import AUG_METHOD, SHEAR_AMPLITUDE, TEMPORAL_PADDING_RATIO, branch_views

TIME_FLIP = "6"  # the time reversal's digit in a strong view's aug_method


def extreme_aug_method(aug_method: str = AUG_METHOD, time_flip: bool = False) -> str:
  """The strong set of the extreme view: ``aug_method`` (digits 1-5), plus ``6`` with ``time_flip``."""
  if TIME_FLIP in aug_method:
    raise ValueError(f"aug_method={aug_method!r}: the time reversal is the time_flip switch, not a digit")
  return aug_method + (TIME_FLIP if time_flip else "")


def aimclr_views(key: jax.Array, x: jax.Array, *, layout: SkeletonLayout,
                 temporal_padding_ratio: int = TEMPORAL_PADDING_RATIO, shear_amplitude: float = SHEAR_AMPLITUDE,
                 aug_method: str = AUG_METHOD, time_flip: bool = False, noise_rng: str = "threefry"
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(extreme, q, k)`` of a batch ``x [B, 3, T, V, M]``, float32, joint space, drawn independently."""
  if x.ndim == 5 and x.shape[3] != layout.num_joints:
    raise ValueError(f"layout {layout.name} has {layout.num_joints} joints; the batch has {x.shape[3]}")
  return branch_views(key, x, (True, False, False), mirror=layout.mirror,
                      temporal_padding_ratio=temporal_padding_ratio, shear_amplitude=shear_amplitude,
                      aug_method=extreme_aug_method(aug_method, time_flip), noise_rng=noise_rng)
