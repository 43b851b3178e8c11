"""The skeleton sequence encoder: the reference's ``BIGRU`` as it actually computes (reference_cmd.md 3).

This module owns the per-stream encoder of CMD: input BatchNorm, the 3-layer GRU, and the
head (a downstream ``Linear`` or the pretraining MLP). It follows ``moco/GRU.py`` of the
PyTorch reference and its quirks 1 and 2 (reference_cmd.md 7).

Computation (input ``[N, T, F]``, ``F = 150`` for NTU, see ``cmd_jax.modalities.flatten``):

1. ``input_norm``: BatchNorm over the last axis, statistics over ``N x T`` (PyTorch
   ``BatchNorm1d`` on the ``(N, F, T)`` permutation). ``TorchBatchNorm`` reproduces PyTorch
   exactly, including the *unbiased* batch variance in the running-variance update
   (``running = momentum * running + (1 - momentum) * batch``, with Flax's convention
   ``momentum = 0.9`` = PyTorch's ``0.1``). Normalisation uses the biased variance.
2. ``gru``: ``num_layers`` layers, each with two GRU cells named like PyTorch's directions
   (``..._l{k}`` and ``..._l{k}_reverse``). **Faithful mode** (``bidirectional=False``, the
   default): the reference calls its ``nn.GRU(bidirectional=True)`` once per time step on a
   length-1 slice and carries ``h_n``, so *both* cells run forward in time on the same input
   (quirk 1). Their outputs are concatenated (``2H``); layers ``1..`` take that ``2H`` input.
   ``h0 = 0``. The time loop is one ``lax.scan`` per layer; the input projection of both
   cells (``x @ W_ih^T`` for all ``T``) is one matmul hoisted out of the scan, and the scan
   body does only the recurrent matmul of both cells (one batched einsum).
   **DEVIATION** (``bidirectional=True``, off by default, not the reference): a *true*
   bidirectional GRU, the ``_reverse`` cell running over the time-reversed sequence, i.e.
   what ``nn.GRU(bidirectional=True)`` computes when called once on the whole sequence.
3. ``feature`` = the top layer's output at the last step ``T-1``, ``[N, 2H]`` (with
   ``bidirectional=True`` the reverse half of that output has seen only the last frame,
   exactly as the reference's gather would give for a whole-sequence call).
4. head: ``features_only=True`` (the reference's ``knn_eval``) returns ``feature``;
   otherwise ``fc(feature)`` (``mlp=False``) or ``fc_2(relu(fc_0(feature)))`` (``mlp=True``,
   hidden width ``2H``, no BN). ``num_outputs=None`` builds no head.

GRU cell (PyTorch gate order r, z, n)::

  r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
  z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
  n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
  h' = (1 - z) * n + z * h

Parameter layout: **every weight is stored in PyTorch's layout** (``Linear.weight`` is
``[out, in]``, GRU ``weight_ih`` is ``[3H, in]`` with rows ``(r, z, n)``), so a reference
checkpoint converts by renaming only, with no transposes. Mapping from a reference
``BIGRU`` ``state_dict`` (prefix e.g. ``encoder_q.``, ``encoder_q_motion.``):

==========================================  =================================================
PyTorch key                                 Flax collection / path
==========================================  =================================================
``input_norm.weight``                       ``params/input_norm/scale``        ``[F]``
``input_norm.bias``                         ``params/input_norm/bias``         ``[F]``
``input_norm.running_mean``                 ``batch_stats/input_norm/mean``    ``[F]``
``input_norm.running_var``                  ``batch_stats/input_norm/var``     ``[F]``
``input_norm.num_batches_tracked``          dropped (unused with a fixed momentum)
``encoder.gru.weight_ih_l{k}[_reverse]``    ``params/gru/weight_ih_l{k}[_reverse]``  ``[3H, in_k]``
``encoder.gru.weight_hh_l{k}[_reverse]``    ``params/gru/weight_hh_l{k}[_reverse]``  ``[3H, H]``
``encoder.gru.bias_ih_l{k}[_reverse]``      ``params/gru/bias_ih_l{k}[_reverse]``    ``[3H]``
``encoder.gru.bias_hh_l{k}[_reverse]``      ``params/gru/bias_hh_l{k}[_reverse]``    ``[3H]``
``fc.weight`` / ``fc.bias``                 ``params/fc/weight`` / ``params/fc/bias``  (``mlp=False``)
``fc.0.weight`` / ``fc.0.bias``             ``params/fc_0/weight`` / ``bias``  ``[2H, 2H]`` (``mlp=True``)
``fc.2.weight`` / ``fc.2.bias``             ``params/fc_2/weight`` / ``bias``  ``[out, 2H]``
==========================================  =================================================

with ``in_0 = F`` and ``in_k = 2H`` for ``k >= 1``.

Initialisation (reference_cmd.md 3 "Weight init", quirk 2):

- every GRU weight: xavier-uniform over the whole stacked ``[3H, in]`` matrix,
  ``U(+-sqrt(6 / (3H + in)))``; GRU biases ``U(+-1/sqrt(H))``;
- the final Linear (``fc``, or the MLP's last layer ``fc_2``): ``fc_init="xavier"``
  (reference builder / pretraining) gives a xavier-uniform weight and a PyTorch-default
  bias ``U(+-1/sqrt(in))``; ``fc_init="normal_0.01"`` (the downstream scripts re-init their fc)
  gives weight ``N(0, 0.01^2)`` and bias 0;
- the MLP's first Linear ``fc_0`` keeps PyTorch's default: weight and bias ``U(+-1/sqrt(in))``;
- BN: scale 1, bias 0, running mean 0, running var 1.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Initializer = Callable[..., Array]

FC_INITS = ("xavier", "normal_0.01")


# ----------------------------------------------------------------------------------------
# Initialisers (PyTorch's, written out)
# ----------------------------------------------------------------------------------------

def uniform_init(bound: float) -> Initializer:
  """``U(-bound, bound)``, like ``torch.nn.init.uniform_(-bound, bound)``."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

  return init


