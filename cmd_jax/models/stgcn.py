"""ST-GCN as HiCLR (and AimCLR) configure it: the ``stgcn`` encoder (graph from the layout).

This module owns the spatial-temporal graph convolutional encoder: the input BatchNorm, the
ten ST-GCN blocks with their learnable edge importances, the pooling to the feature and the
head (``cmd_jax.models.common.head``); the graph itself comes from
``cmd_jax.models.graph.layout_graph`` (the 'spatial' partitioning, ``K = 3``).

Computation (input a clip ``[N, C, T, V, M]``; ``h = hidden_channels`` (16 in HiCLR),
``D = hidden_dim`` (256), ``kt = temporal_kernel`` (9)):

1. ``data_bn``: BatchNorm over ``V*C`` channels with the persons folded into the batch, the
   reference's ``BatchNorm1d`` on ``(N*M, V*C, T)`` with channel ``v*C + c``, statistics over
   ``N*M x T``. Here: ``to_channels_last`` gives ``[N*M, T, V, C]`` (row ``n*M + m``, the
   reference's order), reshaped to ``[N*M, T, V*C]`` (channel ``v*C + c``) for the norm.
2. Ten blocks ``st_gcn_networks_0..9`` (``in -> out``, temporal stride, residual):
   ``3 -> h`` (1, none), ``h -> h`` x3 (1, identity), ``h -> 2h`` (2, conv),
   ``2h -> 2h`` x2 (1, identity), ``2h -> 4h`` (2, conv), ``4h -> 4h`` (1, identity),
   ``4h -> D`` (1, conv). The dropout rate reaches blocks 2..10 only: the reference builds
   block 1 without its ``dropout`` argument (rate 0).
3. Each block, on ``x [N*M, T, V, in]`` with ``G = A * edge_importance_i`` (``[K, V, V]``)::

     y   = gcn/conv(x)                              1x1 conv, in -> K*out, bias; channel k*out + c
     g   = einsum("ntvkc,kvw->ntwc", y, G)          out[.., w, c] = sum_{k,v} y[.., v, k, c] G[k, v, w]
     z   = tcn_3(conv_kt(relu(tcn_0(g))))           BN -> ReLU -> Conv(kt x 1, stride (s, 1),
                                                    pad ((kt-1)/2, 0)) -> BN
     out = relu(dropout(z) + residual(x))           residual: 0, x, or residual_1(residual_0(x))
                                                    (1x1 conv with stride (s, 1) -> BN)

4. ``feature``: mean over ``(T', V)`` per person, then over the ``M`` persons: ``[N, D]``
   (the reference's ``return_feat`` output, before ``fc``). With ``map_transform`` (AimCLR's
   EADM, the ``drop=True`` forward of AimCLR's ST-GCN) the last block's output is also
   transformed and pooled alike: a second feature, through the same head.
5. head: ``fc`` (``mlp=False``) or ``fc_0 -> ReLU -> fc_2`` (``mlp=True``: HiCLR replaces
   ``fc = Linear(D, 128)`` by ``Sequential(Linear(D, D), ReLU, fc)``); ``num_outputs=None``
   builds no head; ``features_only`` returns the feature.

Every convolution runs on channels-last data (``TorchConv2d``), the graph aggregation is one
einsum per block, and nothing loops over time, joints, samples or persons.

Edge importance: ten separate ``[K, V, V]`` parameters ``edge_importance1..10`` (the
reference registers them under these names on the model), initialised to ones and multiplied
elementwise with ``A``. ``edge_importance=False`` uses ``A`` itself. (In the reference that
setting fails: its forward looks the ``edge_importanceN`` attributes up unconditionally.)

Parameter names are the reference's ``state_dict`` keys: a Flax path joined with ``.``,
where a module named ``name_<digits>`` is ``name.<digits>`` and BatchNorm's
``scale``/``bias``/``mean``/``var`` are ``weight``/``bias``/``running_mean``/``running_var``:

=============================================  ===============================================
PyTorch key                                    Flax collection / path, shape
=============================================  ===============================================
``A`` (buffer)                                 not a variable: ``torch_buffers`` / ``layout_graph``
``data_bn.weight`` / ``.bias``                 ``params/data_bn/scale`` / ``bias``  ``[V*C]``
``data_bn.running_mean`` / ``running_var``     ``batch_stats/data_bn/mean`` / ``var``
``st_gcn_networks.{i}.gcn.conv.weight/bias``   ``params/st_gcn_networks_{i}/gcn/conv/...``
                                               ``[K*out, in, 1, 1]`` / ``[K*out]``
``st_gcn_networks.{i}.tcn.0.*``                ``.../tcn_0/...`` (BN ``[out]``)
``st_gcn_networks.{i}.tcn.2.weight/bias``      ``.../tcn_2/...`` ``[out, out, kt, 1]`` / ``[out]``
``st_gcn_networks.{i}.tcn.3.*``                ``.../tcn_3/...`` (BN ``[out]``)
``st_gcn_networks.{i}.residual.0.weight/bias`` ``.../residual_0/...`` ``[out, in, 1, 1]`` (conv residuals)
``st_gcn_networks.{i}.residual.1.*``           ``.../residual_1/...`` (BN ``[out]``)
``edge_importance{1..10}``                     ``params/edge_importance{1..10}`` ``[K, V, V]``
``fc.weight`` / ``fc.0.*`` / ``fc.2.*``        ``params/fc`` / ``fc_0`` / ``fc_2``
``*.num_batches_tracked`` (buffers)            not variables: ``torch_buffers(num_batches_tracked=)``
=============================================  ===============================================

Initialisation: ``init="default"`` is PyTorch's default for every conv/linear
(``U(+-1/sqrt(fan_in))`` weights and biases) and BatchNorm (scale 1, bias 0), which is what
the ST-GCN code has without ``weights_init``; ``init="normal_0.02"`` is HiCLR's
``weights_init`` (conv/linear ``N(0, 0.02^2)``, bias 0; BN scale ``N(1, 0.02^2)``, bias 0).
Edge importances are ones under both. ``fc_init="normal_0.01"`` re-initialises the head's
last layer (``N(0, 0.01^2)``, bias 0), unless ``normal_0.02`` overrides it.

Sizes (NTU-25, ``h = 16``, ``D = 256``, edge importance on): backbone 821,380 parameters;
with ``fc (256 -> 60)`` 836,800; with the MLP head ``256 -> 256 -> 128`` 920,068.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cmd_jax.layouts import SkeletonLayout
from cmd_jax.models import graph as graph_lib
from cmd_jax.models.common import (DROPOUT_MASKS, TEMPORAL_CONVS, Dropout, TorchBatchNorm, TorchConv2d, TorchConv2dParams,
                                   check_init, head, normal_init, pointwise_conv, rows_apply, to_channels_last,
                                   with_transformed_map)

Array = jax.Array

FC_INITS = ("default", "normal_0.01")


@functools.lru_cache(maxsize=None)
def _graph(layout: SkeletonLayout) -> np.ndarray:
  a = graph_lib.layout_graph(layout)
  a.flags.writeable = False
  return a


def block_specs(hidden_channels: int, hidden_dim: int, in_channels: int = 3) -> tuple[tuple[int, int, int, str], ...]:
  """The ten blocks as ``(in, out, stride, residual)`` with residual ``none|identity|conv``."""
  h = hidden_channels
  chans = [(in_channels, h, 1), (h, h, 1), (h, h, 1), (h, h, 1), (h, 2 * h, 2), (2 * h, 2 * h, 1),
           (2 * h, 2 * h, 1), (2 * h, 4 * h, 2), (4 * h, 4 * h, 1), (4 * h, hidden_dim, 1)]
  specs = []
  for i, (cin, cout, stride) in enumerate(chans):
    if i == 0:
      residual = "none"
    elif cin == cout and stride == 1:
      residual = "identity"
    else:
      residual = "conv"
    specs.append((cin, cout, stride, residual))
  return tuple(specs)


GRAPH_ORDERS = ("auto", "conv_first", "graph_first")


def resolve_graph_order(name: str, in_channels: int, out_channels: int) -> str:
  """``"conv_first"`` or ``"graph_first"`` for a block ``in -> out``; ``"auto"`` picks the
  order with the fewer graph FLOPs: the graph on the ``in`` input channels when ``in <= out``."""
  if name not in GRAPH_ORDERS:
    raise ValueError(f"graph_order={name!r}; expected one of {GRAPH_ORDERS}")
  if name == "auto":
    return "graph_first" if in_channels <= out_channels else "conv_first"
  return name


class ConvTemporalGraphical(nn.Module):
  """The graph convolution ``gcn``: 1x1 conv ``in -> K*out`` then one einsum with ``A [K, V, V]``.

  ``order`` (same function, ``resolve_graph_order``): ``"conv_first"`` as the reference writes it;
  ``"graph_first"`` contracts the graph with the input first, then the conv weight over
  ``(k, in)``, and adds the bias through the graph's column sums::

    out[.., w, o] = sum_{k, c} (sum_v x[.., v, c] A[k, v, w]) W[k*out + o, c]
                    + sum_k (sum_v A[k, v, w]) b[k*out + o]

  which moves the ``K*V*V`` graph product from ``out`` channels to ``in`` channels.
  """

  features: int
  precision: Any = None
  init_scheme: str = "default"
  order: str = "conv_first"

  @nn.compact
  def __call__(self, x: Array, a: Array) -> Array:
    k = a.shape[0]
    if self.order == "conv_first":
      y = TorchConv2d(k * self.features, precision=self.precision, init_scheme=self.init_scheme, name="conv")(x)
      y = y.reshape(y.shape[:-1] + (k, self.features))  # channel k*out + c -> (k, c)
      return jnp.einsum("ntvkc,kvw->ntwc", y, a, precision=self.precision)
    weight, bias = TorchConv2dParams(k * self.features, init_scheme=self.init_scheme, name="conv")(x.shape[-1])
    dtype = jnp.result_type(x, weight)
    x, weight, bias, a = x.astype(dtype), weight.astype(dtype), bias.astype(dtype), a.astype(dtype)
    n, t, v, c = x.shape
    # The graph as a batched matmul with the rows' own copy of A^T ([(w, k), v] per (n, t)):
    # the output comes out as [n, t, w, (k, c)], the layout the 1x1 conv reads, no transposes.
    a_t = jnp.transpose(a, (2, 0, 1)).reshape(v * k, v)
    xg = jnp.einsum("bzv,bvc->bzc", jnp.broadcast_to(a_t, (n * t,) + a_t.shape), x.reshape(n * t, v, c),
                    precision=self.precision).reshape(n, t, v, k * c)
    per_subset = jnp.transpose(weight[:, :, 0, 0].reshape(k, self.features, c), (1, 0, 2))  # [out, (k, in)]
    y = pointwise_conv(xg, per_subset.reshape(self.features, k * c), self.precision)
    return y + jnp.einsum("kw,ko->wo", jnp.sum(a, axis=1), bias.reshape(k, self.features), precision=self.precision)


class STGCNBlock(nn.Module):
  """One ``st_gcn`` block on channels-last ``[N*M, T, V, in]`` (module docstring, step 3)."""

  features: int
  stride: int = 1
  residual: str = "identity"  # none | identity | conv
  temporal_kernel: int = 9
  dropout: float = 0.0
  init_scheme: str = "default"
  precision: Any = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  temporal_conv: str = "conv"
  graph_order: str = "auto"
  dropout_mask: str = "packed"

  @nn.compact
  def __call__(self, x: Array, a: Array, train: bool) -> Array:
    bn = dict(momentum=self.bn_momentum, epsilon=self.bn_epsilon, init_scheme=self.init_scheme)
    if self.residual == "none":
      res = None
    elif self.residual == "identity":
      res = x
    else:
      res = TorchConv2d(self.features, stride=(self.stride, 1), precision=self.precision, init_scheme=self.init_scheme,
                        name="residual_0")(x)
      res = TorchBatchNorm(**bn, name="residual_1")(res, train)
    order = resolve_graph_order(self.graph_order, x.shape[-1], self.features)
    y = ConvTemporalGraphical(self.features, self.precision, self.init_scheme, order, name="gcn")(x, a)
    y = TorchBatchNorm(**bn, name="tcn_0")(y, train)
    y = nn.relu(y)
    pad = (self.temporal_kernel - 1) // 2
    y = TorchConv2d(self.features, (self.temporal_kernel, 1), (self.stride, 1), (pad, 0), precision=self.precision,
                    init_scheme=self.init_scheme, temporal_impl=self.temporal_conv, name="tcn_2")(y)
    y = TorchBatchNorm(**bn, name="tcn_3")(y, train)
    y = Dropout(self.dropout, self.dropout_mask, name="tcn_4")(y, deterministic=not train)
    if res is not None:
      y = y + res
    return nn.relu(y)


class STGCNEncoder(nn.Module):
  """The reference ``st_gcn.Model``: clip ``[N, C, T, V, M]`` -> feature ``[N, hidden_dim]`` -> head.

  Attributes:
    layout: the skeleton layout; the graph is ``graph.layout_graph(layout)`` and the input
      must have ``V = layout.num_joints``.
    hidden_channels: ``h``, the width of blocks 1-4 (16 in HiCLR; blocks 5-7 ``2h``, 8-9 ``4h``).
    hidden_dim: the last block's width = the feature size (256).
    temporal_kernel: the TCN's temporal kernel (9, odd).
    dropout: the rate of the dropout after each block's TCN, blocks 2..10 (0.5).
    edge_importance: learnable ``[K, V, V]`` weights per block (True) or the fixed graph.
    num_outputs: head output size (128 pretraining, the class count downstream) or ``None``.
    mlp: the MLP head ``fc_0 -> ReLU -> fc_2`` instead of ``fc``.
    fc_init: the head's last layer (``fc`` or ``fc_2``): ``"default"`` (PyTorch's) or
      ``"normal_0.01"`` (weight ``N(0, 0.01^2)``, bias 0: a new downstream classifier);
      ``init_scheme="normal_0.02"`` overrides it.
    init_scheme: ``config.model.init``: ``"default"`` (PyTorch's) or ``"normal_0.02"``
      (HiCLR's ``weights_init``). (Not named ``init``: that would hide ``Module.init``.)
    precision: precision of every conv/einsum/matmul (``None``: JAX's default, which on
      GPUs may use TF32; ``"highest"`` for full float32).
    bn_momentum, bn_epsilon: every BatchNorm, Flax momentum convention (PyTorch 0.1 = 0.9).
    temporal_conv: how the 9x1 convolutions run (the same function, ``common.temporal_conv``):
      ``"conv"`` (XLA's convolution) or ``"matmul"`` (one im2col matmul).
    graph_order: the graph convolution's contraction order (the same function,
      ``ConvTemporalGraphical``): ``"auto"`` (the default: ``resolve_graph_order``, per block
      the order with the fewer graph FLOPs, ``graph_first`` in every block of HiCLR's ST-GCN),
      ``"conv_first"`` (the reference's order) or ``"graph_first"``.
    dropout_mask: the blocks' dropout masks (``common.Dropout``): ``"packed"`` (the default:
      the Bernoulli distribution of ``nn.Dropout`` from fewer PRNG draws) or ``"flax"`` (Flax's
      own, the very masks ``nn.Dropout`` draws from the same key).
  """

  layout: SkeletonLayout
  hidden_channels: int = 16
  hidden_dim: int = 256
  temporal_kernel: int = 9
  dropout: float = 0.5
  edge_importance: bool = True
  num_outputs: int | None = 128
  mlp: bool = False
  fc_init: str = "default"
  init_scheme: str = "default"
  precision: Any = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  temporal_conv: str = "conv"
  graph_order: str = "auto"
  dropout_mask: str = "packed"

  @nn.compact
  def __call__(self, x: Array, train: bool = False, features_only: bool = False,
               map_transform: Callable[[Array], Array] | None = None) -> Array | tuple[Array, Array]:
    """``x``: a clip ``[N, C, T, V, M]``. ``train``: batch statistics (needs
    ``mutable=["batch_stats"]``) and dropout (needs ``rngs={"dropout": key}`` when
    ``dropout > 0``). Returns the feature ``[N, hidden_dim]`` when ``features_only`` or
    ``num_outputs is None``, else the head output (``init`` always creates the head).

    ``map_transform``: a function of the last block's output ``[N*M, T', V, hidden_dim]``
    (channels last) returning an array of that shape (AimCLR's EADM); the call then returns
    the pair ``(output, output of the transformed map)``, both pooled alike and through the
    same head."""
    if x.ndim != 5:
      raise ValueError(f"STGCNEncoder: expected a clip [N, C, T, V, M], got shape {x.shape}")
    n, c, _, v, m = x.shape
    if v != self.layout.num_joints:
      raise ValueError(f"STGCNEncoder: the clip has V={v} joints, layout {self.layout.name} has "
                       f"{self.layout.num_joints}")
    check_init(self.init_scheme)
    if self.fc_init not in FC_INITS:
      raise ValueError(f"STGCNEncoder: unknown fc_init {self.fc_init!r}; expected one of {FC_INITS}")
    a = jnp.asarray(_graph(self.layout))  # [K, V, V] float32 constant
    bn = dict(momentum=self.bn_momentum, epsilon=self.bn_epsilon, init_scheme=self.init_scheme)

    y = to_channels_last(x.astype(jnp.promote_types(x.dtype, jnp.float32)))  # [N*M, T, V, C], row n*M + m
    rows, t = y.shape[:2]
    y = TorchBatchNorm(**bn, name="data_bn")(y.reshape(rows, t, v * c), train).reshape(rows, t, v, c)
    for i, (_, cout, stride, residual) in enumerate(block_specs(self.hidden_channels, self.hidden_dim, c)):
      g = a
      if self.edge_importance:
        g = a * self.param(f"edge_importance{i + 1}", nn.initializers.ones, a.shape, jnp.float32)
      y = STGCNBlock(cout, stride, residual, self.temporal_kernel, self.dropout if i > 0 else 0.0, self.init_scheme,
                     self.precision, self.bn_momentum, self.bn_epsilon, self.temporal_conv, self.graph_order,
                     self.dropout_mask, name=f"st_gcn_networks_{i}")(y, g, train)

    def pool(z):  # (T', V), then persons
      return jnp.mean(z, axis=(1, 2)).reshape(n, m, -1).mean(axis=1)

    feature = with_transformed_map(pool, y, map_transform)
    if self.num_outputs is None or (features_only and not self.is_initializing()):
      return feature
    last_w, last_b = (None, None) if self.fc_init == "default" else (normal_init(0.01), nn.initializers.zeros)
    out = rows_apply(lambda f: head(f, self.num_outputs, self.mlp, init_scheme=self.init_scheme,
                                    last_weight_init=last_w, last_bias_init=last_b, precision=self.precision), feature)
    return feature if features_only else out


# ----------------------------------------------------------------------------------------
# PyTorch buffers (not Flax variables)
# ----------------------------------------------------------------------------------------

def batch_norm_names(model_config) -> tuple[str, ...]:
  """The PyTorch module names of every BatchNorm of the encoder, in ``state_dict`` order."""
  c = _fields(model_config)
  names = ["data_bn"]
  for i, (_, _, _, residual) in enumerate(block_specs(c["hidden_channels"], c["hidden_dim"])):
    names += [f"st_gcn_networks.{i}.tcn.0", f"st_gcn_networks.{i}.tcn.3"]
    if residual == "conv":
      names.append(f"st_gcn_networks.{i}.residual.1")
  return tuple(names)


def torch_buffers(model_config, layout: SkeletonLayout, *,
                  num_batches_tracked: int | None = None) -> dict[str, np.ndarray]:
  """The reference ``state_dict`` entries that are buffers, not parameters or running stats.

  Always ``"A"``: the float32 graph ``[K, V, V]``. PyTorch's BatchNorms also hold
  ``<bn>.num_batches_tracked`` (int64 scalar: the count of training-mode calls; unused with a
  fixed momentum, so nothing here keeps it); pass ``num_batches_tracked`` (e.g. 0, or the
  number of training steps) to add those entries for a strict ``load_state_dict``.
  """
  buffers = {"A": graph_lib.layout_graph(layout)}
  if num_batches_tracked is not None:
    for name in batch_norm_names(model_config):
      buffers[f"{name}.num_batches_tracked"] = np.asarray(int(num_batches_tracked), dtype=np.int64)
  return buffers


# ----------------------------------------------------------------------------------------
# Registry functions (cmd_jax.models)
# ----------------------------------------------------------------------------------------

def default_config() -> ml_collections.ConfigDict:
  """The ST-GCN's fields, ``config.model.stgcn`` (HiCLR's NTU configuration)."""
  c = ml_collections.ConfigDict()
  c.hidden_channels = 16      # h: blocks 1-4 have h channels, 5-7 2h, 8-9 4h
  c.hidden_dim = 256          # the last block's channels = the feature size
  c.temporal_kernel = 9       # the TCN's temporal kernel (odd)
  c.dropout = 0.5             # dropout after each block's TCN, blocks 2-10
  c.edge_importance = True    # learnable edge importance per block (edge_importance_weighting)
  # Speed options, each the same function (docs/speed.md; the defaults measured fastest in the
  # whole HiCLR step on the CPU, bench/RESULTS.md section 8):
  c.temporal_conv = "conv"    # the 9x1 convolutions: conv | matmul (one im2col matmul)
  c.graph_order = "auto"      # the graph convolution: auto (graph_first where the block does not narrow) |
  #                             conv_first (the reference's order) | graph_first
  c.dropout_mask = "packed"   # dropout masks: packed (nn.Dropout's distribution, fewer PRNG draws) | flax (nn.Dropout's own)
  return c


_DEFAULTS = default_config().to_dict()


def _fields(model_config) -> dict[str, Any]:
  """``config.model.stgcn`` with the defaults for missing fields."""
  given = model_config.get("stgcn", None) if model_config is not None else None
  given = {} if given is None else given
  return {k: given.get(k, d) for k, d in _DEFAULTS.items()}


def validate(model_config, layout: SkeletonLayout) -> None:
  c = _fields(model_config)
  for field in ("hidden_channels", "hidden_dim"):
    if int(c[field]) <= 0:
      raise ValueError(f"config.model.stgcn.{field}={c[field]} must be positive")
  if int(c["temporal_kernel"]) <= 0 or int(c["temporal_kernel"]) % 2 != 1:
    raise ValueError(f"config.model.stgcn.temporal_kernel={c['temporal_kernel']} must be a positive odd number")
  if not 0.0 <= float(c["dropout"]) < 1.0:
    raise ValueError(f"config.model.stgcn.dropout={c['dropout']} must be in [0, 1)")
  if not isinstance(c["edge_importance"], (bool, np.bool_)):
    raise ValueError(f"config.model.stgcn.edge_importance={c['edge_importance']!r} must be True or False")
  for field, allowed in (("temporal_conv", TEMPORAL_CONVS), ("graph_order", GRAPH_ORDERS),
                         ("dropout_mask", DROPOUT_MASKS)):
    if str(c[field]) not in allowed:
      raise ValueError(f"config.model.stgcn.{field}={c[field]!r}; expected one of {', '.join(allowed)}")
  if not layout.edges:
    raise ValueError(f"config.model.stgcn: layout {layout.name} has no edges to build the graph from")


def feature_dim(model_config) -> int:
  return int(_fields(model_config)["hidden_dim"])


def from_config(model_config, layout: SkeletonLayout, *, num_outputs: int | None, mlp: bool,
                training: bool = False, fc_init: str = "default") -> STGCNEncoder:
  """The ST-GCN encoder of ``config.model`` (``training`` changes nothing: the speed options
  compute the same function and apply everywhere; ``fc_init``: the head's last layer,
  ``STGCNEncoder.fc_init``)."""
  del training
  c = _fields(model_config)
  return STGCNEncoder(layout=layout, hidden_channels=int(c["hidden_channels"]), hidden_dim=int(c["hidden_dim"]),
                      temporal_kernel=int(c["temporal_kernel"]), dropout=float(c["dropout"]),
                      edge_importance=bool(c["edge_importance"]), num_outputs=num_outputs, mlp=mlp, fc_init=fc_init,
                      init_scheme=str(model_config.get("init", "default")), temporal_conv=str(c["temporal_conv"]),
                      graph_order=str(c["graph_order"]), dropout_mask=str(c["dropout_mask"]))
