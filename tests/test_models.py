"""The encoder registry and the shared layers (``cmd_jax.models``, ``cmd_jax.models.common``).

- every encoder builds from ``config.model`` by name, applies to a clip ``[N, C, T, V, M]``,
  returns its pooled feature and its head's output, for NTU-25 and MSR-20;
- parameter counts against hand-counted formulas (the GRU's) and the reference's numbers;
- ``temporal_conv``'s two forms (XLA convolution, one matmul over shifted slices) and their
  hand-written gradients against JAX's autodiff of the plain convolution, in float64 (where
  both are exact to ~1e-15), for strides 1 and 2 and kernels 9 and 7;
- ``pointwise_conv``'s and ``batch_norm_train``'s hand-written gradients against autodiff;
- ``bernoulli_mask`` against the PRNG words it unpacks (written out in numpy) and its
  distribution; ``Dropout``'s scaling, its default masks bit-identical to ``nn.Dropout``'s;
- the init schemes; ``torch_key`` names; errors for unknown names and schemes.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cmd_jax import models
from cmd_jax.layouts import MSR20, NTU25
from cmd_jax.models import common


def config(name: str, **fields):
  c = models.default_config()
  c.name = name
  c.hidden_size, c.num_layers = 8, 1
  c.stgcn.hidden_channels, c.stgcn.hidden_dim = 4, 16
  c.dsta.blocks = ((8, 8, 4, 1), (8, 16, 4, 2))
  for key, value in fields.items():
    c[key] = value
  return c


def count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize("name", list(models.ENCODERS))
@pytest.mark.parametrize("layout", [NTU25, MSR20], ids=lambda l: l.name)
def test_every_encoder_builds_and_applies(name, layout):
  c = config(name)
  model = models.build_encoder(c, layout, num_outputs=5, mlp=True)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 20, layout.num_joints, layout.num_persons)),
                  jnp.float32)
  variables = models.init_variables(model, jax.random.PRNGKey(0), x)
  out = model.apply(variables, x, train=False)
  feature = model.apply(variables, x, train=False, features_only=True)
  assert out.shape == (3, 5) and feature.shape == (3, models.feature_dim(c))
  assert set(variables["params"]) >= {"fc_0", "fc_2"}
  (train_out, updated) = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                     rngs={"dropout": jax.random.PRNGKey(1)})
  assert train_out.shape == (3, 5) and jax.tree.structure(updated["batch_stats"]) == jax.tree.structure(
      variables["batch_stats"])
  headless = models.build_encoder(c, layout, num_outputs=None)
  np.testing.assert_array_equal(headless.apply({"params": models.strip_head(variables["params"]),
                                                "batch_stats": variables["batch_stats"]}, x, train=False), feature)


def test_gru_parameter_count_by_hand():
  """The reference's sizes (F = 150, H = 1024, 3 layers): per layer two cells of
  ``3H x in + 3H x H + 2 x 3H``, ``in = F`` then ``2H``; plus the input BatchNorm's 2F."""
  f, h = 150, 1024
  cells = lambda i: 2 * (3 * h * i + 3 * h * h + 2 * 3 * h)  # pylint: disable=unnecessary-lambda-assignment
  expected = 2 * f + cells(f) + 2 * cells(2 * h)
  c = models.default_config()
  model = models.build_encoder(c, NTU25, num_outputs=None)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 3, 64, 25, 2)), train=False))
  assert count(shapes["params"]) == expected == 44_998_956


@pytest.mark.parametrize("name,backbone", [("stgcn", 821_380), ("dsta", 1_546_480)])
def test_reference_parameter_counts(name, backbone):
  """The numbers of the reference models (HiCLR's ST-GCN and DSTA-Net on NTU-25)."""
  c = models.default_config()
  c.name = name
  model = models.build_encoder(c, NTU25, num_outputs=60)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 3, 50, 25, 2)), train=False))
  assert count(models.strip_head(shapes["params"])) == backbone
  assert count(shapes["params"]) == backbone + 256 * 60 + 60


