"""A PyTorch model of the SkeletonCLR reference's pretraining step, for tests/test_skeletonclr.py.

Written from the description of the reference (CrosSCLR's ``SkeletonCLR`` module, MoCo v2,
and its ``pretrain_skeletonclr`` processor's loss and SGD step), in PyTorch's own terms,
independently of the JAX code:

- ``TorchSkeletonCLRStep`` holds the reference's state under the reference's names:
  ``encoder_q``/``encoder_k`` (any module whose forward returns ``(feature, head output)``,
  here ``tests.torch_stgcn.TorchSTGCN``), the buffers ``queue`` ``(D, K)`` (columns =
  samples) and ``queue_ptr`` ``[1]`` (int64). The key encoder's parameters do not require
  gradients.
- ``forward(im_q, im_k)``:

  1. ``q``: the query encoder on ``im_q`` (train mode), head output L2-normalised;
  2. without gradient: the momentum update of the key encoder's PARAMETERS
     (``k = m k + (1 - m) q``, buffers untouched), then the keys from ``im_k`` (train mode,
     the key encoder's own running statistics), L2-normalised;
  3. ``logits = [q . k, q queue] / T`` against a detached copy of the queue as it was before
     this step; ``loss``: cross-entropy with target 0;
  4. the keys written into the queue at the pointer (``queue[:, p:p+N] = k.T``) and the
     pointer advanced ``(p + N) % K`` (the reference's processor advances it right after the
     forward).

- ``train_step`` = forward, ``zero_grad``, ``backward``, ``step`` with
  ``tests.torch_hiclr.make_optimizer`` (SGD over every parameter, momentum 0.9, no Nesterov,
  coupled weight decay; the key encoder gets no gradient, so SGD leaves it alone).

The AimCLR model (``tests/torch_aimclr.py``) extends this one, as AimCLR's code extends
SkeletonCLR's. Castable to float64 (``.double()``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class TorchSkeletonCLRStep(nn.Module):
  """The reference's pretraining model: two encoders and the queue (module docstring)."""

  def __init__(self, make_encoder: Callable[[], nn.Module], dim: int, queue_size: int, momentum: float,
               temperature: float):
    super().__init__()
    self.momentum = float(momentum)
    self.temperature = float(temperature)
    self.queue_size = int(queue_size)
    self.encoder_q = make_encoder()
    self.encoder_k = make_encoder()
    for p in self.encoder_k.parameters():
      p.requires_grad_(False)
    self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
    self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.int64))

  @torch.no_grad()
  def momentum_update(self) -> None:
    for p_q, p_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
      p_k.data = p_k.data * self.momentum + p_q.data * (1.0 - self.momentum)

  @torch.no_grad()
  def keys(self, im_k) -> torch.Tensor:
    """The momentum update, then the normalised keys."""
    self.momentum_update()
    return F.normalize(self.encoder_k(im_k)[1], dim=1)

  @torch.no_grad()
  def enqueue(self, keys: torch.Tensor) -> None:
    n = keys.shape[0]
    assert self.queue_size % n == 0
    p = int(self.queue_ptr[0])
    self.queue[:, p:p + n] = keys.T
    self.queue_ptr[0] = (p + n) % self.queue_size

  def logits(self, x: torch.Tensor, k: torch.Tensor, queue: torch.Tensor):
    """``(logits (N, 1 + K), l_neg (N, K))`` of one query: ``[x . k, x queue] / T``, ``l_neg`` raw."""
    l_pos = torch.einsum("nc,nc->n", x, k)[:, None]
    l_neg = torch.einsum("nc,ck->nk", x, queue)
    return torch.cat([l_pos, l_neg], dim=1) / self.temperature, l_neg

  def forward(self, im_q, im_k) -> dict[str, torch.Tensor]:
    q = F.normalize(self.encoder_q(im_q)[1], dim=1)
    k = self.keys(im_k)
    logits, _ = self.logits(q, k, self.queue.clone().detach())
    loss = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.int64))
    self.enqueue(k)
    return {"loss": loss, "q": q.detach(), "k": k}


def train_step(model: nn.Module, optimizer, views, **kwargs):
  """One reference iteration: forward (EMA, keys, losses, enqueue), then ``zero_grad``,
  ``backward``, ``step``. Returns the forward's outputs (``loss`` still attached)."""
  model.train()
  out = model(*views, **kwargs)
  optimizer.zero_grad()
  out["loss"].backward()
  optimizer.step()
  return out
