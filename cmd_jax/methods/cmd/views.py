"""CMD's pretraining views: per clip, two independent draws of crop-resize then a spatial augmentation.

The reference feeder's view: a random temporal crop of 10-100% of the
clip's valid frames resized to ``out_len`` frames (``cmd_jax.augment.temporal_crop_resize``),
then with probability 0.5 the joint corruption, otherwise the shear
(``spatial_augment``). ``pretrain_views`` builds the query and key views of a batch, every
sample and view with its own draws, drawn for the whole batch in one PRNG call
(``pretrain_view_params``) and applied with ``pretrain_views_with``. The primitives live in
``cmd_jax.augment``, shared with the downstream protocols' views.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from cmd_jax import flat_random
from cmd_jax.augment import (MIN_CROP_LENGTH, NUM_CORRUPTED_JOINTS, OUTPUT_LENGTH, PRETRAIN_RATIO_RANGE,
                             crop_length, joint_corruption, joint_corruption_masked, resize_linear, shear, shear_with,
                             valid_length)


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


class ViewParams(NamedTuple):
  """The random numbers of both views of a batch (leading axes ``[2, N]``: view, sample)."""

  start: jax.Array        # int32 [2, N]: first frame of the crop
  length: jax.Array       # int32 [2, N]: crop length L
  corrupt: jax.Array      # bool [2, N]: joint corruption (True) or shear (False)
  zero: jax.Array         # bool [2, N]: the corruption zeroes its joints (True) or maps them
  corrupted: jax.Array    # bool [2, N, V]: the K corrupted joints
  corruption: jax.Array   # float32 [2, N, 3, 3]: A of the corruption's map ``p @ A``
  shear: jax.Array        # float32 [2, N, 3, 3]: S of the shear ``S @ p``


def pretrain_view_params(key: jax.Array, batch_num_frames: jax.Array, max_frames: int, num_joints: int,
                         ratio_range: Sequence[float] = PRETRAIN_RATIO_RANGE,
                         min_len: int = MIN_CROP_LENGTH, num_corrupted: int = NUM_CORRUPTED_JOINTS,
                         shear_amplitude: float = 1.0, corruption_amplitude: float = 1.0) -> ViewParams:
  """Draws every random number of both views of a batch in one PRNG call.

  The distributions of the per-sample draws (``crop_params``, ``spatial_augment``,
  ``joint_corruption_params``, ``shear_params``), from one draw of 32-bit integers
  ``[2, N, 4 + V + 18]``, per view and sample: 4 uniforms (crop scale, crop start, branch,
  zero-or-map; a uniform is the top 24 bits times ``2^-24``), V integers (the joints:
  the K largest of V random integers, a uniform K-subset, found by ranking: joint ``j``'s
  rank is the number of integers above it, ties broken by index, so exactly K are
  selected; ``lax.top_k`` on such small rows costs more than the rest of the draws) and
  18 uniforms (the corruption's A and the shear's off-diagonal entries):

  - ``scale = r0 + (r1 - r0) u``; ``L = min(max(floor(F scale), min_len), F)``;
  - ``start = min(floor(u' (F - L + 1)), F - L)``, uniform in ``[0, F - L]`` (24-bit ``u'``:
    the bias is below ``300 / 2^24``);
  - corruption with probability 0.5, which then zeroes with probability 0.5;
  - A and the off-diagonal of S i.i.d. uniform in ``[-amplitude, amplitude)``.

  Drawing per batch instead of per sample (``jax.random.split`` per sample and view, as
  the per-sample functions do) is what makes the views cheap: a vmapped per-sample key
  derivation costs one XLA loop per random call on the CPU (the views of 64 clips took
  twice the time).
  """
  r0, r1 = float(ratio_range[0]), float(ratio_range[1])
  n = batch_num_frames.shape[0]
  bits = flat_random.bits(key, (2, n, 4 + num_joints + 18), jnp.uint32)
  u = jnp.moveaxis((bits[..., :4] >> 8).astype(jnp.float32) * jnp.float32(2.0 ** -24), -1, 0)  # [4, 2, N] in [0, 1)
  f = jnp.broadcast_to(valid_length(batch_num_frames, max_frames)[None, :], (2, n))
  length = crop_length(f, jnp.float32(r0) + jnp.float32(r1 - r0) * u[0], min_len)
  room = f - length + 1
  start = jnp.minimum(jnp.floor(u[1] * room.astype(jnp.float32)).astype(jnp.int32), room - 1)
  b = bits[..., 4:4 + num_joints]
  first = jnp.arange(num_joints)[:, None] < jnp.arange(num_joints)[None, :]   # [k, j]: k before j
  above = (b[..., :, None] > b[..., None, :]) | ((b[..., :, None] == b[..., None, :]) & first)
  corrupted = above.sum(axis=-2) < num_corrupted                            # rank of j below K
  m = (bits[..., 4 + num_joints:] >> 8).astype(jnp.float32) * jnp.float32(2.0 ** -23) - 1.0   # [-1, 1)
  m = jnp.moveaxis(m.reshape(2, n, 2, 3, 3), 2, 0)
  eye = jnp.eye(3, dtype=bool)
  return ViewParams(start=start, length=length, corrupt=u[2] < 0.5, zero=u[3] < 0.5, corrupted=corrupted,
                    corruption=jnp.float32(corruption_amplitude) * m[0],
                    shear=jnp.where(eye, jnp.float32(1.0), jnp.float32(shear_amplitude) * m[1]))


def pretrain_views_with(batch_x: jax.Array, params: ViewParams,
                        out_len: int = OUTPUT_LENGTH) -> tuple[jax.Array, jax.Array]:
  """The two views of a batch with given parameters: per sample and view, the crop-resize
  (``resize_linear``), then the joint corruption (``joint_corruption_masked``) or the shear
  (``shear_with``)."""

  def one(x, start, length, corrupt, zero, corrupted, corruption, shear_matrix):
    clip = resize_linear(x, start, length, out_len)
    return jnp.where(corrupt, joint_corruption_masked(clip, corrupted, corruption, zero), shear_with(clip, shear_matrix))

  per_sample = jax.vmap(one)
  return tuple(per_sample(batch_x, *(getattr(params, name)[v] for name in ViewParams._fields)) for v in range(2))


def pretrain_views(key: jax.Array, batch_x: jax.Array, batch_num_frames: jax.Array,
                   ratio_range: Sequence[float] = PRETRAIN_RATIO_RANGE,
                   min_len: int = MIN_CROP_LENGTH, out_len: int = OUTPUT_LENGTH,
                   num_corrupted: int = NUM_CORRUPTED_JOINTS, shear_amplitude: float = 1.0,
                   corruption_amplitude: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """The two views ``(view_q, view_k)`` of a batch (docs/references.md#cmd-pretraining-views), each
  ``[N, C, out_len, V, M]``.

  Every sample and every view gets its own independent draws, as in the reference feeder,
  drawn for the whole batch at once (``pretrain_view_params``): per sample, the crop-resize
  (``cmd_jax.augment.temporal_crop_resize``), then ``spatial_augment``.
  """
  params = pretrain_view_params(key, batch_num_frames, batch_x.shape[2], batch_x.shape[3], ratio_range, min_len,
                                num_corrupted, shear_amplitude, corruption_amplitude)
  return pretrain_views_with(batch_x, params, out_len)
