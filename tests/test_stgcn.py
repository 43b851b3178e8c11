"""Tests for cmd_jax.models.stgcn and cmd_jax.models.graph against independent computations.

- the graph against facts counted by hand from the NTU-25 and MSR-20 skeletons;
- the encoder against ``tests/torch_stgcn.py`` (a PyTorch ST-GCN in the reference's own
  layout, with the reference's ``state_dict`` names), the weights copied from the JAX
  variables through the renaming rule ``torch_key``: forward (eval and train), the
  BatchNorm running statistics after one training call and every parameter gradient, in
  float32 and in float64;
- the speed options (``temporal_conv``, ``graph_order``): the encoder hands them to each of
  its blocks, and a chain of one block of each kind the encoder has computes with each
  option what the PyTorch blocks compute (output, running statistics, every gradient), in
  float64 and float32;
- parameter counts, dropout, the two init schemes, the registry functions.

Tolerances (float32 unit roundoff u = 6e-8): one output of the network is a chain of ~50
reductions (per block: the 1x1 conv over <= 4h = 64 inputs, the graph einsum over K*V = 75
terms, two BatchNorms whose statistics sum N*M*T*V <= 1e4 terms, the 9x1 conv over <= 9*4h =
576 terms); a reduction of n terms has a rounding error ~ sqrt(n) u (random walk) and at most
n u, relative to the sum of the magnitudes: ~1e-6 .. 6e-4 each. Different summation orders
(AVX2/AVX-512 kernels, thread counts, PyTorch vs XLA) give the random-walk size; measured:
forward outputs and running statistics agree to 1e-7 .. 6e-7 of the tensor's largest entry.
The float32 bound F32_RTOL = 2e-5 of that largest entry is ~40x the measurement and still far
below what a wrong index, layout or constant gives (>= 1e-3).

Gradients are different in float32: the network has 20 ReLUs, and a unit whose
pre-activation lies within rounding distance (~1e-6) of 0 passes its gradient in one
implementation and not in the other. With ~1e6 ReLU units per call, such units are to be
expected now and then; each changes the weight gradients upstream of it by up to ~1e-2 of
their scale (measured over 8 inputs: up to 2.7e-3 of the largest gradient entry, and PyTorch
float32 against PyTorch float64 shows the same; without a flip ~1e-6). So the float32
gradient check only bounds that (GRAD32_TOL = 2e-2), and every gradient is checked exactly in
float64 (JAX with x64 on, PyTorch in double), where a flip would need a pre-activation within
~1e-15 of 0: F64_RTOL = 1e-10 of the largest entry (float64 u = 1.1e-16 times the same
reductions gives <= 1e-12; measured ~3e-15).
"""

from __future__ import annotations

import importlib.util
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmd_jax import models  # noqa: E402
from cmd_jax.layouts import MSR20, NTU25  # noqa: E402
from cmd_jax.models import graph as graph_lib  # noqa: E402
from cmd_jax.models import stgcn  # noqa: E402
from tests.torch_stgcn import Block, TorchSTGCN  # noqa: E402

N, T = 4, 20
F32_RTOL = 2e-5
F64_RTOL = 1e-10
GRAD32_TOL = 2e-2  # of the largest gradient entry of all parameters (ReLU-kink flips, docstring)

BN_LEAVES = {"scale": "weight", "mean": "running_mean", "var": "running_var"}


# ----------------------------------------------------------------------------------------
# Helpers: the renaming rule, copying weights to PyTorch
# ----------------------------------------------------------------------------------------

def torch_key(path: tuple[str, ...]) -> str:
  """The PyTorch ``state_dict`` key of a Flax variable path: joined with ``.``, a module
  ``name_<digits>`` is ``name.<digits>``, BN leaves ``scale/mean/var`` are
  ``weight/running_mean/running_var``."""
  modules = [re.sub(r"^(.*)_(\d+)$", r"\1.\2", p) for p in path[:-1]]
  return ".".join(modules + [BN_LEAVES.get(path[-1], path[-1])])


