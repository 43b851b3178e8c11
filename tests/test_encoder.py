"""Tests for cmd_jax.models.encoder against independent computations.

Follows docs/references.md#cmd-encoder, #cmd-encoder-initialisation and #cmd-quirks items 1, 2.

The reference is re-derived here in numpy (float64) from the PyTorch equations, with a
per-step Python loop exactly like ``moco/GRU.py``'s, and (when ``torch`` is installed)
against ``torch.nn.GRU(bidirectional=True)`` / ``BatchNorm1d`` / ``Linear`` called step by
step the way the reference calls them.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmd_jax.models.gru import GRUEncoder as Encoder
from cmd_jax.models import gru as encoder_lib

N, T, F, H, L = 3, 6, 10, 8, 3
# Tolerances (float32 JAX against the float64 numpy or torch reference, u = 2^-24 = 6e-8).
# ATOL is absolute because every compared output here is O(1) by construction: GRU states lie
# in (-1, 1) and the heads' outputs are below 1 (measured scale 0.5-0.9). Each is a chain of
# T x L = 18 cell steps whose gate sums have <= 2H + H = 24 (head: 2H = 16) terms, rounded in
# any order (AVX2 / AVX-512 kernels, threads): ~sqrt(24) u per sum, the gates contracting.
# Measured <= 1.6e-7 (3 u); 2e-5 is ~300 u of the scale. BatchNorm running statistics
# (rtol and atol 1e-6, values up to ~3) are 0.9 old + 0.1 of two-pass means over N x T = 18
# rows: <= 18 u of the rows' size times 0.1, below the bound in any order (measured 1 u).
ATOL = 2e-5


# ----------------------------------------------------------------------------------------
# Independent numpy reference (float64)
# ----------------------------------------------------------------------------------------

def _sigmoid(a):
  return 1.0 / (1.0 + np.exp(-a))


def np_cell(x, h, w_ih, w_hh, b_ih, b_hh):
  """PyTorch GRUCell: rows of W are (r, z, n) blocks of size H."""
  hs = h.shape[-1]
  W_ir, W_iz, W_in = w_ih[:hs], w_ih[hs:2 * hs], w_ih[2 * hs:]
  W_hr, W_hz, W_hn = w_hh[:hs], w_hh[hs:2 * hs], w_hh[2 * hs:]
  b_ir, b_iz, b_in = b_ih[:hs], b_ih[hs:2 * hs], b_ih[2 * hs:]
  b_hr, b_hz, b_hn = b_hh[:hs], b_hh[hs:2 * hs], b_hh[2 * hs:]
  r = _sigmoid(x @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
  z = _sigmoid(x @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
  n = np.tanh(x @ W_in.T + b_in + r * (h @ W_hn.T + b_hn))
  return (1 - z) * n + z * h


def np_bn(x, scale, bias, mean, var, train, eps=1e-5, momentum=0.1):
  """BatchNorm1d on x.permute(0, 2, 1); returns (y, new_mean, new_var)."""
  xp = x.transpose(0, 2, 1)  # (N, F, T)
  if train:
    n = xp.shape[0] * xp.shape[2]
    bm = xp.mean(axis=(0, 2))
    bv = xp.var(axis=(0, 2))  # biased, for normalisation
    new_mean = (1 - momentum) * mean + momentum * bm
    new_var = (1 - momentum) * var + momentum * bv * n / (n - 1)
  else:
    bm, bv, new_mean, new_var = mean, var, mean, var
  y = (xp - bm[None, :, None]) / np.sqrt(bv[None, :, None] + eps) * scale[None, :, None] + bias[None, :, None]
  return y.transpose(0, 2, 1), new_mean, new_var


def np_gru_reference(x, gru, num_layers, hidden):
  """The reference's per-step loop: at each t the whole stack runs on x[:, t] with carried h_n."""
  n_batch, steps, _ = x.shape
  h = {(k, d): np.zeros((n_batch, hidden)) for k in range(num_layers) for d in ("", "_reverse")}
  outputs = []
  for t in range(steps):
    inp = x[:, t]
    for k in range(num_layers):
      outs = []
      for d in ("", "_reverse"):
        h[k, d] = np_cell(inp, h[k, d], gru[f"weight_ih_l{k}{d}"], gru[f"weight_hh_l{k}{d}"],
                          gru[f"bias_ih_l{k}{d}"], gru[f"bias_hh_l{k}{d}"])
        outs.append(h[k, d])
      inp = np.concatenate(outs, axis=-1)
    outputs.append(inp)
  return np.stack(outputs, axis=1)  # (N, T, 2H)


