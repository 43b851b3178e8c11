"""Tests for cmd_jax.augment against numpy implementations of docs/references.md#cmd-augmentations.

Every expected value is computed here from the spec formulas (numpy, float64), by
hand-made inputs whose outputs can be read back (a frame-index ramp), or, where torch is
installed, by the reference's own ``F.interpolate`` call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmd_jax import augment
from cmd_jax.methods.cmd import views as cmd_views

T = 300

# Tolerances (float32 results against float64 formulas, u = 2^-24 = 6e-8; the same in any
# summation order or with fused multiply-adds, so on any x86 CPU): a resized value is
# (1 - w) a + w b, <= 3 roundings of its size, i.e. <= 2e-7 for the clips in [-1, 1] (atol
# 1e-6) and <= 5e-5 for frame-index ramps up to 300 (atol 1e-4; measured exact); a point map
# (shear, joint corruption) is a 3-term sum with |x|, |entries| <= 1, so <= 3 u x 3 = 5.4e-7
# (atol 1e-6). Distribution checks use seeded jax.random draws (counter-based: the same bits
# on every CPU), with bounds of >= 4 standard errors of their sample sizes (the crop-length
# CDF: a Kolmogorov-Smirnov distance of 0.04 at 4000 draws, tail probability < 1e-5).

# ----------------------------------------------------------------------------------------
# independent numpy implementations of the spec formulas
# ----------------------------------------------------------------------------------------

def np_resize(x: np.ndarray, start: int, length: int, out_len: int = 64) -> np.ndarray:
  """#cmd-crop-resize step 5 in float64: half-pixel linear interpolation, edge-clamped, no antialias."""
  clip = np.asarray(x, np.float64)[:, start:start + length]
  i = np.arange(out_len, dtype=np.float64)
  src = np.maximum((i + 0.5) * length / out_len - 0.5, 0.0)
  i0 = np.floor(src).astype(np.int64)
  i1 = np.minimum(i0 + 1, length - 1)
  lam = (src - i0).reshape((1, out_len) + (1,) * (clip.ndim - 2))
  return (1.0 - lam) * clip[:, i0] + lam * clip[:, i1]


def np_row_map(p: np.ndarray, a: np.ndarray) -> np.ndarray:
  """p' = p @ A for points stored as x[c, ...]."""
  moved = np.moveaxis(np.asarray(p, np.float64), 0, -1) @ np.asarray(a, np.float64)
  return np.moveaxis(moved, -1, 0)


def np_col_map(p: np.ndarray, s: np.ndarray) -> np.ndarray:
  """p' = S @ p for points stored as x[c, ...]."""
  return np.tensordot(np.asarray(s, np.float64), np.asarray(p, np.float64), axes=(1, 0))


def random_clip(seed: int, t: int = T, v: int = 25, m: int = 2) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (3, t, v, m)).astype(np.float32)


def frame_ramp(t: int = T, v: int = 25, m: int = 2) -> np.ndarray:
  """x[c, t, v, m] = t: a resized crop of it reveals the crop's start and length."""
  return np.broadcast_to(np.arange(t, dtype=np.float32)[None, :, None, None], (3, t, v, m)).copy()