def flat(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from flat(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def state_dict(variables, model_config, layout) -> dict:
  sd = {torch_key(p): torch.from_numpy(np.array(a)) for col in ("params", "batch_stats")
        for p, a in flat(variables[col])}
  for k, a in stgcn.torch_buffers(model_config, layout, num_batches_tracked=0).items():
    sd[k] = torch.from_numpy(np.array(a))
  return sd


def torch_model(variables, layout, *, dropout, num_class=128, mlp=True, dtype=torch.float32, extra=None):
  sd = state_dict(variables, None, layout)
  sd.update(extra or {})
  model = TorchSTGCN(stgcn.torch_buffers(None, layout)["A"], dropout=dropout, num_class=num_class, mlp=mlp)
  model.load_state_dict(sd, strict=True)  # every key of the reference, nothing more
  return model.to(dtype)


def random_variables(model, x, seed, *more_args):
  """Variables of ``model`` for input ``x`` (and ``more_args``) with random values everywhere
  (so that every parameter, running statistic and edge importance is exercised), from the shapes alone:
  conv/linear weights U(+-1/sqrt(fan_in)), BN scales 1 + 0.2 N(0, 1), every bias and running
  mean 0.1 N(0, 1), running variances and edge importances U(0.5, 1.5)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, *more_args)

  def value(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "weight":
      return rng.uniform(-1, 1, shape) / np.sqrt(np.prod(shape[1:]))
    if name.startswith("edge_importance") or name == "var":
      return rng.uniform(0.5, 1.5, shape)
    if name == "scale":
      return 1 + 0.2 * rng.standard_normal(shape)
    return 0.1 * rng.standard_normal(shape)  # biases, running means

  return jax.tree_util.tree_map_with_path(lambda p, leaf: value(p, leaf).astype(np.float32), shapes)


def init_variables(model, x, key):
  """``model.init``, compiled at XLA's backend optimisation level 0: the init program (the
  random draws of ~90 parameters) takes 20-30 s to compile at the default level on 2 cores,
  ~5 s at level 0; it runs once."""
  return jax.jit(model.init).lower(key, x).compile({"xla_backend_optimization_level": 0})(key, x)


def rel_err(a, b) -> float:
  b = np.asarray(b, np.float64)
  return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def clip(seed, v=25, m=2, t=T, n=N):
  return np.random.default_rng(seed).standard_normal((n, 3, t, v, m)).astype(np.float32)


def x64():
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=import-outside-toplevel
  return enable_x64()


def hand_config(**fields) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "stgcn"
  c.init = fields.pop("init", "default")
  c.stgcn = ml_collections.ConfigDict({**stgcn.default_config().to_dict(), **fields})  # any type
  return c


# ----------------------------------------------------------------------------------------
# Shared: the full NTU-25 configuration (h=16, D=256, MLP head 128, dropout 0.5)
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full():
  """The model, random variables (``random_variables``) and a compiled eval call returning
  ``(feature, head output)``."""
  model = stgcn.STGCNEncoder(NTU25, num_outputs=128, mlp=True)
  variables = random_variables(model, jnp.zeros((N, 3, T, 25, 2)), 0)

  @jax.jit
  def evaluate(variables, x, key):
    out = model.apply(variables, x, train=False, rngs={"dropout": key})
    feat = model.apply(variables, x, train=False, features_only=True)
    return feat, out

  return model, variables, evaluate


# ----------------------------------------------------------------------------------------
# Graph
# ----------------------------------------------------------------------------------------

def nonzero_pairs(a):
  return {(int(j), int(i)) for j, i in zip(*np.nonzero(a))}


def test_ntu_graph_hand_counted():
  a = graph_lib.layout_graph(NTU25)
  assert a.shape == (3, 25, 25) and a.dtype == np.float32
  assert [int((p != 0).sum()) for p in a] == [25, 40, 8]
  # The "further" partition A[2, j, i], 1-based: j nearer the centre 21 (spine shoulder).
  further = {(2, 1), (3, 4), (5, 6), (9, 10), (21, 2), (21, 3), (21, 5), (21, 9)}
  assert nonzero_pairs(a[2]) == {(j - 1, i - 1) for j, i in further}
  # Their reverses are in A[1] ("close"), and A[1] + A[2] hold every link both ways, once.
  assert all(a[1, i - 1, j - 1] != 0 for j, i in further)
  links = nonzero_pairs(a[1]) | nonzero_pairs(a[2])
  assert not nonzero_pairs(a[1]) & nonzero_pairs(a[2])
  assert links == {(i, j) for j, i in links} and len(links) == 48
  assert nonzero_pairs(a[0]) == {(i, i) for i in range(25)}
  # QUIRK: a link between two joints both farther than one hop from the centre (distance inf)
  # is "root": 13-14 (left hip - knee) in A[1] both ways.
  assert a[1, 12, 13] != 0 and a[1, 13, 12] != 0
  # Normalised per receiving joint (column): 1 / (neighbours + 1).
  np.testing.assert_allclose(a.sum(axis=(0, 1)), np.ones(25), rtol=0, atol=1e-6)
  assert a[0, 20, 20] == np.float32(1 / 5)   # spine shoulder: 2, 3, 5, 9
  assert a[0, 3, 3] == np.float32(1 / 2)     # head: 3
  assert a[2, 20, 1] == np.float32(1 / 3)    # spine mid receives from spine shoulder; 1, 21
  assert a[2, 1, 0] == np.float32(1 / 4)     # spine base receives from spine mid; 2, 13, 17
  assert a[1, 12, 0] == np.float32(1 / 4)    # ... and from left hip 13 (both at distance inf)


def test_msr_graph_from_layout():
  assert MSR20.root == 2
  a = graph_lib.layout_graph(MSR20)
  assert a.shape == (3, 20, 20)
  # Neck 2 -> its neighbours 0, 1, 3, 19; then shoulders -> elbows 7, 8, spine -> hip centre 6.
  assert nonzero_pairs(a[2]) == {(2, 0), (2, 1), (2, 3), (2, 19), (0, 7), (1, 8), (3, 6)}
  assert [int((p != 0).sum()) for p in a] == [20, 2 * 19 - 7, 7]
  np.testing.assert_allclose(a.sum(axis=(0, 1)), np.ones(20), rtol=0, atol=1e-6)


def test_hop_distance_and_general_partitions():
  # A path 0-1-2-3 centred on 1: hops capped at max_hop (inf beyond), K = 1 + 2 * hops.
  edges = [(0, 1), (1, 2), (2, 3)]
  hop = graph_lib.hop_distance(4, edges, max_hop=2)
  np.testing.assert_array_equal(hop[0], [0, 1, 2, np.inf])
  assert graph_lib.spatial_partitions(4, edges, 1, max_hop=2).shape == (5, 4, 4)
  assert graph_lib.num_partitions(2, 1) == 5 and graph_lib.num_partitions(3, 2) == 3


# ----------------------------------------------------------------------------------------
# Sizes and registry
# ----------------------------------------------------------------------------------------

def count(model, x):
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))


def test_parameter_counts_and_tree():
  x = jnp.zeros((2, 3, T, 25, 2))
  backbone = count(stgcn.STGCNEncoder(NTU25, num_outputs=None), x)
  with_fc = count(stgcn.STGCNEncoder(NTU25, num_outputs=60), x)
  with_mlp = count(stgcn.STGCNEncoder(NTU25, num_outputs=128, mlp=True), x)
  print(f"ST-GCN NTU-25 parameters: backbone {backbone:,}, + fc(256->60) {with_fc:,}, + MLP 256-256-128 {with_mlp:,}")
  assert (backbone, with_fc, with_mlp) == (821_380, 836_800, 920_068)
  variables = jax.eval_shape(stgcn.STGCNEncoder(NTU25, num_outputs=128, mlp=True).init, jax.random.key(0), x)
  shapes = {torch_key(p): tuple(a.shape) for col in ("params", "batch_stats") for p, a in flat(variables[col])}
  reference = {k: tuple(v.shape) for k, v in TorchSTGCN(graph_lib.layout_graph(NTU25), mlp=True).state_dict().items()
               if k != "A" and not k.endswith("num_batches_tracked")}
  assert shapes == reference
  assert shapes["st_gcn_networks.9.gcn.conv.weight"] == (768, 64, 1, 1)
  assert shapes["st_gcn_networks.4.tcn.2.weight"] == (32, 32, 9, 1)
  assert shapes["edge_importance10"] == (3, 25, 25)


def test_torch_buffers_are_the_reference_buffers():
  buffers = stgcn.torch_buffers(None, NTU25, num_batches_tracked=3)
  # PyTorch's buffers less the running statistics (those are the Flax batch_stats)
  reference = {k for k, _ in TorchSTGCN(graph_lib.layout_graph(NTU25)).named_buffers()
               if not k.endswith(("running_mean", "running_var"))}
  assert set(buffers) == reference and len(reference) == 1 + 24
  assert buffers["A"].dtype == np.float32 and buffers["A"].shape == (3, 25, 25)
  assert all(int(b) == 3 for k, b in buffers.items() if k.endswith("num_batches_tracked"))
  assert set(stgcn.torch_buffers(None, NTU25)) == {"A"}


def test_registry_functions():
  cfg = hand_config()
  models.validate(cfg, NTU25)
  assert models.feature_dim(cfg) == 256
  model = models.build_encoder(cfg, NTU25, num_outputs=128, mlp=True)
  assert isinstance(model, stgcn.STGCNEncoder) and model.init_scheme == "default" and model.dropout == 0.5
  assert count(model, jnp.zeros((2, 3, T, 25, 2))) == 920_068
  assert models.build_encoder(hand_config(init="normal_0.02"), NTU25, num_outputs=None).init_scheme == "normal_0.02"
  assert models.build_encoder(cfg, NTU25, num_outputs=60, fc_init="normal_0.01").fc_init == "normal_0.01"
  options = models.build_encoder(hand_config(temporal_conv="conv", graph_order="conv_first", dropout_mask="flax"),
                                 NTU25, num_outputs=None)
  assert (options.temporal_conv, options.graph_order, options.dropout_mask) == ("conv", "conv_first", "flax")
  for field, value in (("hidden_channels", 0), ("hidden_dim", -1), ("temporal_kernel", 8), ("dropout", 1.0),
                       ("edge_importance", "yes"), ("temporal_conv", "fft"), ("graph_order", "any"),
                       ("dropout_mask", "fast")):
    with pytest.raises(ValueError, match=rf"config\.model\.stgcn\.{field}="):
      stgcn.validate(hand_config(**{field: value}), NTU25)
  with pytest.raises(ValueError, match="V=20 joints"):
    stgcn.STGCNEncoder(NTU25).init(jax.random.key(0), jnp.zeros((1, 3, 4, 20, 1)))


@pytest.mark.skipif(importlib.util.find_spec("cmd_jax.models.dsta") is None,
                    reason="models.default_config() imports every encoder; cmd_jax.models.dsta is not there yet")
def test_registry_default_config():
  cfg = models.default_config()
  cfg.name = "stgcn"
  models.validate(cfg, NTU25)
  assert dict(cfg.stgcn) == dict(stgcn.default_config())
  assert count(models.build_encoder(cfg, NTU25, num_outputs=128, mlp=True), jnp.zeros((2, 3, T, 25, 2))) == 920_068


# ----------------------------------------------------------------------------------------
# The speed options: the same function
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("c_in,c_out", [(3, 4), (6, 4)])
def test_graph_orders_are_the_reference_graph_convolution(c_in, c_out):
  """``ConvTemporalGraphical`` in both contraction orders against the reference's formula in
  numpy float64 (1x1 conv to ``K*out`` channels with bias, then ``sum_{k,v} y[k, c, v]
  A[k, v, w]``), forward and the gradients of ``sum(out * w)`` for the input, the conv's
  weight and bias and the graph (``A`` times a random edge importance), against the same
  gradients in numpy. Float64 on both sides: 1e-12 of the largest entry bounds the rounding
  of these <= 75-term sums (~1e-15)."""
  rng = np.random.default_rng(c_in)
  a = graph_lib.layout_graph(NTU25) * rng.uniform(0.5, 1.5, (3, 25, 25))  # [K, V, W]
  x = rng.standard_normal((2, 5, 25, c_in))
  weight = rng.standard_normal((3 * c_out, c_in, 1, 1))
  bias = rng.standard_normal(3 * c_out)
  cot = rng.standard_normal((2, 5, 25, c_out))
  y = (np.einsum("ntvc,oc->ntvo", x, weight[:, :, 0, 0]) + bias).reshape(2, 5, 25, 3, c_out)
  want = np.einsum("ntvkc,kvw->ntwc", y, a)
  d_y = np.einsum("ntwc,kvw->ntvkc", cot, a).reshape(2, 5, 25, 3 * c_out)
  want_grads = {"x": np.einsum("ntvo,oc->ntvc", d_y, weight[:, :, 0, 0]),
                "weight": np.einsum("ntvo,ntvc->oc", d_y, x)[:, :, None, None], "bias": d_y.sum(axis=(0, 1, 2)),
                "a": np.einsum("ntvkc,ntwc->kvw", y, cot)}
  with x64():
    for order in ("conv_first", "graph_first"):
      layer = stgcn.ConvTemporalGraphical(c_out, order=order)

      def out(x, w, b, a, layer=layer):
        return layer.apply({"params": {"conv": {"weight": w, "bias": b}}}, x, a)

      got = np.asarray(out(x, weight, bias, a))
      assert rel_err(got, want) <= 1e-12, order
      grads = jax.grad(lambda *args, out=out: jnp.sum(out(*args) * cot), argnums=(0, 1, 2, 3))(x, weight, bias, a)
      for name, g in zip(("x", "weight", "bias", "a"), grads):
        assert g.dtype == jnp.float64 and rel_err(g, want_grads[name]) <= 1e-12, (order, name)
  assert stgcn.resolve_graph_order("auto", 3, 4) == "graph_first" and stgcn.resolve_graph_order("auto", 6, 4) == (
      "conv_first")


SMALL = dict(hidden_channels=4, hidden_dim=8, num_outputs=6, mlp=True, dropout=0.0)
SPEED_OPTIONS = [dict(temporal_conv=t, graph_order=g) for t in ("conv", "matmul") for g in ("conv_first", "graph_first")]


@pytest.fixture(scope="module")
def small():
  """A small ST-GCN (4 base channels: both strides, projecting residuals), random variables,
  a clip and head-output weights for the loss ``sum(out * w)``."""
  x = clip(21, n=2, t=12)
  variables = random_variables(stgcn.STGCNEncoder(NTU25, **SMALL), jnp.asarray(x), 22)
  return variables, x, np.random.default_rng(23).standard_normal((2, 6))


# The speed options change how each block computes (the 9x1 convolution, the graph
# convolution's order, with their hand-written gradients) and nothing outside the blocks; the
# encoder around them (data_bn, pooling, head, edge importances) is the same code for every
# option and is compared with PyTorch above and below at the full size. So each option is
# checked on a chain of the kinds of block the encoder has, in its order: 3 -> 4 (no
# residual), 4 -> 4 (identity), 4 -> 8 stride 2 (projecting residual), then the last block's
# two cases at stride 1, 8 -> 16 (4h -> D growing, as the release's 64 -> 256) and 16 -> 8
# (shrinking, as SMALL's 16 -> 8); each with its own graph G = A * (random edge importance),
# dropout 0. Five blocks compile in about half the ten-block encoder's time; the
# properties checked are those of every block of it.
CHAIN = ((4, 1, "none"), (4, 1, "identity"), (8, 2, "conv"), (16, 1, "conv"), (8, 1, "conv"))  # (out, stride, residual)
CHAIN_INS = (3,) + tuple(out for out, _, _ in CHAIN[:-1])  # each block's input channels


class BlockChain(stgcn.nn.Module):
  """``CHAIN``'s blocks in order on channels-last ``[N*M, T, V, 3]``, block ``i`` with ``gs[i]``."""

  options: dict

  @stgcn.nn.compact
  def __call__(self, x, gs, train: bool = True):
    for i, (out, stride, residual) in enumerate(CHAIN):
      x = stgcn.STGCNBlock(out, stride, residual, dropout=0.0, **self.options, name=f"blocks_{i}")(x, gs[i], train)
    return x


class TorchBlockChain(torch.nn.Module):
  """``CHAIN`` of ``tests/torch_stgcn.Block`` on PyTorch's ``(N*M, C, T, V)``."""

  def __init__(self):
    super().__init__()
    self.blocks = torch.nn.ModuleList([Block(cin, out, 3, 9, stride, 0.0, residual != "none")
                                       for cin, (out, stride, residual) in zip(CHAIN_INS, CHAIN)])
    assert [b.kind for b in self.blocks] == [residual for _, _, residual in CHAIN]

  def forward(self, x, gs):
    for block, g in zip(self.blocks, gs):
      x = block(x, g)
    return x


@pytest.fixture(scope="module")
def chain():
  """Random variables of ``BlockChain`` (``random_variables``' distributions), a clip
  ``[N*M=4, T=12, V=25, 3]``, a graph per block and the output weights of the loss ``sum(out * w)``."""
  rng = np.random.default_rng(31)
  x = rng.standard_normal((4, 12, 25, 3)).astype(np.float32)
  a = graph_lib.layout_graph(NTU25)
  gs = tuple((a * rng.uniform(0.5, 1.5, a.shape)).astype(np.float32) for _ in CHAIN)
  variables = random_variables(BlockChain(SPEED_OPTIONS[0]), jnp.asarray(x), 32, gs)
  w = rng.standard_normal((4, 6, 25, CHAIN[-1][0]))  # the output is [4, T' = 6, 25, 8]
  return variables, x, gs, w


def chain_train(options: dict, variables, x, gs, w, dtype):
  """Train-mode call of the chain with ``options`` in JAX and of the PyTorch chain, in
  ``dtype``: ``[(output, running statistics, gradients)]`` for JAX, then PyTorch, by torch key;
  the gradients include the input's (``x``) and each graph's (``g0``, ``g1``, ...)."""
  model = BlockChain(options)
  jdt = jnp.float64 if dtype == torch.float64 else jnp.float32
  cast = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jdt), tree)  # noqa: E731

  def loss(params, stats, x, gs):
    out, new = model.apply({"params": params, "batch_stats": stats}, x, gs, mutable=["batch_stats"])
    return jnp.sum(out * jnp.asarray(w, jdt)), (out, new["batch_stats"])

  (_, (out, stats)), (grads, d_x, d_gs) = jax.jit(jax.value_and_grad(loss, argnums=(0, 2, 3), has_aux=True))(
      cast(variables["params"]), cast(variables["batch_stats"]), cast(x), cast(gs))
  assert out.dtype == jdt and all(g.dtype == jdt for g in jax.tree.leaves(grads))
  j_grads = {torch_key(p): np.asarray(g) for p, g in flat(grads)}
  j_grads.update({"x": np.asarray(d_x), **{f"g{i}": np.asarray(g) for i, g in enumerate(d_gs)}})

  tm = TorchBlockChain()
  missing, unexpected = tm.load_state_dict({torch_key(p): torch.from_numpy(np.array(a))
                                            for col in ("params", "batch_stats") for p, a in flat(variables[col])},
                                           strict=False)
  assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
  tm = tm.to(dtype).train()
  t_x = torch.from_numpy(np.transpose(x, (0, 3, 1, 2))).to(dtype).requires_grad_()
  t_gs = [torch.from_numpy(g).to(dtype).requires_grad_() for g in gs]
  t_out = tm(t_x, t_gs).permute(0, 2, 3, 1)  # back to channels last
  (t_out * torch.from_numpy(w).to(dtype)).sum().backward()
  t_state = tm.state_dict()
  t_grads = {k: q.grad.numpy() for k, q in tm.named_parameters()}
  t_grads.update({"x": t_x.grad.numpy().transpose(0, 2, 3, 1), **{f"g{i}": g.grad.numpy() for i, g in enumerate(t_gs)}})
  j_stats = {torch_key(p): np.asarray(a) for p, a in flat(stats)}
  return ((np.asarray(out), j_stats, j_grads),
          (t_out.detach().numpy(), {k: t_state[k].numpy() for k in j_stats}, t_grads))