@pytest.mark.parametrize("impl", ["conv", "matmul"])
@pytest.mark.parametrize("stride,t,k", [(1, 12, 9), (2, 12, 9), (2, 13, 9), (1, 11, 7), (2, 11, 7)])
def test_temporal_conv_gradient_is_the_convolution_gradient(impl, stride, t, k):
  """``temporal_conv`` (both impls, hand-written VJPs) vs ``lax.conv_general_dilated`` and its
  autodiff, float64 (both exact to ~1e-15 of values of size ~1-10: 1e-12 bounds that)."""
  pad = k // 2
  with jax.enable_x64(True):
    rng = np.random.default_rng(stride * 100 + t + k)
    x = jnp.asarray(rng.normal(size=(2, t, 3, 5)))
    w = jnp.asarray(rng.normal(size=(4, 5, k, 1)))
    cot = jnp.asarray(rng.normal(size=(2, (t + 2 * pad - k) // stride + 1, 3, 4)))

    def plain(x, w):
      return lax.conv_general_dilated(x, w, (stride, 1), ((pad, pad), (0, 0)),
                                      dimension_numbers=("NHWC", "OIHW", "NHWC"))

    np.testing.assert_allclose(common.temporal_conv(x, w, stride, pad, impl=impl), plain(x, w), rtol=1e-12,
                               atol=1e-12)
    want = jax.grad(lambda x, w: jnp.sum(plain(x, w) * cot), argnums=(0, 1))(x, w)
    got = jax.grad(lambda x, w: jnp.sum(common.temporal_conv(x, w, stride, pad, impl=impl) * cot),
                   argnums=(0, 1))(x, w)
    for g, e in zip(got, want):
      assert g.dtype == jnp.float64
      np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c_in,c_out", [(3, 5), (5, 3)])
def test_pointwise_conv_gradient(c_in, c_out):
  """``pointwise_conv``'s hand-written gradient (either operand transposed for the weight
  gradient) against autodiff of the einsum, float64 (exact to ~1e-15: 1e-12 bounds it)."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(c_in)
    x, w = jnp.asarray(rng.normal(size=(2, 4, 3, c_in))), jnp.asarray(rng.normal(size=(c_out, c_in)))
    cot = jnp.asarray(rng.normal(size=(2, 4, 3, c_out)))
    plain = lambda x, w: jnp.einsum("ntvc,oc->ntvo", x, w)  # noqa: E731
    np.testing.assert_allclose(common.pointwise_conv(x, w), plain(x, w), rtol=1e-12, atol=1e-12)
    want = jax.grad(lambda x, w: jnp.sum(plain(x, w) * cot), argnums=(0, 1))(x, w)
    got = jax.grad(lambda x, w: jnp.sum(common.pointwise_conv(x, w) * cot), argnums=(0, 1))(x, w)
    for g, e in zip(got, want):
      assert g.dtype == jnp.float64
      np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


def test_batch_norm_train_gradient():
  """``batch_norm_train``'s hand-written gradient against autodiff of the plain formula
  (``batch_norm_stats``, then normalise, scale, shift), for a loss on all three outputs
  (so the mean's and variance's cotangents count too), float64 (1e-12 as above)."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(2.0, 3.0, size=(4, 5, 6, 3)))
    scale, bias = jnp.asarray(rng.normal(size=3)), jnp.asarray(rng.normal(size=3))
    cot, c_mean, c_var = (jnp.asarray(rng.normal(size=s)) for s in (x.shape, 3, 3))

    def plain(x, scale, bias):
      mean, var, _ = common.batch_norm_stats(x, (0, 1, 2))
      return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias, mean, var

    def loss(fn):
      return lambda *a: sum(jnp.sum(o * c) for o, c in zip(fn(*a), (cot, c_mean, c_var)))

    custom = lambda x, s, b: common.batch_norm_train(x, s, b, 1e-5)  # noqa: E731
    for got, want in zip(custom(x, scale, bias), plain(x, scale, bias)):
      np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    want = jax.grad(loss(plain), argnums=(0, 1, 2))(x, scale, bias)
    got = jax.grad(loss(custom), argnums=(0, 1, 2))(x, scale, bias)
    for g, e in zip(got, want):
      np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


def test_temporal_conv_rejects_unknown_impl():
  x, w = jnp.zeros((1, 4, 2, 3)), jnp.zeros((2, 3, 3, 1))
  with pytest.raises(ValueError, match="temporal_conv: impl='fft'; expected one of conv, matmul"):
    common.temporal_conv(x, w, 1, 1, impl="fft")


def test_bernoulli_mask_packs_the_prng_words():
  """Keep probability 0.5 (a multiple of 2^-8): element ``j`` is byte ``j % 4`` (least
  significant first) of 32-bit word ``j // 4`` of ``jax.random.bits``, kept below 128;
  0.75 * 2^8 = 192 likewise; 0.9 is no multiple of 2^-8 or 2^-16: ``jax.random.bernoulli``."""
  key = jax.random.PRNGKey(5)
  shape = (3, 7, 5)  # 105 elements: 27 words, the last one partly used
  words = np.asarray(jax.random.bits(key, (27,), jnp.uint32))
  byte = ((words[:, None] >> (8 * np.arange(4, dtype=np.uint32))) & 0xFF).reshape(-1)[:105].reshape(shape)
  for keep, threshold in ((0.5, 128), (0.75, 192)):
    np.testing.assert_array_equal(common.bernoulli_mask(key, keep, shape), byte < threshold)
  # 16-bit slices (two per word, 53 words): 1 - 2^-12 is a multiple of 2^-16, not of 2^-8
  words16 = np.asarray(jax.random.bits(key, (53,), jnp.uint32))
  half = ((words16[:, None] >> np.array([0, 16], np.uint32)) & 0xFFFF).reshape(-1)[:105]
  np.testing.assert_array_equal(common.bernoulli_mask(key, 1 - 2.0 ** -12, (105,)), half < 65536 - 16)
  np.testing.assert_array_equal(common.bernoulli_mask(key, 0.9, shape), jax.random.bernoulli(key, 0.9, shape))


def test_bernoulli_mask_distribution():
  """The fraction kept within 5 standard errors of the keep probability over 2^20 units, and
  neighbouring units (bytes of one word) uncorrelated within 5 standard errors (1/sqrt(n))."""
  n = 2 ** 20
  for keep in (0.5, 0.75):
    m = np.asarray(common.bernoulli_mask(jax.random.PRNGKey(7), keep, (n,)), np.float64)
    assert abs(m.mean() - keep) <= 5 * np.sqrt(keep * (1 - keep) / n), keep
    a, b = m[0::2] - keep, m[1::2] - keep
    assert abs(np.mean(a * b) / (keep * (1 - keep))) <= 5 / np.sqrt(n // 2), keep


def test_dropout_flax_mask_is_flax_dropout():
  """``mask="flax"`` (the default) draws the very masks of ``flax.linen.Dropout`` from the
  same key (the same module name, the same rng stream): bit-identical outputs; ``"packed"``
  draws other masks from that key."""
  x = jnp.asarray(np.random.default_rng(1).uniform(1, 2, size=(8, 5, 7)), jnp.float32)
  rngs = {"dropout": jax.random.PRNGKey(2)}
  for rate in (0.5, 0.1):
    want = nn.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
    np.testing.assert_array_equal(common.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs), want)
    assert common.Dropout(rate).mask == "flax"
  packed = common.Dropout(0.5, "packed").apply({}, x, deterministic=False, rngs=rngs)
  assert not np.array_equal(packed, nn.Dropout(0.5).apply({}, x, deterministic=False, rngs=rngs))


def test_dropout_module():
  """``common.Dropout``: inverted scaling of the kept units, zeros elsewhere, identity when
  deterministic or at rate 0, and both mask kinds keep about ``1 - rate``."""
  x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, size=(64, 64)), jnp.float32)
  for mask in common.DROPOUT_MASKS:
    layer = common.Dropout(0.5, mask)
    y = np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)}))
    kept = y != 0
    np.testing.assert_array_equal(y[kept], 2 * np.asarray(x)[kept])
    assert abs(kept.mean() - 0.5) <= 5 * 0.5 / 64
    np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(common.Dropout(0.0, mask).apply({}, x, deterministic=False), x)
  with pytest.raises(ValueError, match="mask='fast'"):
    common.Dropout(0.5, "fast").apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})