def np_gru_bidirectional(x, gru, num_layers, hidden):
  """A true bidirectional GRU on the whole sequence (torch.nn.GRU semantics)."""
  n_batch, steps, _ = x.shape
  seq = x
  for k in range(num_layers):
    fwd = np.zeros((n_batch, steps, hidden))
    bwd = np.zeros((n_batch, steps, hidden))
    h = np.zeros((n_batch, hidden))
    for t in range(steps):
      h = np_cell(seq[:, t], h, gru[f"weight_ih_l{k}"], gru[f"weight_hh_l{k}"],
                  gru[f"bias_ih_l{k}"], gru[f"bias_hh_l{k}"])
      fwd[:, t] = h
    h = np.zeros((n_batch, hidden))
    for t in reversed(range(steps)):
      s = "_reverse"
      h = np_cell(seq[:, t], h, gru[f"weight_ih_l{k}{s}"], gru[f"weight_hh_l{k}{s}"],
                  gru[f"bias_ih_l{k}{s}"], gru[f"bias_hh_l{k}{s}"])
      bwd[:, t] = h
    seq = np.concatenate([fwd, bwd], axis=-1)
  return seq


def np_encoder(x, variables, train, mlp, num_layers=L, hidden=H, bidirectional=False):
  """Returns (feature, head output or None, new_mean, new_var)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  bs = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["batch_stats"])
  y, new_mean, new_var = np_bn(np.asarray(x, np.float64), p["input_norm"]["scale"],
                               p["input_norm"]["bias"], bs["input_norm"]["mean"],
                               bs["input_norm"]["var"], train)
  run = np_gru_bidirectional if bidirectional else np_gru_reference
  feature = run(y, p["gru"], num_layers, hidden)[:, -1]
  out = None
  if mlp and "fc_0" in p:
    a = np.maximum(feature @ p["fc_0"]["weight"].T + p["fc_0"]["bias"], 0)
    out = a @ p["fc_2"]["weight"].T + p["fc_2"]["bias"]
  elif "fc" in p:
    out = feature @ p["fc"]["weight"].T + p["fc"]["bias"]
  return feature, out, new_mean, new_var


# ----------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _jitted(model, train=False, features_only=False):
  """One compiled ``apply`` per (model, mode): returns (output, batch_stats after the call)."""

  def run(variables, x):
    if train:
      out, updates = model.apply(variables, x, train=True, features_only=features_only,
                                 mutable=["batch_stats"])
      return out, updates["batch_stats"]
    return model.apply(variables, x, features_only=features_only), variables["batch_stats"]

  return jax.jit(run)


def _apply(model, variables, x, train=False, features_only=False):
  out, stats = _jitted(model, train, features_only)(variables, jnp.asarray(x))
  return np.asarray(out), jax.tree.map(np.asarray, stats)


@functools.lru_cache(maxsize=None)
def _jitted_init(model):
  return jax.jit(model.init)


def _init(model, seed, x):
  return jax.tree.map(np.asarray, _jitted_init(model)(jax.random.key(seed), jnp.asarray(x)))


# The few model configurations the numerics tests share (each compiles once).
REF = Encoder(hidden_size=H, num_layers=L, num_outputs=5)
REF_MLP = Encoder(hidden_size=H, num_layers=L, num_outputs=5, mlp=True)
REF_BI = Encoder(hidden_size=H, num_layers=L, num_outputs=5, bidirectional=True)
FEATURES = Encoder(hidden_size=H, num_layers=L, num_outputs=None)


def _inputs(seed=0, n=N, t=T, f=F):
  rng = np.random.default_rng(seed)
  # Per-feature offsets and scales so that BN has something to do.
  offset = rng.normal(size=(1, 1, f)) * 3
  scale = rng.uniform(0.5, 2.0, size=(1, 1, f))
  return (rng.normal(size=(n, t, f)) * scale + offset).astype(np.float32)


def _variables(model, seed=0, x=None):
  """Random variables with the model's tree (from ``eval_shape``, so nothing is compiled):
  GRU and head weights ``U(-0.4, 0.4)``, BN parameters and running statistics random too."""
  x = _inputs() if x is None else x
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(x))
  rng = np.random.default_rng(seed + 100)
  variables = jax.tree.map(
      lambda s: rng.uniform(-0.4, 0.4, s.shape).astype(np.float32), shapes)
  f = x.shape[-1]
  variables["params"]["input_norm"]["scale"] = rng.uniform(0.5, 1.5, f).astype(np.float32)
  variables["params"]["input_norm"]["bias"] = rng.normal(size=f).astype(np.float32) * 0.3
  variables["batch_stats"]["input_norm"]["mean"] = rng.normal(size=f).astype(np.float32)
  variables["batch_stats"]["input_norm"]["var"] = rng.uniform(0.5, 3.0, f).astype(np.float32)
  return variables


# ----------------------------------------------------------------------------------------
# Numerics
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", [REF, REF_MLP], ids=["fc", "mlp"])
def test_train_mode_matches_numpy(model):
  x = _inputs(1)
  variables = _variables(model, seed=1)
  out, stats = _apply(model, variables, x, train=True)
  _, expected, new_mean, new_var = np_encoder(x, variables, train=True, mlp=model.mlp)
  assert out.shape == (N, 5)
  np.testing.assert_allclose(out, expected, rtol=0, atol=ATOL)
  np.testing.assert_allclose(stats["input_norm"]["mean"], new_mean, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(stats["input_norm"]["var"], new_var, rtol=1e-6, atol=1e-6)
  # Train-mode features (the key encoders' mode) equal the numpy feature too.
  feat, _ = _apply(FEATURES, variables, x, train=True)
  feature, _, _, _ = np_encoder(x, variables, train=True, mlp=False)
  np.testing.assert_allclose(feat, feature, rtol=0, atol=ATOL)


def test_running_stats_update_from_defaults_is_pytorch_momentum_with_unbiased_var():
  x = _inputs(2)
  variables = _variables(FEATURES, seed=2)
  variables["batch_stats"]["input_norm"]["mean"] = np.zeros(F, np.float32)  # PyTorch's defaults
  variables["batch_stats"]["input_norm"]["var"] = np.ones(F, np.float32)
  _, stats = _apply(FEATURES, variables, x, train=True)
  flat = x.reshape(-1, F).astype(np.float64)  # PyTorch: statistics over N x T per feature
  assert flat.shape[0] == N * T
  np.testing.assert_allclose(stats["input_norm"]["mean"], 0.1 * flat.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["input_norm"]["var"], 0.9 + 0.1 * flat.var(0, ddof=1),
                             rtol=1e-5, atol=1e-6)
  # ... and the biased variance would be measurably different at this n.
  assert np.abs(flat.var(0, ddof=1) - flat.var(0)).max() > 1e-2


@pytest.mark.parametrize("model", [REF, REF_MLP], ids=["fc", "mlp"])
def test_eval_mode_matches_numpy_and_leaves_stats(model):
  x = _inputs(3)
  variables = _variables(model, seed=3)
  out, stats = _apply(model, variables, x)  # train=False: running statistics
  feat, _ = _apply(model, variables, x, features_only=True)
  feature, expected, _, _ = np_encoder(x, variables, train=False, mlp=model.mlp)
  assert feat.shape == (N, 2 * H)
  np.testing.assert_allclose(feat, feature, rtol=0, atol=ATOL)
  np.testing.assert_allclose(out, expected, rtol=0, atol=ATOL)
  jax.tree.map(np.testing.assert_array_equal, stats, variables["batch_stats"])


def test_forward_only_is_not_a_true_bigru_but_bidirectional_flag_is():
  x = _inputs(5)
  variables = _variables(REF, seed=5)
  # Same parameter tree for both modes.
  assert (jax.tree.structure(variables)
          == jax.tree.structure(jax.eval_shape(REF_BI.init, jax.random.key(0), x)))
  feature_faithful, _ = _apply(REF, variables, x, features_only=True)
  feature_bi, _ = _apply(REF_BI, variables, x, features_only=True)
  np_bi, _, _, _ = np_encoder(x, variables, train=False, mlp=False, bidirectional=True)
  np_ref, _, _, _ = np_encoder(x, variables, train=False, mlp=False, bidirectional=False)
  np.testing.assert_allclose(feature_bi, np_bi, rtol=0, atol=ATOL)
  np.testing.assert_allclose(feature_faithful, np_ref, rtol=0, atol=ATOL)
  assert np.abs(feature_faithful - np_bi).max() > 1e-2
  assert np.abs(feature_bi - np_ref).max() > 1e-2


def test_bidirectional_full_sequence_matches_numpy():
  x = jnp.asarray(_inputs(6))
  variables = _variables(REF, seed=6)
  gru = encoder_lib.TorchGRU(hidden_size=H, num_layers=L, bidirectional=True)
  seq = np.asarray(jax.jit(gru.apply)({"params": variables["params"]["gru"]}, x))
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"]["gru"])
  expected = np_gru_bidirectional(np.asarray(x, np.float64), p, L, H)
  assert seq.shape == (N, T, 2 * H)
  np.testing.assert_allclose(seq, expected, rtol=0, atol=ATOL)


def test_grad_through_time():
  x = _inputs(7)
  variables = _variables(REF_MLP, seed=7)

  def loss(params):
    out, _ = REF_MLP.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                           train=True, mutable=["batch_stats"])
    return jnp.sum(out ** 2)

  value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
  out, _ = _apply(REF_MLP, variables, x, train=True)
  np.testing.assert_allclose(value, np.sum(out.astype(np.float64) ** 2), rtol=1e-5)  # a sum of 15 squares
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  # Every parameter of both cells of every layer gets gradient (full BPTT).
  assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads["gru"]))


def _float64():
  """A context with float64 enabled (``jax.enable_x64(True)``; older JAX: the experimental one)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=import-outside-toplevel
  return enable_x64()


