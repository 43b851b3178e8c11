"""HiCLR's 50-frame preprocessing ("frame50"), vectorised, for any skeleton layout.

HiCLR (AAAI 2023) trains on clips converted in two steps: its NTU/PKU converter stores the
first two bodies of each frame *in file order* zero-padded to 300 frames (float32; the
readers are ``data_prep.ntu.read_xyz(..., selection="file_order")`` and, for PKU-MMD II,
``data_prep.pku.load_hiclr``), then its ``NTUMotionProcessor`` (``data_type=
'relative'``, ``t_length=50``, ``y_rotation=True``, ``sampling='resize'``) makes every clip
exactly 50 frames long. This module owns that second step:

* ``frame50_normalization(data, layout)``: float32 ``[N, 3, T, V, M]`` -> float32
  ``[N, 3, 50, V, M]``, one batch at a time, with no loop over samples, frames or joints;
* ``resize_linear(x, size, lengths, axis)``: ``cv2.resize(..., interpolation=
  cv2.INTER_LINEAR)`` along one axis, reimplemented in numpy (OpenCV is not a dependency);
* ``clip_lengths(data, layout)``: the per-sample length the resize uses.

For each sample, in the reference's order (``p[c, t, j]`` is one person's coordinate):

1. length ``L`` = the number of frames in which person 0's ``layout.length_joint`` (NTU:
   joint 0, spine base, as in the reference's ``get_length``; MSR: hip centre) is not all
   zero. It is a *count*, not the index of the last such frame.
2. centre: ``p[:, t, j] -= p[:, t, layout.root]`` for every frame, joint and person, each
   person on its own root joint (NTU: 20, spine shoulder, the reference's joint "21").
   Nothing is masked: an absent person stays all zero, a dropped (zero) joint becomes
   minus the root, a frame whose root is zero is left as it is.
3. resize the FIRST ``L`` frames to 50 frames, every person with person 0's ``L``
   (``cv2.resize(clip, (V, 50), interpolation=cv2.INTER_LINEAR)``: the width V, the joint
   axis, is unchanged, which makes that direction an exact copy; only time is resampled).
   OpenCV's formula, for output frame ``d`` (float64 except where marked)::

     scale = 1 / (50 / L)
     f     = float32((d + 0.5) * scale - 0.5)      # half-pixel centres
     s     = floor(f);  w = f - s                  # float32
     out   = p[clip(s, 0, L-1)] * (1 - w) + p[clip(s+1, 0, L-1)] * w     # float32

   The source rows are clamped to the clip, the weights are not (at the ends both rows
   are the same frame). L == 50 is a copy; L == 1 repeats the frame (up to the float32
   rounding of ``p * (1 - w) + p * w``); L > 50 is plain linear sampling (no averaging).
4. rotate about y, per frame and per person: ``v = p[:, t, xaxis[0]] - p[:, t, xaxis[1]]``
   (NTU: right shoulder 8 minus left shoulder 4; MSR: 1 - 0), ``v_y`` set to 0;
   ``deg_t = arccos(v_x / (|v| + 1e-4)) * 180 / pi``; if the sum over the 50 frames of
   ``v_z`` is >= 0, every ``deg_t`` is negated; ``a_t = deg_t * pi / 180`` and::

     R_t = [[cos a_t, 0, -sin a_t], [0, 1, 0], [sin a_t, 0, cos a_t]],   p[:, t, j] = R_t p[:, t, j]

   Each person uses its own shoulder vector. An all-zero person gets ``a_t = -90``
   degrees, which leaves it zero.

Arithmetic and quirks kept from the reference: the input is float32 and centring is a
float32 subtraction; the resize is float32 throughout (products and sum rounded to
float32, no fused multiply-add); the angle chain (norm, division, arccos, degrees, the
frame sum of ``v_z`` and radians) is float32, ``cos``/``sin`` are evaluated in float32 and
stored in float64 matrices; the rotation is a float64 product of the float32 point,
rounded back to float32. The sign rule is global, so a frame whose own ``v_z`` has the other
sign is turned away from +x (by twice its angle); frames inside the first ``L`` where
person 0 is absent are resampled as zeros, and person 1's frames after ``L`` are dropped.

The resize matches OpenCV's own implementation bit for bit (checked against
opencv-python 4.14 with ``cv2.ipp.setUseIPP(False)``, also through the whole pipeline on
the real NTU files). With Intel IPP enabled (that wheel's default) OpenCV computes
``a + w * (b - a)`` with ``w`` rounded from a float64 position instead; on the real NTU
files the final clips then differ from these by at most 1.6e-6.

A sample whose length is 0 (person 0's length joint zero in every frame, e.g. an all-zero
recording) has no frame to resize; the reference's ``cv2.resize`` raises on the empty
clip. ``frame50_normalization`` raises a ValueError naming such samples: callers skip them
first (the converter reports them, see ``data_prep.convert``).
"""

