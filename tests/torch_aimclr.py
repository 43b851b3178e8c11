"""A PyTorch model of the AimCLR reference's pretraining step, for tests/test_aimclr.py.

Written from the description of the reference (its latest code: the ``AimCLR`` module's
forward and nearest-neighbour-mining forward, its ST-GCN's ``drop=True`` forward with the
``Simam_Drop`` module, and the ``pretrain_aimclr`` processor's loss and SGD step), in
PyTorch's own layout, independently of the JAX code:

- ``TorchEADM``: the drop module on a feature map ``(N*M, C, T, V)``: SimAM's attention
  ``att = sigmoid(d2 / (4 (sum_{t,v} d2 / (T V - 1) + 1e-4)) + 0.5)`` with
  ``d2 = (x - mean_{t,v} x)^2``; a joint mask ``att.mean((C, T)) < threshold`` applied as
  ``x * m * m.numel() / m.sum()``, then an elementwise mask ``att < threshold`` on the
  ``(N*M, C*V, T)`` arrangement the same way; ``identity=True`` returns the input (the first
  release).
- ``TorchAimCLRStep`` (``tests.torch_skeletonclr.TorchSkeletonCLRStep`` with AimCLR's
  forward) on ``(im_q_extreme, im_q, im_k)``:

  1. ``q``: the query encoder on ``im_q`` (BatchNorm batch 1);
  2. ``q_e``, ``q_ed``: the query encoder's feature map of ``im_q_extreme`` (BN batch 2),
     pooled as it is and after ``TorchEADM``, both through the encoder's ``fc``;
  3. all three L2-normalised; without gradient the momentum update and the keys;
  4. ``logits``, ``logits_e``, ``logits_ed`` against a detached copy of the pre-step queue;
     ``labels_ddm = softmax(logits.detach())``; ``L_e = -mean(sum(log(softmax(logits_e)) *
     labels_ddm))``, ``L_ed`` likewise; ``L_info``: cross-entropy with target 0, or with
     ``mining`` ``-sum(log_softmax(logits) * mask) / sum(mask)`` averaged, ``mask`` = the key
     and the top-``topk`` ``l_neg`` columns of each of the three features scattered into one
     one-hot (coinciding picks count once); ``loss = L_info + (L_e + L_ed) / 2``;
  5. the enqueue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_skeletonclr import TorchSkeletonCLRStep


class TorchEADM(nn.Module):
  """The energy-based attention-guided drop on ``(N*M, C, T, V)`` (module docstring)."""

  def __init__(self, threshold: float = 0.7, e_lambda: float = 1e-4, identity: bool = False):
    super().__init__()
    self.threshold, self.e_lambda, self.identity = float(threshold), float(e_lambda), bool(identity)

  def attention(self, x):
    _, _, t, v = x.shape
    d2 = (x - x.mean(dim=[2, 3], keepdim=True)).pow(2)
    return torch.sigmoid(d2 / (4 * (d2.sum(dim=[2, 3], keepdim=True) / (v * t - 1) + self.e_lambda)) + 0.5)

  def forward(self, x):
    if self.identity:
      return x
    nm, c, t, v = x.shape
    att = self.attention(x).detach()
    joints = (att.mean(dim=[1, 2]) < self.threshold).to(x.dtype).view(nm, 1, 1, v)
    x1 = x * joints * joints.numel() / joints.sum()
    elements = (att.permute(0, 1, 3, 2).reshape(nm, c * v, t) < self.threshold).to(x.dtype)
    y = x1.permute(0, 1, 3, 2).reshape(nm, c * v, t) * elements * elements.numel() / elements.sum()
    return y.view(nm, c, v, t).permute(0, 1, 3, 2)


class TorchAimCLRStep(TorchSkeletonCLRStep):
  """AimCLR's pretraining model (module docstring); ``drop`` is its EADM."""

  def __init__(self, make_encoder, dim: int, queue_size: int, momentum: float, temperature: float,
               drop: TorchEADM):
    super().__init__(make_encoder, dim, queue_size, momentum, temperature)
    self.drop = drop

  def forward(self, im_q_extreme, im_q, im_k, *, mining: bool, topk: int = 1) -> dict[str, torch.Tensor]:
    q = F.normalize(self.encoder_q(im_q)[1], dim=1)
    fmap = self.encoder_q.feature_map(im_q_extreme)
    n = im_q_extreme.shape[0]
    q_e = F.normalize(self.encoder_q.pool(fmap, n)[1], dim=1)
    q_ed = F.normalize(self.encoder_q.pool(self.drop(fmap), n)[1], dim=1)
    k = self.keys(im_k)
    queue = self.queue.clone().detach()
    logits, l_neg = self.logits(q, k, queue)
    logits_e, l_neg_e = self.logits(q_e, k, queue)
    logits_ed, l_neg_ed = self.logits(q_ed, k, queue)

    labels_ddm = torch.softmax(logits.detach(), dim=1)
    loss_e = -torch.mean(torch.sum(torch.log(torch.softmax(logits_e, dim=1)) * labels_ddm, dim=1))
    loss_ed = -torch.mean(torch.sum(torch.log(torch.softmax(logits_ed, dim=1)) * labels_ddm, dim=1))
    plain = F.cross_entropy(logits, torch.zeros(n, dtype=torch.int64))
    onehot = torch.zeros_like(l_neg)
    for scores in (l_neg, l_neg_e, l_neg_ed):
      onehot.scatter_(1, torch.topk(scores.detach(), topk, dim=1).indices, 1.0)
    mask = torch.cat([torch.ones_like(l_neg[:, :1]), onehot], dim=1)
    mined = (-(F.log_softmax(logits, dim=1) * mask).sum(1) / mask.sum(1)).mean()
    info = mined if mining else plain
    loss = info + (loss_e + loss_ed) / 2.0

    self.enqueue(k)
    return {"loss": loss, "loss_info": info, "loss_e": loss_e, "loss_ed": loss_ed, "loss_plain": plain.detach(),
            "loss_mined": mined.detach(), "positives": mask, "q": q.detach(), "q_e": q_e.detach(),
            "q_ed": q_ed.detach(), "k": k}