def _plain_gru_layer(x, w_ih, w_hh, b_ih, b_hh, reverse):
  """A straightforward JAX GRU layer (one scan per cell, differentiated by JAX's autodiff):
  the independent reference for the hand-written VJP of ``encoder.gru_layer``."""
  outs = []
  for d, rev in enumerate(reverse):
    xs = x[::-1] if rev else x

    def step(h, x_t, d=d):
      gi = x_t @ w_ih[d].T + b_ih[d]
      gh = h @ w_hh[d].T + b_hh[d]
      i_r, i_z, i_n = jnp.split(gi, 3, axis=-1)
      h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
      r = 1 / (1 + jnp.exp(-(i_r + h_r)))
      z = 1 / (1 + jnp.exp(-(i_z + h_z)))
      n = jnp.tanh(i_n + r * h_n)
      h = (1 - z) * n + z * h
      return h, h

    _, out = jax.lax.scan(step, jnp.zeros((x.shape[1], w_hh.shape[-1]), x.dtype), xs)
    outs.append(out[::-1] if rev else out)
  return jnp.concatenate(outs, axis=-1)


@pytest.mark.parametrize("reverse", [(False, False), (False, True)], ids=["forward_only", "bidirectional"])
@pytest.mark.parametrize("projection,unroll", [("hoisted", 1), ("per_step", 1), ("per_step", 4)])
def test_gru_layer_hand_written_vjp_matches_autodiff_and_finite_differences(reverse, projection, unroll):
  """``gru_layer``'s gradient is a hand-written backward pass (BPTT with the weight and input
  gradients as matmuls over all steps). In float64 it equals JAX's autodiff of a plain
  per-cell scan to 1e-12 for every input (x, both weights, both biases), for each input
  projection mode, unrolling and direction; and a central finite difference of the
  loss along a random direction agrees to 1e-6 relative."""
  with _float64():
    rng = np.random.default_rng(11)
    t, n, f, h, d = 7, 3, 5, 4, 2
    args = [jnp.asarray(rng.normal(size=shape)) for shape in [(t, n, f), (d, 3 * h, f), (d, 3 * h, h), (d, 3 * h),
                                                              (d, 3 * h)]]
    cotangent = jnp.asarray(rng.normal(size=(t, n, d * h)))

    def loss_new(*a):
      return jnp.sum(encoder_lib.gru_layer(*a, reverse=reverse, projection=projection, unroll=unroll) * cotangent)

    def loss_plain(*a):
      return jnp.sum(_plain_gru_layer(*a, reverse) * cotangent)

    np.testing.assert_allclose(encoder_lib.gru_layer(*args, reverse=reverse, projection=projection, unroll=unroll),
                               _plain_gru_layer(*args, reverse), rtol=0, atol=1e-12)
    got = jax.grad(loss_new, argnums=(0, 1, 2, 3, 4))(*args)
    want = jax.grad(loss_plain, argnums=(0, 1, 2, 3, 4))(*args)
    for name, a, b in zip(("x", "weight_ih", "weight_hh", "bias_ih", "bias_hh"), got, want):
      assert a.dtype == jnp.float64
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-12, err_msg=name)
      assert np.abs(np.asarray(b)).max() > 1e-3, name  # a real gradient, not zeros
    direction = [jnp.asarray(rng.normal(size=a.shape)) for a in args]
    eps = 1e-6
    plus = loss_new(*[a + eps * v for a, v in zip(args, direction)])
    minus = loss_new(*[a - eps * v for a, v in zip(args, direction)])
    numeric = (plus - minus) / (2 * eps)
    analytic = sum(jnp.sum(g * v) for g, v in zip(got, direction))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6)