def worst_errors(got, want) -> tuple[float, float, float]:
  """Max |difference| over the output, the running statistics and the gradients, each over
  the largest |entry| of its part (of all its tensors)."""
  out, stats, grads = got
  t_out, t_stats, t_grads = want
  assert set(grads) == set(t_grads) and set(stats) == set(t_stats)
  part = lambda g, t: max(np.abs(g[k] - t[k]).max() for k in t) / max(np.abs(t[k]).max() for k in t)  # noqa: E731
  return rel_err(out, t_out), part(stats, t_stats), part(grads, t_grads)


def test_block_chain_covers_every_kind_of_block_of_the_encoder():
  """``CHAIN`` has each (residual, stride, channel growth) kind of block ``block_specs`` gives
  the encoder, at the release's size (h 16, D 256) and at a small one (h 4, D 8), once."""
  def kinds(specs):
    return {(residual, stride, (cout > cin) - (cout < cin)) for cin, cout, stride, residual in specs}
  chain_kinds = kinds([(cin, out, stride, residual) for cin, (out, stride, residual) in zip(CHAIN_INS, CHAIN)])
  release, small = kinds(stgcn.block_specs(16, 256)), kinds(stgcn.block_specs(4, 8))
  assert release | small == chain_kinds and len(chain_kinds) == len(CHAIN)


