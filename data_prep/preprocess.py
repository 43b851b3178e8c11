"""Reference-faithful skeleton normalisation, vectorised (docs/references.md#cmd-pre-normalization).

``pre_normalization`` reproduces skeleton-contrast/CMD ``data_gen/preprocess.py`` for any
skeleton layout with numpy array operations over whole batches (samples are taken in
chunks of ``_CHUNK`` so that temporaries stay in the CPU caches; there is no loop over
persons, frames or joints). The four passes run in the reference's order:

1. pad null frames: a present person whose frame 0 is empty is first compacted (all
   non-empty frames moved to the front); then the frames after the last non-empty one are
   filled by looping the clip, i.e. ``frame[t] = frame[t mod L]`` with L the index of the
   first frame of the all-empty tail (each person with its own L);
2. centre: subtract person 0's ``layout.center_joint`` per frame from every present
   person, masking joints that were all-zero before centring;
3. rotate person 0's frame-0 ``zaxis`` vector onto +z;
4. rotate person 0's frame-0 ``xaxis`` vector onto +x (this generally breaks pass 3's
   exact alignment, as in the reference).

Degenerate cases behave as in the reference: an all-zero sample is returned unchanged;
a rotation whose axis or angle is below 1e-6 is the identity (no 180 degree flip);
"empty" always means "coordinates sum to exactly 0"; the frames and persons the reference
skips keep their values.

Arithmetic follows the reference's: the data is float32, centring is a float32
subtraction, the frame-0 vectors are normalised in float32 with ``np.linalg.norm``'s
rounding (see ``_norm``), the rotation matrices are float64 and each rotated point is the
float64 product rounded back to float32. On the real NTU files the result is identical to
a per-joint-loop implementation of the spec (``tests/spec_reference.py``).
"""

from __future__ import annotations

import numpy as np

from cmd_jax.layouts import SkeletonLayout

_EPS = 1e-6


def rotation_matrices(axis: np.ndarray, theta: np.ndarray) -> np.ndarray:
  """Euler-Rodrigues matrices [..., 3, 3] for axes [..., 3] and angles [...] (rotation.py).

  Counter-clockwise rotation by ``theta`` about ``axis``, applied as ``R @ p``; the
  identity where ``sum(|axis|) < 1e-6`` or ``|theta| < 1e-6``.
  """
  axis = np.asarray(axis, np.float64)
  theta = np.asarray(theta, np.float64)
  identity = (np.abs(axis).sum(-1) < _EPS) | (np.abs(theta) < _EPS)
  norm = np.sqrt((axis * axis).sum(-1))
  unit = axis / np.where(identity, 1.0, norm)[..., None]
  a = np.cos(theta / 2.0)
  bcd = -unit * np.sin(theta / 2.0)[..., None]
  b, c, d = bcd[..., 0], bcd[..., 1], bcd[..., 2]
  aa, bb, cc, dd = a * a, b * b, c * c, d * d
  bc, ad, ac, ab, bd, cd = b * c, a * d, a * c, a * b, b * d, c * d
  r = np.empty(np.broadcast_shapes(identity.shape, a.shape) + (3, 3))
  r[..., 0, 0], r[..., 0, 1], r[..., 0, 2] = aa + bb - cc - dd, 2 * (bc + ad), 2 * (bd - ac)
  r[..., 1, 0], r[..., 1, 1], r[..., 1, 2] = 2 * (bc - ad), aa + cc - bb - dd, 2 * (cd + ab)
  r[..., 2, 0], r[..., 2, 1], r[..., 2, 2] = 2 * (bd + ac), 2 * (cd - ab), aa + dd - bb - cc
  r[identity] = np.eye(3)
  return r


def _norm(v: np.ndarray) -> np.ndarray:
  """``np.linalg.norm`` of each float32 vector v [..., 3], as the reference computes it.

  The reference normalises one 1-D float32 vector at a time, and ``np.linalg.norm`` of a
  1-D vector is ``sqrt(x.dot(x))``: a BLAS ``sdot``, which rounds each product to float32
  and accumulates in double. Summing in float32 instead differs in the last bit now and
  then, which changes the rotation by ~1e-7.
  """
  squares = (v * v).astype(np.float64)
  return np.sqrt(((squares[..., 0] + squares[..., 1]) + squares[..., 2]).astype(np.float32))