def test_speed_options_keep_the_function():
  """``input_projection`` (hoisted / per_step) and ``scan_unroll`` change where and how the
  matmuls run, not the result: outputs, BN statistics and gradients agree in float32."""
  x = _inputs(12)
  variables = _variables(REF_MLP, seed=12)
  results = {}
  for projection, unroll in [("hoisted", 1), ("per_step", 1), ("per_step", 3)]:
    model = Encoder(hidden_size=H, num_layers=L, num_outputs=REF_MLP.num_outputs, mlp=True,
                    input_projection=projection, scan_unroll=unroll)

    def loss(params, model=model):
      out, upd = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                             mutable=["batch_stats"])
      return jnp.sum(out ** 2), (out, upd)

    (_, (out, upd)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    results[(projection, unroll)] = (out, upd, grads)
  base = results[("hoisted", 1)]
  # The same float32 sums, split and ordered differently: a few u of values up to ~3, and of the
  # gradients' scale for entries near 0 (measured identical here); 1e-5 is ~170 u.
  for key, other in results.items():
    for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(base)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=str(key))
  np.testing.assert_allclose(base[0], np_encoder(x, variables, train=True, mlp=True)[1], rtol=0, atol=ATOL)


def test_bfloat16_compute_dtype_tolerance():
  """``compute_dtype="bfloat16"``: bf16 matmul operands, float32 accumulation, parameters and
  outputs float32. Against the float64 numpy reference the head output stays within 3% of its
  scale (float32 mode: ``ATOL``), and it does differ from float32 (the mode is on)."""
  x = _inputs(13)
  variables = _variables(REF_MLP, seed=13)
  want = np_encoder(x, variables, train=False, mlp=True)[1]
  model = Encoder(hidden_size=H, num_layers=L, num_outputs=REF_MLP.num_outputs, mlp=True, compute_dtype="bfloat16")
  got = model.apply(variables, x, train=False)
  assert got.dtype == jnp.float32
  scale = float(np.abs(want).max())
  err = float(np.abs(np.asarray(got, np.float64) - want).max())
  assert ATOL < err < 0.03 * scale, (err, scale)