@pytest.mark.parametrize("options", SPEED_OPTIONS + [dict(temporal_conv="matmul", graph_order="auto")],
                         ids=lambda o: ",".join(o.values()))
def test_encoder_hands_its_speed_options_to_every_block(options):
  """The other half of the chain's argument: the encoder passes its options to each of its ten
  blocks (the blocks' graph convolutions get the order, ``auto`` resolved per block, and their
  9x1 convolutions the implementation). Recorded from the module calls while the encoder is
  traced (``nn.intercept_methods`` under ``jax.eval_shape``: nothing is compiled)."""
  model = stgcn.STGCNEncoder(NTU25, **SMALL, **options)
  calls = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__":
      calls.append((context.module, args))
    return next_fun(*args, **kwargs)

  with stgcn.nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 3, 12, 25, 2)))
  blocks = [(m, args[0].shape[-1]) for m, args in calls if isinstance(m, stgcn.STGCNBlock)]
  graph_convs = [m for m, _ in calls if isinstance(m, stgcn.ConvTemporalGraphical)]
  temporal = [m for m, _ in calls if m.name == "tcn_2"]
  specs = stgcn.block_specs(SMALL["hidden_channels"], SMALL["hidden_dim"])
  assert len(blocks) == len(graph_convs) == len(temporal) == len(specs) == 10
  for (block, cin), gcn, tcn, (spec_in, cout, stride, residual) in zip(blocks, graph_convs, temporal, specs):
    assert (cin, block.features, block.stride, block.residual) == (spec_in, cout, stride, residual)
    assert (block.temporal_conv, block.graph_order) == (options["temporal_conv"], options["graph_order"])
    assert gcn.order == stgcn.resolve_graph_order(options["graph_order"], cin, cout)
    assert tcn.temporal_impl == options["temporal_conv"]