def xavier_uniform_torch(key, shape, dtype=jnp.float32) -> Array:
  """``torch.nn.init.xavier_uniform_`` on a torch-layout ``[out, in]`` matrix."""
  fan_out, fan_in = shape
  bound = (6.0 / (fan_in + fan_out)) ** 0.5
  return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


def normal_init(std: float) -> Initializer:
  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.normal(key, shape, dtype)

  return init


# ----------------------------------------------------------------------------------------
# Pure math
# ----------------------------------------------------------------------------------------

def gru_update(gi: Array, gh: Array, h: Array) -> Array:
  """One PyTorch GRU step from the two projections.

  Args:
    gi: ``W_ih x + b_ih``, ``[..., 3H]`` with gates ``(r, z, n)`` along the last axis.
    gh: ``W_hh h + b_hh``, ``[..., 3H]``.
    h: the previous hidden state ``[..., H]``.
  Returns:
    the new hidden state ``[..., H]``.
  """
  i_r, i_z, i_n = jnp.split(gi, 3, axis=-1)
  h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
  r = jax.nn.sigmoid(i_r + h_r)
  z = jax.nn.sigmoid(i_z + h_z)
  n = jnp.tanh(i_n + r * h_n)
  return (1.0 - z) * n + z * h


def gru_layer(x: Array, weight_ih: Array, weight_hh: Array, bias_ih: Array, bias_hh: Array,
              reverse: Sequence[bool], precision: Any = None) -> Array:
  """``D`` GRU cells run side by side over the same time-major input, ``h0 = 0``.

  Args:
    x: input ``[T, N, F]``.
    weight_ih: ``[D, 3H, F]`` (torch layout, one matrix per cell).
    weight_hh: ``[D, 3H, H]``.
    bias_ih, bias_hh: ``[D, 3H]``.
    reverse: ``D`` flags; cell ``d`` runs over the time-reversed sequence when set (its
      outputs are put back in forward time order).
    precision: matmul precision for ``jnp.einsum``.
  Returns:
    ``[T, N, D*H]``: the cells' outputs at each step, concatenated in cell order.
  """
  num_cells, three_h, _ = weight_ih.shape
  hidden = three_h // 3
  # Input projection of every step and every cell in one matmul, outside the scan.
  gi = jnp.einsum("tnf,dgf->tndg", x, weight_ih, precision=precision) + bias_ih
  flip = [bool(r) for r in reverse]
  if any(flip):
    gi = jnp.stack([gi[::-1, :, d] if flip[d] else gi[:, :, d] for d in range(num_cells)], axis=2)

  def step(h, gi_t):
    gh = jnp.einsum("ndh,dgh->ndg", h, weight_hh, precision=precision) + bias_hh
    h = gru_update(gi_t, gh, h)
    return h, h

  h0 = jnp.zeros((x.shape[1], num_cells, hidden), gi.dtype)
  _, out = lax.scan(step, h0, gi)  # [T, N, D, H]
  if any(flip):
    out = jnp.stack([out[::-1, :, d] if flip[d] else out[:, :, d] for d in range(num_cells)],
                    axis=2)
  return out.reshape(out.shape[0], out.shape[1], num_cells * hidden)


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


# ----------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------

class TorchBatchNorm(nn.Module):
  """PyTorch ``BatchNorm1d`` over the last axis of ``[..., F]``, statistics over all other axes.

  Names match ``flax.linen.BatchNorm`` (``params``: ``scale``, ``bias``; ``batch_stats``:
  ``mean``, ``var``). Unlike Flax's, the running variance is updated with the *unbiased*
  batch variance, as PyTorch does. ``momentum`` is Flax's convention (fraction kept).
  As in Flax, ``init`` does not update the running statistics.
  """

  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    if train:
      axes = tuple(range(x.ndim - 1))
      mean, var, unbiased = batch_norm_stats(x, axes)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * unbiased
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (x - mean) * lax.rsqrt(var + self.epsilon)
    return (y * scale + bias).astype(x.dtype)


