"""The skeleton views of the SkeletonCLR family's feeders, as pure, batched, PRNG-keyed JAX functions.

This module owns the augmentations that SkeletonCLR, CrosSCLR, AimCLR and HiCLR share: one
PyTorch code base (CrosSCLR's ``feeder/tools.py``, copied unchanged into AimCLR and HiCLR;
docs/references.md#hiclr-views) whose feeders compose them into each method's views. A
*normal* view is a temporal crop then a shear (every method's query and key views); a *strong*
view adds the "normal augmentations" of AimCLR/HiCLR (AimCLR's extreme view, HiCLR's branches
1 and 2). Each method composes its branches from ``view_params`` and ``view_with``
(``branch_views`` does both for a list of normal and strong branches: SkeletonCLR's two normal
views, AimCLR's extreme view beside them; ``cmd_jax.methods.hiclr.views`` adds HiCLR's joint
mask and SkeleAdaIN). Batches are
``x [B, C=3, T, V, M]`` (joint coordinates; the 50-frame data: ``T = 50``). Everything is
float32 (the reference computes the views in float64, because its shear multiplies by a
float64 matrix and its blur kernel is float64, and casts them to float32 in the processor).

The strong set, in this order, each selected by its digit in ``aug_method`` (default
``"12345"``): ``1`` spatial flip (p 0.5), ``2`` rotation (always), ``3`` Gaussian noise
(p 0.5), ``4`` Gaussian blur (p 0.5), ``5`` axis mask (p 0.5), ``6`` time reversal (p 0.5;
off by default; AimCLR's first release had it on).

The views are in joint space: the stream conversion (joint / motion / bone) comes after them.

Formulas (``x = (x, y, z)`` one point; ``T`` frames; per sample unless said otherwise):

- Temporal crop (``temporal_padding_ratio`` r = 6): ``pad = T // r`` (8 for T = 50); the
  clip is mirror padded at both ends (numpy's ``'symmetric'``: frames ``pad-1 .. 0`` before,
  ``T-1 .. T-pad`` after) and the window ``[s, s + T)`` of the padded clip is kept,
  ``s`` uniform in ``{0, .., 2 pad}``. So output frame ``t`` is input frame
  ``p = s + t - pad``, reflected: ``-p - 1`` if ``p < 0``, ``2T - 1 - p`` if ``p >= T``.
  ``r <= 0`` disables it.
- Shear (``shear_amplitude`` a = 0.5): six coefficients ``c0 .. c5`` uniform in
  ``[-a, a]``, in the reference's draw order, enter ``x' = S x`` as::

    S = [[1,  c0, c3],
         [c1, 1,  c4],
         [c2, c5, 1 ]]

  (the reference builds this matrix and right-multiplies row vectors by its transpose).
  ``a <= 0`` disables it.
- Spatial flip (p 0.5): ``x'[..., j, :] = x[..., mirror[j], :]`` with the layout's
  left/right mirror (``SkeletonLayout.mirror``); the coordinates are NOT negated.
- Rotation (always): a main axis uniform in {x, y, z} gets an angle uniform in [0, 30]
  degrees, the two others uniform in [0, 1] degree; all angles are positive. Rotations
  about x, then y, then z: ``x' = R_z R_y R_x x`` with::

    R_x = [[1, 0, 0], [0, c, s], [0, -s, c]]
    R_y = [[c, 0, -s], [0, 1, 0], [s, 0, c]]
    R_z = [[c, s, 0], [-s, c, 0], [0, 0, 1]]

  (``c, s`` the cosine and sine of that axis' angle; as for the shear, the reference
  right-multiplies row vectors by ``R.T``).
- Gaussian noise (p 0.5): ``N(0, 0.01^2)`` added to every entry, the empty second person
  included.
- Gaussian blur (p 0.5; the reference draws sigma and then the probability on every call):
  a temporal depthwise convolution of every (channel, joint, person) series with 15 taps
  ``w_k = exp(-k^2 / (2 sigma^2))``, ``k = -7 .. 7``, sigma uniform in [0.1, 2.0], zero
  padding 7 frames at both ends. The weights are NOT normalised (their sum is
  ``1 .. sqrt(2 pi) sigma``, up to 5.0): the release's quirk, kept.
- Axis mask (p 0.5): one coordinate axis, uniform among the three, set to zero for all
  frames, joints and persons.
- Time reversal (p 0.5, only with ``6`` in ``aug_method``): frames reversed.

Design: the functions are pure and shape-static (jit- and grad-friendly). Every branch's
scalar random numbers come from ONE uniform draw ``[branches, B, NUM_UNIFORMS]``
(``params_from_uniforms`` maps the columns to the parameters) and the noise of the strong
branches from ONE call of the noise generator, so the views of a batch cost a handful of PRNG
calls. Each transform has a ``*_with`` form that takes its parameters explicitly (for
tests); the branch function ``view_with`` composes them as batched array ops: the crop and
the flip are ONE gather with per-sample frame indices (from the clips followed by their
mirror images along time), the shear and the rotation ONE 3x3 map per sample (``R S``, applied as
multiply-adds over the three coordinates, no matmul, so it is exact float32 on every
backend; the flip permutes joints, so it commutes with the map), the blur a 15-tap weighted
sum of shifted copies with per-sample weights (an identity kernel where the blur is off),
the selections ``jnp.where`` with per-sample flags.

The noise generator: by default (``noise_rng="threefry"``) ``jax.random.normal``. On a CPU
it costs more than all the rest of the views together (about 2 M normals per batch of 128);
the option ``noise_rng="fast"`` draws the noise from ``normal_pair``
(``cmd_jax.methods.common.fast_normal``: a keyed counter-based hash, then Box-Muller)
instead; its cosine and sine halves are the two strong branches' independent noises
(about 4x cheaper; not JAX's PRNG, hence not the default).

Deliberate deviations: the random streams are JAX's (counter-based, from the caller's
key), not numpy's and Python's; the
reference's data-loader workers reseed numpy and Python's ``random`` with their worker
index at every epoch (its ``worker_init_fn``), so the same augmentation draws repeat epoch
after epoch; that quirk is not reproduced: every step gets a proper fresh key.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cmd_jax import flat_random
from cmd_jax.methods.common.fast_normal import normal_pair

TEMPORAL_PADDING_RATIO = 6
SHEAR_AMPLITUDE = 0.5
AUG_METHOD = "12345"
FLIP_PROB = 0.5
MAIN_ANGLE_DEG = 30.0
MINOR_ANGLE_DEG = 1.0
NOISE_STD = 0.01
NOISE_PROB = 0.5
BLUR_TAPS = 15
BLUR_SIGMA_RANGE = (0.1, 2.0)
BLUR_PROB = 0.5
AXIS_MASK_PROB = 0.5
TIME_FLIP_PROB = 0.5


# Columns of a branch's uniform draw [B, NUM_UNIFORMS].
_U_CROP = 0
_U_SHEAR = slice(1, 7)
_U_FLIP = 7
_U_MAIN_AXIS = 8
_U_ANGLES = slice(9, 12)
_U_NOISE = 12
_U_SIGMA = 13
_U_BLUR = 14
_U_AXIS_MASK = 15
_U_MASKED_AXIS = 16
_U_TIME_FLIP = 17
NUM_UNIFORMS = 18

class ViewParams(NamedTuple):
  """The random numbers of one branch of a batch (leading axis B).

  The normal views use ``crop_start`` and ``shear`` only. ``noise`` is ``None`` unless the
  branch is strong and ``aug_method`` contains ``3``.
  """

  crop_start: jax.Array      # int32 [B], in [0, 2 * (T // ratio)]
  shear: jax.Array           # float32 [B, 6], the coefficients c0 .. c5
  flip: jax.Array            # bool [B]
  main_axis: jax.Array       # int32 [B], 0 / 1 / 2 = x / y / z
  angles: jax.Array          # float32 [B, 3], radians, about x, y, z
  noise_on: jax.Array        # bool [B]
  blur_sigma: jax.Array      # float32 [B]
  blur_on: jax.Array         # bool [B]
  axis_mask_on: jax.Array    # bool [B]
  masked_axis: jax.Array     # int32 [B]
  time_flip: jax.Array       # bool [B]
  noise: jax.Array | None = None  # float32 [B, C, T, V, M], already scaled by NOISE_STD


# ----------------------------------------------------------------------------------------
# Per-sample broadcasting and 3x3 maps
# ----------------------------------------------------------------------------------------

def _per_sample(a: jax.Array, ndim: int = 5) -> jax.Array:
  """``[B]`` -> ``[B, 1, ..]`` broadcastable against a rank-``ndim`` batch."""
  return a.reshape(a.shape + (1,) * (ndim - a.ndim))


def _uniform_int(u: jax.Array, n: int) -> jax.Array:
  """Uniform integers in ``[0, n)`` from uniforms in ``[0, 1)``."""
  return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def _matmul33(a: jax.Array, b: jax.Array) -> jax.Array:
  """Batched 3x3 product ``a @ b`` as multiply-adds (exact float32 on every backend)."""
  return (a[..., :, :, None] * b[..., None, :, :]).sum(axis=-2)


def _map3(x: jax.Array, m: jax.Array) -> jax.Array:
  """``x' = m x`` per point: ``x [B, 3, ...]``, ``m [B, 3, 3]``, as multiply-adds
  (``x'_i = m_i0 x_0 + m_i1 x_1 + m_i2 x_2``; no concatenation, which fuses poorly)."""
  def column(j):
    return m[:, :, j].reshape(m.shape[:2] + (1,) * (x.ndim - 2)) * x[:, j:j + 1]
  return column(0) + column(1) + column(2)


def _fusion_fence(x: jax.Array, anchor: jax.Array) -> jax.Array:
  """``x`` unchanged (``x / 1``), but computed once before the taps that read it.

  XLA fuses cheap elementwise producers into their consumers; for the blur's taps that
  means recomputing the whole gather, 3x3 map and noise once per tap (measured 2-5x slower
  on CPUs). ``optimization_barrier`` does not prevent that on the CPU backend; a division
  by a runtime 1 (derived from ``anchor``, so that it cannot be constant-folded) does, as
  XLA does not duplicate divisions into loops that reuse their operand. Exact: ``x / 1 == x``.
  """
  one = jnp.where(jnp.isnan(anchor.reshape(-1)[0]), 2.0, 1.0).astype(x.dtype)
  return x / one


def check_batch(x: jax.Array) -> None:
  """A ValueError unless ``x`` is a batch ``[B, C=3, T, V, M]``."""
  if x.ndim != 5 or x.shape[1] != 3:
    raise ValueError(f"expected a batch [B, C=3, T, V, M], got shape {x.shape}")


# ----------------------------------------------------------------------------------------
# The transforms with explicit parameters
# ----------------------------------------------------------------------------------------

def crop_padding(num_frames: int, temporal_padding_ratio: int = TEMPORAL_PADDING_RATIO) -> int:
  """``T // ratio`` frames mirrored at each end (0 when the crop is off)."""
  return num_frames // temporal_padding_ratio if temporal_padding_ratio > 0 else 0


def temporal_crop_indices(start: jax.Array, num_frames: int,
                          temporal_padding_ratio: int = TEMPORAL_PADDING_RATIO) -> jax.Array:
  """int32 ``[B, T]``: the input frame of every output frame for crop starts ``start [B]``."""
  pad = crop_padding(num_frames, temporal_padding_ratio)
  p = jnp.asarray(start, jnp.int32)[:, None] + jnp.arange(num_frames, dtype=jnp.int32)[None, :] - pad
  p = jnp.where(p < 0, -p - 1, p)
  return jnp.where(p >= num_frames, 2 * num_frames - 1 - p, p)


def temporal_crop_with(x: jax.Array, start: jax.Array,
                       temporal_padding_ratio: int = TEMPORAL_PADDING_RATIO) -> jax.Array:
  """The window ``[start, start + T)`` of the mirror-padded clips ``x [B, C, T, V, M]``."""
  idx = temporal_crop_indices(start, x.shape[2], temporal_padding_ratio)
  return jnp.take_along_axis(x, idx[:, None, :, None, None], axis=2)


def shear_matrix(coeffs: jax.Array) -> jax.Array:
  """``[B, 6] -> [B, 3, 3]``: ``S = [[1, c0, c3], [c1, 1, c4], [c2, c5, 1]]``, ``x' = S x``."""
  c = jnp.asarray(coeffs, jnp.float32)
  one = jnp.ones_like(c[:, 0])
  rows = [jnp.stack([one, c[:, 0], c[:, 3]], -1),
          jnp.stack([c[:, 1], one, c[:, 4]], -1),
          jnp.stack([c[:, 2], c[:, 5], one], -1)]
  return jnp.stack(rows, axis=1)


def shear_with(x: jax.Array, coeffs: jax.Array) -> jax.Array:
  return _map3(x, shear_matrix(coeffs))


def spatial_flip_with(x: jax.Array, flip: jax.Array, mirror) -> jax.Array:
  """Joints permuted by ``mirror`` in the samples where ``flip``; coordinates not negated."""
  mirrored = jnp.take(x, jnp.asarray(np.asarray(mirror, np.int32)), axis=3)
  return jnp.where(_per_sample(jnp.asarray(flip), x.ndim), mirrored, x)


def rotation_matrix(angles: jax.Array) -> jax.Array:
  """``[B, 3] -> [B, 3, 3]``: ``R_z R_y R_x`` for angles (radians) about x, y, z."""
  a = jnp.asarray(angles, jnp.float32)
  c, s = jnp.cos(a), jnp.sin(a)
  zero, one = jnp.zeros_like(a[:, 0]), jnp.ones_like(a[:, 0])

  def mat(rows):
    return jnp.stack([jnp.stack(r, -1) for r in rows], axis=1)

  rx = mat([[one, zero, zero], [zero, c[:, 0], s[:, 0]], [zero, -s[:, 0], c[:, 0]]])
  ry = mat([[c[:, 1], zero, -s[:, 1]], [zero, one, zero], [s[:, 1], zero, c[:, 1]]])
  rz = mat([[c[:, 2], s[:, 2], zero], [-s[:, 2], c[:, 2], zero], [zero, zero, one]])
  return _matmul33(rz, _matmul33(ry, rx))


def rotate_with(x: jax.Array, angles: jax.Array) -> jax.Array:
  return _map3(x, rotation_matrix(angles))


def gauss_noise_with(x: jax.Array, on: jax.Array, noise: jax.Array) -> jax.Array:
  """``x + noise`` in the samples where ``on`` (``noise`` already scaled)."""
  return jnp.where(_per_sample(jnp.asarray(on), x.ndim), x + noise, x)


def blur_kernel(sigma: jax.Array, taps: int = BLUR_TAPS) -> jax.Array:
  """``[B] -> [B, taps]``: ``exp(-k^2 / (2 sigma^2))``, ``k = -taps//2 .. taps//2``, unnormalised."""
  k = jnp.arange(taps, dtype=jnp.float32) - (taps // 2)
  sigma = jnp.asarray(sigma, jnp.float32)[:, None]
  return jnp.exp(-(k * k)[None, :] / (2.0 * sigma * sigma))


def _blur_taps(x: jax.Array, weights: jax.Array) -> jax.Array:
  """Zero-padded temporal correlation of ``x [B, C, T, ...]`` with per-sample SYMMETRIC
  kernels ``weights [B, K]`` (``K`` odd, ``w[K-1-k] == w[k]``; only the centre and the
  right half are read): ``out_t = w_0 x_t + sum_{k>=1} w_k (x_{t-k} + x_{t+k})``."""
  half = weights.shape[1] // 2
  t = x.shape[2]
  padded = jnp.pad(x, [(0, 0), (0, 0), (half, half)] + [(0, 0)] * (x.ndim - 3))
  # Computed once, then read by every tap (the centre included, from the same copy).
  padded = _fusion_fence(padded, weights)
  out = _per_sample(weights[:, half], x.ndim) * jax.lax.slice_in_dim(padded, half, half + t, axis=2)
  for k in range(1, half + 1):
    pair = (jax.lax.slice_in_dim(padded, half - k, half - k + t, axis=2)
            + jax.lax.slice_in_dim(padded, half + k, half + k + t, axis=2))
    out = out + _per_sample(weights[:, half + k], x.ndim) * pair
  return out


def blur_weights(on: jax.Array, sigma: jax.Array, taps: int = BLUR_TAPS) -> jax.Array:
  """``[B, taps]``: the blur kernel where ``on``, the identity kernel (a 1 at the centre) elsewhere."""
  delta = jnp.zeros((taps,), jnp.float32).at[taps // 2].set(1.0)
  return jnp.where(jnp.asarray(on)[:, None], blur_kernel(sigma, taps), delta[None, :])


def gauss_blur_with(x: jax.Array, on: jax.Array, sigma: jax.Array, taps: int = BLUR_TAPS) -> jax.Array:
  """The unnormalised Gaussian blur along time in the samples where ``on`` (others unchanged)."""
  return _blur_taps(x, blur_weights(on, sigma, taps))


def _axis_keep(on: jax.Array, axis: jax.Array, num_channels: int) -> jax.Array:
  """bool ``[B, C]``: False for the masked axis of the samples where ``on``."""
  channel = jnp.arange(num_channels, dtype=jnp.int32)[None, :]
  return ~(jnp.asarray(on)[:, None] & (channel == jnp.asarray(axis, jnp.int32)[:, None]))


def axis_mask_with(x: jax.Array, on: jax.Array, axis: jax.Array) -> jax.Array:
  """Coordinate ``axis`` set to zero in the samples where ``on``."""
  keep = _axis_keep(on, axis, x.shape[1])
  return jnp.where(_per_sample(keep, x.ndim), x, jnp.zeros((), x.dtype))


def time_flip_with(x: jax.Array, on: jax.Array) -> jax.Array:
  """Frames reversed in the samples where ``on``."""
  return jnp.where(_per_sample(jnp.asarray(on), x.ndim), jnp.flip(x, axis=2), x)


# ----------------------------------------------------------------------------------------
# The random draws
# ----------------------------------------------------------------------------------------

def params_from_uniforms(u: jax.Array, num_frames: int, *,
                         temporal_padding_ratio: int = TEMPORAL_PADDING_RATIO,
                         shear_amplitude: float = SHEAR_AMPLITUDE) -> ViewParams:
  """A branch's parameters from its uniforms ``u [B, NUM_UNIFORMS]`` in ``[0, 1)`` (noise: None)."""
  pad = crop_padding(num_frames, temporal_padding_ratio)
  amplitude = max(float(shear_amplitude), 0.0)
  main_axis = _uniform_int(u[:, _U_MAIN_AXIS], 3)
  is_main = jnp.arange(3, dtype=jnp.int32)[None, :] == main_axis[:, None]
  max_deg = jnp.where(is_main, jnp.float32(MAIN_ANGLE_DEG), jnp.float32(MINOR_ANGLE_DEG))
  low, high = BLUR_SIGMA_RANGE
  return ViewParams(
      crop_start=_uniform_int(u[:, _U_CROP], 2 * pad + 1),
      shear=amplitude * (2.0 * u[:, _U_SHEAR] - 1.0),
      flip=u[:, _U_FLIP] < FLIP_PROB,
      main_axis=main_axis,
      angles=jnp.deg2rad(u[:, _U_ANGLES] * max_deg),
      noise_on=u[:, _U_NOISE] < NOISE_PROB,
      blur_sigma=low + (high - low) * u[:, _U_SIGMA],
      blur_on=u[:, _U_BLUR] < BLUR_PROB,
      axis_mask_on=u[:, _U_AXIS_MASK] < AXIS_MASK_PROB,
      masked_axis=_uniform_int(u[:, _U_MASKED_AXIS], 3),
      time_flip=u[:, _U_TIME_FLIP] < TIME_FLIP_PROB,
  )


NOISE_RNGS = ("fast", "threefry")


def view_params(key: jax.Array, x_shape: tuple[int, ...], strong: Sequence[bool], *,
                temporal_padding_ratio: int = TEMPORAL_PADDING_RATIO,
                shear_amplitude: float = SHEAR_AMPLITUDE,
                aug_method: str = AUG_METHOD,
                noise_rng: str = "threefry") -> tuple[ViewParams, ...]:
  """The parameters of a batch's branches (shape ``x_shape``), one per entry of ``strong``
  (True: a strong branch, which gets noise when ``aug_method`` contains ``3``).

  One uniform draw ``[len(strong), B, NUM_UNIFORMS]`` for every scalar and, with ``3`` in
  ``aug_method``, the noise of the strong branches: ``noise_rng="threefry"`` (the default),
  one ``jax.random.normal`` draw ``[S, *x_shape]`` for the ``S`` strong branches in order;
  ``"fast"``, one ``normal_pair`` (a hash-based generator, several times faster on CPUs)
  whose two halves serve at most two strong branches.
  """
  if noise_rng not in NOISE_RNGS:
    raise ValueError(f"noise_rng must be one of {NOISE_RNGS}, got {noise_rng!r}")
  uniform_key, noise_key = jax.random.split(key)
  batch, num_frames = x_shape[0], x_shape[2]
  u = flat_random.uniform(uniform_key, (len(strong), batch, NUM_UNIFORMS), jnp.float32)
  params = [params_from_uniforms(u[i], num_frames, temporal_padding_ratio=temporal_padding_ratio,
                                 shear_amplitude=shear_amplitude) for i in range(len(strong))]
  noisy = [i for i, s in enumerate(strong) if s]
  if "3" in aug_method and noisy:
    if noise_rng == "fast":
      if len(noisy) > 2:
        raise ValueError(f"noise_rng='fast' draws the noise of at most 2 strong branches, got {len(noisy)}")
      noises = normal_pair(noise_key, tuple(x_shape))
    else:
      noises = flat_random.normal(noise_key, (len(noisy),) + tuple(x_shape), jnp.float32)
    for j, i in enumerate(noisy):
      params[i] = params[i]._replace(noise=NOISE_STD * noises[j])
  return tuple(params)


# ----------------------------------------------------------------------------------------
# The views
# ----------------------------------------------------------------------------------------

def view_with(x: jax.Array, params: ViewParams, *, mirror, strong: bool,
              temporal_padding_ratio: int = TEMPORAL_PADDING_RATIO,
              aug_method: str = AUG_METHOD) -> jax.Array:
  """One branch of a batch ``x [B, 3, T, V, M]`` with given parameters.

  Normal (``strong=False``): crop, shear. Strong: crop, shear, then flip / rotation /
  noise / blur / axis mask / time reversal as selected by ``aug_method``. Equal (to float32
  rounding) to applying the ``*_with`` transforms in the reference's order; computed as
  ONE gather (crop and flip), ONE 3x3 map (``R S``), the noise, the blur, the axis mask
  and the reversal.
  """
  check_batch(x)
  x = jnp.asarray(x, jnp.float32)
  flip = strong and "1" in aug_method
  # The per-sample quantities (from the parameters), then the batch-sized array ops.
  small = dict(t_idx=temporal_crop_indices(params.crop_start, x.shape[2], temporal_padding_ratio),
               matrix=shear_matrix(params.shear))
  if strong:
    if "1" in aug_method:
      small["flip"] = params.flip
    if "2" in aug_method:
      small["matrix"] = _matmul33(rotation_matrix(params.angles), small["matrix"])
    if "3" in aug_method:
      if params.noise is None:
        raise ValueError("a strong view with '3' in aug_method needs params.noise")
      small["noise_on"] = params.noise_on
    if "4" in aug_method:
      small["blur"] = blur_weights(params.blur_on, params.blur_sigma)
    if "5" in aug_method:
      small["keep"] = _axis_keep(params.axis_mask_on, params.masked_axis, x.shape[1])
    if "6" in aug_method:
      small["time_flip"] = params.time_flip

  if flip:
    # Crop and flip as ONE gather: from the clips followed (along time) by their mirror
    # images, frame t_idx of the mirror image being index T + t_idx. (The mirrored copy
    # is the same expression in both strong branches, so it is computed once.)
    t = x.shape[2]
    source = jnp.concatenate([x, jnp.take(x, jnp.asarray(np.asarray(mirror, np.int32)), axis=3)], axis=2)
    index = small["t_idx"] + jnp.where(small["flip"], t, 0).astype(jnp.int32)[:, None]
  else:
    source, index = x, small["t_idx"]
  y = jnp.take_along_axis(source, index[:, None, :, None, None], axis=2)
  y = _map3(y, small["matrix"])
  if "noise_on" in small:
    y = gauss_noise_with(y, small["noise_on"], params.noise)
  if "blur" in small:
    y = _blur_taps(y, small["blur"])
  if "keep" in small:
    y = jnp.where(_per_sample(small["keep"], y.ndim), y, jnp.zeros((), y.dtype))
  if "time_flip" in small:
    y = time_flip_with(y, small["time_flip"])
  return y



def basic_view(key: jax.Array, x: jax.Array, *, temporal_padding_ratio: int = TEMPORAL_PADDING_RATIO,
               shear_amplitude: float = SHEAR_AMPLITUDE) -> jax.Array:
  """One normal view (temporal crop with mirrored padding, then shear) of every clip of a batch:
  every method's query and key view, and HiCLR's transformer fine-tuning's training view."""
  check_batch(x)
  (params,) = view_params(key, x.shape, (False,), temporal_padding_ratio=temporal_padding_ratio,
                          shear_amplitude=shear_amplitude, aug_method="")
  return view_with(x, params, mirror=None, strong=False, temporal_padding_ratio=temporal_padding_ratio,
                   aug_method="")


def branch_views(key: jax.Array, x: jax.Array, strong: Sequence[bool], *, mirror,
                 temporal_padding_ratio: int = TEMPORAL_PADDING_RATIO, shear_amplitude: float = SHEAR_AMPLITUDE,
                 aug_method: str = AUG_METHOD, noise_rng: str = "threefry") -> tuple[jax.Array, ...]:
  """The views of a batch ``x [B, 3, T, V, M]``, one per entry of ``strong`` (False: a normal
  view, crop + shear; True: a strong view, + the set of ``aug_method``), every draw independent
  (``view_params`` then ``view_with``): a method's feeder. ``mirror``: the layout's left/right
  joint order (needed when ``aug_method`` has ``1`` and a branch is strong)."""
  check_batch(x)
  if mirror is not None and x.shape[3] != len(mirror):
    raise ValueError(f"the mirror has {len(mirror)} joints; the batch has {x.shape[3]}")
  params = view_params(key, x.shape, tuple(bool(s) for s in strong), temporal_padding_ratio=temporal_padding_ratio,
                       shear_amplitude=shear_amplitude, aug_method=aug_method, noise_rng=noise_rng)
  return tuple(view_with(x, p, mirror=mirror, strong=bool(s), temporal_padding_ratio=temporal_padding_ratio,
                         aug_method=aug_method) for p, s in zip(params, strong))