@pytest.mark.parametrize("options", SPEED_OPTIONS, ids=lambda o: ",".join(o.values()))
def test_speed_options_match_torch_float64(chain, options):
  """Every combination of ``temporal_conv`` and ``graph_order`` (the hand-written gradients
  of the 9x1 convolution and of both graph orders included) against the PyTorch blocks in
  float64: the train-mode output, the new running statistics and every gradient (parameters,
  the input, the graphs), within ``F64_RTOL`` of the largest entry of each (module docstring)."""
  with x64():
    got, want = chain_train(options, *chain, torch.float64)
  errs = worst_errors(got, want)
  assert max(errs) <= F64_RTOL, (options, errs)
  assert min(np.abs(g).max() for g in want[2].values()) > 0  # every gradient reaches its tensor


@pytest.fixture(scope="module")
def chain_default32(chain):
  """The chain's float32 results in the reference's formulation (``conv``, ``conv_first``)."""
  return chain_train(SPEED_OPTIONS[0], *chain, torch.float32)[0]


@pytest.mark.parametrize("options", SPEED_OPTIONS[1:], ids=lambda o: ",".join(o.values()))
def test_speed_options_match_torch_and_default_float32(chain, chain_default32, options):
  """The same in float32, against the PyTorch blocks and against the reference order's
  formulation (``conv``, ``conv_first``): output and running statistics within ``F32_RTOL``,
  gradients within ``GRAD32_TOL`` of the largest entry (the bounds of the full model's float32
  comparison, module docstring: this chain has fewer blocks and no more terms per sum)."""
  got, want = chain_train(options, *chain, torch.float32)
  for reference in (want, chain_default32):
    out_err, stat_err, grad_err = worst_errors(got, reference)
    assert out_err <= F32_RTOL and stat_err <= F32_RTOL and grad_err <= GRAD32_TOL, (options, out_err, stat_err,
                                                                                      grad_err)