def test_bad_input_and_options():
  with pytest.raises(ValueError, match=r"\[N, T, F\]"):
    Encoder(hidden_size=H, num_layers=1).init(jax.random.key(0), jnp.zeros((2, 3, 4, 5)))
  with pytest.raises(ValueError, match="fc_init"):
    Encoder(hidden_size=H, num_layers=1, fc_init="kaiming").init(jax.random.key(0),
                                                                 jnp.zeros((2, 3, 4)))
  with pytest.raises(ValueError, match="compute_dtype 'float16'"):
    Encoder(hidden_size=H, num_layers=1, compute_dtype="float16").init(jax.random.key(0), jnp.zeros((2, 3, 4)))
  with pytest.raises(ValueError, match="projection='loop'"):
    Encoder(hidden_size=H, num_layers=1, input_projection="loop").init(jax.random.key(0), jnp.zeros((2, 3, 4)))


def test_features_only_and_no_head():
  x = _inputs(8)
  variables = _variables(REF, seed=8)
  feat, _ = _apply(REF, variables, x, features_only=True)
  no_head_vars = {"params": {k: v for k, v in variables["params"].items() if k != "fc"},
                  "batch_stats": variables["batch_stats"]}
  np.testing.assert_array_equal(_apply(FEATURES, no_head_vars, x)[0], feat)
  # Initialising with features_only still creates the head.
  shapes = jax.eval_shape(functools.partial(REF.init, features_only=True), jax.random.key(0), x)
  assert "fc" in shapes["params"]


