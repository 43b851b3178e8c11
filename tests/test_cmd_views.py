"""CMD's batched pretraining views (cmd_jax.methods.cmd.views): the draws' distributions and the composition.

``pretrain_views`` draws every random number of a batch in one call (``pretrain_view_params``)
and applies them with ``pretrain_views_with``. Checked here against the reference's
distributions (docs/references.md#cmd-pretraining-views, #cmd-crop-resize,
#cmd-joint-corruption, #cmd-shear) written as numpy formulas, and the composition against
the spec's per-sample formulas in float64 (tests/test_augment.py's numpy helpers).

Statistical bounds: every frequency is checked within 5 standard deviations of its
expected value for the sample size used (``_within``), with fixed keys, so a check fails
only if the distribution is wrong (a correct draw misses a 5-sigma bound with probability
below 1e-6 per check); the draws are deterministic given the key, so the tests are not flaky.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cmd_jax.methods.cmd import views as cmd_views
from tests.test_augment import np_col_map, np_resize, np_row_map

N = 4000
V, K = 25, 15
T = 300


def _within(count: float, n: int, p: float, sigmas: float = 5.0) -> bool:
  """``count`` successes out of ``n`` is within ``sigmas`` binomial standard deviations of ``n p``."""
  return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


def _params(seed: int, frames: np.ndarray, **kwargs):
  fn = jax.jit(lambda k, f: cmd_views.pretrain_view_params(k, f, T, V, **kwargs))
  return jax.tree.map(np.asarray, fn(jax.random.key(seed), jnp.asarray(frames, jnp.int32)))


def test_crop_lengths_and_starts_follow_the_formula():
  p = _params(1, np.full(N, 300))
  length, start = p.length.ravel(), p.start.ravel()
  n = length.size
  assert np.all((length >= 64) & (length <= 300))
  assert np.all((start >= 0) & (start <= 300 - length))
  # L = min(max(floor(300 s), 64), 300), s ~ U(0.1, 1): L = 64 iff 300 s < 65
  assert _within(np.sum(length == 64), n, (65 / 300 - 0.1) / 0.9)
  # L >= 200 iff s >= 2/3
  assert _within(np.sum(length >= 200), n, (1 - 2 / 3) / 0.9)
  # the start is uniform in [0, F - L]: its position in that range has mean 1/2, and both ends occur
  position = (start + 0.5) / (300 - length + 1)
  assert abs(position.mean() - 0.5) <= 5 * np.sqrt(1 / 12 / n)
  assert np.any(start == 0) and np.any((start == 300 - length) & (length < 250))


def test_short_clips_are_kept_whole():
  frames = np.tile(np.array([1, 10, 63, 64, 0, 500]), N // 6)
  p = _params(2, frames, min_len=64)
  f = np.clip(frames, 1, T)[None].repeat(2, 0)
  short = f <= 64
  np.testing.assert_array_equal(p.length[short], f[short])
  np.testing.assert_array_equal(p.start[short], 0)
  assert np.all(p.length[f == 300] >= 64)


def test_branch_choices_and_corrupted_joints():
  p = _params(3, np.full(N, 300))
  n = 2 * N
  assert _within(p.corrupt.sum(), n, 0.5) and _within(p.zero.sum(), n, 0.5)
  assert _within((p.corrupt & p.zero).sum(), n, 0.25)          # the two choices are independent
  # exactly K distinct joints per view and sample, each joint with probability K / V
  np.testing.assert_array_equal(p.corrupted.sum(-1), K)
  per_joint = p.corrupted.reshape(n, V).sum(0)
  assert all(_within(c, n, K / V) for c in per_joint)
  # pairs of joints: P(both) = K (K - 1) / (V (V - 1)) for a uniform K-subset
  both = (p.corrupted[..., 0] & p.corrupted[..., V - 1]).sum()
  assert _within(both, n, K * (K - 1) / (V * (V - 1)))


def test_matrices_are_uniform_with_the_amplitudes():
  p = _params(4, np.full(N, 300), shear_amplitude=0.5, corruption_amplitude=2.0)
  np.testing.assert_array_equal(p.shear[..., [0, 1, 2], [0, 1, 2]], 1.0)
  off = p.shear[..., ~np.eye(3, dtype=bool)].ravel()
  a = p.corruption.ravel()
  for values, amplitude in ((off, 0.5), (a, 2.0)):
    n = values.size
    assert np.all((values >= -amplitude) & (values < amplitude))
    assert _within(np.sum(values < 0), n, 0.5) and _within(np.sum(values < -amplitude / 2), n, 0.25)
    assert abs(values.mean()) <= 5 * amplitude * np.sqrt(1 / 3 / n)


def test_views_and_samples_get_independent_draws():
  p = _params(5, np.full(N, 300))
  q, k = p.corruption[0].reshape(N, 9), p.corruption[1].reshape(N, 9)
  # the correlation of independent uniforms over N pairs has standard deviation 1 / sqrt(N)
  assert abs(np.corrcoef(q[:, 0], k[:, 0])[0, 1]) <= 5 / np.sqrt(N)
  assert abs(np.corrcoef(q[:-1, 0], q[1:, 0])[0, 1]) <= 5 / np.sqrt(N)
  assert abs(np.corrcoef(p.length[0], p.length[1])[0, 1]) <= 5 / np.sqrt(N)


def test_views_with_params_compose_the_spec_formulas():
  """Each view is the crop-resize of the spec, then the corruption (zero or ``p @ A`` on the
  selected joints) or the shear ``S @ p``, computed here per sample in float64."""
  rng = np.random.default_rng(6)
  n = 24
  x = rng.uniform(-1, 1, (n, 3, T, V, 2)).astype(np.float32)
  frames = rng.integers(1, T + 1, n).astype(np.int32)
  p = _params(7, frames)
  views = jax.jit(cmd_views.pretrain_views_with)(jnp.asarray(x), jax.tree.map(jnp.asarray, p))
  kinds = set()
  for v in range(2):
    got = np.asarray(views[v])
    for i in range(n):
      clip = np_resize(x[i], int(p.start[v, i]), int(p.length[v, i]))
      if p.corrupt[v, i]:
        mapped = np.zeros_like(clip) if p.zero[v, i] else np_row_map(clip, p.corruption[v, i])
        expected = np.where(p.corrupted[v, i][None, None, :, None], mapped, clip)
      else:
        expected = np_col_map(clip, p.shear[v, i])
      kinds.add((bool(p.corrupt[v, i]), bool(p.zero[v, i]) and bool(p.corrupt[v, i])))
      # float32 against float64: a lerp of two values and a 3-term dot with entries below 1 in
      # magnitude (|x| <= 1, |A|, |S| <= 1); a few float32 roundings of values at most 3
      # in magnitude stay below 1e-6 (2^-24 * 3 * 4 ~ 7e-7); 2e-6 leaves room for FMA or not.
      np.testing.assert_allclose(got[i], expected, rtol=0, atol=2e-6)
  assert kinds == {(False, False), (True, False), (True, True)}  # all three branches were checked


def test_pretrain_views_is_the_params_then_the_composition():
  rng = np.random.default_rng(8)
  x = jnp.asarray(rng.uniform(-1, 1, (5, 3, T, V, 2)).astype(np.float32))
  frames = jnp.asarray(np.array([300, 1, 64, 120, 700], np.int32))
  key = jax.random.key(9)
  q, k = jax.jit(cmd_views.pretrain_views)(key, x, frames)
  p = jax.jit(lambda k, f: cmd_views.pretrain_view_params(k, f, T, V))(key, frames)
  q2, k2 = jax.jit(cmd_views.pretrain_views_with)(x, p)
  for a, b in ((q, q2), (k, k2)):
    a, b = np.asarray(a), np.asarray(b)
    # the same draws; two compilations may fuse (and contract to FMA) differently, so equal
    # up to a few float32 roundings of the largest value (8 ulps; a wrong draw differs by O(1))
    np.testing.assert_allclose(a, b, rtol=0, atol=8 * np.finfo(np.float32).eps * np.abs(b).max())