def test_init_schemes():
  """``normal_0.02``: linear/conv weights ~N(0, 0.02) (sample std within 5 standard errors of
  a normal's std estimate, ~0.02 * 5 / sqrt(2n)), biases 0, BN scales ~N(1, 0.02); ``default``:
  BN scales 1."""
  c = config("stgcn", init="normal_0.02")
  model = models.build_encoder(c, NTU25, num_outputs=128, mlp=True)
  variables = models.init_variables(model, jax.random.PRNGKey(3), jnp.zeros((2, 3, 20, 25, 2)))
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(variables["params"])}
  weights = np.concatenate([v.ravel() for k, v in flat.items() if k.endswith("weight") and v.ndim >= 2])
  assert abs(weights.std() - 0.02) <= 5 * 0.02 / np.sqrt(2 * weights.size) and abs(weights.mean()) < 0.002
  assert all(np.all(v == 0) for k, v in flat.items() if k.endswith("bias"))
  scales = np.concatenate([v for k, v in flat.items() if k.endswith("scale")])
  assert abs(scales.mean() - 1) < 0.01 and 0.01 < scales.std() < 0.03
  assert all(np.all(v == 1) for k, v in flat.items() if "edge_importance" in k)
  default = models.init_variables(models.build_encoder(config("stgcn"), NTU25, num_outputs=8), jax.random.PRNGKey(3),
                                  jnp.zeros((2, 3, 20, 25, 2)))
  assert all(np.all(np.asarray(v) == 1) for path, v in jax.tree_util.tree_leaves_with_path(default["params"])
             if getattr(path[-1], "key", "") == "scale")


def test_torch_keys():
  gru = models.default_config()
  assert models.torch_key(gru, ("gru", "weight_ih_l2_reverse")) == "encoder.gru.weight_ih_l2_reverse"
  assert models.torch_key(gru, ("input_norm", "var")) == "input_norm.running_var"
  assert models.torch_key(gru, ("fc_2", "weight")) == "fc.2.weight"
  stgcn = config("stgcn")
  assert models.torch_key(stgcn, ("st_gcn_networks_9", "residual_1", "mean")) == \
      "st_gcn_networks.9.residual.1.running_mean"
  assert models.torch_key(stgcn, ("edge_importance10",)) == "edge_importance10"
  assert models.torch_key(config("dsta"), ("graph_layers_2", "downs1_0", "weight")) == "graph_layers.2.downs1.0.weight"


def test_unknown_names_are_clear_errors():
  with pytest.raises(ValueError, match="config.model.name='resnet'; expected one of gru, stgcn, dsta"):
    models.validate(config("resnet"), NTU25)
  with pytest.raises(ValueError, match="config.model.init='xavier'"):
    models.validate(config("gru", init="xavier"), NTU25)
  with pytest.raises(ValueError, match="fc_init"):
    models.build_encoder(config("gru"), NTU25, num_outputs=3, fc_init="zeros")
