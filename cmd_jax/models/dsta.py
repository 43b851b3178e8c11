"""DSTA-Net, the transformer encoder of HiCLR's release configuration (``config.model.name = "dsta"``).

This module owns the decoupled spatial-temporal attention network (DSTA-Net) as HiCLR builds
it with ``transformer=True``: spatial attention with a spatial positional encoding and a
learned global graph, no temporal attention (a 7x1 temporal convolution instead). It owns
the blocks, the pooled feature, the head call, the constant buffers a PyTorch ``state_dict``
has (``torch_buffers``) and the registry functions. The head itself is ``common.head``.

Computation (input a clip ``[N, C=3, T, V, M]``, persons folded into the batch, person-major,
``B = N*M`` rows ``n*M + m``, channels-last ``[B, T, V, C]``; every ``conv`` below is a
PyTorch ``Conv2d`` with bias, ``bn`` a ``BatchNorm2d``, ``lrelu`` ``LeakyReLU(0.1)``)::

  x = lrelu(bn_input_map_0(conv1x1_proj(x)))                 # 3 -> blocks[0].in
  for each block (in, out, inter, stride), S = num_subset subsets:
    # spatial part
    y_pe = x + PE                                            # PE[v, c], below
    q, k = split(conv1x1_in_nets(y_pe))                      # in -> 2*S*inter: q = first S*inter
    att[s, u, v] = tanh(sum_{t, c} q[s, c, t, u] k[s, c, t, v] / (inter * T)) * alphas[s]
                   + attention0s[s, u, v]                    # no softmax
    y[s*in + c, t, v] = sum_u x[c, t, u] att[s, u, v]        # the UN-encoded x
    y = lrelu(downs1(x) + bn(conv1x1_out_nets(y)))           # S*in -> out
    y = lrelu(downs2(x) + bn(conv1x1_ff_nets(y)))            # out -> out
    # temporal part (use_temporal_att=False)
    z = bn(conv7x1_out_nett(y))                              # kernel (7, 1), pad (3, 0), stride (stride, 1)
    x = lrelu(dropout_{attention_dropout}(downt2(y)) + z)
  feature = mean over (M, T, V) of x                         # [N, blocks[-1].out]
                                                             # (map_transform: also of f(x))
  output = head(feature)                                     # fc, or fc_0 -> ReLU -> fc_2

``downs1``/``downs2`` are ``conv1x1 + bn`` (no stride: the spatial part keeps T) and ``downt2``
is ``conv1x1 + bn`` with temporal stride ``stride``, all three only when ``in != out`` or
``stride != 1``; otherwise identities. ``T`` in the attention's scale is the block's own
(after the earlier strides). The spatial positional encoding of a block with ``C = in``
channels, for joint ``v`` and channel ``c``::

  div[i] = exp(2 i * -(ln 10000 / C)),  PE[v, 2i] = sin(v * div[i]),  PE[v, 2i+1] = cos(v * div[i])

It does not depend on the frame: the reference stores it as a buffer ``pes.pe`` of shape
``[1, C, num_frames_i, V]`` (the same row for every frame) and adds ``pe[:, :, :T]``.
``num_frames_0 = num_frames`` and ``num_frames_{i+1} = int(num_frames_i / stride_i + 0.5)``
(50 -> 25 -> 13 for the release's strides, which equal the clip's lengths after the 7x1
stride-2 convolutions, ``ceil(T / 2)``).

Reference quirks, reproduced and named:

1. No softmax: the block builds ``nn.Softmax`` but never uses it; the attention is the tanh
   term plus the learned ``attention0s`` (initialised to ``1/V``) and a zero buffer ``atts``
   (adding it changes nothing, so it is not stored here: ``torch_buffers`` supplies it).
2. The positional encoding enters only the queries and keys; the values are the un-encoded
   ``x``.
3. ``attentiondrop`` is not an attention dropout: the line that would drop the attention is
   commented out in the reference, and the dropout acts on the temporal residual
   ``downt2(y)`` only (``attention_dropout`` here: 0.5 in pretraining, 0 downstream).
4. A clip longer than ``num_frames`` frames fails in the reference (the sliced buffer does
   not broadcast); here it is a ValueError. Shorter clips are fine (the reference slices).
   With a stride > 2, ``int(num_frames_i / stride + 0.5)`` can be smaller than the clip's
   ``ceil(T_i / stride)``; that block fails in the reference and raises here.
5. An odd ``in`` channel count fails in the reference's positional encoding (``sin`` fills
   ``ceil(C/2)`` columns, ``cos`` only ``floor(C/2)``); ``validate`` rejects it.
6. Convolution biases keep PyTorch's default init ``U(+-1/sqrt(fan_in))``: the reference's
   ``conv_init`` sets the weight (kaiming-normal, fan-out) and its bias line is commented out.
7. Under HiCLR, the yaml's ``dropout`` is consumed by the HiCLR wrapper and never reaches
   DSTA-Net, as are ``dropout_graph``/``add_graph``; the encoder is always called with
   ``drop_graph=False``, so the random graph edits (``drop_graph``, ``randadd``) are not
   implemented. DSTA-Net's own ``dropout`` (before ``fc``, not on the feature path) and
   ``dropout2d`` (whole ``C``-vectors of ``(person, frame, joint)`` positions, before the
   mean, on the feature path too) are ``fc_dropout`` and ``position_dropout`` here, 0 as
   in the release.

Initialisation (``config.model.init``):

- ``"default"`` (DSTA-Net's loop over its modules): every conv weight
  ``kaiming_normal(fan_out)`` = ``N(0, 2 / (out * kh * kw))``, bias PyTorch's default
  (quirk 6); BatchNorm scale 1, bias 0; ``fc`` (the MLP's ``fc_2``, which is the original
  ``fc`` HiCLR wraps) ``xavier_normal`` weight, bias 0; the MLP's ``fc_0``, created by HiCLR
  after that loop, PyTorch's default Linear init; ``alphas`` 1, ``attention0s`` ``1/V``;
  ``fc_init="normal_0.01"`` (``build_encoder``'s option for a protocol's new classifier)
  makes the last head layer ``N(0, 0.01^2)``, bias 0;
- ``"normal_0.02"`` (HiCLR's ``weights_init``): every conv/Linear weight ``N(0, 0.02^2)``,
  bias 0, BatchNorm scale ``N(1, 0.02^2)``, bias 0; ``alphas``/``attention0s`` as above.

``fix_proj`` (the reference's ``fix_conv1``: off in pretraining, on in linear evaluation
and finetuning) freezes ``proj`` (weight and bias: ``requires_grad=False``, so no gradient
and no weight decay). The encoder computes the same either way; the optimizer applies it
(``frozen_params``).

Parameter names mirror the PyTorch ``state_dict`` (a module ``name_<k>`` is ``name.<k>``;
BatchNorm ``scale``/``bias``/``mean``/``var`` are ``weight``/``bias``/``running_mean``/
``running_var``): ``proj``, ``input_map_0``, ``graph_layers_<i>`` with ``in_nets``,
``alphas [1, S, 1, 1]``, ``attention0s [1, S, V, V]``, ``out_nets_0/1``, ``ff_nets_0/1``,
``out_nett_0/1`` and, where present, ``downs1_0/1``, ``downs2_0/1``, ``downt2_0/1``; head
``fc`` or ``fc_0``/``fc_2``. PyTorch's other buffers: ``torch_buffers`` (``atts``,
``pes.pe``); every BatchNorm's ``num_batches_tracked`` has no counterpart (unused with a
fixed momentum).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cmd_jax.layouts import SkeletonLayout
from cmd_jax.models.common import (DROPOUT_MASKS, TEMPORAL_CONVS, Dropout, Initializer, TorchBatchNorm, TorchConv2d,
                                   check_init, head, kaiming_normal_fan_out, normal_init, rows_apply, to_channels_last,
                                   with_transformed_map, xavier_normal_torch)

Array = jax.Array

# HiCLR's release rows (in, out, inter, stride).
RELEASE_BLOCKS = ((32, 32, 16, 1), (32, 32, 16, 1), (32, 64, 16, 2), (64, 64, 16, 1),
                  (64, 128, 32, 2), (128, 128, 32, 1), (128, 128, 32, 1), (128, 256, 32, 1))
TEMPORAL_KERNEL = 7  # the 7x1 convolution of the temporal part (fixed in the reference)
LEAKY_SLOPE = 0.1
FC_INITS = ("default", "normal_0.01")


# ----------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------

def spatial_positional_encoding(channels: int, num_joints: int) -> np.ndarray:
  """``PE [V, C]`` (module docstring), computed in float64 and rounded to float32, so that it
  is the same on every machine. The reference computes it in float32: its values differ by up
  to ~2e-6 for joint indices near 24 (the float32 rounding of ``div`` and of the angle)."""
  if channels % 2:
    raise ValueError(f"spatial_positional_encoding: channels={channels} must be even (quirk 5)")
  position = np.arange(num_joints, dtype=np.float64)[:, None]
  div = np.exp(np.arange(0, channels, 2, dtype=np.float64) * -(math.log(10000.0) / channels))
  pe = np.empty((num_joints, channels), np.float64)
  pe[:, 0::2] = np.sin(position * div)
  pe[:, 1::2] = np.cos(position * div)
  return pe.astype(np.float32)


def block_num_frames(blocks: Sequence[Sequence[int]], num_frames: int) -> list[int]:
  """Each block's ``num_frame`` (its positional-encoding length): ``int(f / stride + 0.5)`` after a block."""
  frames = []
  f = int(num_frames)
  for row in blocks:
    frames.append(f)
    f = int(f / int(row[3]) + 0.5)
  return frames