def crop_from_ramp_output(out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(start, L) of resized ramps [..., out_len] when L >= out_len / 2 (no clamping at 0).

  Then out_i = start + (i + 0.5) L / n - 0.5: slope L / n, intercept start + L / (2n) - 0.5.
  """
  n = out.shape[-1]
  length = (out[..., -1] - out[..., 0]) * n / (n - 1)
  start = out[..., 0] - length / (2 * n) + 0.5
  return np.rint(start).astype(np.int64), np.rint(length).astype(np.int64)


# ----------------------------------------------------------------------------------------
# #cmd-crop-resize step 5: resize
# ----------------------------------------------------------------------------------------

_resize_jit = jax.jit(augment.resize_linear, static_argnums=3)


@pytest.mark.parametrize("length", [1, 5, 63, 64, 100, 173, 300])
def test_resize_matches_numpy_formula(length):
  x = random_clip(length)
  rng = np.random.default_rng(1000 + length)
  for start in {0, T - length, *rng.integers(0, T - length + 1, size=3).tolist()}:
    got = np.asarray(_resize_jit(jnp.asarray(x), jnp.int32(start), jnp.int32(length), 64))
    assert got.shape == (3, 64, 25, 2)
    np.testing.assert_allclose(got, np_resize(x, start, length), rtol=0, atol=1e-6)


def test_resize_length_64_is_the_crop_itself():
  x = random_clip(7)
  for start in (0, 17, 236):
    got = np.asarray(_resize_jit(jnp.asarray(x), jnp.int32(start), jnp.int32(64), 64))
    np.testing.assert_array_equal(got, x[:, start:start + 64])


def test_resize_other_output_lengths():
  x = random_clip(8)
  for out_len in (1, 32, 100):
    got = np.asarray(_resize_jit(jnp.asarray(x), 11, 150, out_len))
    np.testing.assert_allclose(got, np_resize(x, 11, 150, out_len), rtol=0, atol=1e-6)


def test_resize_is_not_antialiased():
  x = random_clip(9)
  start, length = 40, 173
  crop = jnp.asarray(x[:, start:start + length])
  got = np.asarray(_resize_jit(jnp.asarray(x), start, length, 64))
  plain = np.asarray(jax.image.resize(crop, (3, 64, 25, 2), "linear", antialias=False))
  smooth = np.asarray(jax.image.resize(crop, (3, 64, 25, 2), "linear", antialias=True))
  np.testing.assert_allclose(got, plain, rtol=0, atol=1e-6)
  assert np.max(np.abs(got - smooth)) > 1e-2


def test_resize_matches_torch_interpolate():
  """The reference's call: F.interpolate on a (1, C*V*M, L, 1) tensor, bilinear, align_corners=False."""
  torch = pytest.importorskip("torch")
  x = random_clip(10)
  for start, length in ((0, 1), (3, 5), (100, 63), (20, 100), (127, 173), (0, 300)):
    clip = torch.tensor(x[:, start:start + length]).permute(0, 2, 3, 1).reshape(1, -1, length, 1)
    ref = torch.nn.functional.interpolate(clip, size=(64, 1), mode="bilinear", align_corners=False)
    ref = ref[0, :, :, 0].reshape(3, 25, 2, 64).permute(0, 3, 1, 2).numpy()
    got = np.asarray(_resize_jit(jnp.asarray(x), start, length, 64))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------
# #cmd-crop-resize / #cmd-downstream-crops: random crop parameters
# ----------------------------------------------------------------------------------------

_crop_params_many = jax.jit(
    jax.vmap(augment.crop_params, in_axes=(0, None, None, None, None)), static_argnums=(2, 3, 4))


@pytest.mark.parametrize("ratio_range", [(0.1, 1.0), (0.5, 1.0)])
@pytest.mark.parametrize("num_frames", [0, 1, 2, 40, 63, 64, 65, 80, 150, 299, 300, 301, 1000])
def test_crop_params_bounds(num_frames, ratio_range):
  keys = jax.random.split(jax.random.key(num_frames), 2000)
  start, length = map(np.asarray, _crop_params_many(keys, num_frames, T, ratio_range, 64))
  f = min(max(num_frames, 1), T)
  low = min(max(int(np.floor(f * ratio_range[0])), 64), f)
  high = min(max(int(np.floor(f * ratio_range[1])), 64), f)
  assert length.min() >= low and length.max() <= high
  assert start.min() >= 0 and np.all(start <= f - length)
  if f <= 64:
    assert np.all(length == f) and np.all(start == 0)
  else:
    # both ends of the inclusive start range [0, F - L] occur
    assert np.any(start == 0) and np.any(start == f - length)


_crop_resize_many = jax.jit(
    jax.vmap(augment.temporal_crop_resize, in_axes=(0, None, None, None)), static_argnums=3)


@pytest.mark.parametrize("num_frames,ratio_range", [(300, (0.1, 1.0)), (150, (0.1, 1.0)),
                                                     (300, (0.5, 1.0)), (90, (0.5, 1.0))])
def test_crop_distribution_matches_spec(num_frames, ratio_range):
  """Crop lengths and starts read back from resized ramps, against a numpy simulation of #cmd-crop-resize."""
  keys = jax.random.split(jax.random.key(1), 4000)
  x = jnp.asarray(frame_ramp(v=2, m=1))
  out = _crop_resize_many(keys, x, num_frames, ratio_range)
  out = np.asarray(out)
  assert out.max() <= num_frames - 1 + 1e-3  # never reads past the valid frames
  start, length = crop_from_ramp_output(out[:, 0, :, 0, 0])
  # each output equals the numpy resize of its read-back crop
  ramp = frame_ramp(v=2, m=1)
  for i in range(5):
    np.testing.assert_allclose(out[i], np_resize(ramp, start[i], length[i]), rtol=0, atol=1e-4)

  rng = np.random.default_rng(0)
  scale = rng.random(200_000) * (ratio_range[1] - ratio_range[0]) + ratio_range[0]
  sim = np.minimum(np.maximum(np.floor(num_frames * scale).astype(np.int64), 64), num_frames)
  grid = np.arange(64, num_frames + 1)
  cdf_got = np.searchsorted(np.sort(length), grid, side="right") / length.size
  cdf_sim = np.searchsorted(np.sort(sim), grid, side="right") / sim.size
  assert np.max(np.abs(cdf_got - cdf_sim)) < 0.04
  # start uniform on [0, F - L]: its relative position has mean 1/2
  room = num_frames - length
  assert np.all((start >= 0) & (start <= room))
  rel = (start[room > 0] + 0.5) / (room[room > 0] + 1)
  assert abs(rel.mean() - 0.5) < 0.03


# ----------------------------------------------------------------------------------------
# #cmd-downstream-crops, test branch: centre crop
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [0.95, 0.9, 0.8, 0.6])
def test_center_crop_start_equals_python_float64_truncation(ratio):
  frames = np.arange(1, T + 1)
  start, length = jax.vmap(lambda f: augment.center_crop_params(f, T, ratio))(jnp.asarray(frames))
  expected = np.array([int((1 - ratio) * int(f) / 2) for f in frames])
  np.testing.assert_array_equal(np.asarray(start), expected)
  np.testing.assert_array_equal(np.asarray(length), frames - 2 * expected)