class TorchLinear(nn.Module):
  """``torch.nn.Linear`` with torch-layout parameters ``weight [out, in]`` and ``bias [out]``."""

  features: int
  weight_init: Initializer | None = None  # None: PyTorch default U(+-1/sqrt(in))
  bias_init: Initializer | None = None  # None: PyTorch default U(+-1/sqrt(in))
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in = x.shape[-1]
    default = uniform_init(1.0 / fan_in ** 0.5)
    weight = self.param("weight", self.weight_init or default, (self.features, fan_in))
    bias = self.param("bias", self.bias_init or default, (self.features,))
    return jnp.einsum("...i,oi->...o", x, weight, precision=self.precision) + bias


class TorchGRU(nn.Module):
  """A multi-layer GRU with ``torch.nn.GRU(bidirectional=True)``'s parameters, run over ``[N, T, F]``.

  ``bidirectional=False`` runs both direction cells forward in time (the reference's
  per-step behaviour); ``bidirectional=True`` is the true bidirectional GRU (DEVIATION).
  Returns the top layer's outputs ``[N, T, 2H]``.
  """

  hidden_size: int = 1024
  num_layers: int = 3
  bidirectional: bool = False
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = self.hidden_size
    weight_b = uniform_init(1.0 / h ** 0.5)
    y = jnp.swapaxes(x, 0, 1)  # time-major [T, N, F]
    for k in range(self.num_layers):
      in_size = y.shape[-1]
      cells = {name: {} for name in (f"l{k}", f"l{k}_reverse")}
      for suffix, p in cells.items():
        p["weight_ih"] = self.param(f"weight_ih_{suffix}", xavier_uniform_torch, (3 * h, in_size))
        p["weight_hh"] = self.param(f"weight_hh_{suffix}", xavier_uniform_torch, (3 * h, h))
        p["bias_ih"] = self.param(f"bias_ih_{suffix}", weight_b, (3 * h,))
        p["bias_hh"] = self.param(f"bias_hh_{suffix}", weight_b, (3 * h,))
      stacked = {name: jnp.stack([p[name] for p in cells.values()])
                 for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
      y = gru_layer(y, **stacked, reverse=(False, self.bidirectional), precision=self.precision)
    return jnp.swapaxes(y, 0, 1)


class Encoder(nn.Module):
  """The reference ``BIGRU``: ``[N, T, F] -> feature [N, 2H] -> head``.

  Attributes:
    hidden_size: H per cell (1024); the feature is ``2H``.
    num_layers: GRU layers (3).
    num_outputs: head output size: 128 for pretraining, the class count downstream, or
      ``None`` for no head (the call then returns the feature).
    mlp: the pretraining head ``Linear(2H, 2H) -> ReLU -> Linear(2H, num_outputs)``
      (``fc_0``, ``fc_2``) instead of a single ``fc``.
    bidirectional: False (default) = the reference's forward-only two-cell GRU;
      True = a true bidirectional GRU (DEVIATION from the reference).
    fc_init: init of the final Linear's weight and bias: ``"xavier"`` (reference builder,
      pretraining) or ``"normal_0.01"`` (downstream scripts: ``N(0, 0.01)``, bias 0).
    bn_momentum, bn_epsilon: input BatchNorm, Flax momentum convention (PyTorch 0.1 = 0.9).
    precision: matmul precision of the GRU and head. ``None`` is JAX's default, which on
      GPU/TPU may compute float32 matmuls at reduced precision (TF32 / bf16 passes); pass
      ``"highest"`` for full float32 when comparing with the reference numerically.
  """

  hidden_size: int = 1024
  num_layers: int = 3
  num_outputs: int | None = 128
  mlp: bool = False
  bidirectional: bool = False
  fc_init: str = "xavier"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False, features_only: bool = False) -> Array:
    """``x``: ``[N, T, F]``. ``train`` selects batch (True) or running (False) BN statistics
    and, when True, needs ``mutable=["batch_stats"]``. Returns the feature ``[N, 2H]`` when
    ``features_only`` or ``num_outputs is None``, else the head output ``[N, num_outputs]``
    (``init`` always creates the head's parameters)."""
    if x.ndim != 3:
      raise ValueError(f"Encoder: expected input [N, T, F], got shape {x.shape}")
    if self.fc_init not in FC_INITS:
      raise ValueError(f"Encoder: unknown fc_init {self.fc_init!r}; expected one of {FC_INITS}")
    y = TorchBatchNorm(momentum=self.bn_momentum, epsilon=self.bn_epsilon, name="input_norm")(
        x, train)
    y = TorchGRU(self.hidden_size, self.num_layers, self.bidirectional, self.precision,
                 name="gru")(y)
    feature = y[:, -1]
    if self.num_outputs is None or (features_only and not self.is_initializing()):
      return feature

    if self.fc_init == "xavier":
      last_w, last_b = xavier_uniform_torch, None
    else:
      last_w, last_b = normal_init(0.01), nn.initializers.zeros
    if self.mlp:
      h = TorchLinear(feature.shape[-1], precision=self.precision, name="fc_0")(feature)
      h = nn.relu(h)
      out = TorchLinear(self.num_outputs, last_w, last_b, self.precision, name="fc_2")(h)
    else:
      out = TorchLinear(self.num_outputs, last_w, last_b, self.precision, name="fc")(feature)
    return feature if features_only else out
