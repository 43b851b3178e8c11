"""Tests for cmd_jax.modalities against hand-worked arrays and the spec's pair list
(docs/references.md#cmd-modalities, #cmd-input-layout)."""

from __future__ import annotations

import numpy as np
import pytest

from cmd_jax import modalities
from cmd_jax.layouts import MSR20, NTU25

# docs/references.md#cmd-modalities, copied independently of cmd_jax/layouts.py: 1-based (joint, parent).
SPEC_NTU_PAIRS_1BASED = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
    (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
    (20, 19), (21, 21), (22, 23), (23, 8), (24, 25), (25, 12))

# The float comparisons below are exact in practice: both sides compute the same single
# float32 subtraction, correctly rounded on any CPU (measured identical); atol 1e-6 is slack.


def _random(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_joint_is_identity():
  x = _random((2, 3, 4, 25, 2))
  np.testing.assert_array_equal(np.asarray(modalities.joint(x)), x)
  np.testing.assert_array_equal(np.asarray(modalities.modality(x, "joint", NTU25)), x)


def test_motion_hand_worked():
  # One sample, one channel, one joint, one person: T = 4 values 1, 4, 9, 16.
  x = np.array([1.0, 4.0, 9.0, 16.0], np.float32).reshape(1, 1, 4, 1, 1)
  m = np.asarray(modalities.motion(x))
  np.testing.assert_array_equal(m.reshape(-1), [3.0, 5.0, 7.0, 0.0])


def test_motion_matches_loop():
  x = _random((2, 3, 5, 4, 2))
  expected = np.zeros_like(x)
  for t in range(x.shape[2] - 1):
    expected[:, :, t] = x[:, :, t + 1] - x[:, :, t]
  got = np.asarray(modalities.motion(x))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
  assert np.all(got[:, :, -1] == 0)
  # Unbatched input [C, T, V, M] works the same way.
  np.testing.assert_allclose(np.asarray(modalities.motion(x[1])), expected[1], atol=1e-6)


def test_bone_hand_worked_small_chain():
  # A 3-joint chain 0 <- 1 <- 2 rooted at 0, via a stand-in layout object.
  class Chain:
    name = "chain3"
    num_joints = 3
    bone_parents = np.array([0, 0, 1])

  # [N=1, C=1, T=1, V=3, M=1]: joint values 10, 13, 20.
  x = np.array([10.0, 13.0, 20.0], np.float32).reshape(1, 1, 1, 3, 1)
  b = np.asarray(modalities.bone(x, Chain()))
  np.testing.assert_array_equal(b.reshape(-1), [0.0, 3.0, 7.0])


def test_ntu_bone_matches_spec_pairs():
  x = _random((2, 3, 4, 25, 2), seed=1)
  expected = np.zeros_like(x)
  for v1, v2 in SPEC_NTU_PAIRS_1BASED:
    expected[:, :, :, v1 - 1] = x[:, :, :, v1 - 1] - x[:, :, :, v2 - 1]
  got = np.asarray(modalities.modality(x, "bone", NTU25))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
  # Spine shoulder (0-based 20) is the root: its bone is exactly zero.
  assert np.all(got[:, :, :, 20] == 0)
  # Every other joint's bone is non-zero on random data.
  others = np.delete(got, 20, axis=3)
  assert np.all(np.abs(others).reshape(-1, 24 * 2).max(axis=0) > 0)


def test_msr_bone_root_is_zero():
  x = _random((1, 3, 3, 20, 1), seed=2)
  got = np.asarray(modalities.bone(x, MSR20))
  assert np.all(got[..., 2, :] == 0)  # neck
  np.testing.assert_allclose(got[..., 19, :], x[..., 19, :] - x[..., 2, :], atol=1e-6)


def test_bone_rejects_wrong_joint_count():
  with pytest.raises(ValueError, match="25 joints"):
    modalities.bone(np.zeros((1, 3, 4, 20, 2), np.float32), NTU25)


def test_unknown_modality():
  with pytest.raises(ValueError, match="unknown modality"):
    modalities.modality(np.zeros((1, 3, 4, 25, 2), np.float32), "velocity", NTU25)


def test_flatten_index_formula_element_by_element():
  n, c, t, v, m = 2, 3, 4, 25, 2
  x = _random((n, c, t, v, m), seed=3)
  f = np.asarray(modalities.flatten(x))
  assert f.shape == (n, t, v * c * m) == (2, 4, 150)
  for i in range(n):
    for tt in range(t):
      for vv in range(v):
        for cc in range(c):
          for mm in range(m):
            assert f[i, tt, vv * 6 + cc * 2 + mm] == x[i, cc, tt, vv, mm]


def test_flatten_general_sizes_and_unbatched():
  c, t, v, m = 3, 2, 4, 1
  x = np.arange(c * t * v * m, dtype=np.float32).reshape(c, t, v, m)
  f = np.asarray(modalities.flatten(x))
  assert f.shape == (t, v * c * m)
  for tt in range(t):
    for vv in range(v):
      for cc in range(c):
        assert f[tt, vv * c * m + cc * m] == x[cc, tt, vv, 0]


def test_rank_check():
  with pytest.raises(ValueError, match=r"\[\.\.\., C, T, V, M\]"):
    modalities.flatten(np.zeros((3, 4, 25), np.float32))
