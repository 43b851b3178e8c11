"""Building blocks every encoder shares: PyTorch-layout layers, PyTorch's initialisers, the heads.

This module owns what makes an encoder of this project convertible to and from a PyTorch
``state_dict`` by renaming only: every layer stores its parameters in PyTorch's layout
(``Linear.weight [out, in]``, ``Conv2d.weight [out, in, kh, kw]``) and BatchNorm keeps
PyTorch's running statistics (unbiased running variance). It also owns the two
initialisation schemes an encoder can be built with, and the projection head.

Initialisation schemes (``config.model.init``):

- ``"default"``: each architecture's own PyTorch initialisation (for a layer without a
  specific one, PyTorch's default: ``kaiming_uniform(a=sqrt(5))`` weights, i.e.
  ``U(+-1/sqrt(fan_in))``, and ``U(+-1/sqrt(fan_in))`` biases; BatchNorm scale 1, bias 0);
- ``"normal_0.02"``: the ``weights_init`` that the HiCLR/AimCLR family applies to the whole
  model after building it: every Conv1d/Conv2d/Linear weight ``N(0, 0.02^2)`` with bias 0,
  every BatchNorm scale ``N(1, 0.02^2)`` with bias 0; other parameters (GRU weights, graph
  edge importances, attention matrices) keep their own initialisation.

Layout conventions: convolutions run on channels-last arrays (``[N, H, W, C]``, with
``H = T`` and ``W = V`` for skeleton sequences) and contract the torch-layout kernel
directly (``lax.conv_general_dilated`` with ``("NHWC", "OIHW", "NHWC")``), so no weight is
ever transposed for conversion.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cmd_jax import flat_random

Array = jax.Array
Initializer = Callable[..., Array]

INITS = ("default", "normal_0.02")
REFERENCE_STD = 0.02  # HiCLR's weights_init


def check_init(init: str) -> None:
  if init not in INITS:
    raise ValueError(f"unknown init scheme {init!r}; expected one of {INITS}")


# ----------------------------------------------------------------------------------------
# Initialisers (PyTorch's, written out)
# ----------------------------------------------------------------------------------------

def uniform_init(bound: float) -> Initializer:
  """``U(-bound, bound)``, like ``torch.nn.init.uniform_(-bound, bound)``."""

  def init(key, shape, dtype=jnp.float32):
    return flat_random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

  return init


def normal_init(std: float, mean: float = 0.0) -> Initializer:
  """``N(mean, std^2)``, like ``tensor.normal_(mean, std)``."""

  def init(key, shape, dtype=jnp.float32):
    return mean + std * flat_random.normal(key, shape, dtype)

  return init


def fans(shape: Sequence[int]) -> tuple[int, int]:
  """PyTorch's ``(fan_in, fan_out)`` of a torch-layout weight ``[out, in, *kernel]``."""
  receptive = 1
  for s in shape[2:]:
    receptive *= int(s)
  return int(shape[1]) * receptive, int(shape[0]) * receptive


def xavier_uniform_torch(key, shape, dtype=jnp.float32) -> Array:
  """``torch.nn.init.xavier_uniform_`` on a torch-layout weight."""
  fan_in, fan_out = fans(shape)
  bound = (6.0 / (fan_in + fan_out)) ** 0.5
  return flat_random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


def xavier_normal_torch(key, shape, dtype=jnp.float32) -> Array:
  """``torch.nn.init.xavier_normal_`` on a torch-layout weight."""
  fan_in, fan_out = fans(shape)
  return (2.0 / (fan_in + fan_out)) ** 0.5 * flat_random.normal(key, shape, dtype)


def kaiming_normal_fan_out(key, shape, dtype=jnp.float32) -> Array:
  """``torch.nn.init.kaiming_normal_(w, mode='fan_out')`` (ReLU gain): ``N(0, 2 / fan_out)``."""
  _, fan_out = fans(shape)
  return (2.0 / fan_out) ** 0.5 * flat_random.normal(key, shape, dtype)



