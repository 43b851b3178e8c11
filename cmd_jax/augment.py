"""Skeleton augmentations as pure, PRNG-keyed JAX functions (docs/references.md#cmd-augmentations).

This module owns the augmentation primitives of the CMD reference's feeders (sections of
docs/references.md): the temporal crop + linear resize (#cmd-crop-resize,
#cmd-downstream-crops), the joint corruption (#cmd-joint-corruption), the shear
(#cmd-shear), and the batch-level views of the downstream protocols (#cmd-downstream-views),
with the conventions of #cmd-quirks items 7 and 8. A method composes its pretraining
views from them (CMD: ``cmd_jax.methods.cmd.views``). Modalities (motion, bone) are *not*
computed here: the model derives them from the augmented, resized joints.

Conventions:

- A sample is ``x [C=3, T, V, M]``: the stored clip (``T = 300``, zero or loop padded)
  with ``num_frames``, the ORIGINAL length; the valid length is ``F = min(num_frames, T)``
  (values below 1 are treated as 1: the reference has no answer for an empty clip).
- Every function of one sample is pure, jit-friendly and shape-static: dynamic crop
  starts and lengths become gathers from the full ``T``-frame array. The batch functions
  vmap the per-sample ones with one key per sample (and per view).
- Random choices take a key; each has a ``*_with`` / ``*_params`` twin that takes the
  drawn parameters explicitly, so tests can check the formulas with fixed values.
- Point maps (the 3x3 corruption matrix, the shear) are written as broadcast products and
  sums, not ``jnp.dot``, so they are exact float32 on every backend (no TF32 on GPUs).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cmd_jax import flat_random

PRETRAIN_RATIO_RANGE = (0.1, 1.0)
DOWNSTREAM_TRAIN_RATIO_RANGE = (0.5, 1.0)
CENTER_CROP_RATIO = 0.95
MIN_CROP_LENGTH = 64
OUTPUT_LENGTH = 64
NUM_CORRUPTED_JOINTS = 15


# ----------------------------------------------------------------------------------------
# #cmd-crop-resize step 5: linear resize along time (bilinear, align_corners=False, no antialiasing)
# ----------------------------------------------------------------------------------------

def resize_linear(clip_source: jax.Array, start, length, out_len: int = OUTPUT_LENGTH) -> jax.Array:
  """Resizes frames ``[start, start + length)`` of ``clip_source`` to ``out_len`` frames.

  The formula of PyTorch's ``F.interpolate(mode='bilinear', align_corners=False)`` along
  time, computed in float32 as PyTorch does (#cmd-crop-resize, step 5)::

    src_i = max((i + 0.5) * L / out - 0.5, 0);  i0 = floor(src_i);  i1 = min(i0 + 1, L - 1)
    out_i = (1 - lam) * clip[start + i0] + lam * clip[start + i1],  lam = src_i - i0

  No antialiasing, also when downsampling. ``start`` and ``length`` may be traced
  integers; the output shape depends only on ``out_len``.

  Args:
    clip_source: ``[C, T, ...]``; time is axis 1.
    start: first frame of the crop (int scalar, ``0 <= start``, ``start + length <= T``).
    length: L, the crop length (int scalar, ``>= 1``).
    out_len: number of output frames (static).

  Returns:
    ``[C, out_len, ...]`` in the dtype of ``clip_source`` (promoted with float32).
  """
  length = jnp.asarray(length, jnp.int32)
  start = jnp.asarray(start, jnp.int32)
  scale = length.astype(jnp.float32) / jnp.float32(out_len)
  dst = jnp.arange(out_len, dtype=jnp.float32)
  src = jnp.maximum(scale * (dst + jnp.float32(0.5)) - jnp.float32(0.5), jnp.float32(0.0))
  i0 = jnp.floor(src).astype(jnp.int32)
  i1 = jnp.minimum(i0 + 1, length - 1)
  lam = src - i0.astype(jnp.float32)
  x0 = jnp.take(clip_source, start + i0, axis=1, mode="clip")
  x1 = jnp.take(clip_source, start + i1, axis=1, mode="clip")
  lam = lam.reshape((1, out_len) + (1,) * (clip_source.ndim - 2))
  return (1.0 - lam) * x0 + lam * x1


def valid_length(num_frames, max_frames: int) -> jax.Array:
  """F = min(num_frames, T), at least 1."""
  return jnp.clip(jnp.asarray(num_frames, jnp.int32), 1, max_frames)


# ----------------------------------------------------------------------------------------
# #cmd-crop-resize / #cmd-downstream-crops: random crop + resize
# ----------------------------------------------------------------------------------------

def crop_length(valid_frames: jax.Array, scale: jax.Array, min_len: int = MIN_CROP_LENGTH) -> jax.Array:
  """#cmd-crop-resize step 2: ``L = min(max(floor(F * scale), min_len), F)`` (int32, elementwise)."""
  length = jnp.floor(valid_frames.astype(jnp.float32) * scale).astype(jnp.int32)
  return jnp.minimum(jnp.maximum(length, min_len), valid_frames)


def crop_params(key: jax.Array, num_frames, max_frames: int,
                ratio_range: Sequence[float] = PRETRAIN_RATIO_RANGE,
                min_len: int = MIN_CROP_LENGTH) -> tuple[jax.Array, jax.Array]:
  """Draws the random crop of #cmd-crop-resize steps 1-3; returns ``(start, L)`` as int32 scalars.

  ``F = min(num_frames, max_frames)``; ``scale ~ U(r0, r1)``;
  ``L = min(max(floor(F * scale), min_len), F)`` (so ``L = F`` when ``F < min_len``);
  ``start`` uniform in ``[0, F - L]`` (both ends included).
  """
  r0, r1 = float(ratio_range[0]), float(ratio_range[1])
  scale_key, start_key = jax.random.split(key)
  f = valid_length(num_frames, max_frames)
  length = crop_length(f, jax.random.uniform(scale_key, (), jnp.float32, r0, r1), min_len)
  start = jax.random.randint(start_key, (), 0, f - length + 1, dtype=jnp.int32)
  return start, length


def temporal_crop_resize(key: jax.Array, x: jax.Array, num_frames,
                         ratio_range: Sequence[float] = PRETRAIN_RATIO_RANGE,
                         min_len: int = MIN_CROP_LENGTH, out_len: int = OUTPUT_LENGTH) -> jax.Array:
  """#cmd-crop-resize (``temporal_cropresize``): random crop of ``[0, F)`` resized to ``out_len``.

  ``x [C, T, V, M]`` -> ``[C, out_len, V, M]``.
  """
  start, length = crop_params(key, num_frames, x.shape[1], ratio_range, min_len)
  return resize_linear(x, start, length, out_len)


def random_crop_resize(key: jax.Array, x: jax.Array, num_frames,
                       ratio_range: Sequence[float] = DOWNSTREAM_TRAIN_RATIO_RANGE,
                       min_len: int = MIN_CROP_LENGTH, out_len: int = OUTPUT_LENGTH) -> jax.Array:
  """#cmd-downstream-crops, train branch (``crop_subsequence`` with ``[0.5, 1.0]``): scale ~ U(0.5, 1)."""
  return temporal_crop_resize(key, x, num_frames, ratio_range, min_len, out_len)


def _center_start_table(ratio: float, max_frames: int) -> np.ndarray:
  """``int((1 - ratio) * F / 2)`` for F = 0..max_frames, in the reference's float64 arithmetic.

  numpy float64 elementwise ops are the same IEEE operations as Python's float ones, and
  ``astype`` truncates toward zero like ``int()``. A float32 evaluation would NOT match
  for every ratio: e.g. ratio 0.9 gives ``(1 - 0.9) = 0.09999999999999998`` in float64, so
  F = 20 truncates to 0 where float32 gives 1.
  """
  f = np.arange(max_frames + 1, dtype=np.float64)
  return ((1 - ratio) * f / 2).astype(np.int32)


def center_crop_params(num_frames, max_frames: int,
                       ratio: float = CENTER_CROP_RATIO) -> tuple[jax.Array, jax.Array]:
  """#cmd-downstream-crops, test branch: ``start = int((1 - ratio) * F / 2)``, ``L = F - 2 * start``."""
  f = valid_length(num_frames, max_frames)
  start = jnp.asarray(_center_start_table(float(ratio), max_frames))[f]
  return start, f - 2 * start


def center_crop_resize(x: jax.Array, num_frames, ratio: float = CENTER_CROP_RATIO,
                       out_len: int = OUTPUT_LENGTH) -> jax.Array:
  """#cmd-downstream-crops, test branch: keep frames ``[start, F - start)`` and resize to ``out_len``."""
  start, length = center_crop_params(num_frames, x.shape[1], ratio)
  return resize_linear(x, start, length, out_len)


# ----------------------------------------------------------------------------------------
# #cmd-joint-corruption, #cmd-shear, #cmd-pretraining-views (the per-view choice)
# ----------------------------------------------------------------------------------------

def _row_vector_map(x: jax.Array, matrix: jax.Array) -> jax.Array:
  """``p' = p @ A`` for every point of ``x [3, ...]``: ``p'_j = sum_c p_c A[c, j]``.

  Written as three unrolled multiply-adds per output coordinate (elementwise, one fused
  loop; a broadcast product reduced with ``jnp.sum`` was ~40x slower on the CPU)."""
  a = matrix.astype(x.dtype)
  return jnp.stack([x[0] * a[0, j] + x[1] * a[1, j] + x[2] * a[2, j] for j in range(3)])


def _column_vector_map(x: jax.Array, matrix: jax.Array) -> jax.Array:
  """``p' = S @ p`` for every point of ``x [3, ...]``: ``p'_c = sum_d S[c, d] p_d``."""
  s = matrix.astype(x.dtype)
  return jnp.stack([s[c, 0] * x[0] + s[c, 1] * x[1] + s[c, 2] * x[2] for c in range(3)])


def joint_corruption_with(x: jax.Array, joints: jax.Array, matrix: jax.Array, zero) -> jax.Array:
  """#cmd-joint-corruption with the drawn parameters.

  Args:
    x: ``[3, T, V, M]``.
    joints: int ``[K]``, the corrupted joints (distinct).
    matrix: ``[3, 3]`` A, used by the transform branch.
    zero: bool scalar; True: zero the joints (all frames, coordinates, persons);
      False: map their coordinates as row vectors ``p @ A``.

  Returns:
    ``x`` with the selected joints replaced; the other joints unchanged.
  """
  selected = jnp.zeros((x.shape[2],), bool).at[joints].set(True)
  return joint_corruption_masked(x, selected, matrix, zero)


def joint_corruption_masked(x: jax.Array, selected: jax.Array, matrix: jax.Array, zero) -> jax.Array:
  """:func:`joint_corruption_with` with the corrupted joints as a bool mask ``selected [V]``."""
  replacement = jnp.where(zero, jnp.zeros_like(x), _row_vector_map(x, matrix))
  return jnp.where(selected[None, None, :, None], replacement, x)


def joint_corruption_params(key: jax.Array, num_joints: int,
                            num_corrupted: int = NUM_CORRUPTED_JOINTS, amplitude: float = 1.0):
  """Draws ``(joints [K], A [3, 3], zero)`` for :func:`joint_corruption_with`.

  ``zero`` with probability 0.5; A entries i.i.d. U(-amplitude, amplitude) (the reference:
  amplitude 1); K distinct joints, a uniform
  random subset: the K largest of V random 32-bit integers (``lax.top_k``; a tie, about
  ``V^2 / 2^33``, only favours the lower index). This is the same distribution as
  ``np.random.choice(V, K, replace=False)`` and compiles much faster than
  ``jax.random.choice(..., replace=False)``.
  """
  branch_key, joints_key, matrix_key = jax.random.split(key, 3)
  zero = jax.random.uniform(branch_key, ()) < 0.5
  _, joints = jax.lax.top_k(jax.random.bits(joints_key, (num_joints,), jnp.uint32), num_corrupted)
  matrix = flat_random.uniform(matrix_key, (3, 3), jnp.float32, -amplitude, amplitude)
  return joints, matrix, zero


def joint_corruption(key: jax.Array, x: jax.Array,
                     num_corrupted: int = NUM_CORRUPTED_JOINTS, amplitude: float = 1.0) -> jax.Array:
  """#cmd-joint-corruption (``joint_courruption``): 50% zero K joints, 50% map K joints by ``p @ A``."""
  joints, matrix, zero = joint_corruption_params(key, x.shape[2], num_corrupted, amplitude)
  return joint_corruption_with(x, joints, matrix, zero)


def shear_with(x: jax.Array, matrix: jax.Array) -> jax.Array:
  """#cmd-shear with the drawn ``S [3, 3]``: ``p' = S @ p`` for every point of ``x [3, ...]``."""
  return _column_vector_map(x, matrix)


def shear_params(key: jax.Array, amplitude: float = 1.0) -> jax.Array:
  """Draws the shear ``S``: 1 on the diagonal, off-diagonal entries i.i.d.
  U(-amplitude, amplitude) (the reference: amplitude 1)."""
  off = flat_random.uniform(key, (3, 3), jnp.float32, -amplitude, amplitude)
  eye = jnp.eye(3, dtype=bool)
  return jnp.where(eye, jnp.float32(1.0), off)


def shear(key: jax.Array, x: jax.Array, amplitude: float = 1.0) -> jax.Array:
  """#cmd-shear (``pose_augmentation``): a random shear of every point; zeros stay zero."""
  return shear_with(x, shear_params(key, amplitude))


# ----------------------------------------------------------------------------------------
# #cmd-downstream-views: the downstream protocols' batch views
# ----------------------------------------------------------------------------------------

def downstream_train_view(key: jax.Array, batch_x: jax.Array, batch_num_frames: jax.Array,
                          ratio_range: Sequence[float] = DOWNSTREAM_TRAIN_RATIO_RANGE,
                          min_len: int = MIN_CROP_LENGTH, out_len: int = OUTPUT_LENGTH) -> jax.Array:
  """#cmd-downstream-views, train: a random crop-resize per sample, no spatial augmentation."""
  keys = jax.random.split(key, batch_x.shape[0])
  return jax.vmap(lambda k, x, f: random_crop_resize(k, x, f, ratio_range, min_len, out_len))(
      keys, batch_x, batch_num_frames)


def downstream_test_view(batch_x: jax.Array, batch_num_frames: jax.Array,
                         ratio: float = CENTER_CROP_RATIO, out_len: int = OUTPUT_LENGTH) -> jax.Array:
  """#cmd-downstream-views, test (and kNN, both sides): the deterministic centre crop of each sample."""
  return jax.vmap(lambda x, f: center_crop_resize(x, f, ratio, out_len))(batch_x, batch_num_frames)


def downstream_view(key: jax.Array, batch_x: jax.Array, batch_num_frames: jax.Array,
                    l_ratio: Sequence[float], out_len: int = OUTPUT_LENGTH) -> jax.Array:
  """The reference's ``crop_subsequence`` dispatch (#cmd-quirks item 7), for config-driven callers.

  ``l_ratio[0] == 0.5`` exactly selects the random crop with ``scale ~ U(l_ratio[0],
  l_ratio[1])`` and minimum length 64; any other ``l_ratio`` is a centre crop of
  ``l_ratio[0]`` (``key`` is then unused).
  """
  if float(l_ratio[0]) == 0.5:
    return downstream_train_view(key, batch_x, batch_num_frames,
                                 (l_ratio[0], l_ratio[1]), MIN_CROP_LENGTH, out_len)
  return downstream_test_view(batch_x, batch_num_frames, float(l_ratio[0]), out_len)
