"""A deliberately naive, loop-by-loop implementation of HiCLR's 50-frame data spec ("frame50").

This module owns the *independent* computation that ``tests/test_frame50.py`` compares
``data_prep.frame50`` and the frame50 readers against. It is written from the spec text
only, in the most literal way, one scalar at a time:

* the reader: the file read line by line (``spec_reference.read_skeleton``) and the first
  two bodies of each frame copied joint by joint into ``(3, T, 25, 2)``;
* the length: frames counted one by one where person 0's length joint is not all zero;
* the centring: every coordinate minus its own person's root joint in the same frame;
* OpenCV's ``INTER_LINEAR`` sampling: for each output pixel, its source position
  ``(d + 0.5) * (1 / (out / in)) - 0.5`` rounded to float32, split into an integer part
  and a float32 fraction, the source rows/columns clamped to the image, and
  ``a * (1 - w) + b * w`` in float32 scalars; ``resize_image`` applies it in 2-D as OpenCV
  does (columns first, the fraction set to 0 at the left/right borders, then rows, whose
  weights are not changed at the borders);
* the y rotation: per person and frame, the shoulder vector's angle from float32 scalars,
  the global sign from a running float32 sum of ``v_z``, a float64 3x3 matrix per frame
  from float32 ``cos``/``sin``, and ``np.dot(matrix, joint)`` per joint rounded to float32.

Nothing here validates input; it is slow on purpose (Python loops over persons, frames,
joints and channels).
"""

from __future__ import annotations

import math

import numpy as np

from tests import spec_reference

F32 = np.float32
OUT_FRAMES = 50


# ----------------------------------------------------------------------------------------
# Reader: the first two bodies of each frame, in file order
# ----------------------------------------------------------------------------------------

def read_xyz_file_order(path, max_body: int = 2, num_joint: int = 25) -> np.ndarray:
  """float64 (3, T, 25, 2): body m of frame n (m < 2, in the order the file lists them)."""
  sequence = spec_reference.read_skeleton(path)
  data = np.zeros((3, sequence["numFrame"], num_joint, max_body))
  for n, frame in enumerate(sequence["frameInfo"]):
    for m, body in enumerate(frame["bodyInfo"]):
      for j, joint in enumerate(body["jointInfo"]):
        if m < max_body and j < num_joint:
          data[0, n, j, m] = joint["x"]
          data[1, n, j, m] = joint["y"]
          data[2, n, j, m] = joint["z"]
  return data


# ----------------------------------------------------------------------------------------
# OpenCV INTER_LINEAR, scalar by scalar
# ----------------------------------------------------------------------------------------

def linear_taps(in_size: int, out_size: int, index: int) -> tuple[int, np.float32]:
  """Source position of output ``index``: (integer part, unclamped; float32 fraction)."""
  inverse_scale = out_size / in_size  # float64, as OpenCV's inv_scale
  scale = 1.0 / inverse_scale
  position = F32((index + 0.5) * scale - 0.5)
  whole = math.floor(float(position))
  fraction = F32(position - F32(whole))
  return whole, fraction


def _clamp(i: int, size: int) -> int:
  return min(max(i, 0), size - 1)


def resize_rows(column, out_size: int, taps=None) -> list:
  """1-D INTER_LINEAR of a list of float32 values (the vertical direction); ``taps``: the
  ``linear_taps`` of every output index, if already computed."""
  n = len(column)
  taps = taps or [linear_taps(n, out_size, d) for d in range(out_size)]
  out = []
  for d in range(out_size):
    whole, w = taps[d]
    a, b = F32(column[_clamp(whole, n)]), F32(column[_clamp(whole + 1, n)])
    out.append(F32(F32(a * F32(F32(1) - w)) + F32(b * w)))
  return out


