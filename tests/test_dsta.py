"""Tests for cmd_jax.models.dsta: DSTA-Net in HiCLR's release configuration.

Independent computations: a PyTorch DSTA-Net written from the specification
(``tests/torch_dsta.py``, state_dict keys = the reference's) with every parameter copied
from the JAX model through the renaming rule, the positional encoding's formula in float64
Python, and the initialisers' laws (sample statistics within bounds derived from the sample
sizes). Parameters for the comparisons are random (not the init), so that every term of
the block (alphas, attention0s, biases, BatchNorm scales and running statistics) matters.
"""

from __future__ import annotations

import math
import re
import types

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cmd_jax import layouts
from cmd_jax.models import dsta

torch = pytest.importorskip("torch")
from tests import torch_dsta  # noqa: E402  (needs torch)

# A small configuration with the kinds of block (the release's in != out at stride 1 is
# in the full-size test): identity residuals, stride 2 with in != out, and stride 2 with
# in == out (projections only because of the stride). S = 3, V = 7, clips of 12 frames
# against an encoding of 13 (the reference's slicing; per-block encodings of 13, 13, 7
# frames for clips of 12, 12, 6). Few blocks: compiling a block's gradient takes seconds.
SMALL_BLOCKS = ((8, 8, 4, 1), (8, 16, 4, 2), (16, 16, 6, 2))
SMALL = dict(blocks=SMALL_BLOCKS, num_subset=3, num_points=7, num_frames=13)
SMALL_X = (2, 3, 12, 7, 2)  # [N, C, T, V, M]

BN_LEAVES = {"scale": "weight", "mean": "running_mean", "var": "running_var"}  # bias stays bias

# Tolerances: max |jax - torch| <= TOL * max(1, max |torch|) per tensor, i.e. absolute
# for the O(0.01-2) values these tests produce (random weights scaled by 1/sqrt(fan_in),
# normalised activations, loss weights N(0, 1)) and relative for larger ones. float32's
# unit roundoff is u = 6e-8; every value is a chain of ~3 sums of 10-1000 products per
# layer through 2 + 3 * blocks layers, summed in different orders by the two libraries
# (oneDNN/MKL vs XLA, AVX2 or AVX-512 kernels, any thread count): a few tens of u of the
# values' scale per layer. Observed maxima (printed with -s): small configuration forward and
# running statistics ~4e-7, full-size forward ~1.4e-6 (8 blocks, sums over up to 384
# channels, features O(1)), gradients ~2.5e-6 and the rounding noise of the zero gradients
# ~3.5e-6 (the backward's sums run over every row, frame and joint). The bounds leave a
# margin of about 10 or more.
TOL_FORWARD = 1e-5     # small configuration: outputs, BatchNorm running statistics
TOL_FULL = 2e-5        # release configuration, NTU-25 size: feature and head output
TOL_GRAD = 3e-5        # gradients


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------

def torch_key(path: tuple[str, ...]) -> str:
  """The renaming rule: modules ``name_<k>`` -> ``name.<k>``, BatchNorm leaves renamed."""
  parts = []
  for name in path[:-1]:
    m = re.fullmatch(r"(.+)_(\d+)", name)
    parts += [m.group(1), m.group(2)] if m else [name]
  return ".".join(parts + [BN_LEAVES.get(path[-1], path[-1])])


