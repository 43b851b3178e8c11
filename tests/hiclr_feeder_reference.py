"""HiCLR's pretraining feeder, per sample in plain numpy: the reference path the JAX views are checked against.

Written from the description of HiCLR's release (the triple feeder's views, its transform
helpers and the processor's joint mask), one clip ``x [C=3, T, V, M]`` at a time, the way
the release computes it in its data-loader workers:

- ``feeder_views`` returns ``[data1, data2, data3, data4]``: two draws of the normal view
  (``weak_augment``: temporal crop, shear) and two draws of the strong view
  (``strong_augment``: crop, shear, then flip / rotation / noise / blur / axis mask as
  selected by ``aug_method``);
- every transform has a ``*_with`` twin that takes its random numbers explicitly, so the
  tests can feed the same numbers to both implementations;
- the arithmetic is float64 as in the release (its shear multiplies by a float64 matrix,
  which promotes the stored float32 clip; the processor casts the views back to float32);
- random numbers come from one ``numpy.random.Generator`` (the release mixes Python's
  ``random`` and numpy's global state; only the distributions matter here).

Importable without JAX (a benchmark runs ``feeder_views`` inside a torch DataLoader).
"""

from __future__ import annotations

import math

import numpy as np

# The release's left-right joint order for NTU RGB+D (0-based).
NTU_MIRROR = (0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 16, 17, 18, 19, 12, 13, 14, 15, 20, 23, 24, 21, 22)


# ---------------------------------------------------------------------------------------
# Temporal crop: mirror-pad T // ratio frames at both ends, take a random T-frame window.
# ---------------------------------------------------------------------------------------

def temporal_crop_with(x: np.ndarray, start: int, ratio: int = 6) -> np.ndarray:
  t = x.shape[1]
  pad = t // ratio
  head = x[:, :pad][:, ::-1]          # frames pad-1 .. 0
  tail = x[:, t - pad:][:, ::-1]      # frames T-1 .. T-pad
  padded = np.concatenate((head, x, tail), axis=1)
  return padded[:, start:start + t]


def temporal_crop(x: np.ndarray, rng: np.random.Generator, ratio: int = 6) -> np.ndarray:
  pad = x.shape[1] // ratio
  return temporal_crop_with(x, int(rng.integers(0, 2 * pad + 1)), ratio)


# ---------------------------------------------------------------------------------------
# Shear: six coefficients, drawn in the order s1[0], s1[1], s1[2], s2[0], s2[1], s2[2].
# ---------------------------------------------------------------------------------------

def shear_matrix(coeffs) -> np.ndarray:
  """The matrix ``S`` with ``x' = S x`` (column vectors (x, y, z))."""
  a1, b1, c1, a2, b2, c2 = (float(v) for v in coeffs)
  return np.array([[1.0, a1, a2],
                   [b1, 1.0, b2],
                   [c1, c2, 1.0]])


