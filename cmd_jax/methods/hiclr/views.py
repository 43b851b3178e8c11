"""HiCLR's pretraining views: the four branches of its triple feeder, the joint mask, SkeleAdaIN.

This module owns what is HiCLR's own on the input side of its pretraining (AAAI 2023;
docs/references.md#hiclr-views): the composition of the four views the reference's triple
feeder makes of every clip, the processor's joint mask of the third query branch, and the
SkeleAdaIN option (off in the release). The transforms themselves are the SkeletonCLR family's
(``cmd_jax.methods.common.views``, with their formulas). Batches are ``x [B, C=3, T, V, M]``.

Views (``hiclr_views``), per clip, every draw independent:

- ``q`` (query, branch 0) and ``k`` (key): the normal view (temporal crop, then shear);
- ``q1`` (query branch 1) and ``q2`` (query branch 2): the strong view (crop, shear, then the
  normal augmentations of ``aug_method``, default ``"12345"``: flip, rotation, noise, blur,
  axis mask).

The views are in joint space: the stream conversion (joint / motion / bone) comes after
them, and the joint mask (``joint_mask``, ``apply_joint_mask``) after that, on ``q2`` only. HiCLR's own transforms:

- Joint mask (branch 2, after the stream conversion; ``mask_ratio`` 0.1): in every frame
  ``int(V * mask_ratio)`` distinct joints (2 of 25) uniformly; ONE ``[T, V]`` mask for the
  whole batch, both persons and all channels (here a bool array, True = masked; the
  reference's is a float array, 0 = masked). Masked entries are replaced by the learnable
  scalar ``mask_param``: ``where(mask, mask_param, x)``, so ``mask_param`` receives the sum
  of the upstream gradients of the masked entries.
- SkeleAdaIN (``adain``; off in the release, used by the authors' earlier experiments):
  for every (sample, person) and channel, the mean and std over (T, V) (unbiased variance
  + 1e-5, then the square root) of the content ``x_n`` and of the style ``x_{(n + s) % B}``,
  one cyclic shift ``s`` uniform in ``{1, .., B-2}`` for the whole batch::

    out = (x_n - mean(x_n)) / std(x_n) * std(style) + mean(style)

  (``dims="V"``: the statistics per frame, over the joints only, a variant they also tried).
  The authors' earlier experiments applied it in the model, to the stream-converted second
  strong view, instead of the joint mask (the release imports it but never calls it);
  ``hiclr_views(adain=...)`` applies it in joint space to the strong views it names (equal
  for the joint stream). ``skele_adain`` is exported so a trainer can apply it after the
  stream conversion as those experiments did.

The four branches' scalars come from one uniform draw and the two strong branches' noise from
one call of the noise generator (``common.views.view_params``). Deliberate deviations: those
of ``cmd_jax.methods.common.views`` (JAX's random streams, a fresh key every step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cmd_jax import flat_random
from cmd_jax.layouts import SkeletonLayout
from cmd_jax.methods.common.views import (AUG_METHOD, SHEAR_AMPLITUDE, TEMPORAL_PADDING_RATIO, ViewParams,
                                          check_batch, view_params, view_with)

MASK_RATIO = 0.1
ADAIN_EPS = 1e-5

_ADAIN_BRANCHES = {False: (), None: (), True: ("q2",), "q2": ("q2",), "q1": ("q1",), "both": ("q1", "q2")}


def hiclr_view_params(key: jax.Array, x_shape: tuple[int, ...], *,
                      temporal_padding_ratio: int = TEMPORAL_PADDING_RATIO,
                      shear_amplitude: float = SHEAR_AMPLITUDE,
                      aug_method: str = AUG_METHOD,
                      noise_rng: str = "threefry") -> tuple[ViewParams, ViewParams, ViewParams, ViewParams]:
  """The parameters of the four branches ``(q, k, q1, q2)`` of a batch of shape ``x_shape``
  (``common.views.view_params`` with two normal and two strong branches)."""
  return view_params(key, x_shape, (False, False, True, True), temporal_padding_ratio=temporal_padding_ratio,
                     shear_amplitude=shear_amplitude, aug_method=aug_method, noise_rng=noise_rng)


def hiclr_views(key: jax.Array, x: jax.Array, *, layout: SkeletonLayout,
                temporal_padding_ratio: int = TEMPORAL_PADDING_RATIO,
                shear_amplitude: float = SHEAR_AMPLITUDE, aug_method: str = AUG_METHOD,
                adain: bool | str = False, adain_dims: str = "TV", noise_rng: str = "threefry"
                ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """The four views ``(q, k, q1, q2)`` of a batch ``x [B, 3, T, V, M]``, float32, joint space.

  ``q``, ``k``: crop + shear; ``q1``, ``q2``: crop + shear + the strong set of
  ``aug_method``; all draws independent. Before the stream conversion and the joint mask.

  ``adain``: ``False`` (the release), ``True`` or ``"q2"`` (SkeleAdaIN on ``q2``, the
  second strong branch, as the authors' earlier experiments did), ``"q1"``, or ``"both"``
  (each with its own shift). Needs ``B >= 3``.
  """
  check_batch(x)
  if x.shape[3] != layout.num_joints:
    raise ValueError(f"layout {layout.name} has {layout.num_joints} joints; the batch has {x.shape[3]}")
  if adain not in _ADAIN_BRANCHES:
    raise ValueError(f"adain must be one of {list(_ADAIN_BRANCHES)}, got {adain!r}")
  params_key, adain_key = jax.random.split(key)
  params = hiclr_view_params(params_key, x.shape, temporal_padding_ratio=temporal_padding_ratio,
                             shear_amplitude=shear_amplitude, aug_method=aug_method, noise_rng=noise_rng)
  mirror = layout.mirror if "1" in aug_method else None
  common = dict(mirror=mirror, temporal_padding_ratio=temporal_padding_ratio, aug_method=aug_method)
  views = {
      "q": view_with(x, params[0], strong=False, **common),
      "k": view_with(x, params[1], strong=False, **common),
      "q1": view_with(x, params[2], strong=True, **common),
      "q2": view_with(x, params[3], strong=True, **common),
  }
  branches = _ADAIN_BRANCHES[adain]
  if branches:
    keys = jax.random.split(adain_key, len(branches))
    for name, k in zip(branches, keys):
      views[name] = skele_adain(k, views[name], dims=adain_dims)
  return views["q"], views["k"], views["q1"], views["q2"]


# ----------------------------------------------------------------------------------------
# The joint mask (branch 2, after the stream conversion)
# ----------------------------------------------------------------------------------------

def num_masked_joints(num_joints: int, mask_ratio: float = MASK_RATIO) -> int:
  """``int(V * mask_ratio)``, as the reference truncates it (25 joints, 0.1 -> 2)."""
  return int(num_joints * mask_ratio)


def joint_mask(key: jax.Array, num_frames: int, num_joints: int, mask_ratio: float = MASK_RATIO) -> jax.Array:
  """bool ``[T, V]``, True where masked: ``int(V * mask_ratio)`` distinct joints per frame,
  uniformly; one mask for the whole batch, every person and channel."""
  count = num_masked_joints(num_joints, mask_ratio)
  u = flat_random.uniform(key, (num_frames, num_joints))
  rank = jnp.argsort(jnp.argsort(u, axis=1), axis=1)
  return rank < count


def apply_joint_mask(x: jax.Array, mask: jax.Array, mask_param: jax.Array) -> jax.Array:
  """``x [B, C, T, V, M]`` with the entries of the masked (frame, joint)s replaced by the
  scalar ``mask_param`` (shape ``()`` or ``(1,)``): ``where(mask, mask_param, x)``; the
  gradient w.r.t. ``mask_param`` is the sum of the upstream gradients of those entries."""
  param = jnp.reshape(jnp.asarray(mask_param), ()).astype(x.dtype)
  return jnp.where(jnp.asarray(mask, bool)[None, None, :, :, None], param, x)


# ----------------------------------------------------------------------------------------
# SkeleAdaIN (an option, off in the release)
# ----------------------------------------------------------------------------------------

def adain_shift(key: jax.Array, batch: int) -> jax.Array:
  """The batch's cyclic shift: uniform in ``{1, .., B-2}`` (int32 scalar)."""
  if batch < 3:
    raise ValueError(f"SkeleAdaIN needs a batch of at least 3 samples, got {batch}")
  return jax.random.randint(key, (), 1, batch - 1, dtype=jnp.int32)


def _mean_std(x: jax.Array, axes: tuple[int, ...], eps: float) -> tuple[jax.Array, jax.Array]:
  mean = jnp.mean(x, axis=axes, keepdims=True)
  var = jnp.var(x, axis=axes, keepdims=True, ddof=1)
  return mean, jnp.sqrt(var + eps)


def skele_adain_with(x: jax.Array, shift: jax.Array, *, eps: float = ADAIN_EPS, dims: str = "TV") -> jax.Array:
  """SkeleAdaIN of ``x [B, C, T, V, M]`` with the style of sample ``(n + shift) % B``.

  Per (sample, person) and channel: statistics over (T, V) (``dims="TV"``) or per frame
  over V (``dims="V"``); unbiased variance plus ``eps``, square-rooted.
  """
  if dims == "TV":
    axes = (2, 3)
  elif dims == "V":
    axes = (3,)
  else:
    raise ValueError(f"dims must be 'TV' or 'V', got {dims!r}")
  style = jnp.roll(x, -jnp.asarray(shift, jnp.int32), axis=0)
  content_mean, content_std = _mean_std(x, axes, eps)
  style_mean, style_std = _mean_std(style, axes, eps)
  return (x - content_mean) / content_std * style_std + style_mean


def skele_adain(key: jax.Array, x: jax.Array, *, eps: float = ADAIN_EPS, dims: str = "TV") -> jax.Array:
  """``skele_adain_with`` with a random cyclic shift in ``{1, .., B-2}`` shared by the batch."""
  return skele_adain_with(x, adain_shift(key, x.shape[0]), eps=eps, dims=dims)