# ----------------------------------------------------------------------------------------
# Parameter names, shapes and initialisation
# ----------------------------------------------------------------------------------------

def _torch_shapes(hidden, layers, f, num_class, mlp):
  """The reference BIGRU's state_dict shapes (torch layout), written from the spec."""
  shapes = {"input_norm.weight": (f,), "input_norm.bias": (f,),
            "input_norm.running_mean": (f,), "input_norm.running_var": (f,)}
  for k in range(layers):
    in_k = f if k == 0 else 2 * hidden
    for d in ("", "_reverse"):
      shapes[f"encoder.gru.weight_ih_l{k}{d}"] = (3 * hidden, in_k)
      shapes[f"encoder.gru.weight_hh_l{k}{d}"] = (3 * hidden, hidden)
      shapes[f"encoder.gru.bias_ih_l{k}{d}"] = (3 * hidden,)
      shapes[f"encoder.gru.bias_hh_l{k}{d}"] = (3 * hidden,)
  if mlp:
    shapes.update({"fc.0.weight": (2 * hidden, 2 * hidden), "fc.0.bias": (2 * hidden,),
                   "fc.2.weight": (num_class, 2 * hidden), "fc.2.bias": (num_class,)})
  else:
    shapes.update({"fc.weight": (num_class, 2 * hidden), "fc.bias": (num_class,)})
  return shapes


