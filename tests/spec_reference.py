"""A deliberately naive, loop-by-loop implementation of the data spec
(docs/references.md#cmd-ntu-reader, #cmd-pre-normalization).

This module owns the *independent* computation the NTU parser and ``pre_normalization``
tests compare against, and the "straightforward per-joint-loop implementation" that
``bench/bench_conversion.py`` measures the vectorised code against. It is written from the
spec text only, in the most literal way: the file is read line by line into dicts of
``float()`` values, ``read_xyz`` fills ``data[m, n, j, :]`` joint by joint, and
``pre_normalization`` walks samples, persons, frames and joints with Python loops,
rotating every joint with ``np.dot(matrix, joint)``.

Dtypes follow the reference's flow: the parse is float64; the conversion buffer
``(N, 3, 300, 25, 2)`` is float32; rotation matrices are float64 and each rotated joint
is stored back into the float32 buffer.

Nothing here validates input beyond what the literal reading needs; the strict error
reporting is the job of ``data_prep.ntu``.
"""

from __future__ import annotations

import math

import numpy as np

MAX_BODY_KINECT = 4
MAX_BODY_TRUE = 2
NUM_JOINT = 25
MAX_FRAME = 300

BODY_KEYS = ("bodyID", "clipedEdges", "handLeftConfidence", "handLeftState",
             "handRightConfidence", "handRightState", "isResticted", "leanX", "leanY",
             "trackingState")
JOINT_KEYS = ("x", "y", "z", "depthX", "depthY", "colorX", "colorY", "orientationW",
              "orientationX", "orientationY", "orientationZ", "trackingState")


# ----------------------------------------------------------------------------------------
# #cmd-ntu-reader: parser
# ----------------------------------------------------------------------------------------

def read_skeleton(path) -> dict:
  """The file as nested dicts: counts with ``int()``, every other value with ``float()``."""
  with open(path, "r") as f:  # text mode: universal newlines, CRLF == LF
    sequence = {"numFrame": int(f.readline()), "frameInfo": []}
    for _ in range(sequence["numFrame"]):
      frame = {"numBody": int(f.readline()), "bodyInfo": []}
      for _ in range(frame["numBody"]):
        body = {}
        for key, value in zip(BODY_KEYS, f.readline().split()):
          body[key] = float(value)
        body["numJoint"] = int(f.readline())
        body["jointInfo"] = []
        for _ in range(body["numJoint"]):
          joint = {}
          for key, value in zip(JOINT_KEYS, f.readline().split()):
            joint[key] = float(value)
          body["jointInfo"].append(joint)
        frame["bodyInfo"].append(body)
      sequence["frameInfo"].append(frame)
  return sequence


# ----------------------------------------------------------------------------------------
# #cmd-ntu-reader: body selection
# ----------------------------------------------------------------------------------------

def get_nonzero_std(body: np.ndarray) -> float:
  """Energy of one slot (T, 25, 3): sum over x, y, z of the population std over valid frames."""
  valid_frames = []
  for frame in body:
    if frame.sum() != 0:
      valid_frames.append(frame)
  if len(valid_frames) == 0:
    return 0
  valid = np.array(valid_frames)
  return valid[:, :, 0].std() + valid[:, :, 1].std() + valid[:, :, 2].std()


def read_bodies(path) -> np.ndarray:
  """The slot array float64 (4, T, 25, 3): the m-th body of frame n in slot m (m < 4)."""
  sequence = read_skeleton(path)
  data = np.zeros((MAX_BODY_KINECT, sequence["numFrame"], NUM_JOINT, 3))
  for n, frame in enumerate(sequence["frameInfo"]):
    for m, body in enumerate(frame["bodyInfo"]):
      for j, joint in enumerate(body["jointInfo"]):
        if m < MAX_BODY_KINECT and j < NUM_JOINT:
          data[m, n, j, :] = [joint["x"], joint["y"], joint["z"]]
  return data


def energies(data: np.ndarray) -> np.ndarray:
  return np.array([get_nonzero_std(slot) for slot in data])


def read_xyz(path) -> np.ndarray:
  """float64 (3, T, 25, 2): the two slots of highest energy, highest first."""
  data = read_bodies(path)
  energy = energies(data)
  index = energy.argsort()[::-1][0:MAX_BODY_TRUE]
  data = data[index]
  return data.transpose(3, 1, 2, 0)


def to_buffer(samples) -> np.ndarray:
  """The reference's conversion buffer: float32 (N, 3, 300, 25, 2), zeros after each clip."""
  fp = np.zeros((len(samples), 3, MAX_FRAME, NUM_JOINT, MAX_BODY_TRUE), dtype=np.float32)
  for i, data in enumerate(samples):
    fp[i, :, 0:data.shape[1], :, :] = data
  return fp


# ----------------------------------------------------------------------------------------
# #cmd-pre-normalization: rotation helpers, scalar
# ----------------------------------------------------------------------------------------

