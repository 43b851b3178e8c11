"""CMD's pretraining views: per clip, two independent draws of crop-resize then a spatial augmentation.

The reference feeder's view (``pretrain_view``): a random temporal crop of 10-100% of the
clip's valid frames resized to ``out_len`` frames (``cmd_jax.augment.temporal_crop_resize``),
then with probability 0.5 the joint corruption, otherwise the shear
(``spatial_augment``). ``pretrain_views`` builds the query and key views of a batch, every
sample and view with its own key. The primitives live in ``cmd_jax.augment``, shared with
the downstream protocols' views.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from cmd_jax.augment import (MIN_CROP_LENGTH, NUM_CORRUPTED_JOINTS, OUTPUT_LENGTH, PRETRAIN_RATIO_RANGE,
                             joint_corruption, shear, temporal_crop_resize)


def spatial_augment(key: jax.Array, x: jax.Array,
                    num_corrupted: int = NUM_CORRUPTED_JOINTS, shear_amplitude: float = 1.0,
                    corruption_amplitude: float = 1.0) -> jax.Array:
  """docs/references.md#cmd-pretraining-views, step 2: joint corruption with probability 0.5, otherwise the shear.

  Net: 50% shear, 25% "zero K joints", 25% "row-vector linear map on K joints".
  Both branches are computed and one is selected (``jnp.where``), which is what a
  ``lax.cond`` becomes under ``vmap`` anyway; they are cheap point maps (a single
  per-joint-matrix map was measured 7x slower on the CPU: its broadcasts do not vectorise).
  The amplitudes scale the random matrices' off-diagonal / entry ranges; 1.0 is the
  reference.
  """
  branch_key, corruption_key, shear_key = jax.random.split(key, 3)
  corrupt = jax.random.uniform(branch_key, ()) < 0.5
  return jnp.where(corrupt, joint_corruption(corruption_key, x, num_corrupted, corruption_amplitude),
                   shear(shear_key, x, shear_amplitude))


def pretrain_view(key: jax.Array, x: jax.Array, num_frames,
                  ratio_range: Sequence[float] = PRETRAIN_RATIO_RANGE,
                  min_len: int = MIN_CROP_LENGTH, out_len: int = OUTPUT_LENGTH,
                  num_corrupted: int = NUM_CORRUPTED_JOINTS, shear_amplitude: float = 1.0,
                  corruption_amplitude: float = 1.0) -> jax.Array:
  """One pretraining view of one sample (docs/references.md#cmd-pretraining-views): crop-resize, then
  spatial augment."""
  crop_key, spatial_key = jax.random.split(key)
  clip = temporal_crop_resize(crop_key, x, num_frames, ratio_range, min_len, out_len)
  return spatial_augment(spatial_key, clip, num_corrupted, shear_amplitude, corruption_amplitude)


def pretrain_views(key: jax.Array, batch_x: jax.Array, batch_num_frames: jax.Array,
                   ratio_range: Sequence[float] = PRETRAIN_RATIO_RANGE,
                   min_len: int = MIN_CROP_LENGTH, out_len: int = OUTPUT_LENGTH,
                   num_corrupted: int = NUM_CORRUPTED_JOINTS, shear_amplitude: float = 1.0,
                   corruption_amplitude: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """The two views ``(view_q, view_k)`` of a batch (docs/references.md#cmd-pretraining-views), each
  ``[N, C, out_len, V, M]``.

  Every sample and every view gets its own key (``jax.random.split(key, (N, 2))``), so the
  two views of a sample are independent draws, as in the reference feeder.
  """
  n = batch_x.shape[0]
  keys = jax.random.split(key, (n, 2))

  def one_view(k, x, f):
    return pretrain_view(k, x, f, ratio_range, min_len, out_len, num_corrupted, shear_amplitude,
                         corruption_amplitude)

  batched = jax.vmap(one_view)
  return batched(keys[:, 0], batch_x, batch_num_frames), batched(keys[:, 1], batch_x, batch_num_frames)
