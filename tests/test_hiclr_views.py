"""Tests for cmd_jax.methods.common.views and cmd_jax.methods.hiclr.views against the per-sample numpy feeder (tests/hiclr_feeder_reference.py).

Formula by formula with fixed parameters (the same numbers fed to both implementations),
then the random draws' distributions (bounds of 5 standard errors of the sample size), the
whole views against the numpy feeder in distribution, the joint mask and its gradient,
SkeleAdaIN, and jit / shapes for the NTU and MSR layouts.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmd_jax.layouts import MSR20, NTU25, SkeletonLayout
from cmd_jax.methods.common import views
from cmd_jax.methods.hiclr import views as hiclr_views
from tests import hiclr_feeder_reference as ref

T, V, M = 50, 25, 2
# Tolerances (float32 views against the float64 per-sample feeder, u = 2^-24 = 6e-8): each
# value is a short chain of 3-term point maps (shear, rotation) and a 15-tap blur of clips
# ~N(0, 1), within tens of u of the terms' size in any summation order; rtol = atol = 1e-5
# (1e-4 for the whole strong chain and SkeleAdaIN's statistics) is >= 10x the measured error
# and far below what a wrong coefficient, order or axis changes.


def _clips(batch: int, seed: int = 0, t: int = T, v: int = V, m: int = M) -> np.ndarray:
  """Random clips [B, 3, T, V, M] with an empty second person, as the data has."""
  x = np.random.default_rng(seed).normal(size=(batch, 3, t, v, m)).astype(np.float32)
  if m > 1:
    x[..., 1] = 0.0
    x[0, ..., 1] = 0.5  # one sample with a second person
  return x


def _binomial_ok(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
  return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def _params(u: np.ndarray, noise=None, t: int = T) -> views.ViewParams:
  p = views.params_from_uniforms(jnp.asarray(u, jnp.float32), t)
  return p._replace(noise=None if noise is None else jnp.asarray(noise, jnp.float32))


# ----------------------------------------------------------------------------------------
# The layout's mirror
# ----------------------------------------------------------------------------------------

def test_mirror_ntu25_is_the_reference_order():
  assert NTU25.mirror == ref.NTU_MIRROR


def test_mirror_msr20_swaps_every_left_right_pair():
  mirror = MSR20.mirror
  names = MSR20.joint_names
  assert sorted(mirror) == list(range(20))
  swapped = 0
  for j, name in enumerate(names):
    assert mirror[mirror[j]] == j
    if name.startswith("left_"):
      assert names[mirror[j]] == "right_" + name[5:]
      swapped += 1
    elif name.startswith("right_"):
      assert names[mirror[j]] == "left_" + name[6:]
      swapped += 1
    else:
      assert mirror[j] == j
  assert swapped == 16  # shoulder, hip, elbow, wrist, hand, knee, ankle, foot


# ----------------------------------------------------------------------------------------
# Formulas with fixed parameters
# ----------------------------------------------------------------------------------------

def test_temporal_crop_is_a_window_of_the_symmetric_padding():
  x = _clips(5)
  starts = np.array([0, 1, 8, 15, 16])
  out = np.asarray(views.temporal_crop_with(jnp.asarray(x), jnp.asarray(starts)))
  for b, s in enumerate(starts):
    padded = np.pad(x[b], ((0, 0), (8, 8), (0, 0), (0, 0)), mode="symmetric")
    np.testing.assert_array_equal(out[b], padded[:, s:s + T])
    np.testing.assert_array_equal(out[b], ref.temporal_crop_with(x[b], int(s)))
  np.testing.assert_array_equal(out[2], x[2])  # start = pad: the clip itself


def test_shear_matrix_places_the_coefficients_as_the_reference():
  c = np.array([[0.1, -0.2, 0.3, -0.35, 0.25, -0.15]])
  s = np.asarray(views.shear_matrix(jnp.asarray(c)))[0]
  np.testing.assert_allclose(s, ref.shear_matrix(c[0]), atol=1e-7)
  p = np.array([1.0, 2.0, 3.0], np.float32).reshape(1, 3, 1, 1, 1)
  out = np.asarray(views.shear_with(jnp.asarray(p), jnp.asarray(c))).ravel()
  x, y, z = 1.0, 2.0, 3.0
  a, b, cc, d, e, f = c[0]
  expected = [x + a * y + d * z, b * x + y + e * z, cc * x + f * y + z]
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_shear_matches_the_reference_per_sample():
  x = _clips(4)
  c = np.random.default_rng(1).uniform(-0.5, 0.5, (4, 6))
  out = np.asarray(views.shear_with(jnp.asarray(x), jnp.asarray(c)))
  for b in range(4):
    np.testing.assert_allclose(out[b], ref.shear_with(x[b], c[b]), rtol=1e-5, atol=1e-5)


def test_spatial_flip_permutes_joints_without_negation():
  x = _clips(3)
  flip = np.array([True, False, True])
  out = np.asarray(views.spatial_flip_with(jnp.asarray(x), jnp.asarray(flip), NTU25.mirror))
  for b in range(3):
    np.testing.assert_array_equal(out[b], ref.spatial_flip_with(x[b], bool(flip[b])))
  np.testing.assert_array_equal(out[0][:, :, 4], x[0][:, :, 8])   # left shoulder <- right shoulder
  np.testing.assert_array_equal(out[0][:, :, 21], x[0][:, :, 23])  # left hand tip <- right hand tip
  np.testing.assert_array_equal(out[0][:, :, 0], x[0][:, :, 0])


def test_rotation_matrix_sign_convention_and_order():
  angles = np.array([[0.3, -0.2, 0.5], [0.0, 0.0, 0.4], [0.1, 0.25, 0.0]])
  mats = np.asarray(views.rotation_matrix(jnp.asarray(angles)))
  for b in range(3):
    rx, ry, rz = ref.rotation_matrices(angles[b])
    np.testing.assert_allclose(mats[b], rz @ ry @ rx, atol=1e-6)
  # Rotation about z only: (1, 0, 0) -> (cos, -sin, 0) (x' = R x with R_z = [[c, s, 0], [-s, c, 0], ...]).
  np.testing.assert_allclose(mats[1] @ [1.0, 0.0, 0.0], [math.cos(0.4), -math.sin(0.4), 0.0], atol=1e-6)
  # The order matters (x first, z last): R_x R_y R_z differs.
  rx, ry, rz = ref.rotation_matrices(angles[0])
  assert np.abs(rx @ ry @ rz - rz @ ry @ rx).max() > 1e-2


def test_rotate_matches_the_reference_per_sample():
  x = _clips(3)
  angles = np.radians(np.array([[25.0, 0.5, 0.9], [0.2, 29.0, 0.7], [0.3, 0.1, 17.0]]))
  out = np.asarray(views.rotate_with(jnp.asarray(x), jnp.asarray(angles)))
  for b in range(3):
    np.testing.assert_allclose(out[b], ref.rotate_with(x[b], angles[b]), rtol=1e-5, atol=1e-5)


def test_gauss_noise_adds_where_on():
  x = _clips(2)
  noise = 0.01 * np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
  out = np.asarray(views.gauss_noise_with(jnp.asarray(x), jnp.asarray([True, False]), jnp.asarray(noise)))
  np.testing.assert_allclose(out[0], x[0] + noise[0], rtol=1e-6)
  np.testing.assert_array_equal(out[1], x[1])
  assert np.all(out[0][..., 1] != 0)  # the empty second person gets noise too


def test_blur_kernel_is_unnormalised():
  k = np.asarray(views.blur_kernel(jnp.asarray([0.1, 1.0, 2.0])))
  for row, sigma in zip(k, [0.1, 1.0, 2.0]):
    # exp(-t^2 / (2 sigma^2)) in float32: the exponent x carries ~3 roundings, so the value
    # ~(3 |x| + 2) u relative; |x| <= 50 where it does not underflow (sigma 0.1, t 1; t 2 gives
    # exp(-200), 0 in float32: atol). 8 u x 50 (measured 1.3 u x 50).
    np.testing.assert_allclose(row, ref.blur_kernel(sigma), rtol=8 * 50 * 2.0 ** -24, atol=1e-30)
    assert row[7] == 1.0
  assert k[2].sum() > 4.9  # sqrt(2 pi) * 2 ~= 5.01: not normalised


def test_blur_matches_a_direct_convolution():
  x = _clips(3)
  sigma = np.array([0.1, 0.7, 2.0])
  on = np.array([True, True, False])
  out = np.asarray(views.gauss_blur_with(jnp.asarray(x), jnp.asarray(on), jnp.asarray(sigma)))
  for b in range(2):
    kernel = np.exp(-np.arange(-7, 8) ** 2 / (2 * sigma[b] ** 2))
    series = x[b].astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, T)
    expected = np.stack([np.convolve(s, kernel, mode="same") for s in series])
    expected = expected.reshape(3, V, M, T).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out[b], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[b], ref.gauss_blur_with(x[b].astype(np.float64), True, sigma[b]),
                               rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out[2], x[2])  # blur off: unchanged


def test_axis_mask_and_time_flip():
  x = _clips(3)
  out = np.asarray(views.axis_mask_with(jnp.asarray(x), jnp.asarray([True, True, False]), jnp.asarray([0, 2, 1])))
  for b, (on, axis) in enumerate([(True, 0), (True, 2), (False, 1)]):
    np.testing.assert_array_equal(out[b], ref.axis_mask_with(x[b], on, axis))
  assert np.all(out[1][2] == 0) and np.all(out[1][:2] == x[1][:2])
  flipped = np.asarray(views.time_flip_with(jnp.asarray(x), jnp.asarray([True, False, True])))
  np.testing.assert_array_equal(flipped[0], x[0][:, ::-1])
  np.testing.assert_array_equal(flipped[1], x[1])


@pytest.mark.parametrize("aug_method", ["12345", "123456"])
def test_views_equal_the_reference_chain_with_the_same_numbers(aug_method):
  batch = 8
  x = _clips(batch)
  u = np.random.default_rng(3).random((batch, views.NUM_UNIFORMS)).astype(np.float32)
  u[:, views._U_NOISE] = np.linspace(0.05, 0.95, batch)   # noise on in half the samples,
  u[:, views._U_BLUR] = np.roll(u[:, views._U_NOISE], 3)   # blur, axis mask, flip likewise
  u[:, views._U_AXIS_MASK] = np.roll(u[:, views._U_NOISE], 5)
  u[:, views._U_FLIP] = np.roll(u[:, views._U_NOISE], 1)
  noise = 0.01 * np.random.default_rng(4).normal(size=x.shape).astype(np.float32)
  p = _params(u, noise)
  weak = np.asarray(views.view_with(jnp.asarray(x), p, mirror=NTU25.mirror, strong=False, aug_method=aug_method))
  strong = np.asarray(views.view_with(jnp.asarray(x), p, mirror=NTU25.mirror, strong=True, aug_method=aug_method))
  host = jax.tree.map(np.asarray, p)
  for b in range(batch):
    y = ref.temporal_crop_with(x[b], int(host.crop_start[b]))
    y = ref.shear_with(y, host.shear[b])
    np.testing.assert_allclose(weak[b], y, rtol=1e-5, atol=1e-5)
    y = ref.spatial_flip_with(y, bool(host.flip[b]))
    y = ref.rotate_with(y, host.angles[b])
    y = ref.gauss_noise_with(y, bool(host.noise_on[b]), noise[b])
    y = ref.gauss_blur_with(y, bool(host.blur_on[b]), float(host.blur_sigma[b]))
    y = ref.axis_mask_with(y, bool(host.axis_mask_on[b]), int(host.masked_axis[b]))
    if "6" in aug_method:
      y = ref.time_flip_with(y, bool(host.time_flip[b]))
    np.testing.assert_allclose(strong[b], y, rtol=1e-4, atol=1e-4)
  assert weak.dtype == strong.dtype == np.float32


# ----------------------------------------------------------------------------------------
# Distributions of the random draws
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def many_params():
  n = 20000
  params = jax.jit(lambda k: hiclr_views.hiclr_view_params(k, (n, 3, T, 1, 1), aug_method="12456"))(jax.random.key(7))
  return n, [jax.tree.map(np.asarray, p) for p in params]


def test_crop_start_is_uniform_on_0_to_16(many_params):
  n, params = many_params
  for p in params:
    counts = np.bincount(p.crop_start, minlength=17)
    assert len(counts) == 17 and p.crop_start.min() == 0 and p.crop_start.max() == 16
    assert all(_binomial_ok(c, n, 1 / 17) for c in counts), counts


def test_flag_frequencies_are_one_half(many_params):
  n, params = many_params
  for p in params[2:]:
    for flags in (p.flip, p.noise_on, p.blur_on, p.axis_mask_on, p.time_flip):
      assert _binomial_ok(int(flags.sum()), n, 0.5), flags.mean()


def test_axes_are_uniform_among_three(many_params):
  n, params = many_params
  for p in params[2:]:
    for axes in (p.main_axis, p.masked_axis):
      counts = np.bincount(axes, minlength=3)
      assert len(counts) == 3 and all(_binomial_ok(c, n, 1 / 3) for c in counts), counts


def test_rotation_angles_ranges(many_params):
  n, params = many_params
  for p in params[2:]:
    deg = np.degrees(p.angles.astype(np.float64))
    main = deg[np.arange(n), p.main_axis]
    minor = deg[np.arange(n)[:, None], [[a for a in range(3) if a != m] for m in p.main_axis]]
    assert deg.min() >= 0.0
    assert main.max() <= 30.0 + 1e-4 and main.max() > 29.9
    assert minor.max() <= 1.0 + 1e-5 and minor.max() > 0.99
    assert abs(main.mean() - 15.0) < 5 * 30 / math.sqrt(12 * n)
    assert abs(minor.mean() - 0.5) < 5 * 1 / math.sqrt(12 * n)


def test_sigma_and_shear_ranges(many_params):
  n, params = many_params
  for p in params:
    assert p.blur_sigma.min() >= 0.1 and p.blur_sigma.max() <= 2.0
    assert p.blur_sigma.min() < 0.11 and p.blur_sigma.max() > 1.99
    assert np.abs(p.shear).max() <= 0.5 and np.abs(p.shear).max() > 0.499
    assert np.all(np.abs(p.shear.mean(0)) < 5 * 1 / math.sqrt(12 * n))


def test_branches_are_independent(many_params):
  n, params = many_params
  bound = 5 / math.sqrt(n)
  q, k, q1, q2 = params
  for a, b in ((q, k), (q1, q2), (q, q1)):
    assert abs(np.corrcoef(a.crop_start, b.crop_start)[0, 1]) < bound
    assert abs(np.corrcoef(a.shear[:, 0], b.shear[:, 0])[0, 1]) < bound
    assert _binomial_ok(int((a.crop_start == b.crop_start).sum()), n, 1 / 17)
  for name in ("flip", "noise_on", "blur_on", "axis_mask_on"):
    both = int((getattr(q1, name) & getattr(q2, name)).sum())
    assert _binomial_ok(both, n, 0.25), name
  # within a branch too: the flags are not tied to each other
  assert _binomial_ok(int((q1.flip & q1.blur_on).sum()), n, 0.25)


def test_normal_pair_statistics():
  z1, z2 = jax.jit(lambda k: views.normal_pair(k, (200, 1000)))(jax.random.key(11))
  z1, z2 = np.asarray(z1, np.float64).ravel(), np.asarray(z2, np.float64).ravel()
  n = z1.size
  for z in (z1, z2):
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs((z ** 4).mean() / z.var() ** 2 - 3) < 5 * math.sqrt(96 / n)
    assert abs(np.mean(np.abs(z) > 2) - 0.0455) < 5 * math.sqrt(0.0455 / n)
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 5 / math.sqrt(n)
  assert abs(np.corrcoef(z1, z2)[0, 1]) < 5 / math.sqrt(n)
  assert abs(np.corrcoef(z1 ** 2, z2 ** 2)[0, 1]) < 5 / math.sqrt(n)
  other, _ = views.normal_pair(jax.random.key(12), (200, 1000))
  assert abs(np.corrcoef(z1, np.asarray(other).ravel())[0, 1]) < 5 / math.sqrt(n)


@pytest.mark.parametrize("noise_rng", ["fast", "threefry"])
def test_noise_is_applied_to_half_of_the_samples_with_std_001(noise_rng):
  n = 400
  x = jnp.zeros((n, 3, 10, 4, 1), jnp.float32)
  layout = SkeletonLayout(name="tiny", joint_names=("a", "b", "left_c", "right_c"),
                          bone_pairs=((0, 0), (1, 0), (2, 1), (3, 1)), num_persons=1,
                          center_joint=0, zaxis=(0, 1), xaxis=(2, 3))
  _, _, q1, q2 = jax.jit(lambda k: hiclr_views.hiclr_views(k, x, layout=layout, temporal_padding_ratio=0,
                                                     shear_amplitude=0.0, aug_method="3",
                                                     noise_rng=noise_rng))(jax.random.key(5))
  for view in (q1, q2):
    v = np.asarray(view).reshape(n, -1)
    on = np.any(v != 0, axis=1)
    assert _binomial_ok(int(on.sum()), n, 0.5)
    vals = v[on].ravel()
    assert abs(vals.std() - 0.01) < 5 * 0.01 / math.sqrt(2 * vals.size)
  both = np.any(np.asarray(q1).reshape(n, -1) != 0, 1) & np.any(np.asarray(q2).reshape(n, -1) != 0, 1)
  assert _binomial_ok(int(both.sum()), n, 0.25)
  product = np.asarray(q1, np.float64).ravel() * np.asarray(q2, np.float64).ravel()
  assert abs(product.mean()) < 5 * product.std() / math.sqrt(product.size)  # the two noises uncorrelated


def test_views_match_the_numpy_feeder_in_distribution():
  """Per-channel means and mean squares of the four views over many draws of one clip."""
  n = 300
  clip = _clips(1, seed=9)[0]
  clip[..., 1] = 0.0
  rng = np.random.default_rng(0)
  ref_views = [ref.feeder_views(clip, rng) for _ in range(n)]
  jax_views = jax.jit(lambda k, x: hiclr_views.hiclr_views(k, x, layout=NTU25))(
      jax.random.key(3), jnp.broadcast_to(jnp.asarray(clip), (n,) + clip.shape))
  for i in range(4):
    a = np.stack([v[i] for v in ref_views]).astype(np.float64)
    b = np.asarray(jax_views[i], np.float64)
    for stat in (lambda z: z.mean(axis=(2, 3, 4)), lambda z: (z ** 2).mean(axis=(2, 3, 4))):
      sa, sb = stat(a), stat(b)  # [n, 3]
      se = np.sqrt(sa.var(0) / n + sb.var(0) / n)
      assert np.all(np.abs(sa.mean(0) - sb.mean(0)) < 5 * se + 1e-6), (i, sa.mean(0), sb.mean(0), se)


# ----------------------------------------------------------------------------------------
# The joint mask
# ----------------------------------------------------------------------------------------

def test_joint_mask_two_distinct_joints_per_frame_uniformly():
  masks = np.asarray(jax.vmap(lambda k: hiclr_views.joint_mask(k, T, V, 0.1))(jax.random.split(jax.random.key(2), 200)))
  assert masks.shape == (200, T, V) and masks.dtype == bool
  assert np.all(masks.sum(-1) == 2)
  per_joint = masks.sum(axis=(0, 1))
  trials = 200 * T
  assert all(_binomial_ok(int(c), trials, 2 / V) for c in per_joint), per_joint
  assert hiclr_views.num_masked_joints(25, 0.1) == 2 and hiclr_views.num_masked_joints(20, 0.1) == 2
  assert np.all(ref.joint_mask(np.random.default_rng(0), T, V, 0.1).sum(-1) == 2)


def test_apply_joint_mask_replaces_and_passes_gradients_to_mask_param():
  x = jnp.asarray(_clips(3))
  mask = hiclr_views.joint_mask(jax.random.key(4), T, V)
  out = np.asarray(hiclr_views.apply_joint_mask(x, mask, jnp.asarray([0.25])))
  m = np.asarray(mask)
  np.testing.assert_array_equal(out, ref.apply_joint_mask(np.asarray(x), m, 0.25))
  assert np.all(out[:, :, m] == 0.25)  # shared by every sample, channel and person
  np.testing.assert_array_equal(out[:, :, ~m], np.asarray(x)[:, :, ~m])

  def loss(param, xx):
    return 3.0 * jnp.sum(hiclr_views.apply_joint_mask(xx, mask, param))

  g_param, g_x = jax.grad(loss, argnums=(0, 1))(jnp.zeros((1,), jnp.float32), x)
  count = 3 * 3 * M * int(m.sum())  # samples x channels x persons x masked (frame, joint)s
  np.testing.assert_allclose(np.asarray(g_param), [3.0 * count])
  assert np.all(np.asarray(g_x)[:, :, m] == 0) and np.all(np.asarray(g_x)[:, :, ~m] == 3.0)


# ----------------------------------------------------------------------------------------
# SkeleAdaIN
# ----------------------------------------------------------------------------------------

def _np_adain(x: np.ndarray, shift: int, axes, eps: float = 1e-5) -> np.ndarray:
  x = x.astype(np.float64)
  style = x[(np.arange(len(x)) + shift) % len(x)]

  def stats(z):
    return z.mean(axis=axes, keepdims=True), np.sqrt(z.var(axis=axes, ddof=1, keepdims=True) + eps)

  (cm, cs), (sm, ss) = stats(x), stats(style)
  return (x - cm) / cs * ss + sm


@pytest.mark.parametrize("dims,axes", [("TV", (2, 3)), ("V", (3,))])
def test_adain_statistics(dims, axes):
  x = _clips(5, seed=6) * np.array([1.0, 2.0, 3.0], np.float32).reshape(1, 3, 1, 1, 1) + 0.5
  out = np.asarray(hiclr_views.skele_adain_with(jnp.asarray(x), 2, dims=dims))
  np.testing.assert_allclose(out, _np_adain(x, 2, axes), rtol=1e-4, atol=1e-4)
  if dims == "TV":  # the result carries the style sample's statistics, person by person
    style = x[(np.arange(5) + 2) % 5]
    np.testing.assert_allclose(out[..., 0].mean(axis=(2, 3)), style[..., 0].mean(axis=(2, 3)), atol=1e-4)
    np.testing.assert_allclose(out[..., 0].std(axis=(2, 3), ddof=1),
                               np.sqrt(style[..., 0].var(axis=(2, 3), ddof=1) + 1e-5), rtol=1e-3)


def test_adain_shift_range_and_option():
  shifts = np.asarray(jax.vmap(lambda k: hiclr_views.adain_shift(k, 5))(jax.random.split(jax.random.key(0), 400)))
  assert set(shifts.tolist()) == {1, 2, 3}
  with pytest.raises(ValueError, match="at least 3"):
    hiclr_views.adain_shift(jax.random.key(0), 2)
  x = jnp.asarray(_clips(4))
  base, with_adain = jax.jit(lambda k, xx: (hiclr_views.hiclr_views(k, xx, layout=NTU25),
                                            hiclr_views.hiclr_views(k, xx, layout=NTU25, adain=True)))(jax.random.key(1), x)
  for i in range(3):
    np.testing.assert_array_equal(np.asarray(base[i]), np.asarray(with_adain[i]))
  assert not np.allclose(np.asarray(base[3]), np.asarray(with_adain[3]))
  with pytest.raises(ValueError, match="adain"):
    hiclr_views.hiclr_views(jax.random.key(1), x, layout=NTU25, adain="q3")


# ----------------------------------------------------------------------------------------
# jit, shapes, layouts, errors
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", [NTU25, MSR20], ids=lambda l: l.name)
def test_jit_shapes_and_layouts(layout):
  x = jnp.asarray(_clips(6, v=layout.num_joints, m=layout.num_persons))
  fn = jax.jit(lambda k, xx: hiclr_views.hiclr_views(k, xx, layout=layout, adain="both"))
  out = fn(jax.random.key(0), x)
  assert len(out) == 4
  for view in out:
    assert view.shape == x.shape and view.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(view)))
  assert not np.allclose(np.asarray(out[0]), np.asarray(out[1]))  # independent draws
  again = fn(jax.random.key(0), x)
  for a, b in zip(out, again):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  other = fn(jax.random.key(1), x)
  assert not np.allclose(np.asarray(out[2]), np.asarray(other[2]))


def test_bad_inputs():
  with pytest.raises(ValueError, match="joints"):
    hiclr_views.hiclr_views(jax.random.key(0), jnp.zeros((2, 3, T, 20, 1)), layout=NTU25)
  with pytest.raises(ValueError, match="C=3"):
    hiclr_views.hiclr_views(jax.random.key(0), jnp.zeros((2, 2, T, V, 2)), layout=NTU25)
  with pytest.raises(ValueError, match="noise_rng"):
    hiclr_views.hiclr_view_params(jax.random.key(0), (2, 3, T, V, 2), noise_rng="philox")


def test_reference_feeder_views_shapes():
  clip = _clips(1)[0]
  out = ref.feeder_views(clip, np.random.default_rng(0))
  assert len(out) == 4 and all(v.shape == clip.shape and v.dtype == np.float64 for v in out)
