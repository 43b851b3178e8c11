"""The skeleton sequence encoder: the reference's ``BIGRU`` as it actually computes (docs/references.md#cmd-encoder).

This module owns the per-stream encoder of CMD: input BatchNorm, the 3-layer GRU, and the
head (a downstream ``Linear`` or the pretraining MLP). It follows ``moco/GRU.py`` of the
PyTorch reference and its quirks 1 and 2 (docs/references.md#cmd-quirks).

Computation (input a clip ``[N, C, T, V, M]``, flattened to ``[N, T, F]`` with ``F = V*C*M``,
150 for NTU, by ``cmd_jax.modalities.flatten``):

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
   ``h0 = 0``. The time loop is one ``lax.scan`` per layer with both cells in one batched
   recurrent matmul per step; the input projection of both cells is one matmul, either
   hoisted out of the loop for all ``T`` (GPU/TPU) or one per step (CPU), see
   ``gru_layer``. The backward pass is hand-written (``_gru_cells_bwd``): a reverse loop
   that only propagates ``dh``, then every weight gradient as one large matmul.
   **DEVIATION** (``bidirectional=True``, off by default, not the reference): a *true*
   bidirectional GRU, the ``_reverse`` cell running over the time-reversed sequence, i.e.
   what ``nn.GRU(bidirectional=True)`` computes when called once on the whole sequence.
3. ``feature`` = the top layer's output at the last step ``T-1``, ``[N, 2H]`` (with
   ``bidirectional=True`` the reverse half of that output has seen only the last frame,
   exactly as the reference's gather would give for a whole-sequence call).
   With ``map_transform`` (AimCLR's EADM) the top layer's outputs, as a map ``[N, T, 1, 2H]``,
   are also transformed and pooled alike (the last step): a second feature, same head.
4. head: ``features_only=True`` (the reference's ``knn_eval``) returns ``feature``;
   otherwise ``fc(feature)`` (``mlp=False``) or ``fc_2(relu(fc_0(feature)))`` (``mlp=True``,
   hidden width ``2H``, no BN). ``num_outputs=None`` builds no head.

GRU cell (PyTorch gate order r, z, n)::

  r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
  z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
  n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
  h' = (1 - z) * n + z * h

Speed options (same function, ``bench/RESULTS.md``): ``input_projection``, ``scan_unroll``;
and one numerical option, ``compute_dtype="bfloat16"`` (bf16 matmul operands, float32
accumulation; a DEVIATION from the reference's float32, off by default).

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

Initialisation (docs/references.md#cmd-encoder-initialisation, quirk 2):

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

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from cmd_jax import modalities
from cmd_jax.layouts import SkeletonLayout
from cmd_jax.models.common import (TorchBatchNorm, check_init, head, normal_init, rows_apply, uniform_init,
                                   with_transformed_map, xavier_uniform_torch)
from cmd_jax.models.common import torch_key as common_torch_key

Array = jax.Array

FC_INITS = ("xavier", "normal_0.01")
COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


# ----------------------------------------------------------------------------------------
# Pure math
# ----------------------------------------------------------------------------------------

def gru_gates(gi: Array, gh: Array) -> tuple[Array, Array, Array, Array]:
  """The gates of one PyTorch GRU step: ``(r, z, n, hn)`` with ``hn = W_hn h + b_hn``.

  Args:
    gi: ``W_ih x + b_ih``, ``[..., 3H]`` with gates ``(r, z, n)`` along the last axis.
    gh: ``W_hh h + b_hh``, ``[..., 3H]``.
  """
  i_r, i_z, i_n = jnp.split(gi, 3, axis=-1)
  h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
  r = jax.nn.sigmoid(i_r + h_r)
  z = jax.nn.sigmoid(i_z + h_z)
  n = jnp.tanh(i_n + r * h_n)
  return r, z, n, h_n


PROJECTIONS = ("auto", "hoisted", "per_step")


def gru_layer(x: Array, weight_ih: Array, weight_hh: Array, bias_ih: Array, bias_hh: Array,
              reverse: Sequence[bool], precision: Any = None, dtype: Any = None,
              unroll: int = 1, projection: str = "auto") -> Array:
  """``D`` GRU cells run side by side over the same time-major input, ``h0 = 0``.

  Args:
    x: input ``[T, N, F]``.
    weight_ih: ``[D, 3H, F]`` (torch layout, one matrix per cell).
    weight_hh: ``[D, 3H, H]``.
    bias_ih, bias_hh: ``[D, 3H]``.
    reverse: ``D`` flags; cell ``d`` runs over the time-reversed sequence when set (its
      outputs are put back in forward time order).
    precision: matmul precision for ``jnp.einsum``.
    dtype: the matmuls' operand dtype (``None``: the inputs' own, float32). With
      ``jnp.bfloat16`` the input, the weights and the hidden state are rounded to bfloat16
      as matmul operands, which accumulate in float32; biases, gates and the hidden state
      itself stay float32 (``Encoder.compute_dtype``).
    unroll: time steps per iteration of the scan loop (``lax.scan(unroll=...)``).
    projection: where the input projection ``W_ih x_t + b_ih`` is computed: ``"hoisted"``:
      for all steps and cells in one matmul before the time loop (best on GPUs/TPUs);
      ``"per_step"``: inside the loop, one ``[N, F] x [F, D*3H]`` matmul per step (faster on
      the CPU, where XLA's fused read of a precomputed step slice next to the gates'
      ``exp``/``tanh`` is not vectorised); ``"auto"``: ``per_step`` when the default backend
      is the CPU, else ``hoisted``. Cells running in reverse always use ``hoisted``.
  Returns:
    ``[T, N, D*H]`` float32: the cells' outputs at each step, concatenated in cell order.

  ``unroll`` and ``projection`` change the speed, not the function. The gradient is a
  hand-written VJP (``_gru_cells_bwd``, the backward pass cuDNN uses): a reverse time loop
  that only propagates ``dh`` (one ``[N, 3H] x [3H, H]`` matmul per step and cell, no
  transcendental functions: the forward's gates are kept), then the weight and input
  gradients as a few large matmuls over all ``T x N`` rows at once.
  """
  if projection not in PROJECTIONS:
    raise ValueError(f"gru_layer: projection={projection!r}; expected one of {PROJECTIONS}")
  flip = tuple(bool(r) for r in reverse)
  if len(flip) != weight_ih.shape[0]:
    raise ValueError(f"gru_layer: {len(flip)} reverse flags for {weight_ih.shape[0]} cells")
  if projection == "auto":
    projection = "per_step" if jax.default_backend() == "cpu" else "hoisted"
  if any(flip):
    projection = "hoisted"
  out = _gru_cells(x, weight_ih, weight_hh, bias_ih, bias_hh, flip, precision, dtype, int(unroll), projection)
  return out.reshape(out.shape[0], out.shape[1], -1)


def _flip_cells(a: Array, flip: tuple[bool, ...], axis: int = 1) -> Array:
  """Reverses time (axis 0) of the cells (``axis``) whose flag is set; an involution."""
  if not any(flip):
    return a
  return jnp.stack([jnp.take(a, d, axis=axis)[::-1] if f else jnp.take(a, d, axis=axis)
                    for d, f in enumerate(flip)], axis=axis)


def _operands(dtype, *arrays):
  return arrays if dtype is None else tuple(a.astype(dtype) for a in arrays)


def _gru_forward(x, weight_ih, weight_hh, bias_ih, bias_hh, flip, precision, dtype, unroll, projection,
                 keep_gates: bool):
  """The time loop, cell-major inside (``h [D, N, H]``: every matmul has its batch axes
  leading, also under ``vmap``, so XLA inserts no per-step transposes).

  Returns ``out [T, N, D, H]`` (forward time order) and, when ``keep_gates``, the
  residuals of the backward pass, each ``[T, D, N, H]`` in scan order: the outputs ``h``,
  the gates ``r, z, n`` and ``hn = W_hn h + b_hn``."""
  acc = jnp.promote_types(x.dtype, jnp.float32)
  num_cells, three_h, features = weight_ih.shape
  hidden = three_h // 3
  xo, w_ih, w_hh = _operands(dtype, x, weight_ih, weight_hh)
  # Weights in the layouts the matmuls read, transposed once outside the loop.
  w_in = jnp.transpose(w_ih, (2, 0, 1)).reshape(features, num_cells * three_h)  # [F, D*3H]
  w_rec = jnp.swapaxes(w_hh, 1, 2)  # [D, H, 3H]
  b_in = bias_ih[:, None, :]  # [D, 1, 3H]
  b_rec = bias_hh[:, None, :]

  def project(x_rows):  # [..., N, F] -> [..., D, N, 3H]
    g = jnp.einsum("...nf,fk->...nk", x_rows, w_in, precision=precision, preferred_element_type=acc)
    g = g.reshape(g.shape[:-1] + (num_cells, three_h))
    return jnp.moveaxis(g, -2, -3) + b_in

  def step(h, inp):
    gi_t = project(inp) if projection == "per_step" else inp
    gh = jnp.einsum("dnh,dhg->dng", _operands(dtype, h)[0], w_rec, precision=precision,
                    preferred_element_type=acc) + b_rec
    r, z, n, h_n = gru_gates(gi_t, gh)
    h = (1.0 - z) * n + z * h
    return h, ((h, r, z, n, h_n) if keep_gates else h)

  xs = xo if projection == "per_step" else _flip_cells(project(xo), flip)
  h0 = jnp.zeros((num_cells, x.shape[1], hidden), acc)
  _, ys = lax.scan(step, h0, xs, unroll=unroll)
  seq = ys if not keep_gates else ys[0]
  out = jnp.swapaxes(_flip_cells(seq, flip), 1, 2)  # [T, N, D, H]
  return out, (ys if keep_gates else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _gru_cells(x, weight_ih, weight_hh, bias_ih, bias_hh, flip, precision, dtype, unroll, projection):
  return _gru_forward(x, weight_ih, weight_hh, bias_ih, bias_hh, flip, precision, dtype, unroll, projection,
                      keep_gates=False)[0]


def _gru_cells_fwd(x, weight_ih, weight_hh, bias_ih, bias_hh, flip, precision, dtype, unroll, projection):
  out, saved = _gru_forward(x, weight_ih, weight_hh, bias_ih, bias_hh, flip, precision, dtype, unroll, projection,
                            keep_gates=True)
  return out, (x, weight_ih, weight_hh, saved)


def _gru_cells_bwd(flip, precision, dtype, unroll, projection, residuals, d_out):
  """Backpropagation through time for ``_gru_cells`` (in the scan's time order, cell-major).

  With ``a_r = i_r + h_r``, ``a_z = i_z + h_z``, ``a_n = i_n + r * hn`` and
  ``h_t = (1 - z) n + z h_{t-1}``, for ``g = dL/dh_t`` (output plus carried gradient)::

    da_n = g (1 - z) (1 - n^2);  da_z = g (h_{t-1} - n) z (1 - z);  da_r = da_n hn r (1 - r)
    dgi = [da_r, da_z, da_n];    dgh = [da_r, da_z, da_n r]
    dL/dh_{t-1} = g z + dgh @ W_hh

  then ``dW_hh = sum_t dgh_t^T h_{t-1}``, ``db_hh = sum dgh``, ``dW_ih = sum_t dgi_t^T x_t``,
  ``db_ih = sum dgi``, ``dx_t = dgi_t @ W_ih`` as matmuls over all steps at once.
  """
  del projection  # the gradient does not depend on where the forward projected
  x, weight_ih, weight_hh, (h_seq, r, z, n, hn) = residuals
  acc = jnp.promote_types(x.dtype, jnp.float32)
  num_cells, three_h, features = weight_ih.shape
  w_ih, w_hh = _operands(dtype, weight_ih, weight_hh)
  d_out = _flip_cells(jnp.swapaxes(d_out.astype(acc), 1, 2), flip)  # [T, D, N, H], scan order
  h_prev = jnp.concatenate([jnp.zeros_like(h_seq[:1]), h_seq[:-1]], axis=0)

  def step(dh, inp):
    d_out_t, r_t, z_t, n_t, hn_t, hp_t = inp
    g = d_out_t + dh
    da_n = g * (1.0 - z_t) * (1.0 - n_t * n_t)
    da_z = g * (hp_t - n_t) * z_t * (1.0 - z_t)
    da_r = da_n * hn_t * r_t * (1.0 - r_t)
    dgi = jnp.concatenate([da_r, da_z, da_n], axis=-1)
    dgh = jnp.concatenate([da_r, da_z, da_n * r_t], axis=-1)
    dh = g * z_t + jnp.einsum("dng,dgh->dnh", _operands(dtype, dgh)[0], w_hh, precision=precision,
                              preferred_element_type=acc)
    return dh, (dgi, dgh)

  _, (d_gi, d_gh) = lax.scan(step, jnp.zeros_like(h_seq[0]), (d_out, r, z, n, hn, h_prev), reverse=True,
                             unroll=unroll)
  d_gh_o, h_prev_o = _operands(dtype, d_gh, h_prev)
  d_weight_hh = jnp.einsum("tdng,tdnh->dgh", d_gh_o, h_prev_o, precision=precision, preferred_element_type=acc)
  d_bias_hh = jnp.sum(d_gh, axis=(0, 2))
  d_gi = _flip_cells(d_gi, flip)  # back to the input's time order
  d_bias_ih = jnp.sum(d_gi, axis=(0, 2))
  # [T, D, N, 3H] -> rows [T*N, D*3H] against x [T*N, F]: two plain matmuls.
  d_rows = jnp.swapaxes(d_gi, 1, 2).reshape(-1, num_cells * three_h)
  d_rows_o, x_o = _operands(dtype, d_rows, x.reshape(-1, features))
  d_weight_ih = jnp.einsum("rk,rf->kf", d_rows_o, x_o, precision=precision,
                           preferred_element_type=acc).reshape(num_cells, three_h, features)
  d_x = jnp.einsum("rk,kf->rf", d_rows_o, w_ih.reshape(num_cells * three_h, features), precision=precision,
                   preferred_element_type=acc).reshape(x.shape)
  return (d_x.astype(x.dtype), d_weight_ih.astype(weight_ih.dtype), d_weight_hh.astype(weight_hh.dtype),
          d_bias_ih.astype(weight_ih.dtype), d_bias_hh.astype(weight_hh.dtype))


_gru_cells.defvjp(_gru_cells_fwd, _gru_cells_bwd)


# ----------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------

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
  dtype: Any = None
  unroll: int = 1
  projection: str = "auto"

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
      y = gru_layer(y, **stacked, reverse=(False, self.bidirectional), precision=self.precision,
                    dtype=self.dtype, unroll=self.unroll, projection=self.projection)
    return jnp.swapaxes(y, 0, 1)


class GRUEncoder(nn.Module):
  """The reference ``BIGRU``: clip ``[N, C, T, V, M]`` -> ``[N, T, V*C*M]`` -> feature ``[N, 2H]`` -> head.

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
    init_scheme: ``config.model.init``: ``"default"`` (the reference's, above) or ``"normal_0.02"`` (HiCLR's
      ``weights_init``: the input BatchNorm's scale ``N(1, 0.02)`` and every head Linear
      ``N(0, 0.02)``, biases 0; the GRU keeps its own init, as ``weights_init`` skips it).
    bn_momentum, bn_epsilon: input BatchNorm, Flax momentum convention (PyTorch 0.1 = 0.9).
    precision: matmul precision of the GRU and head. ``None`` is JAX's default, which on
      GPU/TPU may compute float32 matmuls at reduced precision (TF32 / bf16 passes); pass
      ``"highest"`` for full float32 when comparing with the reference numerically.
    compute_dtype: ``"float32"`` (default, the reference) or ``"bfloat16"``: the operands
      of every GRU and head matmul rounded to bfloat16, accumulated in float32; parameters,
      BatchNorm, biases, gates, the hidden state and everything after the encoder stay
      float32 (a speed option for GPUs/TPUs, DEVIATION from the reference's float32;
      tolerance in tests/test_encoder.py).
    scan_unroll: time steps per scan-loop iteration (speed only; same result).
    input_projection: ``"auto"``, ``"hoisted"`` or ``"per_step"``: where each layer's input
      projection is computed (``gru_layer``; speed only, same result).
  """

  hidden_size: int = 1024
  num_layers: int = 3
  num_outputs: int | None = 128
  mlp: bool = False
  bidirectional: bool = False
  fc_init: str = "xavier"
  init_scheme: str = "default"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  precision: Any = None
  compute_dtype: str = "float32"
  scan_unroll: int = 1
  input_projection: str = "auto"

  @nn.compact
  def __call__(self, x: Array, train: bool = False, features_only: bool = False,
               map_transform: Callable[[Array], Array] | None = None) -> Array | tuple[Array, Array]:
    """``x``: a clip ``[N, C, T, V, M]``, flattened as ``cmd_jax.modalities.flatten`` (feature
    ``v*C*M + c*M + m``), or an already flattened ``[N, T, F]``. ``train`` selects batch (True)
    or running (False) BN statistics
    and, when True, needs ``mutable=["batch_stats"]``. Returns the feature ``[N, 2H]`` when
    ``features_only`` or ``num_outputs is None``, else the head output ``[N, num_outputs]``
    (``init`` always creates the head's parameters).

    ``map_transform``: a function of the top layer's outputs as a feature map ``[N, T, 1, 2H]``
    (channels last, one "joint") returning an array of that shape (AimCLR's EADM); the call
    then returns the pair ``(output, output of the transformed map)``, both pooled alike (the
    last step) and through the same head."""
    if x.ndim not in (3, 5):
      raise ValueError(f"GRUEncoder: expected a clip [N, C, T, V, M] (or [N, T, F]), got shape {x.shape}")
    if self.fc_init not in FC_INITS:
      raise ValueError(f"GRUEncoder: unknown fc_init {self.fc_init!r}; expected one of {FC_INITS}")
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(f"GRUEncoder: unknown compute_dtype {self.compute_dtype!r}; expected one of "
                       f"{tuple(COMPUTE_DTYPES)}")
    check_init(self.init_scheme)
    dtype = COMPUTE_DTYPES[self.compute_dtype]
    y = TorchBatchNorm(momentum=self.bn_momentum, epsilon=self.bn_epsilon, init_scheme=self.init_scheme,
                       name="input_norm")(
        modalities.flatten(x) if x.ndim == 5 else x, train)
    y = TorchGRU(self.hidden_size, self.num_layers, self.bidirectional, self.precision, dtype,
                 int(self.scan_unroll), self.input_projection, name="gru")(y)
    feature = with_transformed_map(lambda z: z[:, -1, 0], y[:, :, None, :], map_transform)  # the last step
    if self.num_outputs is None or (features_only and not self.is_initializing()):
      return feature
    if self.fc_init == "xavier":
      last_w, last_b = xavier_uniform_torch, None
    else:
      last_w, last_b = normal_init(0.01), nn.initializers.zeros
    out = rows_apply(lambda f: head(f, self.num_outputs, self.mlp, init_scheme=self.init_scheme,
                                    last_weight_init=last_w, last_bias_init=last_b, precision=self.precision,
                                    dtype=dtype), feature)
    return feature if features_only else out


# ----------------------------------------------------------------------------------------
# Registry functions (cmd_jax.models)
# ----------------------------------------------------------------------------------------

def torch_key(path) -> str:
  """The reference ``state_dict`` key suffix of a variable at ``path``: the GRU sits at
  ``encoder.gru`` in the reference's ``BIGRU``; everything else follows the common rule."""
  if path[0] == "gru":
    return "encoder." + ".".join(path)
  return common_torch_key(path)


def default_config() -> ml_collections.ConfigDict:
  """The GRU's fields of ``config.model`` (CMD's reference sizes)."""
  c = ml_collections.ConfigDict()
  c.hidden_size = 1024
  c.num_layers = 3
  c.bidirectional = False       # True: a true BiGRU (DEVIATION; the reference is forward-only)
  # Speed options of the training step (bench/RESULTS.md). None changes what is computed
  # except compute_dtype="bfloat16" (DEVIATION: bf16 matmul operands, float32 accumulation).
  c.stack_modalities = False    # True: one vmap-ed encoder for all modalities (same function)
  c.scan_unroll = 1             # time steps per scan iteration (same function)
  c.input_projection = "auto"   # GRU input projection: auto | hoisted | per_step (same function)
  c.compute_dtype = "float32"   # "float32" (reference) or "bfloat16"
  return c


def validate(model_config, layout: SkeletonLayout) -> None:
  del layout
  for field in ("hidden_size", "num_layers"):
    if int(model_config[field]) <= 0:
      raise ValueError(f"config.model.{field}={model_config[field]} must be positive")
  for field, allowed, default in (("compute_dtype", tuple(COMPUTE_DTYPES), "float32"),
                                  ("input_projection", PROJECTIONS, "auto")):
    if str(model_config.get(field, default)) not in allowed:
      choices = ", ".join(repr(a) for a in allowed[:-1]) + f" or {allowed[-1]!r}"
      raise ValueError(f"config.model.{field}={model_config[field]!r}; expected {choices}")
  if int(model_config.get("scan_unroll", 1)) < 1:
    raise ValueError(f"config.model.scan_unroll={model_config.scan_unroll} must be >= 1")


def feature_dim(model_config) -> int:
  return 2 * int(model_config.hidden_size)


def from_config(model_config, layout: SkeletonLayout, *, num_outputs: int | None, mlp: bool,
                training: bool = False, fc_init: str = "default") -> GRUEncoder:
  """The GRU encoder of ``config.model``; ``training=True`` adds the step's speed options
  (``compute_dtype``, ``scan_unroll``, ``input_projection``); evaluation and feature
  extraction compute in float32."""
  del layout  # the input width follows from the clip
  speed = {}
  if training:
    speed = dict(compute_dtype=str(model_config.get("compute_dtype", "float32")),
                 scan_unroll=int(model_config.get("scan_unroll", 1)),
                 input_projection=str(model_config.get("input_projection", "auto")))
  return GRUEncoder(hidden_size=int(model_config.hidden_size), num_layers=int(model_config.num_layers),
                    num_outputs=num_outputs, mlp=mlp, bidirectional=bool(model_config.get("bidirectional", False)),
                    fc_init="xavier" if fc_init == "default" else fc_init,
                    init_scheme=str(model_config.get("init", "default")), **speed)