# ----------------------------------------------------------------------------------------
# Against PyTorch
# ----------------------------------------------------------------------------------------

def test_eval_matches_torch(full):
  _, variables, evaluate = full
  x = clip(2)
  feat, out = evaluate(variables, jnp.asarray(x), jax.random.key(3))
  tm = torch_model(variables, NTU25, dropout=0.5).eval()
  with torch.no_grad():
    t_feat, t_out = tm(torch.from_numpy(x))
  assert feat.shape == (N, 256) and out.shape == (N, 128)
  print(f"eval float32: feature {rel_err(feat, t_feat):.1e}, head {rel_err(out, t_out):.1e} (of the largest entry)")
  assert rel_err(feat, t_feat) <= F32_RTOL and rel_err(out, t_out) <= F32_RTOL
  # eval ignores the dropout rng
  np.testing.assert_array_equal(out, evaluate(variables, jnp.asarray(x), jax.random.key(4))[1])


def train_step_comparison(variables, x, w, dtype):
  """JAX train call (dropout 0): loss sum(out * w), its gradients and the new running stats,
  and the same from the PyTorch model in ``dtype``."""
  model = stgcn.STGCNEncoder(NTU25, num_outputs=128, mlp=True, dropout=0.0)
  jdt = jnp.float64 if dtype == torch.float64 else jnp.float32
  cast = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jdt), tree)  # noqa: E731

  def loss(params, stats, x, w):
    out, new = model.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(out * w), (out, new["batch_stats"])

  (_, (out, stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      cast(variables["params"]), cast(variables["batch_stats"]), jnp.asarray(x, jdt), jnp.asarray(w, jdt))
  assert out.dtype == jdt and all(g.dtype == jdt for g in jax.tree.leaves(grads))
  tm = torch_model(variables, NTU25, dropout=0.0, dtype=dtype).train()
  _, t_out = tm(torch.from_numpy(x).to(dtype))
  (t_out * torch.from_numpy(w).to(dtype)).sum().backward()
  t_state = tm.state_dict()
  t_grads = {k: p.grad.numpy() for k, p in tm.named_parameters()}
  j_grads = {torch_key(p): np.asarray(g) for p, g in flat(grads)}
  j_stats = {torch_key(p): np.asarray(s) for p, s in flat(stats)}
  assert set(j_grads) == set(t_grads)
  return (np.asarray(out), t_out.detach().numpy(), j_stats, {k: t_state[k].numpy() for k in j_stats},
          j_grads, t_grads)


def test_train_matches_torch_float32(full):
  _, variables, _ = full
  x, w = clip(6), np.random.default_rng(7).standard_normal((N, 128)).astype(np.float32)
  out, t_out, stats, t_stats, grads, t_grads = train_step_comparison(variables, x, w, torch.float32)
  assert rel_err(out, t_out) <= F32_RTOL
  stat_err = max(rel_err(stats[k], t_stats[k]) for k in stats)
  assert stat_err <= F32_RTOL
  scale = max(np.abs(g).max() for g in t_grads.values())
  grad_err = max(np.abs(grads[k] - t_grads[k]).max() for k in t_grads) / scale
  print(f"train float32: output {rel_err(out, t_out):.1e}, running stats {stat_err:.1e}, "
        f"gradients {grad_err:.1e} of the largest entry {scale:.2f}")
  assert grad_err <= GRAD32_TOL


def test_train_matches_torch_float64(full):
  _, variables, _ = full
  # batch 2: XLA's float64 convolutions on the CPU are slow to run
  x, w = clip(9, n=2), np.random.default_rng(10).standard_normal((2, 128))
  with x64():
    out, t_out, stats, t_stats, grads, t_grads = train_step_comparison(variables, x.astype(np.float64), w,
                                                                       torch.float64)
  assert rel_err(out, t_out) <= F64_RTOL
  assert max(rel_err(stats[k], t_stats[k]) for k in stats) <= F64_RTOL
  scale = max(np.abs(g).max() for g in t_grads.values())
  errs = {k: np.abs(grads[k] - t_grads[k]).max() / scale for k in t_grads}
  print(f"train float64: output {rel_err(out, t_out):.1e}, gradients {max(errs.values()):.1e} of the largest entry")
  assert max(errs.values()) <= F64_RTOL, sorted(errs.items(), key=lambda kv: -kv[1])[:3]
  # every gradient is non-trivial where it should be (the edge importances and data_bn included)
  for k in ("edge_importance1", "edge_importance10", "data_bn.weight", "data_bn.bias", "fc.2.weight"):
    assert np.abs(t_grads[k]).max() > 1e-4 * scale, k


def test_msr_without_edge_importance_matches_torch():
  model = stgcn.STGCNEncoder(MSR20, num_outputs=None, edge_importance=False, dropout=0.5)
  x = clip(11, v=20, m=1)
  variables = random_variables(model, jnp.asarray(x), 12)
  assert not any(k.startswith("edge_importance") for k in variables["params"])

  ev = jax.jit(lambda variables, x: model.apply(variables, x, train=False))(variables, jnp.asarray(x))
  assert ev.shape == (N, 256)
  ones = {f"edge_importance{i}": torch.ones(3, 20, 20) for i in range(1, 11)}
  # the torch model needs a head; the feature is compared
  head = {"fc.weight": torch.zeros(128, 256), "fc.bias": torch.zeros(128)}
  tm = torch_model(variables, MSR20, dropout=0.5, mlp=False, extra={**ones, **head}).eval()
  with torch.no_grad():
    t_feat, _ = tm(torch.from_numpy(x))
  assert rel_err(ev, t_feat) <= F32_RTOL


# ----------------------------------------------------------------------------------------
# Dropout
# ----------------------------------------------------------------------------------------

# A kept unit is the BatchNorm output times 2. Under jit, XLA may fuse the BatchNorm into the
# dropout's fusion and compute it again there with another rounding order (FMA contraction),
# so the doubled value and twice the captured BN output may differ by the roundings of the
# block's largest doubled values: measured up to 0.9 ulp (2**-23 relative) of the block's
# largest doubled value (1.9e-6 against ~18). The bound, 8 such ulp, leaves room for another
# CPU's fusion; a wrong scale (1 / keep_prob mistaken) is off by half the value.
DROPOUT_ULPS = 8


@pytest.mark.parametrize("mask", ["packed", "flax"])
def test_dropout(full, mask):
  """Train-mode dropout in blocks 2-10 with the default masks (``packed``) and Flax's: about
  half of each block's units zeroed, the rest doubled; the same key gives the same output,
  another key another."""
  _, variables, _ = full
  model = stgcn.STGCNEncoder(NTU25, num_outputs=128, mlp=True, dropout_mask=mask)

  @jax.jit
  def train(variables, x, key):
    capture = lambda module, _: module.name in ("tcn_3", "tcn_4")  # noqa: E731  (BN, then dropout)
    out, state = model.apply(variables, x, train=True, rngs={"dropout": key}, capture_intermediates=capture,
                             mutable=["batch_stats", "intermediates"])
    return out, state["intermediates"]

  x = jnp.asarray(clip(14))
  out_a, inter = train(variables, x, jax.random.key(1))
  out_b, _ = train(variables, x, jax.random.key(2))
  np.testing.assert_array_equal(out_a, train(variables, x, jax.random.key(1))[0])  # same key, same output
  assert np.abs(np.asarray(out_a) - np.asarray(out_b)).max() > 1e-3
  for i in range(10):
    block = inter[f"st_gcn_networks_{i}"]
    before = np.asarray(block["tcn_3"]["__call__"][0])
    after = np.asarray(block["tcn_4"]["__call__"][0])
    if i == 0:  # block 1 is built without the dropout
      np.testing.assert_array_equal(after, before)
      continue
    kept = after != 0
    # Bernoulli(0.5) per unit: 5 standard deviations of the fraction over after.size units
    assert abs(kept.mean() - 0.5) <= 5 * 0.5 / np.sqrt(after.size), (i, kept.mean())
    atol = DROPOUT_ULPS * 2.0 ** -23 * 2 * np.abs(before).max()
    np.testing.assert_allclose(after[kept], 2 * before[kept], rtol=0, atol=atol)  # inverted dropout, 1 / (1 - 0.5)


def test_packed_dropout_masks(small):
  """``dropout_mask="packed"`` in the encoder: every block but the first zeroes about half of
  its units (5 standard deviations of the fraction over the block's units) and doubles the
  rest; other masks than the default's from the same key."""
  variables, x, _ = small
  outs = {}
  for mask in ("flax", "packed"):  # the intermediates kept: the packed masks'
    model = stgcn.STGCNEncoder(NTU25, **dict(SMALL, dropout=0.5), dropout_mask=mask)
    capture = lambda module, _: module.name in ("tcn_3", "tcn_4")  # noqa: E731  (BN, then dropout)
    outs[mask], state = model.apply(variables, jnp.asarray(x), train=True, rngs={"dropout": jax.random.key(1)},
                                    capture_intermediates=capture, mutable=["batch_stats", "intermediates"])
  for i in range(1, 10):
    block = state["intermediates"][f"st_gcn_networks_{i}"]
    before, after = (np.asarray(block[name]["__call__"][0]) for name in ("tcn_3", "tcn_4"))
    kept = after != 0
    assert abs(kept.mean() - 0.5) <= 5 * 0.5 / np.sqrt(after.size), (i, kept.mean())
    np.testing.assert_array_equal(after[kept], 2 * before[kept])
  assert np.abs(np.asarray(outs["packed"]) - np.asarray(outs["flax"])).max() > 1e-6


# ----------------------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------------------

def leaves_by_kind(params):
  """(conv/linear weights, conv/linear biases, BN scales, BN biases, edge importances) by key."""
  kinds = {k: {} for k in ("weight", "bias", "bn_scale", "bn_bias", "importance")}
  leaves = {path: np.asarray(a, np.float64) for path, a in flat(params)}
  batch_norms = {path[:-1] for path in leaves if path[-1] == "scale"}
  for path, a in leaves.items():
    if path[-1].startswith("edge_importance"):
      kind = "importance"
    elif path[:-1] in batch_norms:
      kind = "bn_scale" if path[-1] == "scale" else "bn_bias"
    else:
      kind = path[-1]
    kinds[kind][torch_key(path)] = a
  return kinds


def test_init_normal_002():
  # normal_0.02 overrides fc_init too
  model = stgcn.STGCNEncoder(NTU25, num_outputs=128, mlp=True, init_scheme="normal_0.02", fc_init="normal_0.01")
  params = init_variables(model, jnp.zeros((2, 3, T, 25, 2)), jax.random.key(15))["params"]
  kinds = leaves_by_kind(params)
  assert len(kinds["weight"]) == 2 + 10 * 2 + 3 and len(kinds["bn_scale"]) == 1 + 20 + 3
  # Sample mean and std of n draws of N(mu, s^2): sd s / sqrt(n) and ~ s / sqrt(2n); 5 sd.
  for group, mu in (("weight", 0.0), ("bn_scale", 1.0)):
    for key, a in kinds[group].items():
      n = a.size
      assert abs(a.mean() - mu) <= 5 * 0.02 / np.sqrt(n), key
      assert abs(a.std() / 0.02 - 1) <= 5 / np.sqrt(2 * n), key
  for group in ("bias", "bn_bias"):
    assert all(np.all(a == 0) for a in kinds[group].values())
  assert len(kinds["importance"]) == 10 and all(np.all(a == 1) for a in kinds["importance"].values())


def test_init_default():
  model = stgcn.STGCNEncoder(NTU25, num_outputs=128, mlp=True, fc_init="normal_0.01")
  variables = init_variables(model, jnp.zeros((2, 3, T, 25, 2)), jax.random.key(16))
  kinds = leaves_by_kind(variables["params"])
  last_w, last_b = kinds["weight"].pop("fc.2.weight"), kinds["bias"].pop("fc.2.bias")
  # fc_init="normal_0.01": the head's last layer N(0, 0.01^2), bias 0 (5 sd bounds as above)
  assert abs(last_w.mean()) <= 5 * 0.01 / np.sqrt(last_w.size)
  assert abs(last_w.std() / 0.01 - 1) <= 5 / np.sqrt(2 * last_w.size)
  assert np.all(last_b == 0)
  for key, w in kinds["weight"].items():
    fan_in = int(np.prod(w.shape[1:]))
    bound = 1 / np.sqrt(fan_in)
    assert np.abs(w).max() <= bound * (1 + 1e-6), key  # the float32 rounding of the bound
    # U(-b, b): std b / sqrt(3); the sample std's relative sd is ~0.45 / sqrt(n); 5 sd.
    assert abs(w.std() * np.sqrt(3) / bound - 1) <= 2.3 / np.sqrt(w.size), key
    b = kinds["bias"][key[:-len("weight")] + "bias"]
    assert np.abs(b).max() <= bound * (1 + 1e-6), key
  assert all(np.all(a == 1) for a in kinds["bn_scale"].values())
  assert all(np.all(a == 0) for a in kinds["bn_bias"].values())
  assert all(np.all(a == 1) for a in kinds["importance"].values())
  assert all(np.all(a == 0) for a in jax.tree.leaves(variables["batch_stats"]["data_bn"]["mean"]))