from __future__ import annotations

import numpy as np

from cmd_jax.layouts import SkeletonLayout

FRAMES = 50  # the clip length HiCLR trains on (its t_length)
_NORM_EPS = np.float32(1e-4)  # added to |v| before dividing, as the reference
_DEGREES = np.float32(180 / np.pi)  # float32 operands, as numpy casts the reference's Python floats
_PI = np.float32(np.pi)
_HALF_TURN = np.float32(180)


def clip_lengths(data: np.ndarray, layout: SkeletonLayout) -> np.ndarray:
  """The reference's ``get_length`` of every sample of data [N, 3, T, V, M]: int64 [N].

  The number of frames in which person 0's ``layout.length_joint`` has a non-zero
  coordinate (the reference: ``(abs(x[:, :, 0, 0]).sum(0) != 0).sum()``).
  """
  data = np.asarray(data)
  if data.ndim != 5 or data.shape[1] != 3:
    raise ValueError(f"expected data of shape [N, 3, T, V, M], got {data.shape}")
  joint = data[:, :, :, layout.length_joint, 0]  # [N, 3, T]
  return np.count_nonzero((joint != 0).any(axis=1), axis=-1).astype(np.int64)


def _sampling(lengths: np.ndarray, size: int):
  """cv2.INTER_LINEAR's source rows and weights along one axis: each [N, size].

  Returns ``(r0, r1, w0, w1)``: output entry d of item n is ``src[r0] * w0 + src[r1] * w1``.
  """
  scale = 1.0 / (size / lengths.astype(np.float64))  # OpenCV: 1 / inv_scale, inv_scale = dsize / ssize
  pos = ((np.arange(size) + 0.5) * scale[:, None] - 0.5).astype(np.float32)
  base = np.floor(pos)
  w1 = pos - base  # float32, in [0, 1)
  w0 = np.float32(1) - w1
  base = base.astype(np.int64)
  last = lengths[:, None] - 1
  r0 = np.clip(base, 0, last)
  r1 = np.clip(base + 1, 0, last)
  return r0, r1, w0, w1


def resize_linear(x: np.ndarray, size: int, lengths: np.ndarray | None = None, axis: int = 1) -> np.ndarray:
  """``cv2.resize`` with ``cv2.INTER_LINEAR`` along one axis of every item of a batch.

  Item n (``x[n]``) has its first ``lengths[n]`` entries along ``axis`` resampled to
  ``size`` entries with OpenCV's formula (see the module docstring); the other axes are
  untouched, as OpenCV leaves a dimension whose size does not change.

  Args:
    x: [N, ...]; cast to float32 (the arithmetic is float32, as OpenCV's on float32 images).
    size: the output length along ``axis`` (>= 1).
    lengths: int [N], each in [1, x.shape[axis]]; default: the whole axis.
    axis: the resampled axis (not 0, the batch axis).

  Returns:
    float32, ``x``'s shape with ``size`` along ``axis``.
  """
  x = np.asarray(x, np.float32)
  axis = axis % x.ndim if x.ndim else 0
  if x.ndim < 2 or axis == 0:
    raise ValueError(f"resize_linear: expected a batch [N, ...] and an axis other than 0; got shape {x.shape}, "
                     f"axis {axis}")
  if size < 1:
    raise ValueError(f"resize_linear: size is {size}; expected >= 1")
  n, available = x.shape[0], x.shape[axis]
  lengths = np.full(n, available, np.int64) if lengths is None else np.asarray(lengths, np.int64).reshape(-1)
  if lengths.shape != (n,):
    raise ValueError(f"resize_linear: {lengths.shape[0]} lengths for a batch of {n}")
  if n and (lengths.min() < 1 or lengths.max() > available):
    bad = int(np.flatnonzero((lengths < 1) | (lengths > available))[0])
    raise ValueError(f"resize_linear: item {bad} has length {lengths[bad]}; expected 1..{available} "
                     "(OpenCV cannot resize an empty image)")
  r0, r1, w0, w1 = _sampling(lengths, size)
  shape = [1] * x.ndim
  shape[0], shape[axis] = n, size
  r0, r1, w0, w1 = (a.reshape(shape) for a in (r0, r1, w0, w1))
  return np.take_along_axis(x, r0, axis) * w0 + np.take_along_axis(x, r1, axis) * w1


