"""Tests for the per-sample reference augmentation in tests/torch_reference.py
(docs/references.md#cmd-augmentations).

``tests/torch_reference.py`` is the baseline of ``bench/bench_augment.py``; these tests check
it against the spec with independent numpy formulas (float64): the crop-resize
(#cmd-crop-resize) against half-pixel linear interpolation with the crop drawn as the spec
says, the joint corruption (#cmd-joint-corruption) and the shear (#cmd-shear) against the point
maps ``p @ A`` / ``S @ p``, and the per-view choice (#cmd-pretraining-views). The random draws
are either fixed by monkeypatching ``np.random`` / ``random`` (exact formulas) or seeded and
read back from the output (the distributions' ranges). Also: ``cmd_jax.augment.resize_linear``
gives what the reference's ``temporal_cropresize`` gives for the same crop.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from cmd_jax import augment  # noqa: E402
from tests import torch_reference as ref  # noqa: E402
from tests.test_augment import frame_ramp, np_col_map, np_resize, np_row_map, random_clip  # noqa: E402

T, V, M, OUT, K = 300, 25, 2, 64, 15
# Tolerances: as in tests/test_augment.py (float32 interpolation and 3x3 point maps within a few
# u of their inputs' size, in any order); the ramp read-backs (atol 1e-3) check formulas only.


# ----------------------------------------------------------------------------------------
# independent numpy formulas (float64)
# ----------------------------------------------------------------------------------------

def crop_length(num_frames: int, scale: float, min_len: int = 64) -> int:
  """#cmd-crop-resize step 2: ``L = min(max(floor(F * scale), 64), F)``."""
  return min(max(int(np.floor(num_frames * scale)), min_len), num_frames)


def points(x: np.ndarray) -> np.ndarray:
  """``[3, ...]`` -> ``[n, 3]`` (one row per point)."""
  return np.asarray(x, np.float64).reshape(3, -1).T


class Draws:
  """Fixed results for ``random.random`` / ``random.uniform`` / ``np.random.*`` calls, in order."""

  def __init__(self, values):
    self.values, self.calls = list(values), []

  def __call__(self, *args, **kwargs):
    self.calls.append((args, kwargs))
    return self.values.pop(0)


_resize_jit = jax.jit(augment.resize_linear, static_argnums=3)


# ----------------------------------------------------------------------------------------
# #cmd-crop-resize: temporal_cropresize
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_frames", [1, 5, 40, 63, 64, 65, 150, 299, 300])
def test_cropresize_with_fixed_draws_is_the_spec_formula(num_frames, monkeypatch):
  x = random_clip(num_frames)
  for u in (0.0, 0.37, 0.999):
    scale = 0.1 + 0.9 * u
    length = crop_length(num_frames, scale)
    start = (num_frames - length) // 3
    rand, randint = Draws([np.array([u])]), Draws([start])
    monkeypatch.setattr(np.random, "rand", rand)
    monkeypatch.setattr(np.random, "randint", randint)
    got = ref.temporal_cropresize(x, num_frames)
    assert rand.calls == [((1,), {})]
    assert randint.calls == [((0, num_frames - length + 1), {})]  # start in [0, F - L]
    assert got.shape == (3, OUT, V, M) and got.dtype == np.float32
    np.testing.assert_allclose(got, np_resize(x, start, length), rtol=0, atol=1e-6)
    # the JAX resize of the same crop
    jax_out = np.asarray(_resize_jit(jnp.asarray(x), jnp.int32(start), jnp.int32(length), OUT))
    np.testing.assert_allclose(jax_out, got, rtol=0, atol=1e-6)


def test_cropresize_seeded_draws_follow_the_spec():
  """Seeded np.random: the crop read back from a frame ramp is the spec's draw."""
  ramp = frame_ramp()
  for seed, num_frames in enumerate((64, 80, 150, 200, 299, 300)):
    np.random.seed(seed)
    got = ref.temporal_cropresize(ramp, num_frames)
    np.random.seed(seed)  # the spec's draws, in the spec's order
    scale = np.random.rand(1)[0] * 0.9 + 0.1
    length = crop_length(num_frames, scale)
    start = np.random.randint(0, num_frames - length + 1)
    assert 64 <= length <= num_frames and 0 <= start <= num_frames - length
    np.testing.assert_allclose(got, np_resize(ramp, start, length), rtol=0, atol=1e-4)
    # slope L / 64 and first value start + L / 128 - 0.5 of the resized ramp
    np.testing.assert_allclose(got[0, -1, 0, 0] - got[0, 0, 0, 0], length * 63 / 64, atol=1e-3)
    np.testing.assert_allclose(got[0, 0, 0, 0], start + length / 128 - 0.5, atol=1e-3)