def _flax_name(torch_key):
  """The documented mapping from a reference state_dict key to (collection, path)."""
  module, leaf = torch_key.rsplit(".", 1)
  if module == "input_norm":
    return {"weight": ("params", "input_norm", "scale"), "bias": ("params", "input_norm", "bias"),
            "running_mean": ("batch_stats", "input_norm", "mean"),
            "running_var": ("batch_stats", "input_norm", "var")}[leaf]
  if module == "encoder.gru":
    return ("params", "gru", leaf)
  return ("params", module.replace(".", "_"), leaf)


def _flat_shapes(tree):
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat[tuple(k.key for k in path)] = tuple(leaf.shape)
  return flat


@pytest.mark.parametrize("mlp,num_class", [(True, 128), (False, 60)])
def test_full_size_names_and_shapes_match_reference_state_dict(mlp, num_class):
  model = Encoder(hidden_size=1024, num_layers=3, num_outputs=num_class, mlp=mlp)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 64, 150)))
  got = _flat_shapes(shapes)
  expected = {_flax_name(k): v for k, v in _torch_shapes(1024, 3, 150, num_class, mlp).items()}
  assert got == expected
  if mlp:
    assert got["params", "gru", "weight_ih_l0"] == (3072, 150)
    assert got["params", "gru", "weight_ih_l1"] == (3072, 2048)
    assert got["params", "gru", "weight_hh_l2_reverse"] == (3072, 1024)
    assert got["params", "fc_0", "weight"] == (2048, 2048)
    assert got["params", "fc_2", "weight"] == (128, 2048)


# The bounds of docs/references.md#cmd-encoder-initialisation, typed in from its numbers.
SPEC_BOUNDS = {(3072, 150): 0.0432, (3072, 1024): 0.0383, (3072, 2048): 0.0342,
               (128, 2048): 0.0525}


def test_spec_bounds_at_full_shapes():
  keys = jax.random.split(jax.random.key(0), len(SPEC_BOUNDS))
  draws = jax.jit(lambda keys: [encoder_lib.xavier_uniform_torch(k, shape)
                                for k, shape in zip(keys, SPEC_BOUNDS)])(keys)
  for (shape, bound), w in zip(SPEC_BOUNDS.items(), draws):
    w = np.asarray(w)
    assert w.shape == shape
    exact = math.sqrt(6 / sum(shape))
    assert abs(exact - bound) < 5e-5  # the spec's numbers have 3 significant digits
    # Seeded draws (the same on every CPU) of >= 3.9e5 values: the std's relative standard
    # error is sqrt(0.8 / n) / 2 < 7e-4, so 2% is > 25 standard errors.
    assert np.abs(w).max() <= exact
    assert np.abs(w).max() > 0.99 * exact  # the whole range is used
    np.testing.assert_allclose(w.std(), exact / math.sqrt(3), rtol=0.02)


def _check_uniform(a, bound, what):
  """Draws of U(-bound, bound) (seeded): inside the bound; with >= 90 draws, the largest above
  0.9 bound (missed with probability 0.9^90 < 1e-4) and the mean within 4 standard errors
  (bound / sqrt(3 n) <= bound / 16)."""
  a = np.asarray(a, np.float64)
  assert np.abs(a).max() <= bound * (1 + 1e-6), what
  if a.size >= 90:  # enough draws to see the range and the centre
    assert np.abs(a).max() > 0.9 * bound, what
    assert abs(a.mean()) < 0.25 * bound, what


INIT_HIDDEN, INIT_F, INIT_OUT = 32, 12, 7