def flat(tree) -> dict[tuple[str, ...], np.ndarray]:
  return {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


def random_variables(model, x_shape, seed: int = 0) -> dict:
  """Random params and running statistics in the shapes ``init`` gives (via ``eval_shape``,
  without compiling the initialisers): conv/linear weights ``N(0, 1/fan_in)``, biases
  ``N(0, 0.1^2)``, BN scales ``U(0.5, 1.5)``, alphas ``U(0.5, 1.5)``, attention0s
  ``1/V (1 + N(0, 0.5^2))``, running means ``N(0, 0.1^2)``, running variances ``U(0.5, 2)``."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x_shape)))
  rng = np.random.default_rng(seed)
  out = {}
  for col, tree in shapes.items():
    leaves = {}
    for path, s in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items():
      leaf, shape = path[-1], s.shape
      if leaf == "weight":
        v = rng.normal(0.0, 1.0 / math.sqrt(np.prod(shape[1:])), shape)
      elif leaf == "bias":
        v = rng.normal(0.0, 0.1, shape)
      elif leaf in ("scale", "alphas"):
        v = rng.uniform(0.5, 1.5, shape)
      elif leaf == "attention0s":
        v = (1.0 + rng.normal(0.0, 0.5, shape)) / shape[-1]
      elif leaf == "mean":
        v = rng.normal(0.0, 0.1, shape)
      elif leaf == "var":
        v = rng.uniform(0.5, 2.0, shape)
      else:
        raise AssertionError(f"unexpected variable {col}/{'/'.join(path)}")
      leaves[path] = jnp.asarray(v, jnp.float32)
    out[col] = flax.traverse_util.unflatten_dict(leaves)
  return out


def torch_model_for(variables, *, blocks, num_subset, num_points, num_frames, num_outputs, mlp,
                    attention_drop=0.0):
  """The torch model with every parameter and running statistic copied from ``variables`` and
  the constant buffers from ``dsta.torch_buffers``, as a conversion would load them."""
  net = torch_dsta.DSTANet([list(r) for r in blocks], num_outputs, mlp, num_subset, num_points, num_frames,
                           attention_drop)
  state = net.state_dict()
  cfg = model_config(blocks=tuple(blocks), num_subset=num_subset, num_frames=num_frames)
  buffers = dsta.torch_buffers(cfg, types.SimpleNamespace(num_joints=num_points))
  for key, v in buffers.items():
    assert tuple(state[key].shape) == v.shape, key
    state[key] = torch.from_numpy(v)
  copied = set(buffers)
  for col in ("params", "batch_stats"):
    for path, v in flat(variables[col]).items():
      key = torch_key(path)
      assert key in state, f"{col}/{'/'.join(path)} -> {key} is not a torch state_dict key"
      assert tuple(state[key].shape) == v.shape, key
      state[key] = torch.from_numpy(v.copy())
      copied.add(key)
  missing = {k for k in state if k not in copied and not k.endswith("num_batches_tracked")}
  assert not missing, f"torch keys without a JAX counterpart: {sorted(missing)}"
  net.load_state_dict(state)
  return net


def calibrate_running_stats(net, variables, x: np.ndarray) -> dict:
  """Running statistics = the batch statistics of ``x`` (one training-mode call of the torch
  model with momentum 1), set in both models: with random ones, eval-mode activations grow
  by orders of magnitude over 8 blocks and the comparison would only be relative."""
  bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for m in bns:
    m.momentum = 1.0
  net.train()
  with torch.no_grad():
    net(torch.from_numpy(np.asarray(x, np.float32)))
  for m in bns:
    m.momentum = 0.1
  state = net.state_dict()
  stats = {path: jnp.asarray(state[torch_key(path)].numpy()) for path in flat(variables["batch_stats"])}
  return {"params": variables["params"], "batch_stats": flax.traverse_util.unflatten_dict(stats)}


def scaled_err(a, b) -> float:
  """``max |a - b| / max(1, max |b|)``: the absolute difference for values up to 1."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))))


def model_config(**dsta_fields) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "dsta"
  c.init = "default"
  c.dsta = dsta.default_config()
  c.dsta.update(dsta_fields)
  return c


# ----------------------------------------------------------------------------------------
# Structure: counts, names, buffers, positional encoding, config
# ----------------------------------------------------------------------------------------

def test_parameter_counts_release_ntu25():
  cfg = model_config()
  layout = layouts.NTU25
  x = jnp.zeros((1, 3, 50, 25, 2))
  counts = {}
  for name, (num_outputs, mlp) in {"fc60": (60, False), "mlp128": (128, True), "none": (None, False)}.items():
    model = dsta.from_config(cfg, layout, num_outputs=num_outputs, mlp=mlp)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
    heads = ("fc", "fc_0", "fc_2")
    counts[name] = (sum(int(np.prod(a.shape)) for k, t in params.items() if k not in heads
                        for a in jax.tree.leaves(t)),
                    sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params)))
  print(f"\nDSTA-Net NTU-25 parameters: backbone {counts['fc60'][0]:,}; + fc(256->60) {counts['fc60'][1]:,}; "
        f"+ MLP head (256->256->128) {counts['mlp128'][1]:,}")
  assert counts["fc60"] == (1_546_480, 1_561_900)
  assert counts["none"] == (1_546_480, 1_546_480)
  assert counts["mlp128"] == (1_546_480, 1_546_480 + 256 * 256 + 256 + 256 * 128 + 128)
  assert dsta.feature_dim(cfg) == 256
  # The torch model written from the specification has the same count.
  net = torch_dsta.DSTANet([list(r) for r in dsta.RELEASE_BLOCKS], 60, False)
  assert sum(p.numel() for p in net.parameters()) == 1_561_900