def _map_points(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
  """``x' = matrix @ x`` per point, written as the release does: row vectors times ``matrix.T``."""
  return np.dot(x.transpose(1, 2, 3, 0), matrix.T).transpose(3, 0, 1, 2)


def shear_with(x: np.ndarray, coeffs) -> np.ndarray:
  return _map_points(x, shear_matrix(coeffs))


def shear(x: np.ndarray, rng: np.random.Generator, amplitude: float = 0.5) -> np.ndarray:
  return shear_with(x, rng.uniform(-amplitude, amplitude, size=6))


# ---------------------------------------------------------------------------------------
# Strong transforms.
# ---------------------------------------------------------------------------------------

def spatial_flip_with(x: np.ndarray, flip: bool, mirror=NTU_MIRROR) -> np.ndarray:
  """Joints permuted left <-> right; the coordinates are not negated."""
  return x[:, :, list(mirror)] if flip else x


def spatial_flip(x: np.ndarray, rng: np.random.Generator, mirror=NTU_MIRROR, p: float = 0.5) -> np.ndarray:
  return spatial_flip_with(x, rng.random() < p, mirror)


def rotation_matrices(angles) -> list[np.ndarray]:
  """``[R_x, R_y, R_z]`` (angles in radians), each acting as ``x' = R x``."""
  ax, ay, az = (float(a) for a in angles)
  rx = np.array([[1.0, 0.0, 0.0],
                 [0.0, math.cos(ax), math.sin(ax)],
                 [0.0, -math.sin(ax), math.cos(ax)]])
  ry = np.array([[math.cos(ay), 0.0, -math.sin(ay)],
                 [0.0, 1.0, 0.0],
                 [math.sin(ay), 0.0, math.cos(ay)]])
  rz = np.array([[math.cos(az), math.sin(az), 0.0],
                 [-math.sin(az), math.cos(az), 0.0],
                 [0.0, 0.0, 1.0]])
  return [rx, ry, rz]


def rotate_with(x: np.ndarray, angles) -> np.ndarray:
  """Rotations about x, then y, then z."""
  seq = x.transpose(1, 2, 3, 0)
  for matrix in rotation_matrices(angles):
    seq = np.matmul(seq, matrix.T)
  return seq.transpose(3, 0, 1, 2)


def rotation_angles(rng: np.random.Generator, main_deg: float = 30.0, minor_deg: float = 1.0) -> np.ndarray:
  """A main axis uniform in {x, y, z} gets an angle uniform in [0, 30] degrees, the others [0, 1]."""
  main = int(rng.integers(0, 3))
  return np.array([math.radians(rng.uniform(0.0, main_deg if axis == main else minor_deg))
                   for axis in range(3)])


def rotate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  return rotate_with(x, rotation_angles(rng))


def gauss_noise_with(x: np.ndarray, on: bool, noise: np.ndarray) -> np.ndarray:
  return x + noise if on else x


def gauss_noise(x: np.ndarray, rng: np.random.Generator, std: float = 0.01, p: float = 0.5) -> np.ndarray:
  if rng.random() < p:
    return x + rng.normal(0.0, std, size=x.shape)
  return x


def blur_kernel(sigma: float, taps: int = 15) -> np.ndarray:
  """``exp(-k^2 / (2 sigma^2))`` for ``k = -taps//2 .. taps//2``; NOT normalised (as released)."""
  k = np.arange(-(taps // 2), taps // 2 + 1, dtype=np.float64)
  return np.exp(-k ** 2 / (2.0 * float(sigma) ** 2))


def gauss_blur_with(x: np.ndarray, on: bool, sigma: float, taps: int = 15) -> np.ndarray:
  """Temporal depthwise convolution of every (channel, joint, person) series, zero padded."""
  if not on:
    return x
  weights = blur_kernel(sigma, taps)
  half = taps // 2
  t = x.shape[1]
  padded = np.zeros((x.shape[0], t + 2 * half) + x.shape[2:], dtype=np.float64)
  padded[:, half:half + t] = x
  out = np.zeros(x.shape, dtype=np.float64)
  for k in range(taps):
    out += weights[k] * padded[:, k:k + t]
  return out


def gauss_blur(x: np.ndarray, rng: np.random.Generator, sigma_range=(0.1, 2.0), p: float = 0.5) -> np.ndarray:
  # The release draws sigma first and the apply-or-not probability second, on every call.
  sigma = rng.uniform(*sigma_range)
  return gauss_blur_with(x, rng.random() < p, sigma)


def axis_mask_with(x: np.ndarray, on: bool, axis: int) -> np.ndarray:
  if not on:
    return x
  out = x.copy()
  out[axis] = 0.0
  return out


def axis_mask(x: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
  if rng.random() < p:
    return axis_mask_with(x, True, int(rng.integers(0, 3)))
  return x


def time_flip_with(x: np.ndarray, on: bool) -> np.ndarray:
  return x[:, ::-1] if on else x


def time_flip(x: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
  return time_flip_with(x, rng.random() < p)


# ---------------------------------------------------------------------------------------
# The feeder's views.
# ---------------------------------------------------------------------------------------

def weak_augment(x: np.ndarray, rng: np.random.Generator, ratio: int = 6, amplitude: float = 0.5) -> np.ndarray:
  if ratio > 0:
    x = temporal_crop(x, rng, ratio)
  if amplitude > 0:
    x = shear(x, rng, amplitude)
  return x


def strong_augment(x: np.ndarray, rng: np.random.Generator, mirror=NTU_MIRROR, aug_method: str = "12345",
                   ratio: int = 6, amplitude: float = 0.5) -> np.ndarray:
  x = weak_augment(x, rng, ratio, amplitude)
  if "1" in aug_method:
    x = spatial_flip(x, rng, mirror)
  if "2" in aug_method:
    x = rotate(x, rng)
  if "3" in aug_method:
    x = gauss_noise(x, rng)
  if "4" in aug_method:
    x = gauss_blur(x, rng)
  if "5" in aug_method:
    x = axis_mask(x, rng)
  if "6" in aug_method:
    x = time_flip(x, rng)
  return x


def feeder_views(x: np.ndarray, rng: np.random.Generator, mirror=NTU_MIRROR, aug_method: str = "12345",
                 ratio: int = 6, amplitude: float = 0.5) -> list[np.ndarray]:
  """``[query, key, strong query 1, strong query 2]`` of one clip ``[C, T, V, M]``."""
  return [weak_augment(x, rng, ratio, amplitude),
          weak_augment(x, rng, ratio, amplitude),
          strong_augment(x, rng, mirror, aug_method, ratio, amplitude),
          strong_augment(x, rng, mirror, aug_method, ratio, amplitude)]


# ---------------------------------------------------------------------------------------
# The processor's joint mask (branch 2, after the stream conversion).
# ---------------------------------------------------------------------------------------

def joint_mask(rng: np.random.Generator, num_frames: int, num_joints: int, mask_ratio: float = 0.1) -> np.ndarray:
  """bool ``[T, V]``, True where masked: ``int(V * ratio)`` distinct joints per frame, one
  mask for the whole batch (every sample, person and channel)."""
  count = int(num_joints * mask_ratio)
  mask = np.zeros((num_frames, num_joints), dtype=bool)
  for t in range(num_frames):
    mask[t, rng.choice(num_joints, size=count, replace=False)] = True
  return mask


def apply_joint_mask(x: np.ndarray, mask: np.ndarray, mask_param: float) -> np.ndarray:
  """Batch ``x [N, C, T, V, M]``: masked entries replaced by ``mask_param``."""
  return np.where(mask[None, None, :, :, None], mask_param, x)