# Two configurations cover every branch: the MLP with a xavier last layer, and the plain
# downstream fc with N(0, 0.01) (the plain fc with xavier uses the same code as fc_2).
@pytest.mark.parametrize("mlp,fc_init", [(True, "xavier"), (False, "normal_0.01")])
def test_init_distributions(mlp, fc_init):
  hidden, f, out = INIT_HIDDEN, INIT_F, INIT_OUT
  model = Encoder(hidden_size=hidden, num_layers=2, num_outputs=out, mlp=mlp, fc_init=fc_init)
  variables = _init(model, 1, np.zeros((1, 1, f), np.float32))
  p = variables["params"]
  for name, w in p["gru"].items():
    if name.startswith("weight"):  # xavier over the whole stacked (3H, in) matrix
      _check_uniform(w, math.sqrt(6 / (w.shape[0] + w.shape[1])), name)
    else:
      _check_uniform(w, 1 / math.sqrt(hidden), name)
  last = p["fc_2"] if mlp else p["fc"]
  assert last["weight"].shape == (out, 2 * hidden)
  if fc_init == "xavier":
    _check_uniform(last["weight"], math.sqrt(6 / (out + 2 * hidden)), "fc weight (xavier)")
    _check_uniform(last["bias"], 1 / math.sqrt(2 * hidden), "fc bias (torch default)")
  else:
    w = last["weight"].astype(np.float64)  # N(0, 0.01) draws: 5 standard errors for their number
    assert abs(w.std() - 0.01) < 5 * 0.01 / math.sqrt(2 * w.size) and abs(w.mean()) < 5 * 0.01 / math.sqrt(w.size)
    np.testing.assert_array_equal(last["bias"], np.zeros(out))
  if mlp:  # the MLP's hidden Linear keeps PyTorch's default init
    _check_uniform(p["fc_0"]["weight"], 1 / math.sqrt(2 * hidden), "fc_0 weight")
    _check_uniform(p["fc_0"]["bias"], 1 / math.sqrt(2 * hidden), "fc_0 bias")
    assert p["fc_0"]["weight"].shape == (2 * hidden, 2 * hidden)
  np.testing.assert_array_equal(p["input_norm"]["scale"], np.ones(f))
  np.testing.assert_array_equal(p["input_norm"]["bias"], np.zeros(f))
  np.testing.assert_array_equal(variables["batch_stats"]["input_norm"]["mean"], np.zeros(f))
  np.testing.assert_array_equal(variables["batch_stats"]["input_norm"]["var"], np.ones(f))
  # Different cells get different draws.
  assert not np.allclose(p["gru"]["weight_ih_l0"], p["gru"]["weight_ih_l0_reverse"])


# ----------------------------------------------------------------------------------------
# Against PyTorch, called the way the reference calls it (skipped without torch)
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", [REF, REF_MLP], ids=["fc", "mlp"])
def test_matches_torch_reference(model):
  torch = pytest.importorskip("torch")
  from tests.torch_reference import TorchBIGRU  # pylint: disable=import-outside-toplevel
  x = _inputs(9)
  variables = _variables(model, seed=9)
  ref = TorchBIGRU(F, H, L, model.num_outputs, model.mlp, impl="step").double()
  # Load our parameters into the torch model through the documented name mapping.
  state = ref.state_dict()
  for key in list(state):
    if key.endswith("num_batches_tracked"):
      continue
    collection, *path = _flax_name(key)
    value = variables[collection]
    for part in path:
      value = value[part]
    assert tuple(state[key].shape) == value.shape, key
    state[key] = torch.from_numpy(np.asarray(value, np.float64))
  ref.load_state_dict(state)
  xt = torch.from_numpy(x.astype(np.float64))
  with torch.no_grad():
    ref.eval()
    np.testing.assert_allclose(_apply(model, variables, x)[0], ref(xt).numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(_apply(model, variables, x, features_only=True)[0],
                               ref(xt, knn_eval=True).numpy(), rtol=0, atol=ATOL)
    ref.train()
    out, stats = _apply(model, variables, x, train=True)
    np.testing.assert_allclose(out, ref(xt).numpy(), rtol=0, atol=ATOL)
  np.testing.assert_allclose(stats["input_norm"]["mean"], ref.input_norm.running_mean.numpy(),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(stats["input_norm"]["var"], ref.input_norm.running_var.numpy(),
                             rtol=1e-6, atol=1e-6)