def test_names_and_buffers_match_torch_state_dict():
  cfg = model_config()
  layout = layouts.NTU25
  model = dsta.from_config(cfg, layout, num_outputs=128, mlp=True)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, 50, 25, 2))))
  ours = {}
  for col in ("params", "batch_stats"):
    for path, s in flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes[col])).items():
      ours[torch_key(path)] = tuple(s.shape)
  buffers = dsta.torch_buffers(cfg, layout)
  for k, v in buffers.items():
    assert v.dtype == np.float32
    ours[k] = v.shape
  net = torch_dsta.DSTANet([list(r) for r in dsta.RELEASE_BLOCKS], 128, True)
  state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
  assert ours == {k: tuple(v.shape) for k, v in state.items()}
  # Per-block encodings: [1, in, num_frames_i, V] with 50, 50, 50, 25, 25, 13, 13, 13 frames.
  assert [buffers[f"graph_layers.{i}.pes.pe"].shape[2] for i in range(8)] == [50, 50, 50, 25, 25, 13, 13, 13]
  assert dsta.block_num_frames(dsta.RELEASE_BLOCKS, 50) == [50, 50, 50, 25, 25, 13, 13, 13]
  # The torch model computes the encoding in float32 (as the reference): angles up to 24 rad
  # with ~2 roundings of 6e-8 relative each, i.e. up to ~3e-6 rad apart from the float64 value.
  for k, v in buffers.items():
    np.testing.assert_allclose(v, state[k].numpy(), rtol=0, atol=5e-6, err_msg=k)
  assert not any(v.any() for k, v in buffers.items() if k.endswith(".atts"))


