"""Reference-faithful skeleton normalisation, vectorised (reference_cmd.md 1.6).

``pre_normalization`` reproduces skeleton-contrast/CMD ``data_gen/preprocess.py`` for any
skeleton layout, on a whole batch at once with numpy (no loop over samples, persons,
frames or joints). The four passes run in the reference's order:

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
"empty" always means "coordinates sum to exactly 0".

Dtypes follow the reference's: the data is float32, centring is a float32 subtraction,
the rotation matrices are float64 and each rotated point is rounded back to float32.
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
  norm = np.sqrt(np.einsum("...i,...i->...", axis, axis))
  unit = axis / np.where(identity, 1.0, norm)[..., None]
  a = np.cos(theta / 2.0)
  b, c, d = np.moveaxis(-unit * np.sin(theta / 2.0)[..., None], -1, 0)
  aa, bb, cc, dd = a * a, b * b, c * c, d * d
  bc, ad, ac, ab, bd, cd = b * c, a * d, a * c, a * b, b * d, c * d
  r = np.stack([
      np.stack([aa + bb - cc - dd, 2 * (bc + ad), 2 * (bd - ac)], -1),
      np.stack([2 * (bc - ad), aa + cc - bb - dd, 2 * (cd + ab)], -1),
      np.stack([2 * (bd + ac), 2 * (cd - ab), aa + dd - bb - cc], -1),
  ], -2)
  return np.where(identity[..., None, None], np.eye(3), r)


def _align(v: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Matrices rotating float32 vectors v [N, 3] onto the unit vector ``target``.

  As the reference: axis = cross(v, target), angle = arccos(clip(v/|v| . target)), the
  angle being 0 when ``sum(|v|) < 1e-6``. v is normalised in float32, like the reference's
  ``unit_vector`` on a float32 vector.
  """
  axis = np.cross(v.astype(np.float64), target)
  norm = np.linalg.norm(v, axis=-1, keepdims=True)
  tiny = np.abs(v).sum(-1) < _EPS
  unit = (v / np.where(norm == 0, np.float32(1), norm)).astype(np.float64)
  angle = np.where(tiny, 0.0, np.arccos(np.clip(unit @ target, -1.0, 1.0)))
  return rotation_matrices(axis, angle)


def _rotate(s: np.ndarray, rot: np.ndarray, present: np.ndarray) -> np.ndarray:
  """Applies rot [N, 3, 3] to every non-empty frame of every present person of s [N, M, T, V, 3]."""
  rotated = np.einsum("nij,nmtvj->nmtvi", rot, s.astype(np.float64)).astype(np.float32)
  frame_nonempty = s.sum(axis=(-1, -2)) != 0  # [N, M, T]
  keep = frame_nonempty & present[:, :, None]
  return np.where(keep[..., None, None], rotated, s)


def pad_null_frames(s: np.ndarray) -> np.ndarray:
  """Pass 1 on s [N, M, T, V, C]: compaction when frame 0 is empty, then loop padding."""
  n, m, t = s.shape[:3]
  frame_nonempty = s.sum(axis=(-1, -2)) != 0  # [N, M, T]
  present = s.reshape(n, m, -1).sum(-1) != 0  # [N, M]
  frames = np.arange(t)

  # Compaction: a stable sort that moves non-empty frames to the front in order.
  compact = present & ~frame_nonempty[:, :, 0]
  order = np.argsort(~frame_nonempty, axis=-1, kind="stable")
  order = np.where(compact[..., None], order, frames)
  s = np.take_along_axis(s, order[:, :, :, None, None], axis=2)
  frame_nonempty = np.take_along_axis(frame_nonempty, order, axis=2)
  if compact.any():
    # Compacted frames past the non-empty ones are set to zero (``person *= 0``).
    s = np.where((compact[..., None] & ~frame_nonempty)[..., None, None], 0, s)

  # Loop padding: L = 1 + index of the last non-empty frame.
  last = t - 1 - np.argmax(frame_nonempty[:, :, ::-1], axis=-1)
  length = np.where(present, last + 1, t)
  src = frames % length[..., None]  # identity for frames < L
  return np.take_along_axis(s, src[:, :, :, None, None], axis=2)


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
  s = np.ascontiguousarray(data.transpose(0, 4, 2, 3, 1))  # N, M, T, V, C
  n, m = s.shape[:2]

  s = pad_null_frames(s)

  # Pass 2: centre on person 0's centre joint, per frame.
  present = s.reshape(n, m, -1).sum(-1) != 0
  sample_nonzero = present.any(-1)  # the reference tests skeleton.sum() != 0
  center = s[:, 0, :, layout.center_joint:layout.center_joint + 1, :]  # N, T, 1, C
  mask = (s.sum(-1) != 0)[..., None]  # before centring
  centred = (s - center[:, None]) * mask
  s = np.where(present[:, :, None, None, None], centred, s)
  present = present & sample_nonzero[:, None]

  # Passes 3 and 4: frame-0 rotations of person 0's axes.
  z_bottom, z_top = layout.zaxis
  rot_z = _align(s[:, 0, 0, z_top] - s[:, 0, 0, z_bottom], np.array([0.0, 0.0, 1.0]))
  s = _rotate(s, rot_z, present)
  x_a, x_b = layout.xaxis
  rot_x = _align(s[:, 0, 0, x_a] - s[:, 0, 0, x_b], np.array([1.0, 0.0, 0.0]))
  s = _rotate(s, rot_x, present)

  return np.ascontiguousarray(s.transpose(0, 4, 2, 3, 1))
