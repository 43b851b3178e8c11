"""``pre_normalization``: real files against the naive spec implementation, spec properties, toy cases.

The independent computations are ``tests/spec_reference.py`` (the four passes as Python
loops over samples, persons, frames and joints, with scalar rotation helpers), the
geometric properties the spec states for each pass, and hand-worked toy samples.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from cmd_jax.layouts import MSR20, NTU25
from data_prep import ntu
from data_prep.preprocess import pad_null_frames, pre_normalization, rotation_matrices
from tests import spec_reference

T_MAX = 300
# pass 3 alone: an x-axis vector joint 1 - joint 1 = 0 makes pass 4 the identity
ONLY_Z = dataclasses.replace(NTU25, xaxis=(1, 1))


@pytest.fixture(scope="module")
def real():
  """The real files as the reference's conversion buffer (N, 3, 300, 25, 2) float32, their
  frame counts, and both implementations' results."""
  from tests.conftest import shared_path
  files = sorted(shared_path("ntu_skeletons").glob("*.skeleton"))
  raw = [spec_reference.read_xyz(f) for f in files]
  buffer = spec_reference.to_buffer(raw)
  return {
      "files": files,
      "frames": [r.shape[1] for r in raw],
      "buffer": buffer,
      "spec": spec_reference.pre_normalization(buffer),
      "ours": pre_normalization(buffer, NTU25),
  }


def unit(v: np.ndarray) -> np.ndarray:
  v = np.asarray(v, np.float64)
  return v / np.linalg.norm(v)


# ----------------------------------------------------------------------------------------
# Real files
# ----------------------------------------------------------------------------------------

def test_buffer_is_zero_beyond_each_clip(real):
  buffer = real["buffer"]
  assert buffer.shape == (21, 3, T_MAX, 25, 2) and buffer.dtype == np.float32
  for i, num_frames in enumerate(real["frames"]):
    assert num_frames < T_MAX
    assert not buffer[i, :, num_frames:].any()
    np.testing.assert_array_equal(buffer[i, :, :num_frames], ntu.read_xyz(real["files"][i]).astype(np.float32))


def test_real_files_match_the_spec_implementation(real):
  """Tolerance: 1e-6 absolute (coordinates are about a metre). In practice every value is
  identical (0 of 945,000 differ with numpy's OpenBLAS here). The only freedom left is the
  order in which BLAS adds the three float64 products of a rotation, which can move a
  float64 result by an ulp: that survives the rounding to float32 only for values that
  cancel to ~1e-10, or as a one-ulp flip once in ~10**8 values. Anything systematic (for
  instance normalising the frame-0 vector with a float32 sum instead of ``sdot``'s, which
  changes ~1.6% of the values by ~1e-7) fails the last two checks."""
  ours, spec = real["ours"], real["spec"]
  assert ours.dtype == np.float32 and ours.shape == spec.shape == (21, 3, T_MAX, 25, 2)
  np.testing.assert_allclose(ours, spec, rtol=0, atol=1e-6)
  differ = ours != spec
  assert differ.mean() < 1e-5
  ulps = np.abs(ours[differ].astype(np.float64) - spec[differ]) / np.spacing(np.abs(spec[differ]))
  assert np.all((ulps <= 2) | (np.abs(spec[differ]) < 1e-6))


def test_batch_and_single_sample_calls_agree(real):
  buffer = real["buffer"]
  singles = np.concatenate([pre_normalization(buffer[i:i + 1], NTU25) for i in range(len(buffer))])
  np.testing.assert_array_equal(singles, real["ours"])
  np.testing.assert_array_equal(pre_normalization(buffer[::-1], NTU25), real["ours"][::-1])


def test_input_is_not_modified(real):
  before = real["buffer"].copy()
  pre_normalization(real["buffer"], NTU25)
  np.testing.assert_array_equal(real["buffer"], before)


def test_person0_spine_middle_is_the_origin_in_every_frame(real):
  assert not real["ours"][:, :, :, 1, 0].any()