def test_positional_encoding_formula():
  for channels in (32, 64, 128):
    pe = dsta.spatial_positional_encoding(channels, 25)
    assert pe.shape == (25, channels) and pe.dtype == np.float32
    for joint, c in ((0, 0), (0, 1), (1, 0), (1, 1), (3, 6), (7, 7), (24, 0), (24, 1), (13, channels - 2),
                     (13, channels - 1), (20, channels // 2), (20, channels // 2 + 1)):
      angle = joint * math.exp(-(c - c % 2) * math.log(10000.0) / channels)
      expected = math.sin(angle) if c % 2 == 0 else math.cos(angle)
      # float64 rounded to float32: within half a float32 ulp of a value <= 1 (3e-8).
      assert abs(float(pe[joint, c]) - expected) < 6e-8, (channels, joint, c)
  buffers = dsta.torch_buffers(model_config(), layouts.NTU25)
  pe = buffers["graph_layers.3.pes.pe"]  # in = 64, 25 frames
  assert pe.shape == (1, 64, 25, 25)
  np.testing.assert_array_equal(pe[0, :, 7, :], dsta.spatial_positional_encoding(64, 25).T)
  np.testing.assert_array_equal(pe[0, :, 0], pe[0, :, 24])  # the same for every frame
  with pytest.raises(ValueError, match="even"):
    dsta.spatial_positional_encoding(7, 25)


def test_config_validation_and_frame_limits():
  layout = layouts.NTU25
  dsta.validate(model_config(), layout)
  cases = {
      "blocks": dict(blocks=((32, 32, 16, 1), (64, 64, 16, 1))),
      "blocks[0]": dict(blocks=((32, 32, 16),)),
      "blocks[1]": dict(blocks=((32, 32, 16, 1), (31, 32, 16, 1))),
      "num_subset": dict(num_subset=0),
      "num_frames": dict(num_frames=0),
      "attention_dropout": dict(attention_dropout=1.0),
      "position_dropout": dict(position_dropout=-0.1),
      "temporal_conv='fft'; expected one of conv, matmul": dict(temporal_conv="fft"),
      "dropout_mask='fast'; expected one of packed, flax": dict(dropout_mask="fast"),
  }
  for field, fields in cases.items():
    with pytest.raises(ValueError, match=re.escape(f"config.model.dsta.{field}")):
      dsta.validate(model_config(**fields), layout)
  assert dsta.frozen_params(model_config()) == ()
  assert dsta.frozen_params(model_config(fix_proj=True)) == ("proj",)
  model = dsta.DSTAEncoder(**SMALL, num_outputs=None)
  init = lambda x: jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x)))
  init((1, 3, 13, 7, 1))  # as long as the encoding: fine
  with pytest.raises(ValueError, match="14 frames but the positional encoding has 13"):
    init((1, 3, 14, 7, 1))
  with pytest.raises(ValueError, match="joints"):
    init((1, 3, 12, 6, 1))
  # Quirk 4: with stride 3, int(49 / 3 + 0.5) = 16 < ceil(49 / 3) = 17 frames (the reference fails too).
  strided = dsta.DSTAEncoder(blocks=((8, 8, 4, 3), (8, 8, 4, 1)), num_points=7, num_frames=49, num_outputs=None)
  with pytest.raises(ValueError, match="17 frames but the positional encoding has 16"):
    jax.eval_shape(lambda: strided.init(jax.random.key(0), jnp.zeros((1, 3, 49, 7, 1))))


# ----------------------------------------------------------------------------------------
# Against the PyTorch model
# ----------------------------------------------------------------------------------------

def test_eval_matches_torch_full_size_ntu25():
  """The release configuration on NTU-25 clips of 50 frames, two persons: feature and MLP head."""
  cfg = model_config()
  model = dsta.from_config(cfg, layouts.NTU25, num_outputs=128, mlp=True)
  x_shape = (2, 3, 50, 25, 2)
  variables = random_variables(model, x_shape, seed=1)
  x = np.random.default_rng(2).normal(0.0, 1.0, x_shape).astype(np.float32)

  @jax.jit
  def run(v, x):
    return model.apply(v, x, features_only=True), model.apply(v, x)

  net = torch_model_for(variables, blocks=dsta.RELEASE_BLOCKS, num_subset=3, num_points=25, num_frames=50,
                        num_outputs=128, mlp=True)
  variables = calibrate_running_stats(net, variables, np.random.default_rng(3).normal(0.0, 1.0, x_shape))
  feature, out = run(variables, x)
  net.eval()
  with torch.no_grad():
    t_feature = net(torch.from_numpy(x), features_only=True).numpy()
    t_out = net(torch.from_numpy(x)).numpy()
  assert feature.shape == (2, 256) and out.shape == (2, 128)
  errs = scaled_err(feature, t_feature), scaled_err(out, t_out)
  print(f"\nfull-size eval vs torch, max diff: feature {errs[0]:.2e}, head {errs[1]:.2e} "
        f"(scales {np.abs(t_feature).max():.2f}, {np.abs(t_out).max():.2f})")
  assert max(errs) < TOL_FULL


