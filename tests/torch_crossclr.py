"""A PyTorch model of the CrosSCLR reference's pretraining step, for tests/test_crossclr_parity.py.

Written from the description of the reference (the three-stream ``CrosSCLR`` module's
single-view forward and its ``cross_training`` forward, and its processor's losses and SGD
step), in PyTorch's own terms, independently of the JAX code:

- ``TorchCrosSCLRStep`` holds the reference's state under the reference's names:
  ``encoder_q``/``encoder_k`` (joint), ``encoder_q_motion``/``encoder_k_motion``,
  ``encoder_q_bone``/``encoder_k_bone`` (any module whose forward returns ``(feature, head
  output)`` and whose head is an attribute ``fc = Linear(hidden, dim)``, here
  ``tests.torch_stgcn.TorchSTGCN``); the buffers ``queue``, ``queue_motion``, ``queue_bone``
  ``(D, K)`` (columns = samples) and ``queue_ptr``, ``queue_ptr_motion``, ``queue_ptr_bone``
  ``[1]`` (int64). The key encoders' parameters do not require gradients.
- The heads, built as the reference builds them: the joint encoders' ``fc`` becomes
  ``Sequential(Linear(h, h), ReLU, fc)``; the motion and bone encoders' ``fc`` becomes
  ``Sequential(Linear(h, h), ReLU, <the joint encoder's fc>)``: the SAME module object (q side
  ``encoder_q.fc``, key side ``encoder_k.fc``), so the head is shared and appears in every
  stream's ``parameters()``.
- ``forward(im_q, im_k, cross=..., topk=..., context=..., update_all_keys=...)``:

  1. motion (``x[t+1] - x[t]``, last frame 0) and bone (joint minus parent over the 25 pairs
     of the reference's list, 1-based, ``(21, 21)`` included: a zero bone) of both views;
  2. the query forwards joint, motion, bone (head outputs L2-normalised);
  3. without gradient: the momentum updates ``k = m k + (1 - m) q`` zipping each query
     stream's ``parameters()`` with its key stream's (so every call also moves the shared
     head): all three streams' (joint, motion, bone) in single-view steps, the motion
     stream's alone in cross-view steps (every stream's with ``update_all_keys``); then the
     key forwards (train mode), L2-normalised;
  4. single-view: ``logits_s = [q_s . k_s, q_s queue_s] / T`` against a detached copy of the
     old queue; cross-view: for each ordered pair ``(u, v)``: ``[l_pos_u, l_neg_u, l_neg_u *
     l_neg_v] / T`` (without ``context``: ``[l_pos_u, l_neg_u] / T``) and the mask
     ``[1, onehot(topk(l_neg_v)), onehot(topk(l_neg_v))]`` (without context: one onehot);
  5. the keys written at each queue's pointer, then every pointer advanced by ``N``.

- ``train_step``: forward, the processor's loss (single-view: the sum of the three
  cross-entropies; cross-view: ``-(log_softmax(logits) * mask).sum(1) / mask.sum(1)``, per
  stream the mean over its partners, batch means, summed), ``zero_grad``, ``backward``,
  ``optimizer.step``. ``make_optimizer``: ``torch.optim.SGD`` over every parameter of the
  model, momentum 0.9, no Nesterov, coupled weight decay.

The module can be cast to float64 (``.double()``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The reference's bone pairs (1-based; (21, 21) gives joint 21 a zero bone).
BONE_PAIRS = [(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10), (12, 11),
              (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19), (21, 21), (22, 23),
              (23, 8), (24, 25), (25, 12)]
SUFFIX = {"joint": "", "motion": "_motion", "bone": "_bone"}


def motion_of(x: torch.Tensor) -> torch.Tensor:
  out = torch.zeros_like(x)
  out[:, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
  return out


def bone_of(x: torch.Tensor) -> torch.Tensor:
  out = torch.zeros_like(x)
  for v1, v2 in BONE_PAIRS:
    out[:, :, :, v1 - 1] = x[:, :, :, v1 - 1] - x[:, :, :, v2 - 1]
  return out


class TorchCrosSCLRStep(nn.Module):
  """The reference's pretraining model (module docstring)."""

  def __init__(self, make_encoder: Callable[[], nn.Module], hidden: int, dim: int, queue_size: int, momentum: float,
               temperature: float, streams: Sequence[str] = ("joint", "motion", "bone")):
    super().__init__()
    self.streams = tuple(streams)
    self.momentum = float(momentum)
    self.temperature = float(temperature)
    self.queue_size = int(queue_size)
    for side in ("q", "k"):
      for s in self.streams:
        setattr(self, self.encoder_name(side, s), make_encoder())
    for side in ("q", "k"):
      joint = getattr(self, self.encoder_name(side, "joint"))
      joint.fc = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), joint.fc)
      for s in self.streams[1:]:
        getattr(self, self.encoder_name(side, s)).fc = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), joint.fc)
    for s in self.streams:
      for p in getattr(self, self.encoder_name("k", s)).parameters():
        p.requires_grad_(False)
      self.register_buffer(f"queue{SUFFIX[s]}", F.normalize(torch.randn(dim, queue_size), dim=0))
      self.register_buffer(f"queue_ptr{SUFFIX[s]}", torch.zeros(1, dtype=torch.int64))

  @staticmethod
  def encoder_name(side: str, stream: str) -> str:
    return f"encoder_{side}{SUFFIX[stream]}"

  def encoder(self, side: str, stream: str) -> nn.Module:
    return getattr(self, self.encoder_name(side, stream))

  def queue_of(self, stream: str) -> torch.Tensor:
    return getattr(self, f"queue{SUFFIX[stream]}")

  @torch.no_grad()
  def momentum_update(self, stream: str) -> None:
    for p_q, p_k in zip(self.encoder("q", stream).parameters(), self.encoder("k", stream).parameters()):
      p_k.data = p_k.data * self.momentum + p_q.data * (1.0 - self.momentum)

  @torch.no_grad()
  def enqueue(self, keys: dict[str, torch.Tensor]) -> None:
    n = next(iter(keys.values())).shape[0]
    assert self.queue_size % n == 0
    for s in self.streams:
      p = int(getattr(self, f"queue_ptr{SUFFIX[s]}")[0])
      self.queue_of(s)[:, p:p + n] = keys[s].T
    for s in self.streams:
      ptr = getattr(self, f"queue_ptr{SUFFIX[s]}")
      ptr[0] = (ptr[0] + n) % self.queue_size

  def forward(self, im_q, im_k, *, cross: bool, topk: int = 1, context: bool = True, update_all_keys: bool = False):
    convert = {"joint": lambda x: x, "motion": motion_of, "bone": bone_of}
    q = {s: F.normalize(self.encoder("q", s)(convert[s](im_q))[1], dim=1) for s in self.streams}
    with torch.no_grad():
      for s in self.streams:
        if not cross or update_all_keys or s == "motion":
          self.momentum_update(s)
      k = {s: F.normalize(self.encoder("k", s)(convert[s](im_k))[1], dim=1) for s in self.streams}
    l_pos = {s: torch.einsum("nc,nc->n", q[s], k[s])[:, None] for s in self.streams}
    l_neg = {s: torch.einsum("nc,ck->nk", q[s], self.queue_of(s).clone().detach()) for s in self.streams}
    out = {"q": {s: v.detach() for s, v in q.items()}, "k": k}
    if not cross:
      out["logits"] = {s: torch.cat([l_pos[s], l_neg[s]], dim=1) / self.temperature for s in self.streams}
    else:
      logits, masks = {}, {}
      for u in self.streams:
        for v in self.streams:
          if u == v:
            continue
          parts = [l_pos[u], l_neg[u]] + ([torch.einsum("nk,nk->nk", l_neg[u], l_neg[v])] if context else [])
          logits[u, v] = torch.cat(parts, dim=1) / self.temperature
          onehot = torch.zeros_like(l_neg[u])
          onehot.scatter_(1, torch.topk(l_neg[v], topk, dim=1).indices, 1)
          ones = torch.ones(onehot.shape[0], 1, dtype=onehot.dtype)
          masks[u, v] = torch.cat([ones, onehot, onehot] if context else [ones, onehot], dim=1)
      out["logits"], out["masks"] = logits, masks
    self.enqueue(k)
    return out


