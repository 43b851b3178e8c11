"""A PyTorch model of the HiCLR reference's pretraining step, for tests/test_hiclr_parity.py.

Written from the description of the reference (the ``HiCLR`` module's masked-branch forward
with and without nearest-neighbour mining, and its processor's loss and SGD step), in
PyTorch's own terms, independently of the JAX code:

- ``TorchHiCLRStep`` holds the reference's state under the reference's names:
  ``encoder_q``/``encoder_k`` (any module whose forward returns ``(feature, head output)``,
  here ``tests.torch_stgcn.TorchSTGCN``), the parameter ``mask_param`` ``[1]``, the buffers
  ``queue`` ``(D, K)`` (columns = samples) and ``queue_ptr`` ``[1]`` (int64). The key
  encoder's parameters do not require gradients.
- ``forward(im_q, im_k, im_q1, im_q2, keep, mining=..., topk=...)``:

  1. the joint mask on ``im_q2``: the view multiplied by ``keep`` (``(T, V)``, 1 = kept,
     shared by the batch, the persons and the channels), then the entries where
     ``keep == 0`` REPLACED by ``mask_param`` (an indexed assignment, so the gradient of
     those entries reaches ``mask_param``);
  2. ``q``, ``q1``, ``q2``: the query encoder on ``im_q``, ``im_q1``, ``im_q2`` in that
     order (three BatchNorm batches), head outputs L2-normalised;
  3. without gradient: the momentum update of the key encoder's PARAMETERS
     (``k = m k + (1 - m) q``, buffers untouched), then the keys from ``im_k`` (train mode,
     the key encoder's own running statistics), L2-normalised;
  4. for each branch ``x``: ``logits_x = [x . k, x queue] / T`` against a detached copy of
     the queue as it was before this step; ``L_info``: cross-entropy with target 0, or with
     ``mining`` the multi-positive loss ``-sum_j P_nj log_softmax(logits_q)_nj / sum_j P_nj``
     whose positives ``P`` are column 0 and each branch's ``topk`` largest ``l_neg``
     columns (scattered into one mask, so coinciding picks count once); the consistency
     terms ``L_h1 = -mean_n sum_j log(softmax(logits_q1)) * softmax(logits_q).detach()``
     and ``L_h2`` likewise from ``q1`` to ``q2``; ``loss = L_info + (L_h1 + L_h2) / 2``;
  5. the keys written into the queue at the pointer (``queue[:, p:p+N] = k.T``) and the
     pointer advanced ``(p + N) % K``.

- ``make_optimizer``: ``torch.optim.SGD`` over every parameter of the model (the key
  encoder's get no gradient, so SGD leaves them alone), momentum 0.9, no Nesterov, coupled
  weight decay; ``train_step`` = forward, ``zero_grad``, ``backward``, ``step``.

Dropout is whatever the encoders hold (the parity test builds them with rate 0, so that
both frameworks compute the same deterministic function in train mode). The module can be
cast to float64 (``.double()``): everything, the mask and the losses included, follows the
parameters' dtype.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class TorchHiCLRStep(nn.Module):
  """The reference's pretraining model: two encoders, ``mask_param``, the queue (module docstring)."""

  def __init__(self, make_encoder: Callable[[], nn.Module], dim: int, queue_size: int, momentum: float,
               temperature: float):
    super().__init__()
    self.momentum = float(momentum)
    self.temperature = float(temperature)
    self.queue_size = int(queue_size)
    self.register_parameter("mask_param", nn.Parameter(torch.zeros(1)))
    self.encoder_q = make_encoder()
    self.encoder_k = make_encoder()
    for p in self.encoder_k.parameters():
      p.requires_grad_(False)
    self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
    self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.int64))

  # -- the pieces ---------------------------------------------------------------------------

  def masked(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x (N, C, T, V, M)`` with the (frame, joint) entries where ``keep == 0`` replaced by
    ``mask_param`` (every sample, person and channel); the rest multiplied by 1."""
    n, c, t, v, m = x.shape
    keep = keep.to(x.dtype).reshape(1, 1, t, v, 1).expand(n, c, t, v, m)
    y = x * keep
    y[keep == 0] = self.mask_param
    return y

  def embed(self, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.normalize(encoder(x)[1], dim=1)

  @torch.no_grad()
  def momentum_update(self) -> None:
    for p_q, p_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
      p_k.data = p_k.data * self.momentum + p_q.data * (1.0 - self.momentum)

  @torch.no_grad()
  def enqueue(self, keys: torch.Tensor) -> None:
    n = keys.shape[0]
    assert self.queue_size % n == 0
    p = int(self.queue_ptr[0])
    self.queue[:, p:p + n] = keys.T
    self.queue_ptr[0] = (p + n) % self.queue_size

  def branch_logits(self, x: torch.Tensor, k: torch.Tensor, queue: torch.Tensor):
    """``(logits (N, 1 + K), l_neg (N, K))`` of one query branch."""
    l_pos = torch.einsum("nc,nc->n", x, k)[:, None]
    l_neg = torch.einsum("nc,ck->nk", x, queue)
    return torch.cat([l_pos, l_neg], dim=1) / self.temperature, l_neg

  # -- the step -----------------------------------------------------------------------------

  def forward(self, im_q, im_k, im_q1, im_q2, keep, *, mining: bool, topk: int = 1) -> dict[str, torch.Tensor]:
    im_q2 = self.masked(im_q2, keep)
    q = self.embed(self.encoder_q, im_q)
    q1 = self.embed(self.encoder_q, im_q1)
    q2 = self.embed(self.encoder_q, im_q2)
    with torch.no_grad():
      self.momentum_update()
      k = self.embed(self.encoder_k, im_k)
    queue = self.queue.clone().detach()
    logits, l_neg = self.branch_logits(q, k, queue)
    logits1, l_neg1 = self.branch_logits(q1, k, queue)
    logits2, l_neg2 = self.branch_logits(q2, k, queue)

    plain = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.int64, device=logits.device))
    mined_cols = torch.zeros_like(l_neg)
    for scores in (l_neg, l_neg1, l_neg2):
      mined_cols.scatter_(1, torch.topk(scores.detach(), topk, dim=1).indices, 1.0)
    positives = torch.cat([torch.ones_like(l_neg[:, :1]), mined_cols], dim=1)
    mined = (-(F.log_softmax(logits, dim=1) * positives).sum(1) / positives.sum(1)).mean()
    info = mined if mining else plain

    target1 = torch.softmax(logits.detach(), dim=1)
    target2 = torch.softmax(logits1.detach(), dim=1)
    h1 = -torch.mean(torch.sum(torch.log(torch.softmax(logits1, dim=1)) * target1, dim=1))
    h2 = -torch.mean(torch.sum(torch.log(torch.softmax(logits2, dim=1)) * target2, dim=1))
    loss = info + (h1 + h2) / 2.0

    self.enqueue(k)
    return {"loss": loss, "loss_info": info, "loss_h1": h1, "loss_h2": h2, "loss_plain": plain.detach(),
            "loss_mined": mined.detach(), "positives": positives, "q": q.detach(), "q1": q1.detach(),
            "q2": q2.detach(), "k": k, "im_q2": im_q2.detach()}


def make_optimizer(model: TorchHiCLRStep, lr: float, weight_decay: float, momentum: float = 0.9):
  """The reference's optimizer: SGD over ``model.parameters()``, no Nesterov, coupled decay."""
  return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=False, weight_decay=weight_decay)


def train_step(model: TorchHiCLRStep, optimizer, views, keep, *, mining: bool, topk: int = 1):
  """One reference iteration on the four views ``(data1, data2, data3, data4)`` = ``(q, k,
  q1, q2)``: forward (EMA, keys, losses, enqueue), then ``zero_grad``, ``backward``,
  ``step``. Returns the forward's outputs (``loss`` still attached to its graph)."""
  data1, data2, data3, data4 = views
  model.train()
  out = model(data1, data2, data3, data4, keep, mining=mining, topk=topk)
  optimizer.zero_grad()
  out["loss"].backward()
  optimizer.step()
  return out