@pytest.mark.parametrize("temporal_conv", dsta.TEMPORAL_CONVS)
def test_train_step_matches_torch_outputs_stats_and_gradients(temporal_conv):
  """Training mode, attention_dropout 0: output, every running statistic after one call and
  the gradient of a scalar loss w.r.t. every parameter, with either ``temporal_conv`` (the
  7x1 convolutions as XLA's convolution or one im2col matmul, the same function)."""
  model = dsta.DSTAEncoder(**SMALL, num_outputs=5, mlp=True, attention_dropout=0.0, temporal_conv=temporal_conv)
  variables = random_variables(model, SMALL_X, seed=3)
  rng = np.random.default_rng(4)
  x = rng.normal(0.0, 1.0, SMALL_X).astype(np.float32)
  w = rng.normal(0.0, 1.0, (SMALL_X[0], 5)).astype(np.float32)

  @jax.jit
  def loss_and_grad(params, stats, x):
    def loss(p):
      out, new = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
      return jnp.sum(out * w), (out, new["batch_stats"])
    return jax.value_and_grad(loss, has_aux=True)(params)

  (_, (out, new_stats)), grads = loss_and_grad(variables["params"], variables["batch_stats"], x)

  net = torch_model_for(variables, blocks=SMALL_BLOCKS, num_subset=3, num_points=7, num_frames=13,
                        num_outputs=5, mlp=True).train()
  t_out = net(torch.from_numpy(x))
  (t_out * torch.from_numpy(w)).sum().backward()
  t_state = net.state_dict()
  t_params = dict(net.named_parameters())

  errs = {"output": scaled_err(out, t_out.detach().numpy())}
  stats, old = flat(new_stats), flat(variables["batch_stats"])
  assert len(stats) == 2 * sum(k.endswith("running_mean") for k in t_state)
  for path, v in stats.items():
    assert not np.array_equal(v, old[path]), path  # one call updates every running statistic
    errs["/".join(path)] = scaled_err(v, t_state[torch_key(path)].numpy())

  g = {torch_key(p): v for p, v in flat(grads).items()}
  assert set(g) == set(t_params)
  t_g = {k: p.grad.numpy() for k, p in t_params.items()}
  # A conv bias followed by a training-mode BatchNorm (every conv but in_nets) has a zero
  # gradient (the normalisation removes any per-channel constant): both sides give rounding
  # noise there, compared with the same absolute bound.
  zero = {k for k in g if k.endswith(".0.bias") and k[:-len("0.bias")] + "1.weight" in t_params} | {"proj.bias"}
  projecting = sum(dsta.has_down(c_in, c_out, stride) for c_in, c_out, _, stride in SMALL_BLOCKS)
  assert len(zero) == 1 + 3 * len(SMALL_BLOCKS) + 3 * projecting  # proj; out_nets, ff_nets, out_nett; downs1/2, downt2
  for k in zero:
    assert max(np.abs(g[k]).max(), np.abs(t_g[k]).max()) < TOL_GRAD, k
  grad_errs = {k: scaled_err(g[k], t_g[k]) for k in g}
  worst = max(errs, key=errs.get)
  worst_g = max(grad_errs, key=grad_errs.get)
  print(f"\ntrain vs torch, max diff: output {errs['output']:.2e}, running statistics {errs[worst]:.2e} "
        f"({worst}), gradients {grad_errs[worst_g]:.2e} ({worst_g}); alphas "
        f"{max(v for k, v in grad_errs.items() if k.endswith('alphas')):.2e}, attention0s "
        f"{max(v for k, v in grad_errs.items() if k.endswith('attention0s')):.2e}; largest zero-gradient "
        f"bias {max(np.abs(g[k]).max() for k in zero):.1e}")
  assert max(errs.values()) < TOL_FORWARD
  assert max(grad_errs.values()) < TOL_GRAD


# ----------------------------------------------------------------------------------------
# Dropout, other layouts, init
# ----------------------------------------------------------------------------------------

