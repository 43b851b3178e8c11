"""A PyTorch ST-GCN written from the reference's description, for tests/test_stgcn.py.

The modules carry the reference's names (``data_bn``, ``st_gcn_networks.{i}.gcn.conv``,
``.tcn.{0,2,3}``, ``.residual.{0,1}``, ``edge_importance{1..10}``, ``fc``/``fc.0``/``fc.2``,
the buffer ``A``), so its ``state_dict`` keys are the reference checkpoint's keys. It is
computed in PyTorch's own layout (``(N*M, C, T, V)``, ``nn.Conv2d``, ``nn.BatchNorm1d/2d``),
independently of the JAX code's channels-last formulation; the graph ``A`` is an input.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class GraphConv(nn.Module):
  """1x1 conv ``in -> K*out``, then ``out[n, c, t, w] = sum_{k, v} y[n, k, c, t, v] A[k, v, w]``."""

  def __init__(self, cin: int, cout: int, k: int):
    super().__init__()
    self.k = k
    self.conv = nn.Conv2d(cin, cout * k, kernel_size=(1, 1))

  def forward(self, x, a):
    y = self.conv(x)
    n, kc, t, v = y.shape
    y = y.view(n, self.k, kc // self.k, t, v)
    return torch.einsum("nkctv,kvw->nctw", y, a)


class Block(nn.Module):
  """``relu(tcn(gcn(x, A)) + residual(x))``; ``tcn`` = BN, ReLU, Conv(kt x 1, stride), BN, Dropout."""

  def __init__(self, cin: int, cout: int, k: int, kt: int, stride: int, dropout: float, residual: bool):
    super().__init__()
    self.gcn = GraphConv(cin, cout, k)
    self.tcn = nn.Sequential(
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.Conv2d(cout, cout, (kt, 1), (stride, 1), ((kt - 1) // 2, 0)),
        nn.BatchNorm2d(cout),
        nn.Dropout(dropout),
    )
    self.kind = "none" if not residual else ("identity" if cin == cout and stride == 1 else "conv")
    if self.kind == "conv":
      self.residual = nn.Sequential(nn.Conv2d(cin, cout, kernel_size=1, stride=(stride, 1)), nn.BatchNorm2d(cout))

  def forward(self, x, a):
    if self.kind == "none":
      res = 0
    elif self.kind == "identity":
      res = x
    else:
      res = self.residual(x)
    return torch.relu(self.tcn(self.gcn(x, a)) + res)


class TorchSTGCN(nn.Module):
  """The ST-GCN ``Model`` with HiCLR's arguments; ``mlp`` swaps ``fc`` for ``Linear, ReLU, fc``."""

  def __init__(self, a, in_channels: int = 3, hidden_channels: int = 16, hidden_dim: int = 256,
               num_class: int = 128, dropout: float = 0.5, mlp: bool = False, kt: int = 9):
    super().__init__()
    a = torch.tensor(np.array(a), dtype=torch.float32)
    self.register_buffer("A", a)
    k, v = a.shape[0], a.shape[1]
    self.data_bn = nn.BatchNorm1d(in_channels * v)
    h = hidden_channels
    plan = [(in_channels, h, 1, 0.0, False), (h, h, 1, dropout, True), (h, h, 1, dropout, True),
            (h, h, 1, dropout, True), (h, 2 * h, 2, dropout, True), (2 * h, 2 * h, 1, dropout, True),
            (2 * h, 2 * h, 1, dropout, True), (2 * h, 4 * h, 2, dropout, True), (4 * h, 4 * h, 1, dropout, True),
            (4 * h, hidden_dim, 1, dropout, True)]
    self.st_gcn_networks = nn.ModuleList([Block(ci, co, k, kt, s, p, r) for ci, co, s, p, r in plan])
    self.fc = nn.Linear(hidden_dim, num_class)
    if mlp:
      self.fc = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), self.fc)
    for i in range(len(plan)):
      self.register_parameter(f"edge_importance{i + 1}", nn.Parameter(torch.ones_like(a)))

  def feature_map(self, x):
    """``x (N, C, T, V, M)`` -> the last block's output ``(N*M, hidden_dim, T', V)``."""
    n, c, t, v, m = x.shape
    y = x.permute(0, 4, 3, 1, 2).reshape(n * m, v * c, t)  # channel v*C + c, row n*M + m
    y = self.data_bn(y)
    y = y.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
    for i, block in enumerate(self.st_gcn_networks):
      y = block(y, self.A * getattr(self, f"edge_importance{i + 1}"))
    return y

  def pool(self, y, n: int):
    """A feature map ``(N*M, D, T', V)`` -> ``(feature (N, D), head output)``: mean over
    ``(T', V)``, then over the persons, then ``fc``."""
    feat = y.mean(dim=(2, 3)).view(n, y.shape[0] // n, -1).mean(dim=1)
    return feat, self.fc(feat)

  def forward(self, x):
    """``x (N, C, T, V, M)`` -> ``(feature (N, hidden_dim), head output)``."""
    return self.pool(self.feature_map(x), x.shape[0])