def losses(model: TorchCrosSCLRStep, out, *, cross: bool) -> dict[str, torch.Tensor]:
  """The processor's loss terms: ``loss`` and ``loss_<stream>``."""
  terms = {}
  if not cross:
    for s in model.streams:
      z = out["logits"][s]
      terms[s] = F.cross_entropy(z, torch.zeros(z.shape[0], dtype=torch.int64))
  else:
    for u in model.streams:
      pairs = [(u, v) for v in model.streams if v != u]
      per_sample = [-(F.log_softmax(out["logits"][p], dim=1) * out["masks"][p]).sum(1) / out["masks"][p].sum(1)
                    for p in pairs]
      terms[u] = (sum(per_sample) / len(pairs)).mean()
  result = {f"loss_{s}": terms[s] for s in model.streams}
  result["loss"] = sum(terms.values())
  return result


def make_optimizer(model: TorchCrosSCLRStep, lr: float, weight_decay: float, momentum: float = 0.9):
  """The reference's optimizer: SGD over ``model.parameters()``, no Nesterov, coupled decay."""
  return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=False, weight_decay=weight_decay)


def train_step(model: TorchCrosSCLRStep, optimizer, data1, data2, *, cross: bool, topk: int = 1,
               context: bool = True, update_all_keys: bool = False):
  """One reference iteration on the views ``data1`` (query) and ``data2`` (key): forward
  (momentum updates, keys, logits, enqueue), loss, ``zero_grad``, ``backward``, ``step``.
  Returns the forward's outputs and the loss terms."""
  model.train()
  out = model(data1, data2, cross=cross, topk=topk, context=context, update_all_keys=update_all_keys)
  terms = losses(model, out, cross=cross)
  optimizer.zero_grad()
  terms["loss"].backward()
  optimizer.step()
  return out, {k: v.detach() for k, v in terms.items()}