def test_dropout_behaviour():
  rates = dict(attention_dropout=0.5, position_dropout=0.25)
  blocks = SMALL_BLOCKS[:2]
  small = dict(SMALL, blocks=blocks)
  model = dsta.DSTAEncoder(**small, num_outputs=5, **rates)
  plain = dsta.DSTAEncoder(**small, num_outputs=5)  # every rate 0
  variables = random_variables(model, SMALL_X, seed=5)
  x = jnp.asarray(np.random.default_rng(6).normal(0.0, 1.0, SMALL_X), jnp.float32)
  last = f"graph_layers_{len(blocks) - 1}"

  @jax.jit
  def train(key):
    out, state = model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats", "intermediates"],
                             capture_intermediates=lambda mdl, _: mdl.name in ("drop", "drop_out2d", last))
    return out, state["intermediates"]

  @jax.jit
  def others(key):
    train_plain = lambda **kw: plain.apply(variables, x, train=True, mutable=["batch_stats"], **kw)[0]
    return dict(eval=model.apply(variables, x), eval_rng=model.apply(variables, x, rngs={"dropout": key}),
                eval_plain=plain.apply(variables, x), train_plain=train_plain(rngs={"dropout": key}),
                train_plain_no_rng=train_plain())

  k1, k2 = jax.random.key(1), jax.random.key(2)
  out1, inter1 = train(k1)
  np.testing.assert_array_equal(out1, train(k1)[0])
  assert np.abs(np.asarray(out1) - np.asarray(train(k2)[0])).max() > 1e-3
  # Residual dropout: about half of each block's residual is zeroed (6 binomial standard errors).
  for i in range(len(blocks)):
    dropped = np.asarray(inter1[f"graph_layers_{i}"]["drop"]["__call__"][0])
    frac = np.mean(dropped == 0)
    assert abs(frac - 0.5) < 6 * math.sqrt(0.25 / dropped.size), (i, frac)
  # Position dropout: whole feature vectors of (person, frame, joint) positions, the rest scaled by 1/0.75.
  before = np.asarray(inter1[last]["__call__"][0]).reshape(SMALL_X[0], -1, blocks[-1][1])
  after = np.asarray(inter1["drop_out2d"]["__call__"][0])
  zero = np.all(after == 0, axis=-1)
  assert not np.any((after == 0) & ~zero[..., None] & (before != 0))  # no partial vectors
  assert abs(zero.mean() - 0.25) < 6 * math.sqrt(0.25 * 0.75 / zero.size)
  np.testing.assert_allclose(after[~zero], before[~zero] / 0.75, rtol=1e-6)
  # Eval ignores the rng and the rates; rate 0 makes the rng irrelevant in training too.
  o1, o2 = others(k1), others(k2)
  np.testing.assert_array_equal(o1["eval"], o1["eval_rng"])
  np.testing.assert_array_equal(o1["eval"], o1["eval_plain"])
  np.testing.assert_array_equal(o1["eval"], o2["eval_rng"])
  np.testing.assert_array_equal(o1["train_plain"], o2["train_plain"])
  np.testing.assert_array_equal(o1["train_plain"], o1["train_plain_no_rng"])
  assert np.abs(np.asarray(o1["train_plain"]) - np.asarray(out1)).max() > 1e-3


def test_packed_residual_dropout():
  """``dropout_mask="packed"``: about half of each block's residual zeroed (6 binomial
  standard errors), the rest doubled; other masks than the default's from the same key."""
  blocks = SMALL_BLOCKS[:2]
  x = jnp.asarray(np.random.default_rng(6).normal(0.0, 1.0, SMALL_X), jnp.float32)
  variables = random_variables(dsta.DSTAEncoder(**dict(SMALL, blocks=blocks), num_outputs=5), SMALL_X, seed=5)
  outs = {}
  for mask in ("flax", "packed"):  # the intermediates kept: the packed masks'
    model = dsta.DSTAEncoder(**dict(SMALL, blocks=blocks), num_outputs=5, attention_dropout=0.5, dropout_mask=mask)
    capture = lambda mdl, _: mdl.name in ("drop", "downt2_1")  # noqa: E731  (the residual, then its dropout)
    outs[mask], state = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)},
                                    mutable=["batch_stats", "intermediates"], capture_intermediates=capture)
  for i in range(len(blocks)):
    block = state["intermediates"][f"graph_layers_{i}"]
    dropped = np.asarray(block["drop"]["__call__"][0])
    kept = dropped != 0
    assert abs(kept.mean() - 0.5) < 6 * math.sqrt(0.25 / dropped.size), (i, kept.mean())
    if "downt2_1" in block:  # a projecting residual: its input to the dropout
      residual = np.asarray(block["downt2_1"]["__call__"][0])
      np.testing.assert_array_equal(dropped[kept], 2 * residual[kept])
  assert "downt2_1" in state["intermediates"]["graph_layers_1"]  # the scaling was checked there
  assert np.abs(np.asarray(outs["packed"]) - np.asarray(outs["flax"])).max() > 1e-6