def layer_inits(init: str, shape: Sequence[int], weight_init: Initializer | None = None,
                bias_init: Initializer | None = None) -> tuple[Initializer, Initializer]:
  """The ``(weight, bias)`` initialisers of a Linear/Conv layer with torch-layout ``shape``.

  ``"normal_0.02"`` overrides everything (HiCLR's ``weights_init``); ``"default"`` uses the
  given architecture-specific initialisers or, where None, PyTorch's defaults.
  """
  check_init(init)
  if init == "normal_0.02":
    return normal_init(REFERENCE_STD), nn.initializers.zeros
  fan_in, _ = fans(shape)
  default = uniform_init(1.0 / fan_in ** 0.5)
  return weight_init or default, bias_init or default


# ----------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------

def batch_norm_stats(x: Array, axes: tuple[int, ...]) -> tuple[Array, Array, Array]:
  """Batch mean, biased variance and unbiased variance over ``axes`` (two-pass, float32)."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  n = 1
  for a in axes:
    n *= x.shape[a]
  mean = jnp.mean(x, axis=axes)
  var = jnp.mean(jnp.square(x - jnp.expand_dims(mean, axes)), axis=axes)
  unbiased = var * (n / max(n - 1, 1))
  return mean, var, unbiased


class TorchBatchNorm(nn.Module):
  """PyTorch ``BatchNorm1d/2d`` over the LAST axis of ``[..., F]``, statistics over all other axes.

  Names match ``flax.linen.BatchNorm`` (``params``: ``scale``, ``bias``; ``batch_stats``:
  ``mean``, ``var``). Unlike Flax's, the running variance is updated with the *unbiased*
  batch variance, as PyTorch does. ``momentum`` is Flax's convention (fraction kept:
  PyTorch's 0.1 is 0.9). As in Flax, ``init`` does not update the running statistics.
  ``init_scheme`` selects the scale's initialiser (``"normal_0.02"``: ``N(1, 0.02^2)``).
  (Modules name it ``init_scheme``: an attribute called ``init`` would hide ``Module.init``.)
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  init_scheme: str = "default"

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    check_init(self.init_scheme)
    features = x.shape[-1]
    scale_init = normal_init(REFERENCE_STD, 1.0) if self.init_scheme == "normal_0.02" else nn.initializers.ones
    scale = self.param("scale", scale_init, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    if train:
      y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
      if not self.is_initializing():
        n = x.size // features
        ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * var * (n / max(n - 1, 1))
      return y.astype(x.dtype)
    y = (x - ra_mean.value) * lax.rsqrt(ra_var.value + self.epsilon)
    return (y * scale + bias).astype(x.dtype)


def batch_norm_train(x: Array, scale: Array, bias: Array, epsilon: float) -> tuple[Array, Array, Array]:
  """Training-mode BatchNorm over the last axis of ``x``: ``(y, mean, var)`` with the batch
  mean and biased variance (``batch_norm_stats``) and ``y = (x - mean) / sqrt(var + eps) *
  scale + bias``, with a hand-written gradient (the textbook one: two per-channel sums of
  the output gradient, then one elementwise pass), which XLA runs in fewer passes over ``x``
  than autodiff of the forward."""
  return _batch_norm_train(x, scale, bias, float(epsilon))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm_train(x, scale, bias, epsilon):
  return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean, var, _ = batch_norm_stats(x, tuple(range(x.ndim - 1)))
  rstd = lax.rsqrt(var + epsilon)
  return ((x - mean) * rstd * scale + bias, mean, var), (x, mean, rstd, scale)


def _batch_norm_train_bwd(epsilon, residuals, grads):
  """With ``xhat = (x - mean) rstd`` and ``n`` rows: ``d_bias = sum g``, ``d_scale = sum g
  xhat``, ``dx = scale rstd (g - (d_bias + xhat d_scale) / n)``, plus the (usually zero)
  cotangents of the returned mean (``/ n``) and biased variance (``2 (x - mean) / n``)."""
  del epsilon
  x, mean, rstd, scale = residuals
  g, g_mean, g_var = grads
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  centred = x - mean
  xhat = centred * rstd
  d_bias = jnp.sum(g, axes)
  d_scale = jnp.sum(g * xhat, axes)
  d_x = (scale * rstd) * (g - (d_bias + xhat * d_scale) / n) + (g_mean + 2.0 * g_var * centred) / n
  return d_x, d_scale.astype(scale.dtype), d_bias.astype(scale.dtype)


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def bernoulli_mask(key: Array, keep_prob: float, shape: Sequence[int]) -> Array:
  """A boolean ``Bernoulli(keep_prob)`` array of ``shape`` from JAX's PRNG, with fewer draws.

  Where ``keep_prob * 2^b`` is an integer for ``b = 8`` or ``16`` (dropout rates 0.5 and
  0.25; not 0.1), every element takes ``b`` bits of a 32-bit word of ``jax.random.bits`` and
  is kept when they are below ``keep_prob * 2^b``: exactly ``Bernoulli(keep_prob)``, from
  ``32 / b`` times fewer PRNG words than ``jax.random.bernoulli`` (one 32-bit uniform per
  element, threefry's cost on a CPU). Other probabilities go to ``jax.random.bernoulli``.
  """
  n = 1
  for d in shape:
    n *= int(d)
  for bits in (8, 16):
    threshold = keep_prob * 2 ** bits
    if threshold == int(threshold):
      break
  else:
    return flat_random.bernoulli(key, keep_prob, shape)
  per_word = 32 // bits
  words = jax.random.bits(key, (-(-n // per_word),), jnp.uint32)
  low = jnp.uint32(2 ** bits - 1)
  parts = jnp.stack([(words >> jnp.uint32(bits * i)) & low for i in range(per_word)], axis=-1)
  return (parts.reshape(-1)[:n] < jnp.uint32(int(threshold))).reshape(tuple(shape))


DROPOUT_MASKS = ("packed", "flax")


class Dropout(nn.Module):
  """Inverted dropout, ``flax.linen.Dropout``'s function (kept units scaled by ``1 / (1 -
  rate)``, the rest 0, rng collection ``"dropout"``), with the mask of Flax's own
  ``jax.random.bernoulli`` (``mask="flax"``, the default: the very masks ``nn.Dropout``
  draws from the same key) or of ``bernoulli_mask`` (``mask="packed"``: the same
  distribution from fewer PRNG draws, but other masks than Flax's from the same key)."""

  rate: float
  mask: str = "flax"

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    if self.mask not in DROPOUT_MASKS:
      raise ValueError(f"Dropout: mask={self.mask!r}; expected one of {DROPOUT_MASKS}")
    if self.rate == 0.0 or deterministic:
      return x
    keep_prob = 1.0 - self.rate
    key = self.make_rng("dropout")
    if self.mask == "flax":
      keep = flat_random.bernoulli(key, keep_prob, x.shape)
    else:
      keep = bernoulli_mask(key, keep_prob, x.shape)
    return lax.select(keep, x / keep_prob, jnp.zeros_like(x))


class TorchLinear(nn.Module):
  """``torch.nn.Linear`` with torch-layout parameters ``weight [out, in]`` and ``bias [out]``.

  ``weight_init``/``bias_init`` of None are PyTorch's defaults ``U(+-1/sqrt(in))``;
  ``init_scheme="normal_0.02"`` overrides both (``N(0, 0.02^2)``, bias 0).
  """

  features: int
  weight_init: Initializer | None = None
  bias_init: Initializer | None = None
  precision: Any = None
  dtype: Any = None  # matmul operand dtype (None: float32); accumulation is float32
  init_scheme: str = "default"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    shape = (self.features, x.shape[-1])
    w_init, b_init = layer_inits(self.init_scheme, shape, self.weight_init, self.bias_init)
    weight = self.param("weight", w_init, shape)
    bias = self.param("bias", b_init, (self.features,))
    acc = jnp.promote_types(x.dtype, jnp.float32)
    if self.dtype is not None:
      x, weight = x.astype(self.dtype), weight.astype(self.dtype)
    return jnp.einsum("...i,oi->...o", x, weight, precision=self.precision, preferred_element_type=acc) + bias


_CONV_DIMS = ("NHWC", "OIHW", "NHWC")
TEMPORAL_CONVS = ("conv", "matmul")


def temporal_conv(x: Array, weight: Array, stride: int, padding: int, precision: Any = None,
                  impl: str = "conv") -> Array:
  """A ``k x 1`` convolution along the second axis of channels-last ``x [N, T, V, C]`` with a
  torch-layout kernel ``[O, C, k, 1]``, stride ``(stride, 1)``, zero padding ``(padding, 0)``.

  The same function as ``lax.conv_general_dilated`` in either ``impl``, both with a
  hand-written gradient:

  - ``"conv"``: the forward is XLA's convolution; the kernel gradient is ``k`` plain matmuls
    of the output gradient with the shifted input (XLA:CPU computes the kernel gradient of
    such convolutions at a few percent of its matmul speed: measured 2.9 s for ST-GCN's last
    256x256x9 layer at batch 128, against 0.34 s for the forward), and the input gradient is
    the forward convolution of the (zero-upsampled, for stride 2) output gradient with the
    flipped, transposed kernel;
  - ``"matmul"``: every part is ONE matmul over the ``k`` time-shifted slices stacked along
    the channel axis (``im2col``, ``[N*T'*V, k*C] @ [k*C, O]``): the forward, the kernel
    gradient (``[O, N*T'*V] @ [N*T'*V, k*C]``) and the input gradient (the ``k`` shifted
    slices of the upsampled output gradient against the flipped kernel,
    ``[N*T*V, k*O] @ [k*O, C]``).
  """
  if impl not in TEMPORAL_CONVS:
    raise ValueError(f"temporal_conv: impl={impl!r}; expected one of {', '.join(TEMPORAL_CONVS)}")
  return _temporal_conv(x, weight, int(stride), int(padding), precision, impl)


def _shifted_slices(x: Array, k: int, stride: int, pad_lo: int, pad_hi: int) -> Array:
  """``[N, T, V, C] -> [N, T', V, k*C]``: for output step ``t`` and tap ``i``, channels
  ``i*C .. i*C + C-1`` hold ``x_padded[t*stride + i]`` (zero padding ``pad_lo``/``pad_hi``)."""
  padded = jnp.pad(x, ((0, 0), (pad_lo, pad_hi), (0, 0), (0, 0)))
  t_out = (padded.shape[1] - k) // stride + 1
  return jnp.concatenate([lax.slice_in_dim(padded, i, i + (t_out - 1) * stride + 1, stride, axis=1)
                          for i in range(k)], axis=-1)


def _tap_major(weight: Array) -> Array:
  """``[O, C, k, 1] -> [k*C, O]``, row ``i*C + c``: the kernel against ``_shifted_slices``."""
  o, c, k, _ = weight.shape
  return jnp.transpose(weight[..., 0], (2, 1, 0)).reshape(k * c, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _temporal_conv(x, weight, stride, padding, precision, impl):
  if impl == "matmul":
    cols = _shifted_slices(x, weight.shape[2], stride, padding, padding)
    return jnp.einsum("ntvj,jo->ntvo", cols, _tap_major(weight), precision=precision)
  return lax.conv_general_dilated(x, weight, (stride, 1), ((padding, padding), (0, 0)),
                                  dimension_numbers=_CONV_DIMS, precision=precision)


def _temporal_conv_fwd(x, weight, stride, padding, precision, impl):
  return _temporal_conv(x, weight, stride, padding, precision, impl), (x, weight)


def _temporal_conv_bwd(stride, padding, precision, impl, residuals, grad):
  x, weight = residuals
  o, c, k, _ = weight.shape
  n, t, v, _ = x.shape
  t_out = grad.shape[1]
  up = grad
  if stride > 1:  # the stride's skipped positions get zero gradient
    up = jnp.zeros((n, (t_out - 1) * stride + 1, v, o), grad.dtype).at[:, ::stride].set(grad)
  lo = k - 1 - padding
  hi = t + k - 1 - up.shape[1] - lo
  if impl == "matmul":
    # d_x[u] = sum_j W[:, :, k-1-j]^T up_padded[u + j]: the shifted slices of the output
    # gradient against the flipped kernel; d_W: the output gradient against the input's slices.
    flipped = jnp.transpose(weight[:, :, ::-1, 0], (2, 0, 1)).reshape(k * o, c)  # row j*O + o
    d_x = jnp.einsum("ntvj,jc->ntvc", _shifted_slices(up, k, 1, lo, hi), flipped, precision=precision)
    cols = _shifted_slices(x, k, stride, padding, padding)
    d_w = jnp.einsum("ntvo,ntvj->oj", grad, cols, precision=precision)  # [O, k*C], column i*C + c
    d_w = jnp.transpose(d_w.reshape(o, k, c), (0, 2, 1))[..., None]
    return d_x.astype(x.dtype), d_w.astype(weight.dtype)
  flipped = jnp.transpose(weight[:, :, ::-1, :], (1, 0, 2, 3))  # [C, O, k, 1]
  d_x = lax.conv_general_dilated(up, flipped, (1, 1), ((lo, hi), (0, 0)), dimension_numbers=_CONV_DIMS,
                                 precision=precision)
  padded = jnp.pad(x, ((0, 0), (padding, padding), (0, 0), (0, 0)))
  rows = grad.reshape(-1, grad.shape[3])
  taps = [jnp.einsum("mo,mc->oc", rows, lax.slice_in_dim(padded, i, i + (t_out - 1) * stride + 1, stride,
                                                          axis=1).reshape(-1, c), precision=precision)
          for i in range(k)]
  return d_x.astype(x.dtype), jnp.stack(taps, axis=-1)[..., None].astype(weight.dtype)


_temporal_conv.defvjp(_temporal_conv_fwd, _temporal_conv_bwd)


def pointwise_conv(x: Array, weight: Array, precision: Any = None) -> Array:
  """A 1x1 convolution (or Linear) ``y[..., o] = sum_c x[..., c] weight[o, c]`` of
  channels-last ``x`` with a torch-layout ``weight [O, C]``, as one matmul, with a
  hand-written gradient: the input gradient is one matmul, and the weight gradient contracts
  the rows with the SMALLER of ``x`` and the output gradient as the transposed operand
  (XLA:CPU's dots read a transposed copy of one operand; autodiff of the einsum copies the
  output gradient, fused with whatever produced it, even where it has more channels)."""
  return _pointwise_conv(x, weight, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pointwise_conv(x, weight, precision):
  return jnp.einsum("...c,oc->...o", x, weight, precision=precision)


def _pointwise_conv_fwd(x, weight, precision):
  return _pointwise_conv(x, weight, precision), (x, weight)


def _pointwise_conv_bwd(precision, residuals, grad):
  x, weight = residuals
  rows, grad_rows = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
  d_x = jnp.einsum("...o,oc->...c", grad, weight, precision=precision)
  if x.shape[-1] <= grad.shape[-1]:
    d_w = jnp.einsum("nc,no->co", rows, grad_rows, precision=precision).T
  else:
    d_w = jnp.einsum("no,nc->oc", grad_rows, rows, precision=precision)
  return d_x.astype(x.dtype), d_w.astype(weight.dtype)


_pointwise_conv.defvjp(_pointwise_conv_fwd, _pointwise_conv_bwd)


def conv_parameters(module: nn.Module, features: int, in_features: int, kernel_size: tuple[int, int],
                    use_bias: bool, weight_init: Initializer | None, bias_init: Initializer | None,
                    init_scheme: str) -> tuple[Array, Array | None]:
  """A ``Conv2d``'s ``weight [out, in, kh, kw]`` and ``bias [out]`` (or None), created in
  ``module``'s scope (call it from a compact method), weight first."""
  shape = (features, in_features, *kernel_size)
  w_init, b_init = layer_inits(init_scheme, shape, weight_init, bias_init)
  weight = module.param("weight", w_init, shape)
  bias = module.param("bias", b_init, (features,)) if use_bias else None
  return weight, bias


class TorchConv2dParams(nn.Module):
  """The parameters of a ``TorchConv2d`` (same names, shapes, initialisers, creation order),
  for a layer that applies them itself: ``__call__(in_features) -> (weight, bias or None)``."""

  features: int
  kernel_size: tuple[int, int] = (1, 1)
  use_bias: bool = True
  weight_init: Initializer | None = None
  bias_init: Initializer | None = None
  init_scheme: str = "default"

  @nn.compact
  def __call__(self, in_features: int) -> tuple[Array, Array | None]:
    return conv_parameters(self, self.features, in_features, self.kernel_size, self.use_bias, self.weight_init,
                           self.bias_init, self.init_scheme)


class TorchConv2d(nn.Module):
  """``torch.nn.Conv2d`` on channels-last input ``[N, H, W, C_in]`` with a torch-layout kernel.

  Parameters: ``weight [out, in, kh, kw]``, ``bias [out]`` (when ``use_bias``). ``padding``
  is PyTorch's symmetric zero padding ``(ph, pw)``; ``stride`` is ``(sh, sw)``. Output
  ``[N, H', W', out]``. 1x1 kernels are one matmul (``pointwise_conv``); ``k x 1`` kernels (temporal
  convolutions) go through ``temporal_conv`` with ``temporal_impl`` (``"conv"`` or
  ``"matmul"``: the same function).
  """

  features: int
  kernel_size: tuple[int, int] = (1, 1)
  stride: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)
  use_bias: bool = True
  weight_init: Initializer | None = None
  bias_init: Initializer | None = None
  precision: Any = None
  init_scheme: str = "default"
  temporal_impl: str = "conv"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kh, kw = self.kernel_size
    weight, bias = conv_parameters(self, self.features, x.shape[-1], self.kernel_size, self.use_bias,
                                   self.weight_init, self.bias_init, self.init_scheme)
    dtype = jnp.result_type(x, weight)  # float32, or float64 throughout when the state is float64
    x, weight = x.astype(dtype), weight.astype(dtype)
    sh, sw = self.stride
    ph, pw = self.padding
    if (kh, kw) == (1, 1) and (ph, pw) == (0, 0):
      y = pointwise_conv(x[:, ::sh, ::sw], weight[:, :, 0, 0], self.precision)
    elif kw == 1 and sw == 1 and pw == 0:
      y = temporal_conv(x, weight, sh, ph, self.precision, self.temporal_impl)
    else:
      y = lax.conv_general_dilated(x, weight, window_strides=(sh, sw), padding=((ph, ph), (pw, pw)),
                                   dimension_numbers=_CONV_DIMS, precision=self.precision)
    if bias is not None:
      y = y + bias
    return y


# ----------------------------------------------------------------------------------------
# The head every encoder shares
# ----------------------------------------------------------------------------------------

def head(feature: Array, num_outputs: int, mlp: bool, *, init_scheme: str = "default",
         last_weight_init: Initializer | None = None, last_bias_init: Initializer | None = None,
         precision: Any = None, dtype: Any = None) -> Array:
  """The projection/classification head on an encoder's pooled feature ``[N, D]``.

  Call it inside an encoder's ``@nn.compact`` ``__call__``: the layers are created in that
  module's scope. ``mlp=False``: ``fc = Linear(D, num_outputs)``; ``mlp=True`` (MoCo v2's
  projector, the references' ``mlp`` flag): ``fc_0 = Linear(D, D) -> ReLU -> fc_2 =
  Linear(D, num_outputs)``, named as PyTorch's ``fc = nn.Sequential(Linear, ReLU, Linear)``
  (``fc.0``, ``fc.2``). ``last_weight_init``/``last_bias_init`` set the last layer's
  initialisers (None: PyTorch's default); ``init_scheme="normal_0.02"`` overrides every layer.
  """
  if mlp:
    h = TorchLinear(feature.shape[-1], precision=precision, dtype=dtype, init_scheme=init_scheme, name="fc_0")(feature)
    h = nn.relu(h)
    return TorchLinear(num_outputs, last_weight_init, last_bias_init, precision, dtype, init_scheme=init_scheme, name="fc_2")(h)
  return TorchLinear(num_outputs, last_weight_init, last_bias_init, precision, dtype, init_scheme=init_scheme, name="fc")(feature)


def with_transformed_map(pool: Callable[[Array], Array], feature_map: Array,
                         map_transform: Callable[[Array], Array] | None) -> Array | tuple[Array, Array]:
  """An encoder's pooled feature ``pool(feature_map)``, and with a ``map_transform`` (e.g.
  AimCLR's EADM) the pair ``(pool(feature_map), pool(map_transform(feature_map)))``: the
  encoder interface's optional second output (docs/architecture.md#the-encoder-interface)."""
  if map_transform is None:
    return pool(feature_map)
  return pool(feature_map), pool(map_transform(feature_map))


def rows_apply(fn: Callable[[Array], Array], x: Array | tuple[Array, ...]) -> Array | tuple[Array, ...]:
  """``fn(x)``; for a tuple of ``[N_i, ...]`` arrays, ``fn`` applied ONCE to them stacked
  along axis 0 and split back, so that a head called on an encoder's feature pair creates its
  layers once and applies the same weights to both (``fn`` must act row by row)."""
  if not isinstance(x, tuple):
    return fn(x)
  sizes = [a.shape[0] for a in x]
  out = fn(jnp.concatenate(x, axis=0))
  return tuple(jnp.split(out, list(itertools.accumulate(sizes[:-1])), axis=0))


HEAD_NAMES = ("fc", "fc_0", "fc_2")


def strip_head(params: dict[str, Any]) -> dict[str, Any]:
  """An encoder's params without its head (``fc``, ``fc_0``, ``fc_2``)."""
  return {k: v for k, v in params.items() if k not in HEAD_NAMES}


_TORCH_LEAF = {"scale": "weight", "mean": "running_mean", "var": "running_var"}
_TORCH_LEAF_INV = {v: k for k, v in _TORCH_LEAF.items()}


def torch_key(path: Sequence[str]) -> str:
  """The PyTorch ``state_dict`` key of a Flax variable at ``path`` (module names, then the
  leaf): a module named ``name_<digits>`` is PyTorch's ``name.<digits>`` (a Sequential or
  ModuleList entry), BatchNorm leaves ``scale``/``mean``/``var`` are
  ``weight``/``running_mean``/``running_var``; everything else keeps its name."""
  *modules, leaf = path
  parts = []
  for name in modules:
    head, sep, tail = name.rpartition("_")
    parts.append(f"{head}.{tail}" if sep and head and tail.isdigit() else name)
  return ".".join(parts + [_TORCH_LEAF.get(leaf, leaf)])


def to_channels_last(x: Array) -> Array:
  """``[N, C, T, V, M] -> [N*M, T, V, C]``: persons folded into the batch, person-major
  within each sample (row ``n*M + m``), as the references' ``permute(0, 4, ...)`` gives."""
  n, c, t, v, m = x.shape
  return jnp.transpose(x, (0, 4, 2, 3, 1)).reshape(n * m, t, v, c)