def test_cropresize_matches_jax_resize_for_the_seeded_crop():
  for seed, num_frames in enumerate((1, 30, 64, 97, 256, 300)):
    x = random_clip(100 + seed)
    np.random.seed(seed)
    got = ref.temporal_cropresize(x, num_frames)
    np.random.seed(seed)
    scale = np.random.rand(1)[0] * 0.9 + 0.1
    length = crop_length(num_frames, scale)
    start = np.random.randint(0, num_frames - length + 1)
    jax_out = np.asarray(_resize_jit(jnp.asarray(x), jnp.int32(start), jnp.int32(length), OUT))
    np.testing.assert_allclose(jax_out, got, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------
# #cmd-joint-corruption
# ----------------------------------------------------------------------------------------

JOINTS = np.array([0, 2, 3, 5, 7, 8, 11, 12, 13, 16, 18, 19, 21, 22, 24])
OTHERS = np.setdiff1d(np.arange(V), JOINTS)


def test_joint_corruption_zero_branch(monkeypatch):
  x = random_clip(1, OUT)
  choice = Draws([JOINTS])
  monkeypatch.setattr(random, "random", Draws([0.49]))
  monkeypatch.setattr(np.random, "choice", choice)
  got = ref.joint_corruption(x)
  assert choice.calls == [((V, K), {"replace": False})]
  assert got.shape == x.shape and got.dtype == np.float32
  assert np.all(got[:, :, JOINTS] == 0)
  np.testing.assert_array_equal(got[:, :, OTHERS], x[:, :, OTHERS])


def test_joint_corruption_transform_branch_is_row_vector_map(monkeypatch):
  x = random_clip(2, OUT)
  a = np.random.default_rng(3).uniform(-1, 1, (3, 3))
  uniform = Draws(a.reshape(-1).tolist())  # row-major, as the nested list comprehension draws
  monkeypatch.setattr(random, "random", Draws([0.5]))
  monkeypatch.setattr(random, "uniform", uniform)
  monkeypatch.setattr(np.random, "choice", Draws([JOINTS]))
  got = ref.joint_corruption(x)
  assert uniform.calls == [((-1, 1), {})] * 9
  assert got.dtype == np.float32
  np.testing.assert_allclose(got[:, :, JOINTS], np_row_map(x[:, :, JOINTS], a), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(got[:, :, OTHERS], x[:, :, OTHERS])
  # row vectors: p @ A, not A @ p
  assert np.abs(got[:, :, JOINTS] - np_col_map(x[:, :, JOINTS], a)).max() > 1e-2


def test_joint_corruption_seeded_touches_15_joints_both_branches():
  x = random_clip(4, OUT)
  seen = set()
  for seed in range(24):
    random.seed(seed)
    np.random.seed(seed)
    got = ref.joint_corruption(x)
    changed = np.flatnonzero(np.any(got != x, axis=(0, 1, 3)))
    assert len(changed) == K
    if np.all(got[:, :, changed] == 0):
      seen.add("zero")
      continue
    seen.add("transform")
    a, *_ = np.linalg.lstsq(points(x[:, :, changed]), points(got[:, :, changed]), rcond=None)
    np.testing.assert_allclose(points(x[:, :, changed]) @ a, points(got[:, :, changed]), atol=1e-5)
    assert np.all(np.abs(a) <= 1 + 1e-5)
  assert seen == {"zero", "transform"}


# ----------------------------------------------------------------------------------------
# #cmd-shear
# ----------------------------------------------------------------------------------------

def test_shear_with_fixed_draws_is_column_vector_map(monkeypatch):
  x = random_clip(5, OUT)
  x[:, 10:20] = 0
  off = [0.3, -0.7, 0.9, -0.2, 0.55, -0.95]  # S[0,1], S[0,2], S[1,0], S[1,2], S[2,0], S[2,1]
  uniform = Draws(off)
  monkeypatch.setattr(random, "uniform", uniform)
  got = ref.pose_augmentation(x)
  assert uniform.calls == [((-1, 1), {})] * 6
  s = np.array([[1, off[0], off[1]], [off[2], 1, off[3]], [off[4], off[5], 1]])
  assert got.shape == x.shape and got.dtype == np.float32
  np.testing.assert_allclose(got, np_col_map(x, s), rtol=1e-6, atol=1e-6)
  assert np.all(got[:, 10:20] == 0)  # zeros stay zero
  assert np.abs(got - np_row_map(x, s)).max() > 1e-2  # S @ p, not p @ S


def test_shear_seeded_matrix_has_unit_diagonal_and_bounded_off_diagonal():
  x = random_clip(6, OUT)
  for seed in range(5):
    random.seed(seed)
    got = ref.pose_augmentation(x)
    st, *_ = np.linalg.lstsq(points(x), points(got), rcond=None)  # points @ S^T
    s = st.T
    np.testing.assert_allclose(np.diag(s), 1.0, atol=1e-5)
    assert np.all(np.abs(s[~np.eye(3, dtype=bool)]) <= 1 + 1e-5)


# ----------------------------------------------------------------------------------------
# #cmd-pretraining-views: the per-view choice and the two views
# ----------------------------------------------------------------------------------------

def test_pretrain_view_crops_then_chooses_corruption_or_shear(monkeypatch):
  calls = []
  monkeypatch.setattr(ref, "temporal_cropresize", lambda x, f: calls.append(("crop", f)) or np.full((3, OUT, V, M), 7.0))
  monkeypatch.setattr(ref, "joint_corruption", lambda v: calls.append("corrupt") or v)
  monkeypatch.setattr(ref, "pose_augmentation", lambda v: calls.append("shear") or v)
  x = np.zeros((3, T, V, M), np.float32)
  monkeypatch.setattr(random, "random", Draws([0.2, 0.8]))
  ref.reference_pretrain_view(x, 350)  # F = min(num_frames, 300)
  ref.reference_pretrain_view(x, 120)
  assert calls == [("crop", 300), "corrupt", ("crop", 120), "shear"]


@pytest.mark.parametrize("num_frames", [1, 40, 64, 200, 300, 350])
def test_pretrain_views_shapes_and_independence(num_frames):
  x = random_clip(7)
  x[:, min(num_frames, T):] = 0
  random.seed(num_frames)
  np.random.seed(num_frames)
  v1, v2 = ref.reference_pretrain_views(x, num_frames)
  for v in (v1, v2):
    assert v.shape == (3, OUT, V, M) and v.dtype == np.float32 and np.all(np.isfinite(v))
  assert np.abs(v1 - v2).max() > 0  # two independent draws