def test_msr20_layout_builds_and_runs():
  cfg = model_config(attention_dropout=0.0, fix_proj=True)
  layout = layouts.MSR20
  dsta.validate(cfg, layout)
  model = dsta.from_config(cfg, layout, num_outputs=20, mlp=False)
  x_shape = (2, 3, 50, 20, 1)
  variables = random_variables(model, x_shape, seed=7)
  assert variables["params"]["graph_layers_0"]["attention0s"].shape == (1, 3, 20, 20)
  x = jnp.asarray(np.random.default_rng(8).normal(0.0, 1.0, x_shape), jnp.float32)
  out, feature = jax.jit(lambda v, x: (model.apply(v, x), model.apply(v, x, features_only=True)))(variables, x)
  assert out.shape == (2, 20) and feature.shape == (2, 256)
  assert np.all(np.isfinite(out)) and np.all(np.isfinite(feature))
  buffers = dsta.torch_buffers(cfg, layout)
  assert buffers["graph_layers.0.atts"].shape == (1, 3, 20, 20)
  assert buffers["graph_layers.7.pes.pe"].shape == (1, 128, 13, 20)


INIT_BLOCKS = ((16, 32, 8, 2),)  # one block with every module (projections, stride)
INIT_V = 7


def _init(init_scheme: str, mlp: bool):
  model = dsta.DSTAEncoder(blocks=INIT_BLOCKS, num_points=INIT_V, num_frames=8, num_outputs=24, mlp=mlp,
                           init_scheme=init_scheme)
  variables = jax.jit(model.init)(jax.random.key(11), jnp.zeros((1, 3, 8, INIT_V, 1)))
  return flat(variables["params"]), flat(variables["batch_stats"])


def _check_normal(values: np.ndarray, std: float, mean: float = 0.0, what: str = ""):
  """Sample mean and std of ``n`` draws of ``N(mean, std^2)`` within 6 standard errors
  (``std / sqrt(n)`` for the mean, about ``std / sqrt(2n)`` for the std)."""
  n = values.size
  assert abs(values.mean() - mean) < 6 * std / math.sqrt(n), (what, values.mean(), mean)
  assert abs(values.std() - std) < 6 * std / math.sqrt(2 * n), (what, values.std(), std)


def _check_uniform(values: np.ndarray, bound: float, what: str = ""):
  """Draws of ``U(-b, b)``: inside the bound, std ``b/sqrt(3)`` within 6 standard errors
  (the sample std's relative standard error is ``sqrt(0.8 / n) / 2`` for a uniform)."""
  n = values.size
  assert np.abs(values).max() <= bound, what
  std = bound / math.sqrt(3)
  assert abs(values.std() - std) < 6 * std * math.sqrt(0.8 / n) / 2, (what, values.std(), std)


def _common_checks(params, stats):
  for path, v in params.items():
    if path[-1] == "alphas":
      np.testing.assert_array_equal(v, np.ones((1, 3, 1, 1), np.float32))
    elif path[-1] == "attention0s":
      np.testing.assert_array_equal(v, np.full((1, 3, INIT_V, INIT_V), 1.0 / INIT_V, np.float32))
  for path, v in stats.items():
    np.testing.assert_array_equal(v, np.zeros_like(v) if path[-1] == "mean" else np.ones_like(v))