def _rotate_about_y(x: np.ndarray, xaxis: tuple[int, int]) -> np.ndarray:
  """Step 4 on x float32 [N, M, 3, F, V]: every frame of every person rotated about y."""
  v = x[..., xaxis[0]] - x[..., xaxis[1]]  # [N, M, 3, F], float32
  vx, vz = v[:, :, 0], v[:, :, 2]  # [N, M, F], contiguous along F
  norm = np.sqrt(vx * vx + vz * vz)  # the reference's sum of squares over (x, 0, z)
  degrees = np.arccos(vx / (norm + _NORM_EPS)) * _DEGREES
  # np.add.reduce over the contiguous last axis: the same pairwise float32 sum as the
  # reference's np.sum of one person's (F,) row.
  flip = np.add.reduce(vz, axis=-1) >= 0  # [N, M]
  degrees = np.where(flip[..., None], -degrees, degrees)
  radians = degrees * _PI / _HALF_TURN
  cos = np.cos(radians).astype(np.float64)[..., None]  # [N, M, F, 1]
  sin = np.sin(radians).astype(np.float64)[..., None]
  px, pz = x[:, :, 0].astype(np.float64), x[:, :, 2].astype(np.float64)  # [N, M, F, V]
  out = np.empty_like(x)
  out[:, :, 0] = cos * px - sin * pz
  out[:, :, 1] = x[:, :, 1]  # the matrix's middle row is (0, 1, 0)
  out[:, :, 2] = sin * px + cos * pz
  return out


def frame50_normalization(data: np.ndarray, layout: SkeletonLayout, frames: int = FRAMES) -> np.ndarray:
  """HiCLR's preprocessing of a batch (see the module docstring).

  Args:
    data: joint coordinates [N, 3, T, V, M], zero where a person/frame/joint is absent
      (the reference's 300-frame buffer); cast to float32.
    layout: gives ``length_joint``, the centre ``root`` and the shoulder vector ``xaxis``.
    frames: the output length (the reference's t_length, 50).

  Returns:
    float32 [N, 3, frames, V, M].

  Raises:
    ValueError: a shape that does not fit ``layout``, or a sample of length 0 (see
      ``clip_lengths``; the converter skips and reports those before calling this).
  """
  data = np.asarray(data, np.float32)
  if data.ndim != 5 or data.shape[1] != 3:
    raise ValueError(f"expected data of shape [N, 3, T, V, M], got {data.shape}")
  if data.shape[3] != layout.num_joints:
    raise ValueError(f"layout {layout.name} has {layout.num_joints} joints, data has {data.shape[3]}")
  n, c, _, v, m = data.shape
  if n == 0:
    return np.zeros((0, c, frames, v, m), np.float32)
  lengths = clip_lengths(data, layout)
  if (lengths == 0).any():
    bad = np.flatnonzero(lengths == 0).tolist()
    raise ValueError(f"samples {bad[:10]}{' ...' if len(bad) > 10 else ''} have length 0: person 0's joint "
                     f"{layout.length_joint} ({layout.joint_names[layout.length_joint]}) is zero in every frame, "
                     "so there is no frame to resize (HiCLR's cv2.resize fails on such a clip); skip them first")
  x = np.ascontiguousarray(data.transpose(0, 4, 1, 2, 3))  # [N, M, C, T, V]: per-person blocks
  x = x - x[..., layout.root:layout.root + 1]  # centre each person on its own root, per frame
  x = resize_linear(x, frames, lengths, axis=3)
  x = _rotate_about_y(x, layout.xaxis)
  return np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1))


__all__ = ["FRAMES", "clip_lengths", "resize_linear", "frame50_normalization"]