def _align(v: np.ndarray, target: int) -> np.ndarray:
  """Matrices rotating float32 vectors v [N, 3] onto the unit vector along axis ``target``
  (0, 1, 2 for x, y, z).

  As the reference: axis = cross(v, target), angle = arccos(clip(v/|v| . target)), the
  angle being 0 when ``sum(|v|) < 1e-6``. v is normalised in float32, like the reference's
  ``unit_vector`` on a float32 vector.
  """
  a0, a1, a2 = v.astype(np.float64).T
  b0, b1, b2 = np.eye(3)[target]
  axis = np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], -1)  # np.cross's formula
  norm = _norm(v)
  tiny = np.abs(v).sum(-1) < _EPS
  cosine = (v[:, target] / np.where(norm == 0, np.float32(1), norm)).astype(np.float64)
  angle = np.where(tiny, 0.0, np.arccos(np.clip(cosine, -1.0, 1.0)))
  return rotation_matrices(axis, angle)


# The passes work on x [N, M, C, T, V]: every per-joint, per-frame and per-person quantity
# is then a reduction over contiguous trailing axes, a person is one contiguous block, and
# a rotation is one batched matrix product (numpy is slow reducing or broadcasting over the
# reference's small last axis M). The "rows" of x are its [V] vectors, one per (sample,
# person, channel, frame).

def _sums(x: np.ndarray):
  """Coordinate sums of x [..., 3, T, V]: per joint [..., T, V], per frame [..., T].

  The joint sum adds x, y, z in that order, as the reference's ``person.sum(-1)``. The
  frame (and person) sums add in another order than the reference's; they are only
  compared with 0, which the order cannot change unless non-zero values cancel exactly.
  """
  joint = (x[..., 0, :, :] + x[..., 1, :, :]) + x[..., 2, :, :]
  return joint, joint.sum(-1)


def _pad(x: np.ndarray) -> np.ndarray:
  """Pass 1 on x [N, M, C, T, V]: compaction when frame 0 is empty, then loop padding."""
  n, m, c, t, v = x.shape
  _, frame_sum = _sums(x)
  nonempty = frame_sum != 0  # [N, M, T]
  present = frame_sum.sum(-1) != 0  # [N, M]
  frames = np.arange(t)
  # Loop padding: frame i takes frame i mod L, L = 1 + the last non-empty frame.
  last = t - 1 - np.argmax(nonempty[:, :, ::-1], axis=-1)
  length = np.where(present, last + 1, t)
  compact = present & ~nonempty[:, :, 0]
  if compact.any():
    # Compaction moves the non-empty frames to the front, in order (the others become
    # zero and are then overwritten by the padding): frame i takes the (i mod L)-th
    # non-empty frame, L = the number of non-empty frames.
    order = np.argsort(~nonempty, axis=-1, kind="stable")
    length = np.where(compact, np.count_nonzero(nonempty, axis=-1), length)
    src = np.take_along_axis(np.where(compact[..., None], order, frames), frames % length[..., None], -1)
  elif (length == t).all():
    return x
  else:
    src = frames % length[..., None]  # [N, M, T]
  rows = (np.arange(n * m * c) * t).reshape(n, m, c, 1) + src[:, :, None]
  return x.reshape(-1, v)[rows.ravel()].reshape(x.shape)


def pad_null_frames(s: np.ndarray) -> np.ndarray:
  """Pass 1 on s [N, M, T, V, C]: compaction when frame 0 is empty, then loop padding."""
  x = np.ascontiguousarray(np.asarray(s).transpose(0, 1, 4, 2, 3))
  return np.ascontiguousarray(_pad(x).transpose(0, 1, 3, 4, 2))