def test_default_init_is_dstanets():
  params, stats = _init("default", mlp=True)
  _common_checks(params, stats)
  is_bn = lambda p: p[:-1] + ("scale",) in params
  convs = [p[:-1] for p in params if p[-1] == "weight" and params[p].ndim == 4]
  assert len(convs) == 8  # proj, in_nets, out_nets, ff_nets, out_nett, downs1, downs2, downt2
  pooled_w, pooled_b = [], []
  for m in convs:
    w, b = params[m + ("weight",)], params[m + ("bias",)]
    fan_in, fan_out = int(np.prod(w.shape[1:])), w.shape[0] * int(np.prod(w.shape[2:]))
    _check_normal(w, math.sqrt(2.0 / fan_out), what=m)  # kaiming_normal, fan_out
    pooled_w.append(w.ravel() / math.sqrt(2.0 / fan_out))
    assert np.abs(b).max() <= 1.0 / math.sqrt(fan_in)  # PyTorch's default bias (quirk 6)
    pooled_b.append(b.ravel() * math.sqrt(fan_in))
  _check_normal(np.concatenate(pooled_w), 1.0, what="conv weights / sqrt(2/fan_out)")
  _check_uniform(np.concatenate(pooled_b), 1.0, what="conv biases * sqrt(fan_in)")
  for path, v in params.items():
    if is_bn(path):
      np.testing.assert_array_equal(v, np.ones_like(v) if path[-1] == "scale" else np.zeros_like(v))
  # Head: fc_0 PyTorch's default Linear (created by HiCLR after DSTA-Net's init), fc_2 xavier_normal, bias 0.
  _check_uniform(params[("fc_0", "weight")], 1.0 / math.sqrt(32), "fc_0.weight")
  assert np.abs(params[("fc_0", "bias")]).max() <= 1.0 / math.sqrt(32)
  _check_normal(params[("fc_2", "weight")], math.sqrt(2.0 / (32 + 24)), what="fc_2.weight")
  np.testing.assert_array_equal(params[("fc_2", "bias")], 0.0)


def test_last_layer_inits():
  key, shape = jax.random.key(12), (60, 256)
  weight, bias = dsta.last_layer_inits("normal_0.01")
  _check_normal(np.asarray(weight(key, shape)), 0.01, what="normal_0.01")
  np.testing.assert_array_equal(bias(key, (60,)), 0.0)
  weight, bias = dsta.last_layer_inits("default")
  _check_normal(np.asarray(weight(key, shape)), math.sqrt(2.0 / (256 + 60)), what="xavier_normal")
  np.testing.assert_array_equal(bias(key, (60,)), 0.0)
  with pytest.raises(ValueError, match="fc_init"):
    dsta.last_layer_inits("xavier")
  model = dsta.from_config(model_config(), layouts.NTU25, num_outputs=60, mlp=False, fc_init="normal_0.01")
  assert model.fc_init == "normal_0.01" and model.init_scheme == "default" and model.attention_dropout == 0.5


def test_normal_002_init_is_hiclrs_weights_init():
  params, stats = _init("normal_0.02", mlp=False)
  _common_checks(params, stats)
  is_bn = lambda p: p[:-1] + ("scale",) in params
  weights = [v.ravel() for p, v in params.items() if p[-1] == "weight"]
  assert len(weights) == 9  # 8 convs + fc
  for p, v in params.items():
    if p[-1] == "weight" and v.size >= 64:
      _check_normal(v, 0.02, what=p)
    elif p[-1] == "bias":
      np.testing.assert_array_equal(v, 0.0, err_msg=str(p))
  _check_normal(np.concatenate(weights), 0.02, what="all conv/linear weights")
  scales = np.concatenate([v for p, v in params.items() if is_bn(p) and p[-1] == "scale"])
  assert scales.size == 16 + 6 * 32  # input_map, then out_nets, ff_nets, out_nett, downs1, downs2, downt2
  _check_normal(scales, 0.02, mean=1.0, what="BN scales")
