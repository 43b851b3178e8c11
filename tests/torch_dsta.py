"""A PyTorch DSTA-Net in HiCLR's release configuration, written from the specification for the tests.

Spatial attention on (positional encoding on queries/keys only, learned global graph, no
softmax), no temporal attention (a 7x1 temporal convolution), residual dropout. Module and
buffer names are the reference's, so ``state_dict()`` has the reference's keys
(``proj.weight``, ``input_map.0.running_mean``, ``graph_layers.3.pes.pe``, ``fc.0.weight``, ...).
The initialisation is not reproduced: the tests copy every parameter from the JAX model.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, kernel=(1, 1), stride=(1, 1), padding=(0, 0)) -> nn.Sequential:
  return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=True),
                       nn.BatchNorm2d(c_out))


class PositionalEncoding(nn.Module):
  """``pe [1, C, frames, V]``: channel ``2i`` is ``sin(v * d_i)``, ``2i+1`` is ``cos(v * d_i)``,
  ``d_i = 10000^(-2i/C)``, the same for every frame; ``forward`` adds ``pe[:, :, :T]``."""

  def __init__(self, channels: int, joints: int, frames: int):
    super().__init__()
    joint = torch.arange(joints, dtype=torch.float32)[:, None]            # [V, 1]
    d = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * -(math.log(10000.0) / channels))
    table = torch.zeros(joints, channels)
    table[:, 0::2] = torch.sin(joint * d)
    table[:, 1::2] = torch.cos(joint * d)
    self.register_buffer("pe", table.t()[None, :, None, :].repeat(1, 1, frames, 1).contiguous())

  def forward(self, x):
    return x + self.pe[:, :, :x.shape[2]]


class STAttentionBlock(nn.Module):
  def __init__(self, c_in, c_out, inter, stride, subsets, joints, frames, drop):
    super().__init__()
    self.c_in, self.inter, self.subsets = c_in, inter, subsets
    self.register_buffer("atts", torch.zeros(1, subsets, joints, joints))
    self.pes = PositionalEncoding(c_in, joints, frames)
    self.in_nets = nn.Conv2d(c_in, 2 * subsets * inter, 1, bias=True)
    self.alphas = nn.Parameter(torch.ones(1, subsets, 1, 1))
    self.attention0s = nn.Parameter(torch.full((1, subsets, joints, joints), 1.0 / joints))
    self.out_nets = conv_bn(c_in * subsets, c_out)
    self.ff_nets = conv_bn(c_out, c_out)
    self.out_nett = conv_bn(c_out, c_out, (7, 1), (stride, 1), (3, 0))
    self.project = c_in != c_out or stride != 1
    if self.project:
      self.downs1 = conv_bn(c_in, c_out)
      self.downs2 = conv_bn(c_in, c_out)
      self.downt2 = conv_bn(c_out, c_out, (1, 1), (stride, 1))
    self.act = nn.LeakyReLU(0.1)
    self.drop = nn.Dropout(drop)

  def _down(self, name, x):
    return getattr(self, name)(x) if self.project else x

  def forward(self, x):  # [B, C, T, V]
    b, c, t, v = x.shape
    qk = self.in_nets(self.pes(x)).reshape(b, 2, self.subsets, self.inter, t, v)
    q, k = qk[:, 0], qk[:, 1]
    logits = (q[..., :, None] * k[..., None, :]).sum(dim=(2, 3)) / (self.inter * t)  # [B, S, V, V]
    graph = self.atts + torch.tanh(logits) * self.alphas + self.attention0s
    mixed = torch.einsum("bctu,bsuv->bsctv", x, graph).reshape(b, self.subsets * c, t, v)
    y = self.act(self._down("downs1", x) + self.out_nets(mixed))
    y = self.act(self._down("downs2", x) + self.ff_nets(y))
    return self.act(self.drop(self._down("downt2", y)) + self.out_nett(y))


class DSTANet(nn.Module):
  """``forward(x [N, C, T, V, M], features_only)``: the pooled feature, or the head's output."""

  def __init__(self, blocks, num_outputs, mlp, subsets=3, joints=25, frames=50, attention_drop=0.0,
               in_channels=3):
    super().__init__()
    self.proj = nn.Conv2d(in_channels, blocks[0][0], 1)
    self.input_map = nn.Sequential(nn.BatchNorm2d(blocks[0][0]), nn.LeakyReLU(0.1))
    layers = []
    for c_in, c_out, inter, stride in blocks:
      layers.append(STAttentionBlock(c_in, c_out, inter, stride, subsets, joints, frames, attention_drop))
      frames = int(frames / stride + 0.5)
    self.graph_layers = nn.ModuleList(layers)
    dim = blocks[-1][1]
    self.fc = (nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, num_outputs)) if mlp
               else nn.Linear(dim, num_outputs))

  def forward(self, x, features_only=False):
    n, c, t, v, m = x.shape
    h = self.input_map(self.proj(x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v)))
    for layer in self.graph_layers:
      h = layer(h)
    feature = h.reshape(n, m, h.shape[1], -1).mean(dim=(1, 3))
    return feature if features_only else self.fc(feature)