def resize_image(image: np.ndarray, new_width: int, new_height: int) -> np.ndarray:
  """``cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)`` of a
  float32 image [H, W, C], loop by loop: horizontal pass, then vertical pass."""
  height, width, channels = image.shape
  rows = np.zeros((height, new_width, channels), np.float32)
  for dx in range(new_width):
    whole, w = linear_taps(width, new_width, dx)
    if whole < 0:
      whole, w = 0, F32(0)
    if whole >= width - 1:
      whole, w = width - 1, F32(0)
    for y in range(height):
      for c in range(channels):
        a = F32(image[y, whole, c])
        b = F32(image[y, min(whole + 1, width - 1), c])
        rows[y, dx, c] = F32(F32(a * F32(F32(1) - w)) + F32(b * w))
  out = np.zeros((new_height, new_width, channels), np.float32)
  taps = [linear_taps(height, new_height, d) for d in range(new_height)]
  for x in range(new_width):
    for c in range(channels):
      column = [rows[y, x, c] for y in range(height)]
      for d, value in enumerate(resize_rows(column, new_height, taps)):
        out[d, x, c] = value
  return out


# ----------------------------------------------------------------------------------------
# The 50-frame preprocessing of one sample
# ----------------------------------------------------------------------------------------

def clip_length(sample: np.ndarray, length_joint: int = 0) -> int:
  """Frames of sample (3, T, V, M) where person 0's ``length_joint`` is not all zero."""
  count = 0
  for t in range(sample.shape[1]):
    total = abs(float(sample[0, t, length_joint, 0])) + abs(float(sample[1, t, length_joint, 0])) + abs(
        float(sample[2, t, length_joint, 0]))
    if total != 0:
      count += 1
  return count


def centre(sample: np.ndarray, root: int = 20, frames: int | None = None) -> np.ndarray:
  """float32 copy with every joint minus its own person's ``root`` joint, frame by frame;
  only the first ``frames`` frames (default: all; the others stay zero)."""
  c_, t_, v_, m_ = sample.shape
  out = np.zeros(sample.shape, np.float32)
  for m in range(m_):
    for t in range(t_ if frames is None else frames):
      for j in range(v_):
        for c in range(c_):
          out[c, t, j, m] = F32(F32(sample[c, t, j, m]) - F32(sample[c, t, root, m]))
  return out


def rotate_person(person: np.ndarray, xaxis=(8, 4)) -> np.ndarray:
  """The y rotation of one person (3, F, V) float32, frame by frame."""
  _, frames, joints = person.shape
  a, b = xaxis
  degrees = []
  z_sum = F32(0)
  for t in range(frames):
    vx = F32(F32(person[0, t, a]) - F32(person[0, t, b]))
    vz = F32(F32(person[2, t, a]) - F32(person[2, t, b]))
    norm = np.sqrt(F32(F32(vx * vx) + F32(vz * vz)))
    cosine = F32(vx / F32(norm + F32(1e-4)))
    degrees.append(F32(np.arccos(cosine) * F32(180 / math.pi)))
    z_sum = F32(z_sum + vz)
  if z_sum >= 0:
    degrees = [F32(-d) for d in degrees]
  out = np.zeros(person.shape, np.float32)
  for t in range(frames):
    angle = F32(F32(degrees[t] * F32(math.pi)) / F32(180))
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    matrix = np.array([[cos, 0.0, -sin], [0.0, 1.0, 0.0], [sin, 0.0, cos]])
    for j in range(joints):
      point = np.array([person[0, t, j], person[1, t, j], person[2, t, j]], np.float64)
      rotated = np.dot(matrix, point)
      for c in range(3):
        out[c, t, j] = F32(rotated[c])
  return out


def frame50(sample: np.ndarray, root: int = 20, xaxis=(8, 4), length_joint: int = 0,
            out_frames: int = OUT_FRAMES) -> np.ndarray:
  """One sample (3, T, V, M) -> float32 (3, out_frames, V, M); the defaults are NTU's."""
  sample = np.asarray(sample, np.float32)
  length = clip_length(sample, length_joint)
  centred = centre(sample, root, length)  # the frames after the first `length` are never used
  c_, _, v_, m_ = sample.shape
  out = np.zeros((c_, out_frames, v_, m_), np.float32)
  for m in range(m_):
    image = np.zeros((length, v_, c_), np.float32)  # the clip as an image: time x joints x xyz
    for t in range(length):
      for j in range(v_):
        for c in range(c_):
          image[t, j, c] = centred[c, t, j, m]
    resized = resize_image(image, v_, out_frames)
    person = np.zeros((c_, out_frames, v_), np.float32)
    for t in range(out_frames):
      for j in range(v_):
        for c in range(c_):
          person[c, t, j] = resized[t, j, c]
    rotated = rotate_person(person, xaxis)
    out[..., m] = rotated
  return out