def unit_vector(vector):
  return vector / np.linalg.norm(vector)


def angle_between(v1, v2) -> float:
  """Angle in radians between v1 and v2; 0 when either has sum(|.|) < 1e-6."""
  if np.abs(v1).sum() < 1e-6 or np.abs(v2).sum() < 1e-6:
    return 0
  v1_u = unit_vector(v1)
  v2_u = unit_vector(v2)
  return np.arccos(np.clip(np.dot(v1_u, v2_u), -1.0, 1.0))


def rotation_matrix(axis, theta) -> np.ndarray:
  """Euler-Rodrigues: counter-clockwise rotation by theta about axis; identity when degenerate."""
  if np.abs(axis).sum() < 1e-6 or np.abs(theta) < 1e-6:
    return np.eye(3)
  axis = np.asarray(axis)
  axis = axis / math.sqrt(np.dot(axis, axis))
  a = math.cos(theta / 2.0)
  b, c, d = -axis * math.sin(theta / 2.0)
  aa, bb, cc, dd = a * a, b * b, c * c, d * d
  bc, ad, ac, ab, bd, cd = b * c, a * d, a * c, a * b, b * d, c * d
  return np.array([[aa + bb - cc - dd, 2 * (bc + ad), 2 * (bd - ac)],
                   [2 * (bc - ad), aa + cc - bb - dd, 2 * (cd + ab)],
                   [2 * (bd + ac), 2 * (cd - ab), aa + dd - bb - cc]])


# ----------------------------------------------------------------------------------------
# #cmd-pre-normalization: pre_normalization, loop by loop
# ----------------------------------------------------------------------------------------

def pre_normalization(data: np.ndarray, zaxis=(0, 1), xaxis=(8, 4), center_joint=1) -> np.ndarray:
  """The four passes on a copy of data (N, C, T, V, M); returns (N, C, T, V, M) float32.

  The defaults are the reference's (NTU); ``center_joint`` generalises its joint 1.
  """
  data = np.array(data, dtype=np.float32)  # a copy; the passes edit it in place
  s = np.transpose(data, [0, 4, 2, 3, 1])  # a view: N, M, T, V, C
  num_frames = s.shape[2]
  num_joints = s.shape[3]

  # Pass 1: pad null frames.
  for i_s, skeleton in enumerate(s):
    for i_p, person in enumerate(skeleton):
      if person.sum() == 0:
        continue
      if person[0].sum() == 0:
        # compaction: every non-empty frame to the front, in order; the rest zero
        kept = []
        for frame in person:
          if frame.sum() != 0:
            kept.append(frame.copy())
        person *= 0
        for k, frame in enumerate(kept):
          person[k] = frame
      for i_f, frame in enumerate(person):
        if frame.sum() == 0 and person[i_f:].sum() == 0:
          rest = num_frames - i_f
          copies = int(np.ceil(rest / i_f))
          pad = np.concatenate([person[0:i_f] for _ in range(copies)], 0)[:rest]
          s[i_s, i_p, i_f:] = pad
          break

  # Pass 2: centre on person 0's joint 1 (center_joint), per frame.
  for i_s, skeleton in enumerate(s):
    if skeleton.sum() == 0:
      continue
    center = skeleton[0][:, center_joint:center_joint + 1, :].copy()  # (T, 1, C)
    for i_p, person in enumerate(skeleton):
      if person.sum() == 0:
        continue
      mask = (person.sum(-1) != 0).reshape(num_frames, num_joints, 1)
      s[i_s, i_p] = (s[i_s, i_p] - center) * mask

  # Pass 3: person 0's frame-0 vector joint zaxis[1] - joint zaxis[0] onto +z.
  _rotate_samples(s, zaxis[1], zaxis[0], [0, 0, 1])
  # Pass 4: then person 0's frame-0 vector joint xaxis[0] - joint xaxis[1] onto +x.
  _rotate_samples(s, xaxis[0], xaxis[1], [1, 0, 0])

  return np.transpose(s, [0, 4, 2, 3, 1])


def _rotate_samples(s: np.ndarray, head: int, tail: int, target) -> None:
  """Rotates, in place, every joint of every non-empty frame of every present person of
  every non-empty sample of s (N, M, T, V, C) by the matrix taking person 0's frame-0
  vector ``joint head - joint tail`` onto ``target``."""
  for i_s, skeleton in enumerate(s):
    if skeleton.sum() == 0:
      continue
    vector = skeleton[0, 0, head] - skeleton[0, 0, tail]
    axis = np.cross(vector, target)
    angle = angle_between(vector, target)
    matrix = rotation_matrix(axis, angle)
    for i_p, person in enumerate(skeleton):
      if person.sum() == 0:
        continue
      for i_f, frame in enumerate(person):
        if frame.sum() == 0:
          continue
        for i_j, joint in enumerate(frame):
          s[i_s, i_p, i_f, i_j] = np.dot(matrix, joint)