def has_down(in_channels: int, out_channels: int, stride: int) -> bool:
  """Whether a block has the ``downs1``/``downs2``/``downt2`` projections (else identities)."""
  return in_channels != out_channels or stride != 1


def last_layer_inits(fc_init: str) -> tuple[Initializer, Initializer]:
  """The head's last Linear (``fc``, or ``fc_2`` of the MLP): ``"default"`` = DSTA-Net's
  ``fc_init`` (``xavier_normal`` weight, bias 0); ``"normal_0.01"`` = ``N(0, 0.01^2)``, bias 0
  (a downstream protocol's new classifier). ``config.model.init = "normal_0.02"`` overrides both."""
  if fc_init not in FC_INITS:
    raise ValueError(f"DSTAEncoder: fc_init={fc_init!r}; expected one of {FC_INITS}")
  weight = xavier_normal_torch if fc_init == "default" else normal_init(0.01)
  return weight, nn.initializers.zeros


def leaky_relu(x: Array) -> Array:
  """PyTorch's ``LeakyReLU(0.1)`` (slope 1 only for ``x > 0``, also in the gradient)."""
  return jnp.where(x > 0, x, LEAKY_SLOPE * x)


# ----------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------

class STAttentionBlock(nn.Module):
  """One DSTA-Net block in the release configuration, on channels-last ``[B, T, V, in]``.

  Returns ``[B, ceil(T / stride), V, out]``. ``num_frames`` is the block's positional
  encoding length (a longer input raises, quirk 4). ``train``: batch statistics and the
  residual dropout (rng collection ``"dropout"`` when ``attention_dropout > 0``).
  """

  in_channels: int
  out_channels: int
  inter_channels: int
  stride: int
  num_subset: int
  num_points: int
  num_frames: int
  attention_dropout: float = 0.0
  init_scheme: str = "default"
  precision: Any = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  temporal_conv: str = "conv"
  dropout_mask: str = "packed"

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    b, t, v, c = x.shape
    s, inter, out = self.num_subset, self.inter_channels, self.out_channels
    if c != self.in_channels or v != self.num_points:
      raise ValueError(f"STAttentionBlock {self.name}: input {x.shape}; expected [B, T, {self.num_points}, "
                       f"{self.in_channels}]")
    if t > self.num_frames:
      raise ValueError(f"STAttentionBlock {self.name}: {t} frames but the positional encoding has "
                       f"{self.num_frames} (config.model.dsta.num_frames too small for the clip)")
    conv = functools.partial(TorchConv2d, weight_init=kaiming_normal_fan_out, precision=self.precision,
                             init_scheme=self.init_scheme)
    bn = functools.partial(TorchBatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                           init_scheme=self.init_scheme)

    def down(name: str, inp: Array, stride: int = 1) -> Array:
      if not has_down(self.in_channels, out, self.stride):
        return inp
      h = conv(out, stride=(stride, 1), name=f"{name}_0")(inp)
      return bn(name=f"{name}_1")(h, train)

    # Spatial attention: queries and keys from x + PE, values from x.
    pe = jnp.asarray(spatial_positional_encoding(c, v))
    qk = conv(2 * s * inter, name="in_nets")(x + pe).reshape(b, t, v, 2, s, inter)
    scores = jnp.einsum("btusc,btvsc->bsuv", qk[:, :, :, 0], qk[:, :, :, 1], precision=self.precision)
    alphas = self.param("alphas", nn.initializers.ones, (1, s, 1, 1))
    attention0s = self.param("attention0s", nn.initializers.constant(1.0 / v), (1, s, v, v))
    attention = jnp.tanh(scores / (inter * t)) * alphas + attention0s
    # y[b, t, v, s*c + c'] = sum_u x[b, t, u, c'] attention[b, s, u, v]: per (b, t) one
    # [(v, s), u] @ [u, c] matmul against the sample's transposed attention, repeated over
    # the frames, so that neither x nor y is transposed.
    att_t = jnp.transpose(attention, (0, 3, 1, 2)).reshape(b, 1, v * s, v)
    y = jnp.einsum("btzu,btuc->btzc", jnp.broadcast_to(att_t, (b, t, v * s, v)), x,
                   precision=self.precision).reshape(b, t, v, s * c)
    y = bn(name="out_nets_1")(conv(out, name="out_nets_0")(y), train)
    y = leaky_relu(down("downs1", x) + y)
    y = bn(name="ff_nets_1")(conv(out, name="ff_nets_0")(y), train)
    y = leaky_relu(down("downs2", x) + y)

    # Temporal part: a strided 7x1 convolution; dropout on the residual only (quirk 3).
    z = conv(out, kernel_size=(TEMPORAL_KERNEL, 1), stride=(self.stride, 1),
             padding=(TEMPORAL_KERNEL // 2, 0), temporal_impl=self.temporal_conv, name="out_nett_0")(y)
    z = bn(name="out_nett_1")(z, train)
    residual = down("downt2", y, self.stride)
    residual = Dropout(self.attention_dropout, self.dropout_mask, name="drop")(residual, deterministic=not train)
    return leaky_relu(residual + z)


class DSTAEncoder(nn.Module):
  """DSTA-Net: clip ``[N, C, T, V, M]`` -> feature ``[N, blocks[-1].out]`` -> head (module docstring).

  Attributes:
    blocks: rows ``(in, out, inter, stride)``.
    num_subset: S, attention subsets per block.
    num_points: V, joints of the layout (the shape of ``attention0s``).
    num_frames: the positional encoding's length (the longest clip accepted).
    num_outputs: head output size (128 for pretraining, the class count downstream) or None.
    mlp: the head is ``fc_0 -> ReLU -> fc_2`` instead of ``fc``.
    attention_dropout: the reference's ``attentiondrop``, dropout on each block's temporal
      residual (quirk 3).
    fc_dropout: the reference's ``dropout``, before the head (not on the feature).
    position_dropout: the reference's ``dropout2d``, zeroing whole feature vectors of
      ``(person, frame, joint)`` positions before the mean (also on the feature).
    init_scheme: ``config.model.init``, ``"default"`` or ``"normal_0.02"`` (not named ``init``:
      that would hide ``Module.init``).
    fc_init: the head's last layer, ``"default"`` or ``"normal_0.01"`` (``last_layer_inits``).
    precision: matmul/convolution precision (None: JAX's default; ``"highest"`` for full
      float32 on GPUs/TPUs).
    temporal_conv: how the 7x1 convolutions run (the same function, ``common.temporal_conv``):
      ``"conv"`` (XLA's convolution) or ``"matmul"`` (one im2col matmul).
    dropout_mask: the residual dropout's masks (``common.Dropout``): ``"packed"`` (the default:
      the Bernoulli distribution of ``nn.Dropout`` from fewer PRNG draws) or ``"flax"`` (Flax's
      own, the very masks ``nn.Dropout`` draws from the same key).
  """

  blocks: tuple[tuple[int, int, int, int], ...] = RELEASE_BLOCKS
  num_subset: int = 3
  num_points: int = 25
  num_frames: int = 50
  num_outputs: int | None = 128
  mlp: bool = False
  attention_dropout: float = 0.0
  fc_dropout: float = 0.0
  position_dropout: float = 0.0
  init_scheme: str = "default"
  fc_init: str = "default"
  precision: Any = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  temporal_conv: str = "conv"
  dropout_mask: str = "packed"

  @nn.compact
  def __call__(self, x: Array, train: bool = False, features_only: bool = False,
               map_transform: Callable[[Array], Array] | None = None) -> Array | tuple[Array, Array]:
    """``x`` ``[N, C, T, V, M]``; returns the feature ``[N, D]`` when ``features_only`` or
    ``num_outputs is None``, else the head output (``init`` always creates the head).

    ``map_transform``: a function of the last block's output ``[N*M, T', V, D]`` (channels
    last) returning an array of that shape (AimCLR's EADM); the call then returns the pair
    ``(output, output of the transformed map)``, both pooled alike (position dropout, mean)
    and through the same head (and ``fc_dropout``)."""
    if x.ndim != 5:
      raise ValueError(f"DSTAEncoder: expected a clip [N, C, T, V, M], got shape {x.shape}")
    check_init(self.init_scheme)
    last_w, last_b = last_layer_inits(self.fc_init)
    n, _, _, v, _ = x.shape
    if v != self.num_points:
      raise ValueError(f"DSTAEncoder: the clip has {v} joints; the encoder was built for {self.num_points}")
    conv = functools.partial(TorchConv2d, weight_init=kaiming_normal_fan_out, precision=self.precision,
                             init_scheme=self.init_scheme)
    bn = functools.partial(TorchBatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                           init_scheme=self.init_scheme)
    h = conv(int(self.blocks[0][0]), name="proj")(to_channels_last(x))
    h = leaky_relu(bn(name="input_map_0")(h, train))
    frames = block_num_frames(self.blocks, self.num_frames)
    for i, (c_in, c_out, inter, stride) in enumerate(self.blocks):
      h = STAttentionBlock(int(c_in), int(c_out), int(inter), int(stride), int(self.num_subset), v, frames[i],
                           self.attention_dropout, self.init_scheme, self.precision, self.bn_momentum, self.bn_epsilon,
                           self.temporal_conv, self.dropout_mask, name=f"graph_layers_{i}")(h, train)
    position_dropout = nn.Dropout(self.position_dropout, broadcast_dims=(2,), name="drop_out2d")

    def pool(z):  # [N*M, T', V, D] -> [N, M*T'*V, D] (person-major rows) -> mean
      return jnp.mean(position_dropout(z.reshape(n, -1, z.shape[-1]), deterministic=not train), axis=1)

    feature = with_transformed_map(pool, h, map_transform)
    if self.num_outputs is None or (features_only and not self.is_initializing()):
      return feature
    fc_dropout = nn.Dropout(self.fc_dropout, name="drop_out")
    out = rows_apply(lambda f: head(fc_dropout(f, deterministic=not train), self.num_outputs, self.mlp,
                                    init_scheme=self.init_scheme, last_weight_init=last_w, last_bias_init=last_b,
                                    precision=self.precision), feature)
    return feature if features_only else out


# ----------------------------------------------------------------------------------------
# PyTorch buffers, frozen parameters
# ----------------------------------------------------------------------------------------

def torch_buffers(model_config, layout: SkeletonLayout) -> dict[str, np.ndarray]:
  """The constant buffers of the reference's ``state_dict`` (no prefix), float32:
  ``graph_layers.<i>.atts`` zeros ``[1, S, V, V]`` and ``graph_layers.<i>.pes.pe``
  ``[1, in_i, num_frames_i, V]`` (the encoding repeated over frames). BatchNorm running
  statistics are ``batch_stats``; ``num_batches_tracked`` is not included."""
  cfg = model_config.dsta
  blocks = _rows(cfg.blocks)
  s, v = int(cfg.num_subset), layout.num_joints
  out = {}
  for i, (row, frames) in enumerate(zip(blocks, block_num_frames(blocks, int(cfg.num_frames)))):
    pe = spatial_positional_encoding(row[0], v)  # [V, C]
    out[f"graph_layers.{i}.atts"] = np.zeros((1, s, v, v), np.float32)
    out[f"graph_layers.{i}.pes.pe"] = np.ascontiguousarray(
        np.broadcast_to(pe.T[None, :, None, :], (1, row[0], frames, v)))
  return out


def frozen_params(model_config) -> tuple[str, ...]:
  """Top-level parameter modules the optimizer must leave untouched (no update, no weight
  decay): ``("proj",)`` when ``config.model.dsta.fix_proj`` (the reference's ``fix_conv1``)."""
  return ("proj",) if bool(model_config.dsta.get("fix_proj", False)) else ()


# ----------------------------------------------------------------------------------------
# Registry functions (cmd_jax.models)
# ----------------------------------------------------------------------------------------

def default_config() -> ml_collections.ConfigDict:
  """DSTA-Net's fields of ``config.model`` (``config.model.dsta``): HiCLR's release pretraining."""
  c = ml_collections.ConfigDict()
  c.blocks = RELEASE_BLOCKS     # rows (in, out, inter, stride)
  c.num_subset = 3              # attention subsets S per block
  c.num_frames = 50             # positional-encoding length = the longest clip (HiCLR's 50-frame data)
  c.attention_dropout = 0.5     # reference attentiondrop: 0.5 pretraining, 0.0 linear eval / finetune
  c.fc_dropout = 0.0            # reference dropout (before fc; never set under HiCLR)
  c.position_dropout = 0.0      # reference dropout2d (0 in the release)
  c.fix_proj = False            # reference fix_conv1: True in linear eval / finetune (frozen_params)
  # Speed options, each the same function (docs/speed.md; the defaults measured fastest in the
  # whole HiCLR step on the CPU, bench/RESULTS.md section 8):
  c.temporal_conv = "conv"      # the 7x1 convolutions: conv | matmul (one im2col matmul)
  c.dropout_mask = "packed"     # residual dropout masks: packed (nn.Dropout's distribution, fewer PRNG draws) | flax
  return c


def _rows(blocks) -> tuple[tuple[int, int, int, int], ...]:
  return tuple(tuple(int(a) for a in row) for row in blocks)


def validate(model_config, layout: SkeletonLayout) -> None:
  if "dsta" not in model_config:
    raise ValueError("config.model.dsta is missing (cmd_jax.models.dsta.default_config())")
  cfg = model_config.dsta
  blocks = cfg.blocks
  if len(blocks) == 0:
    raise ValueError("config.model.dsta.blocks is empty; expected rows (in, out, inter, stride)")
  for i, row in enumerate(blocks):
    if len(row) != 4 or not all(isinstance(a, (int, np.integer)) and a > 0 for a in row):
      raise ValueError(f"config.model.dsta.blocks[{i}]={tuple(row)}; expected 4 positive integers "
                       "(in, out, inter, stride)")
    if int(row[0]) % 2:
      raise ValueError(f"config.model.dsta.blocks[{i}]: in={row[0]} must be even (the positional encoding)")
    if i > 0 and int(row[0]) != int(blocks[i - 1][1]):
      raise ValueError(f"config.model.dsta.blocks[{i}]: in={row[0]} differs from the previous block's "
                       f"out={blocks[i - 1][1]}")
  for field in ("num_subset", "num_frames"):
    if int(cfg[field]) <= 0:
      raise ValueError(f"config.model.dsta.{field}={cfg[field]} must be positive")
  for field in ("attention_dropout", "fc_dropout", "position_dropout"):
    if not 0.0 <= float(cfg.get(field, 0.0)) < 1.0:
      raise ValueError(f"config.model.dsta.{field}={cfg[field]} must be in [0, 1)")
  for field, allowed in (("temporal_conv", TEMPORAL_CONVS), ("dropout_mask", DROPOUT_MASKS)):
    if str(cfg.get(field, allowed[0])) not in allowed:
      raise ValueError(f"config.model.dsta.{field}={cfg[field]!r}; expected one of {', '.join(allowed)}")
  if not isinstance(cfg.get("fix_proj", False), bool):
    raise ValueError(f"config.model.dsta.fix_proj={cfg.fix_proj!r} must be True or False")
  if layout.num_joints <= 0:
    raise ValueError(f"layout {layout.name} has no joints")


def feature_dim(model_config) -> int:
  return int(model_config.dsta.blocks[-1][1])


def from_config(model_config, layout: SkeletonLayout, *, num_outputs: int | None, mlp: bool,
                training: bool = False, fc_init: str = "default") -> DSTAEncoder:
  """The DSTA-Net of ``config.model.dsta`` for ``layout``'s joints (``training`` changes nothing:
  the speed options compute the same function and apply everywhere); ``fc_init``: the head's
  last layer (``last_layer_inits``)."""
  del training
  cfg = model_config.dsta
  return DSTAEncoder(blocks=_rows(cfg.blocks), num_subset=int(cfg.num_subset), num_points=layout.num_joints,
                     num_frames=int(cfg.num_frames), num_outputs=num_outputs, mlp=mlp,
                     attention_dropout=float(cfg.attention_dropout), fc_dropout=float(cfg.get("fc_dropout", 0.0)),
                     position_dropout=float(cfg.get("position_dropout", 0.0)),
                     init_scheme=str(model_config.get("init", "default")), fc_init=fc_init,
                     temporal_conv=str(cfg.get("temporal_conv", "conv")),
                     dropout_mask=str(cfg.get("dropout_mask", "packed")))