def test_pass3_aligns_the_spine_with_z(real):
  only_z = pre_normalization(real["buffer"], ONLY_Z)
  for sample in only_z:
    spine = sample[:, 0, 1, 0] - sample[:, 0, 0, 0]  # frame 0, person 0: joint 1 - joint 0
    np.testing.assert_allclose(unit(spine), [0, 0, 1], atol=1e-6)


def test_pass4_aligns_the_shoulders_with_x_and_tilts_the_spine_slightly(real):
  for sample in real["ours"]:
    shoulders = sample[:, 0, 8, 0] - sample[:, 0, 4, 0]
    np.testing.assert_allclose(unit(shoulders), [1, 0, 0], atol=1e-6)
    spine = unit(sample[:, 0, 1, 0] - sample[:, 0, 0, 0])
    # the second rotation is about an axis normal to the shoulders and x, not z
    assert spine[2] > 0.8 and not np.allclose(spine, [0, 0, 1], atol=1e-6)


def test_rotations_preserve_distances(real):
  """Passes 3 and 4 are rotations: distances between joints of a frame are kept from the
  centred data (checked on person 0, frame 5, all joint pairs)."""
  centred = pre_normalization(real["buffer"], dataclasses.replace(NTU25, zaxis=(1, 1), xaxis=(1, 1)))
  for a, b in zip(centred, real["ours"]):
    pa, pb = a[:, 5, :, 0].T, b[:, 5, :, 0].T
    da = np.linalg.norm(pa[:, None] - pa[None], axis=-1)
    db = np.linalg.norm(pb[:, None] - pb[None], axis=-1)
    np.testing.assert_allclose(db, da, atol=1e-5)


def test_looping_padding_repeats_each_clip(real):
  for i, num_frames in enumerate(real["frames"]):
    sample = real["ours"][i]
    raw = real["buffer"][i]
    for person in range(2):
      nonempty = np.flatnonzero(raw[..., person].sum(axis=(0, 2)) != 0)
      if nonempty.size == 0:
        assert not sample[..., person].any()
        continue
      if nonempty[0] == 0:  # no compaction: the period is 1 + the last non-empty frame
        period = nonempty[-1] + 1
      else:  # compaction: the period is the number of non-empty frames
        period = nonempty.size
      if person == 0:
        assert period == num_frames  # person 0 of a real file spans the clip
      t = np.arange(period, T_MAX)
      np.testing.assert_array_equal(sample[:, t, :, person], sample[:, t % period, :, person])


# ----------------------------------------------------------------------------------------
# Toy samples (T = 12 frames; pre_normalization accepts any T)
# ----------------------------------------------------------------------------------------

def toy_person(rng, num_frames=12, frames=()) -> np.ndarray:
  """(3, T, 25) with random joints in ``frames`` and zeros elsewhere."""
  person = np.zeros((3, num_frames, 25), np.float32)
  for f in frames:
    person[:, f] = rng.normal(0, 0.3, (3, 25)) + np.array([[0.1], [0.2], [3.0]])
  return person


def toy_sample(person0, person1=None) -> np.ndarray:
  sample = np.zeros((1, 3, person0.shape[1], 25, 2), np.float32)
  sample[0, ..., 0] = person0
  if person1 is not None:
    sample[0, ..., 1] = person1
  return sample


def pad_only(data: np.ndarray) -> np.ndarray:
  """pad_null_frames on (N, 3, T, V, M) data, through the reference's (N, M, T, V, C) layout."""
  return pad_null_frames(data.transpose(0, 4, 2, 3, 1)).transpose(0, 4, 2, 3, 1)


def assert_matches_spec(data: np.ndarray):
  np.testing.assert_allclose(pre_normalization(data, NTU25), spec_reference.pre_normalization(data),
                             rtol=0, atol=1e-6)


def test_compaction_when_frame0_is_empty_removes_every_gap():
  rng = np.random.default_rng(0)
  person = toy_person(rng, frames=(2, 3, 6, 7))  # frame 0 empty, gaps at 4-5 and 8-11
  padded = pad_only(toy_sample(person))[0, ..., 0]
  order = [2, 3, 6, 7] * 3
  np.testing.assert_array_equal(padded, person[:, order])
  assert_matches_spec(toy_sample(person))