def test_center_crop_ratio_09_edge_case():
  # (1 - 0.9) = 0.09999999999999998 in float64: F = 20 gives 0.999... -> 0 (float32 would give 1)
  start, length = augment.center_crop_params(20, T, 0.9)
  assert int(start) == 0 and int(length) == 20


@pytest.mark.parametrize("num_frames", [1, 2, 39, 40, 41, 64, 103, 299, 300, 450])
def test_center_crop_resize_matches_numpy(num_frames):
  x = random_clip(num_frames)
  f = min(num_frames, T)
  start = int((1 - 0.95) * f / 2)
  got = np.asarray(jax.jit(augment.center_crop_resize)(jnp.asarray(x), num_frames))
  np.testing.assert_allclose(got, np_resize(x, start, f - 2 * start), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------
# #cmd-joint-corruption, #cmd-shear, #cmd-pretraining-views (spatial choice)
# ----------------------------------------------------------------------------------------

def test_joint_corruption_zero_branch():
  x = random_clip(20, t=64)
  joints = np.array([0, 3, 4, 7, 8, 9, 11, 12, 13, 15, 18, 20, 21, 22, 24])
  a = np.random.default_rng(0).uniform(-1, 1, (3, 3)).astype(np.float32)
  got = np.asarray(augment.joint_corruption_with(jnp.asarray(x), jnp.asarray(joints), jnp.asarray(a), True))
  expected = x.copy()
  expected[:, :, joints, :] = 0
  np.testing.assert_array_equal(got, expected)


def test_joint_corruption_linear_branch_is_row_vector_map():
  x = random_clip(21, t=64)
  joints = np.array([24, 1, 2, 5, 6, 10, 14, 16, 17, 19, 23, 0, 3, 4, 7])
  a = np.random.default_rng(1).uniform(-1, 1, (3, 3)).astype(np.float32)
  got = np.asarray(augment.joint_corruption_with(jnp.asarray(x), jnp.asarray(joints), jnp.asarray(a), False))
  expected = x.astype(np.float64)
  expected[:, :, joints, :] = np_row_map(x[:, :, joints, :], a)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
  others = np.setdiff1d(np.arange(25), joints)
  np.testing.assert_array_equal(got[:, :, others], x[:, :, others])
  # p @ A, not A @ p (A is not symmetric)
  assert np.max(np.abs(got[:, :, joints] - np_col_map(x[:, :, joints], a))) > 1e-2


def test_joint_corruption_params():
  keys = jax.random.split(jax.random.key(2), 2000)
  joints, matrices, zero = map(np.asarray, jax.vmap(lambda k: augment.joint_corruption_params(k, 25, 15))(keys))
  assert joints.shape == (2000, 15)
  assert np.all(joints >= 0) and np.all(joints < 25)
  assert all(len(set(row.tolist())) == 15 for row in joints)
  assert np.all(np.abs(matrices) <= 1) and matrices.min() < -0.99 and matrices.max() > 0.99
  assert 0.45 < zero.mean() < 0.55
  # every joint is picked with probability 15 / 25
  counts = np.bincount(joints.ravel(), minlength=25) / 2000
  assert np.all(np.abs(counts - 0.6) < 0.05)


def classify(x: np.ndarray, out: np.ndarray) -> np.ndarray:
  """Per sample: 0 shear (all joints moved), 1 zero (15 joints zeroed), 2 linear (15 mapped)."""
  moved = np.any(out != x[None], axis=(1, 2, 4))  # [N, V]
  zeroed = np.all(out == 0, axis=(1, 2, 4))
  n_moved = moved.sum(-1)
  kind = np.full(out.shape[0], -1)
  kind[n_moved == x.shape[2]] = 0
  kind[(n_moved == 15) & np.all(zeroed == moved, axis=-1)] = 1
  kind[(n_moved == 15) & ~np.any(zeroed, axis=-1)] = 2
  return kind


def test_joint_corruption_branch_frequency():
  x = random_clip(22, t=4)
  keys = jax.random.split(jax.random.key(3), 2000)
  out = np.asarray(jax.jit(jax.vmap(lambda k: augment.joint_corruption(k, jnp.asarray(x))))(keys))
  kind = classify(x, out)
  assert np.all((kind == 1) | (kind == 2))
  assert 0.45 < np.mean(kind == 1) < 0.55


def test_shear_with_fixed_matrix():
  x = random_clip(23, t=64)
  x[:, 10:20] = 0  # padded frames
  x[:, :, 5] = 0  # an absent joint
  s = np.array([[1.0, 0.3, -0.7], [0.9, 1.0, 0.2], [-0.4, -0.95, 1.0]], np.float32)
  got = np.asarray(augment.shear_with(jnp.asarray(x), jnp.asarray(s)))
  np.testing.assert_allclose(got, np_col_map(x, s), rtol=0, atol=1e-6)
  assert np.all(got[:, 10:20] == 0) and np.all(got[:, :, 5] == 0)
  assert np.max(np.abs(got - np_row_map(x, s))) > 1e-2  # S @ p, not p @ S


def test_shear_params():
  s = np.asarray(jax.vmap(augment.shear_params)(jax.random.split(jax.random.key(4), 1000)))
  np.testing.assert_array_equal(s[:, [0, 1, 2], [0, 1, 2]], 1.0)
  off = s[:, ~np.eye(3, dtype=bool)]
  assert np.all(np.abs(off) <= 1) and off.min() < -0.99 and off.max() > 0.99
  assert abs(off.mean()) < 0.03


def test_spatial_augment_branch_frequencies():
  x = random_clip(24, t=4)
  keys = jax.random.split(jax.random.key(5), 2000)
  out = np.asarray(jax.jit(jax.vmap(lambda k: cmd_views.spatial_augment(k, jnp.asarray(x))))(keys))
  kind = classify(x, out)
  assert np.all(kind >= 0)
  assert 0.45 < np.mean(kind == 0) < 0.55
  assert 0.20 < np.mean(kind == 1) < 0.30
  assert 0.20 < np.mean(kind == 2) < 0.30


# ----------------------------------------------------------------------------------------
# #cmd-pretraining-views / #cmd-downstream-views: batch views
# ----------------------------------------------------------------------------------------

_pretrain_views_jit = jax.jit(cmd_views.pretrain_views)


@pytest.mark.parametrize("v,m", [(25, 2), (20, 1)])
def test_pretrain_views(v, m):
  rng = np.random.default_rng(30 + v)
  batch = jnp.asarray(rng.uniform(-1, 1, (6, 3, T, v, m)).astype(np.float32))
  num_frames = jnp.asarray(np.array([300, 1, 50, 64, 120, 700], np.int32))
  fn = _pretrain_views_jit
  q, k = fn(jax.random.key(0), batch, num_frames)
  assert q.shape == k.shape == (6, 3, 64, v, m) and q.dtype == jnp.float32
  q, k = np.asarray(q), np.asarray(k)
  assert np.all(np.isfinite(q)) and np.all(np.isfinite(k))
  assert all(np.any(q[i] != k[i]) for i in range(6))  # the two views of each sample differ
  assert all(np.any(q[i] != q[i + 1]) for i in range(5))  # samples get different draws
  q2, k2 = map(np.asarray, fn(jax.random.key(0), batch, num_frames))
  np.testing.assert_array_equal(q, q2)
  np.testing.assert_array_equal(k, k2)
  q3, _ = map(np.asarray, fn(jax.random.key(1), batch, num_frames))
  assert np.any(q3 != q)


def test_pretrain_views_crop_then_spatial():
  """A view is a spatial augmentation of a crop-resize of the valid frames (ramp read-back)."""
  batch = jnp.asarray(np.broadcast_to(frame_ramp(v=25, m=2)[None], (6, 3, T, 25, 2)))
  num_frames = jnp.asarray(np.full(6, 200, np.int32))  # same signature as above: no recompile
  views = np.concatenate(_pretrain_views_jit(jax.random.key(9), batch, num_frames))  # [12, ...]
  # the zero branch leaves 10 joints untouched, whose values are the crop-resized ramp
  untouched = np.all(views[:, 0] == views[:, 1], axis=(1, 3)) & np.all(views[:, 0] == views[:, 2], axis=(1, 3))
  n_untouched = untouched.sum(-1)
  assert np.any(n_untouched == 10), "key 9 happens to give no zero-branch view; pick another key"
  for i in np.flatnonzero(n_untouched == 10):
    joint = np.flatnonzero(untouched[i])[0]
    start, length = crop_from_ramp_output(views[i, 0, :, joint, 0])
    assert 64 <= length <= 200 and 0 <= start <= 200 - length
    np.testing.assert_allclose(views[i, 0, :, joint, 0], np_resize(frame_ramp(), start, length)[0, :, 0, 0],
                               rtol=0, atol=1e-4)


_downstream_view_jit = jax.jit(augment.downstream_view, static_argnums=3)


def test_downstream_views():
  rng = np.random.default_rng(40)
  batch_np = rng.uniform(-1, 1, (5, 3, T, 20, 1)).astype(np.float32)
  frames = np.array([1, 33, 64, 240, 300])
  batch, num_frames = jnp.asarray(batch_np), jnp.asarray(frames)
  test_view = np.asarray(jax.jit(augment.downstream_test_view)(batch, num_frames))
  for i, f in enumerate(frames):
    start = int((1 - 0.95) * int(f) / 2)
    np.testing.assert_allclose(test_view[i], np_resize(batch_np[i], start, f - 2 * start), rtol=0, atol=1e-6)
  # separately compiled programs may differ by an ulp (fused multiply-adds)
  np.testing.assert_allclose(
      np.asarray(_downstream_view_jit(jax.random.key(0), batch, num_frames, (0.95,))), test_view,
      rtol=0, atol=1e-6)

  key = jax.random.key(3)
  train_view = np.asarray(jax.jit(augment.downstream_train_view)(key, batch, num_frames))
  assert train_view.shape == (5, 3, 64, 20, 1)
  np.testing.assert_allclose(
      np.asarray(_downstream_view_jit(key, batch, num_frames, (0.5, 1.0))), train_view, rtol=0, atol=1e-6)
  ramps = jnp.asarray(np.broadcast_to(frame_ramp(v=20, m=1)[None], (256, 3, T, 20, 1)))
  out = np.asarray(jax.jit(augment.downstream_train_view)(key, ramps, jnp.asarray(np.full(256, 240, np.int32))))
  start, length = crop_from_ramp_output(out[:, 0, :, 0, 0])
  assert length.min() >= 120 and length.max() <= 240 and np.all(start + length <= 240)


def test_amplitudes_scale_the_random_matrices():
  """shear_amplitude / corruption_amplitude bound the drawn entries (1.0 is the reference)."""
  keys = jax.random.split(jax.random.PRNGKey(3), 400)
  shears = np.asarray(jax.vmap(lambda k: augment.shear_params(k, 0.3))(keys))
  off = shears[:, ~np.eye(3, dtype=bool)]
  assert np.all(np.abs(off) <= 0.3) and np.abs(off).max() > 0.25
  np.testing.assert_array_equal(shears[:, np.eye(3, dtype=bool)], 1.0)
  mats = np.asarray(jax.vmap(lambda k: augment.joint_corruption_params(k, 25, 5, 0.3)[1])(keys))
  assert np.all(np.abs(mats) <= 0.3) and np.abs(mats).max() > 0.25
  joints = np.asarray(jax.vmap(lambda k: augment.joint_corruption_params(k, 25, 5, 0.3)[0])(keys))
  assert joints.shape == (400, 5) and all(len(set(row)) == 5 for row in joints.tolist())
  # The default draws are the reference's U(-1, 1).
  assert np.abs(np.asarray(jax.vmap(augment.shear_params)(keys))[:, ~np.eye(3, dtype=bool)]).max() > 0.9