def _centre(x: np.ndarray, center_joint: int) -> tuple[np.ndarray, np.ndarray]:
  """Pass 2 on x [N, M, C, T, V]: subtract person 0's centre joint per frame from every
  present person, zeroing the joints that were all-zero before; absent persons unchanged.
  Returns the result and the present persons [N, M]."""
  joint_sum, frame_sum = _sums(x)
  present = frame_sum.sum(-1) != 0  # a sample with none is skipped whole
  center = x[:, 0, :, :, center_joint]  # [N, C, T]
  shift = center[:, None] * present[:, :, None, None]  # [N, M, C, T]; 0 for absent persons
  mask = (joint_sum != 0) & present[:, :, None, None]  # [N, M, T, V]
  out = np.subtract(x, shift[..., None])
  np.multiply(out, mask[:, :, None], out=out)
  return out, present


def _align_rows(x: np.ndarray, head: int, tail: int, target: int) -> np.ndarray:
  """Matrices [N, 3, 3] taking person 0's frame-0 vector ``head - tail`` onto axis ``target``."""
  return _align(x[:, 0, :, 0, head] - x[:, 0, :, 0, tail], target)


def _rotate_persons(p: np.ndarray, rot: np.ndarray) -> np.ndarray:
  """``rot`` [K, 3, 3] applied to every non-empty frame of persons p [K, C, T, V]: float64
  products, each point rounded back to float32; empty frames and persons keep their
  values, as the reference skips them."""
  k, c, t, v = p.shape
  out = np.matmul(rot, p.reshape(k, c, t * v).astype(np.float64)).astype(np.float32).reshape(p.shape)
  _, frame_sum = _sums(p)
  skip = (frame_sum == 0) | (frame_sum.sum(-1) == 0)[:, None]  # [K, T]
  if skip.any():
    rows = np.flatnonzero(np.broadcast_to(skip[:, None], (k, c, t)))
    out.reshape(-1, v)[rows] = p.reshape(-1, v)[rows]
  return out


def _rotate(x: np.ndarray, present: np.ndarray, zaxis, xaxis) -> np.ndarray:
  """Passes 3 and 4 on x [N, M, C, T, V]: rotate the present persons so that person 0's
  frame-0 spine ``zaxis[1] - zaxis[0]`` is along +z, then its shoulders ``xaxis[0] -
  xaxis[1]`` along +x. Absent persons (all zero) are not touched."""
  samples, persons = np.nonzero(present)
  rot_z = _align_rows(x, zaxis[1], zaxis[0], 2)
  p = _rotate_persons(x[samples, persons], rot_z[samples])
  x[samples, persons] = p  # x is _centre's fresh array
  rot_x = _align_rows(x, xaxis[0], xaxis[1], 0)
  x[samples, persons] = _rotate_persons(p, rot_x[samples])
  return x


# Samples are normalised in chunks of this many: the float64 temporaries of a chunk stay
# in the CPU caches, which makes a large batch several times faster than one big pass.
_CHUNK = 8


def pre_normalization(data: np.ndarray, layout: SkeletonLayout) -> np.ndarray:
  """Normalises data [N, C=3, T, V, M] exactly as the reference's ``pre_normalization``.

  Args:
    data: joint coordinates, zero where a person/frame/joint is absent. Cast to float32.
    layout: gives the centre joint and the two alignment vectors.

  Returns:
    float32 [N, 3, T, V, M].
  """
  data = np.asarray(data, np.float32)
  if data.ndim != 5 or data.shape[1] != 3:
    raise ValueError(f"expected data of shape [N, 3, T, V, M], got {data.shape}")
  if data.shape[3] != layout.num_joints:
    raise ValueError(f"layout {layout.name} has {layout.num_joints} joints, data has {data.shape[3]}")
  n, c, t, v, m = data.shape
  out = np.empty_like(data)
  if t == 0:
    return out
  for lo in range(0, n, _CHUNK):
    chunk = data[lo:lo + _CHUNK]
    x = np.empty((len(chunk), m, c, t, v), np.float32)
    for person in range(m):  # two strided copies are much faster than one 5-D transpose
      x[:, person] = chunk[..., person]
    x = _pad(x)
    x, present = _centre(x, layout.center_joint)
    x = _rotate(x, present, layout.zaxis, layout.xaxis)
    for person in range(m):
      out[lo:lo + _CHUNK, ..., person] = x[:, person]
  return out