def test_interior_empty_frame_is_kept_when_frame0_is_not_empty():
  rng = np.random.default_rng(1)
  person = toy_person(rng, frames=(0, 1, 3))  # frame 2 empty inside the clip, period 4
  padded = pad_only(toy_sample(person))[0, ..., 0]
  np.testing.assert_array_equal(padded, person[:, [0, 1, 2, 3] * 3])
  assert not padded[:, [2, 6, 10]].any()
  assert_matches_spec(toy_sample(person))


def test_each_person_loops_with_its_own_period():
  rng = np.random.default_rng(2)
  person0 = toy_person(rng, frames=range(5))
  person1 = toy_person(rng, frames=range(3))
  padded = pad_only(toy_sample(person0, person1))[0]
  np.testing.assert_array_equal(padded[..., 0], person0[:, [0, 1, 2, 3, 4] * 2 + [0, 1]])
  np.testing.assert_array_equal(padded[..., 1], person1[:, [0, 1, 2] * 4])
  assert_matches_spec(toy_sample(person0, person1))


def test_full_clip_and_absent_person_are_not_padded():
  rng = np.random.default_rng(3)
  person = toy_person(rng, frames=range(12))
  padded = pad_only(toy_sample(person))
  np.testing.assert_array_equal(padded, toy_sample(person))


def test_all_zero_sample_is_unchanged_among_others():
  rng = np.random.default_rng(4)
  data = np.concatenate([toy_sample(toy_person(rng, frames=range(7))), np.zeros((1, 3, 12, 25, 2), np.float32),
                         toy_sample(toy_person(rng, frames=(1, 2)), toy_person(rng, frames=(0, 4)))])
  out = pre_normalization(data, NTU25)
  assert not out[1].any()
  np.testing.assert_array_equal(out[1], data[1])
  assert_matches_spec(data)


def test_centring_masks_missing_joints_and_centres_person1_on_person0():
  rng = np.random.default_rng(5)
  person0 = toy_person(rng, frames=range(12))
  person1 = toy_person(rng, frames=range(12))
  person0[:, :, 20] = 0  # a joint never tracked stays zero after centring
  data = toy_sample(person0, person1)
  centred = pre_normalization(data, dataclasses.replace(NTU25, zaxis=(1, 1), xaxis=(1, 1)))[0]
  assert not centred[:, :, 20, 0].any()
  np.testing.assert_array_equal(centred[..., 0], person0 - np.where(person0.any(0), person0[:, :, 1:2], 0))
  np.testing.assert_array_equal(centred[..., 1], person1 - person0[:, :, 1:2])
  assert_matches_spec(data)


def test_anti_parallel_spine_is_not_flipped():
  """v = -z: cross(v, z) = 0, so the rotation is the identity, not a 180 degree turn."""
  rng = np.random.default_rng(6)
  person = toy_person(rng, frames=range(12))
  person[:, :, 0] = person[:, :, 1] + np.array([[0], [0], [0.25]], np.float32)  # spine points down
  person[:, :, 4] = person[:, :, 1] - np.array([[0.2], [0], [0]], np.float32)  # shoulders along +x
  person[:, :, 8] = person[:, :, 1] + np.array([[0.2], [0], [0]], np.float32)
  data = toy_sample(person)
  out = pre_normalization(data, NTU25)[0, ..., 0]
  np.testing.assert_array_equal(out, person - person[:, :, 1:2])  # centred, nothing rotated
  assert out[2, 0, 1] - out[2, 0, 0] < 0
  assert_matches_spec(data)


def test_zero_spine_vector_gives_identity():
  rng = np.random.default_rng(7)
  person = toy_person(rng, frames=range(12))
  person[:, 0, 0] = person[:, 0, 1]  # frame-0 spine vector is 0
  person[:, 0, 8] = person[:, 0, 4]  # and so is the shoulder vector
  data = toy_sample(person)
  np.testing.assert_array_equal(pre_normalization(data, NTU25)[0, ..., 0], person - person[:, :, 1:2])
  assert_matches_spec(data)


