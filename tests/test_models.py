"""The encoder registry and the shared layers (``cmd_jax.models``, ``cmd_jax.models.common``).

- every encoder builds from ``config.model`` by name, applies to a clip ``[N, C, T, V, M]``,
  returns its pooled feature and its head's output, for NTU-25 and MSR-20;
- parameter counts against hand-counted formulas (the GRU's) and the reference's numbers;
- ``temporal_conv``'s hand-written gradient against JAX's autodiff of the plain convolution,
  in float64 (where both are exact to ~1e-15), for strides 1 and 2;
- the init schemes; ``torch_key`` names; errors for unknown names and schemes.
"""

from __future__ import annotations

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


@pytest.mark.parametrize("stride,t", [(1, 12), (2, 12), (2, 13)])
def test_temporal_conv_gradient_is_the_convolution_gradient(stride, t):
  """``temporal_conv`` (hand-written VJP) vs autodiff of ``lax.conv_general_dilated``, float64."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(stride * 100 + t)
    x = jnp.asarray(rng.normal(size=(2, t, 3, 5)))
    w = jnp.asarray(rng.normal(size=(4, 5, 9, 1)))
    cot = jnp.asarray(rng.normal(size=(2, (t + 8 - 9) // stride + 1, 3, 4)))

    def plain(x, w):
      return lax.conv_general_dilated(x, w, (stride, 1), ((4, 4), (0, 0)), dimension_numbers=("NHWC", "OIHW", "NHWC"))

    np.testing.assert_allclose(common.temporal_conv(x, w, stride, 4), plain(x, w), rtol=1e-12, atol=1e-12)
    want = jax.grad(lambda x, w: jnp.sum(plain(x, w) * cot), argnums=(0, 1))(x, w)
    got = jax.grad(lambda x, w: jnp.sum(common.temporal_conv(x, w, stride, 4) * cot), argnums=(0, 1))(x, w)
    for g, e in zip(got, want):
      assert g.dtype == jnp.float64
      np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


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