def test_random_samples_match_the_spec_implementation():
  """Random clips with every case at once: gaps, late starts, absent and short persons."""
  rng = np.random.default_rng(8)
  samples = []
  for _ in range(12):
    frames0 = sorted(rng.choice(40, size=rng.integers(1, 40), replace=False))
    frames1 = [] if rng.random() < 0.3 else sorted(rng.choice(40, size=rng.integers(1, 40), replace=False))
    person0 = toy_person(rng, 40, frames0)
    person1 = toy_person(rng, 40, frames1)
    person0[:, :, rng.integers(0, 25, 3)] = 0
    samples.append(toy_sample(person0, person1))
  data = np.concatenate(samples)
  ours = pre_normalization(data, NTU25)
  spec = spec_reference.pre_normalization(data)
  np.testing.assert_allclose(ours, spec, rtol=0, atol=1e-6)
  assert (ours == spec).mean() > 0.9999


def test_other_layout_single_person_matches_the_spec_implementation():
  """MSR20: 20 joints, one person, its own centre joint and axes."""
  rng = np.random.default_rng(10)
  data = np.zeros((4, 3, 30, 20, 1), np.float32)
  for i, frames in enumerate([range(30), range(3, 17), (0, 1, 5, 9), ()]):
    for f in frames:
      data[i, :, f, :, 0] = rng.normal(0, 0.3, (3, 20)) + np.array([[0.1], [0.2], [3.0]])
  ours = pre_normalization(data, MSR20)
  spec = spec_reference.pre_normalization(data, zaxis=MSR20.zaxis, xaxis=MSR20.xaxis,
                                          center_joint=MSR20.center_joint)
  np.testing.assert_allclose(ours, spec, rtol=0, atol=1e-6)
  assert not ours[:3, :, :, MSR20.center_joint].any() and not ours[3].any()


def test_shape_checks():
  with pytest.raises(ValueError, match=r"\[N, 3, T, V, M\]"):
    pre_normalization(np.zeros((1, 2, 10, 25, 2)), NTU25)
  with pytest.raises(ValueError, match="25 joints"):
    pre_normalization(np.zeros((1, 3, 10, 20, 2)), NTU25)


# ----------------------------------------------------------------------------------------
# Rotation matrices
# ----------------------------------------------------------------------------------------

def test_rotation_matrices_hand_worked_quarter_turns():
  quarter = rotation_matrices(np.array([[0.0, 0.0, 2.0], [1.0, 0.0, 0.0]]), np.array([math.pi / 2, math.pi / 2]))
  # counter-clockwise about z: x -> y, y -> -x; about x: y -> z, z -> -y
  np.testing.assert_allclose(quarter[0], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
  np.testing.assert_allclose(quarter[1], [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-15)


def test_rotation_matrices_match_the_scalar_reference():
  rng = np.random.default_rng(9)
  axes = rng.normal(size=(50, 3))
  angles = rng.uniform(-4, 4, 50)
  batch = rotation_matrices(axes, angles)
  for axis, angle, matrix in zip(axes, angles, batch):
    np.testing.assert_allclose(matrix, spec_reference.rotation_matrix(axis, angle), rtol=0, atol=1e-15)
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(matrix) == pytest.approx(1.0)
    np.testing.assert_allclose(matrix @ axis, axis, atol=1e-12)  # the axis is fixed


def test_degenerate_rotations_are_the_identity():
  axes = np.array([[0.0, 0.0, 0.0], [1e-7, 0.0, 2e-7], [0.0, 1.0, 0.0], [3.0, 1.0, 0.0]])
  angles = np.array([1.0, 2.0, 5e-7, -9e-7])
  np.testing.assert_array_equal(rotation_matrices(axes, angles), np.broadcast_to(np.eye(3), (4, 3, 3)))
  for axis, angle in zip(axes, angles):
    np.testing.assert_array_equal(spec_reference.rotation_matrix(axis, angle), np.eye(3))
