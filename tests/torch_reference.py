"""The PyTorch reference design, written from the spec: for the parity tests and the benchmarks.

This module owns the PyTorch side that the JAX code is compared with, numerically
(``tests/test_parity.py``, ``tests/test_encoder.py``) and in speed (``bench/``). It is written
from docs/references.md (#cmd-augmentations, #cmd-encoder, #cmd-pretraining-step, #cmd-quirks),
not copied from the reference repository, and needs ``torch`` (a test/benchmark dependency,
never a runtime one).

- ``TorchBIGRU(impl="step")``: the reference ``BIGRU``: ``BatchNorm1d(F)`` on ``(N, F, T)``,
  then ``nn.GRU(F, H, L, bidirectional=True, batch_first=True)`` called once per time step
  on a length-1 slice with the carried ``h_n`` (the reference's loop, #cmd-quirks item 1: both direction
  cells run forward in time), the last step's output, ``fc`` or the MLP head
  ``Sequential(Linear(2H, 2H), ReLU, Linear(2H, out))``.
- ``TorchBIGRU(impl="sequence")``: the same function computed the fast way a PyTorch user
  would write it: each of the ``2L`` forward-only cells is ONE whole-sequence call of a
  one-layer ``nn.GRU`` (cuDNN / oneDNN kernels), the two cells' outputs concatenated as the
  next layer's input. ``copy_step_weights`` moves a step-model's GRU weights into it;
  ``tests/test_parity.py`` checks both give the same outputs and gradients.
- ``TorchCMD``: the reference builder (pretrain, MLP heads) with ``forward`` in the spec's
  order: modalities from the 5-D views, normalised queries, momentum update of the key
  encoders' parameters, keys in train mode, ``[l_pos, l_neg] / T`` with CE, the six KL terms
  at the teacher's top-k, enqueue. Either encoder ``impl``.
- ``reference_pretrain_views``: the reference pretraining feeder's per-sample host path
  (numpy + Python ``random``, the resize through ``F.interpolate`` on one sample), the
  baseline of ``bench/bench_augment.py``.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn
from torch.nn import functional as tF

MODS = ("joint", "motion", "bone")
SUFFIX = {"joint": "", "motion": "_motion", "bone": "_bone"}

# docs/references.md#cmd-modalities: the (v1, v2) bone pairs, 1-based.
NTU_BONE_PAIRS = ((1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21),
                  (10, 9), (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1),
                  (18, 17), (19, 18), (20, 19), (21, 21), (22, 23), (23, 8), (24, 25), (25, 12))
IMPLS = ("step", "sequence")


def kl_name(teacher: str, student: str) -> str:
  return f"kl_{teacher}_to_{student}"


# ----------------------------------------------------------------------------------------
# The encoder
# ----------------------------------------------------------------------------------------

class StepEncoderRNN(nn.Module):
  """``nn.GRU(bidirectional=True)`` called per time step with the carried ``h_n`` (the reference)."""

  def __init__(self, input_size, hidden, layers):
    super().__init__()
    self.gru = nn.GRU(input_size, hidden, num_layers=layers, bidirectional=True, batch_first=True)

  def forward(self, x):
    outs, h = [], None  # step 0 starts from zeros
    for t in range(x.shape[1]):
      out, h = self.gru(x[:, t:t + 1, :], h)
      outs.append(out)
    return torch.cat(outs, dim=1)[:, -1]  # the output at t = T - 1, (N, 2H)


class SequenceEncoderRNN(nn.Module):
  """The same function, each forward-only cell as one whole-sequence ``nn.GRU`` call."""

  def __init__(self, input_size, hidden, layers):
    super().__init__()
    self.layers = layers
    self.cells = nn.ModuleList()
    for k in range(layers):
      for _ in range(2):  # the cells named l{k} and l{k}_reverse by the reference
        self.cells.append(nn.GRU(input_size if k == 0 else 2 * hidden, hidden, num_layers=1, batch_first=True))

  def forward(self, x):
    for k in range(self.layers):
      x = torch.cat([self.cells[2 * k](x)[0], self.cells[2 * k + 1](x)[0]], dim=-1)
    return x[:, -1]

  @torch.no_grad()
  def copy_step_weights(self, gru: nn.GRU) -> None:
    """Takes the weights of a ``StepEncoderRNN.gru`` (the reference's parameter names)."""
    for k in range(self.layers):
      for c, suffix in enumerate(("", "_reverse")):
        cell = self.cells[2 * k + c]
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
          getattr(cell, f"{name}_l0").copy_(getattr(gru, f"{name}_l{k}{suffix}"))


class TorchBIGRU(nn.Module):
  """The reference ``BIGRU``: input BN, the GRU (``impl``), the last step, ``fc`` / MLP head."""

  def __init__(self, input_size=150, hidden=1024, layers=3, num_class=128, mlp=True, impl="step"):
    super().__init__()
    if impl not in IMPLS:
      raise ValueError(f"impl={impl!r}; expected one of {IMPLS}")
    self.input_norm = nn.BatchNorm1d(input_size)
    self.encoder = (StepEncoderRNN if impl == "step" else SequenceEncoderRNN)(input_size, hidden, layers)
    self.fc = nn.Linear(2 * hidden, num_class)
    if mlp:
      self.fc = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), self.fc)

  def forward(self, x, knn_eval=False):
    x = self.input_norm(x.permute(0, 2, 1).contiguous()).permute(0, 2, 1).contiguous()
    feature = self.encoder(x)
    return feature if knn_eval else self.fc(feature)

  @torch.no_grad()
  def copy_from(self, other: "TorchBIGRU") -> None:
    """This model's weights and BN buffers := ``other``'s (either impl)."""
    self.input_norm.load_state_dict(other.input_norm.state_dict())
    self.fc.load_state_dict(other.fc.state_dict())
    if isinstance(self.encoder, SequenceEncoderRNN) and isinstance(other.encoder, StepEncoderRNN):
      self.encoder.copy_step_weights(other.encoder.gru)
    elif type(self.encoder) is type(other.encoder):
      self.encoder.load_state_dict(other.encoder.state_dict())
    else:
      raise NotImplementedError("copy_from: only step -> sequence or same-impl copies")


# ----------------------------------------------------------------------------------------
# Modalities (docs/references.md#cmd-input-layout, #cmd-modalities)
# ----------------------------------------------------------------------------------------

def torch_motion(x):
  """(N, C, T, V, M): frame differences, the last frame 0."""
  m = torch.zeros_like(x)
  m[:, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
  return m


def torch_bone(x):
  b = torch.zeros_like(x)
  for v1, v2 in NTU_BONE_PAIRS:
    b[:, :, :, v1 - 1] = x[:, :, :, v1 - 1] - x[:, :, :, v2 - 1]
  return b


def torch_flatten(x):
  """(N, C, T, V, M) -> (N, T, V*C*M), permuted to (N, T, V, C, M) first."""
  n, c, t, v, m = x.shape
  return x.permute(0, 2, 3, 1, 4).reshape(n, t, v * c * m)


# ----------------------------------------------------------------------------------------
# The CMD builder (docs/references.md#cmd-pretraining-step)
# ----------------------------------------------------------------------------------------

class TorchCMD(nn.Module):
  """The reference builder (pretrain=True, mlp) with ``forward`` in the spec's order."""

  def __init__(self, hidden, layers, dim, queue_size, momentum, temperature, topk,
               teacher_t=0.05, student_t=0.1, cmd_weight=1.0, input_size=150, impl="step"):
    super().__init__()
    self.m, self.t, self.topk = momentum, temperature, topk
    self.teacher_t, self.student_t, self.cmd_weight = teacher_t, student_t, cmd_weight
    for s in SUFFIX.values():
      setattr(self, f"encoder_q{s}", TorchBIGRU(input_size, hidden, layers, dim, mlp=True, impl=impl))
      setattr(self, f"encoder_k{s}", TorchBIGRU(input_size, hidden, layers, dim, mlp=True, impl=impl))
      for pq, pk in zip(self.enc("q", s).parameters(), self.enc("k", s).parameters()):
        pk.data.copy_(pq.data)
        pk.requires_grad = False
      self.register_buffer(f"queue{s}", tF.normalize(torch.randn(dim, queue_size), dim=0))
      self.register_buffer(f"queue_ptr{s}", torch.zeros(1, dtype=torch.long))

  def enc(self, kind, suffix):
    return getattr(self, f"encoder_{kind}{suffix}")

  @torch.no_grad()
  def _momentum_update_key_encoders(self):
    for s in SUFFIX.values():
      for pq, pk in zip(self.enc("q", s).parameters(), self.enc("k", s).parameters()):
        pk.data = pk.data * self.m + pq.data * (1.0 - self.m)

  @torch.no_grad()
  def _dequeue_and_enqueue(self, keys):
    for name, s in SUFFIX.items():
      queue, ptr_buf = getattr(self, f"queue{s}"), getattr(self, f"queue_ptr{s}")
      batch, ptr = keys[name].shape[0], int(ptr_buf)
      assert queue.shape[1] % batch == 0
      queue[:, ptr:ptr + batch] = keys[name].T
      ptr_buf[0] = (ptr + batch) % queue.shape[1]

  def forward(self, im_q, im_k):
    streams_q = {"joint": im_q, "motion": torch_motion(im_q), "bone": torch_bone(im_q)}
    streams_k = {"joint": im_k, "motion": torch_motion(im_k), "bone": torch_bone(im_k)}
    q = {m: tF.normalize(self.enc("q", s)(torch_flatten(streams_q[m])), dim=1) for m, s in SUFFIX.items()}
    with torch.no_grad():
      self._momentum_update_key_encoders()
      k = {m: tF.normalize(self.enc("k", s)(torch_flatten(streams_k[m])), dim=1) for m, s in SUFFIX.items()}
    out = {"q": q, "k": k}
    l_neg, lk_neg = {}, {}
    for m, s in SUFFIX.items():
      queue = getattr(self, f"queue{s}").clone().detach()
      l_pos = torch.einsum("nc,nc->n", q[m], k[m]).unsqueeze(-1)
      l_neg[m] = torch.einsum("nc,ck->nk", q[m], queue)
      logits = torch.cat([l_pos, l_neg[m]], dim=1) / self.t
      labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
      out[f"loss_{m}"] = tF.cross_entropy(logits, labels)
      lk_neg[m] = torch.einsum("nc,ck->nk", k[m], queue)
    kl = nn.KLDivLoss(reduction="batchmean")
    loss_cmd = 0.0
    for teacher in MODS:
      values, idx = torch.topk(lk_neg[teacher], self.topk, dim=-1)
      for student in MODS:
        if student == teacher:
          continue
        s = torch.gather(l_neg[student], 1, idx)
        term = kl(tF.log_softmax(s / self.student_t, dim=1), tF.softmax(values / self.teacher_t, dim=1))
        out[kl_name(teacher, student)] = term
        loss_cmd = loss_cmd + term
    out["loss_cmd"] = loss_cmd * self.cmd_weight
    out["loss"] = out["loss_joint"] + out["loss_motion"] + out["loss_bone"] + out["loss_cmd"]
    self._dequeue_and_enqueue(k)
    return out


# ----------------------------------------------------------------------------------------
# The reference pretraining feeder's per-sample augmentation (docs/references.md#cmd-augmentations)
# ----------------------------------------------------------------------------------------

def temporal_cropresize(x: np.ndarray, num_frames: int, ratio_range=(0.1, 1.0), out_len: int = 64,
                        min_len: int = 64) -> np.ndarray:
  """One clip ``(C, T, V, M)``: random crop of ``L = min(max(floor(F*scale), 64), F)`` frames,
  resized to ``out_len`` by ``F.interpolate(bilinear, align_corners=False)`` on ``(1, CVM, L, 1)``."""
  c, _, v, m = x.shape
  scale = np.random.rand(1) * (ratio_range[1] - ratio_range[0]) + ratio_range[0]
  length = int(np.minimum(np.maximum(int(np.floor(num_frames * scale[0])), min_len), num_frames))
  start = np.random.randint(0, num_frames - length + 1)
  clip = torch.tensor(x[:, start:start + length], dtype=torch.float)
  clip = clip.permute(0, 2, 3, 1).contiguous().view(c * v * m, length)[None, :, :, None]
  clip = tF.interpolate(clip, size=(out_len, 1), mode="bilinear", align_corners=False)
  return clip.squeeze(3).squeeze(0).contiguous().view(c, v, m, out_len).permute(0, 3, 1, 2).contiguous().numpy()


def joint_corruption(x: np.ndarray, num_joints: int = 15) -> np.ndarray:
  """Zero 15 joints (p 0.5) or map them as row vectors ``p @ A``, ``A ~ U(-1, 1)^(3x3)``."""
  out = x.copy()
  if random.random() < 0.5:
    joints = np.random.choice(x.shape[2], num_joints, replace=False)
    out[:, :, joints, :] = 0
    return out
  joints = np.random.choice(x.shape[2], num_joints, replace=False)
  temp = out[:, :, joints, :]
  matrix = np.array([[random.uniform(-1, 1) for _ in range(3)] for _ in range(3)])
  temp = np.dot(temp.transpose(1, 2, 3, 0), matrix).transpose(3, 0, 1, 2)
  out[:, :, joints, :] = temp
  return out


def pose_augmentation(x: np.ndarray) -> np.ndarray:
  """The shear ``p' = S @ p``, ``S`` 1 on the diagonal, off-diagonals ``U(-1, 1)``."""
  shear = np.array([[1, random.uniform(-1, 1), random.uniform(-1, 1)],
                    [random.uniform(-1, 1), 1, random.uniform(-1, 1)],
                    [random.uniform(-1, 1), random.uniform(-1, 1), 1]])
  return np.dot(x.transpose(1, 2, 3, 0), shear.T).transpose(3, 0, 1, 2).astype(x.dtype)  # p @ S^T


def reference_pretrain_view(x: np.ndarray, num_frames: int) -> np.ndarray:
  """One view of one clip as the reference's pretraining feeder makes it
  (docs/references.md#cmd-pretraining-views)."""
  view = temporal_cropresize(x, min(int(num_frames), x.shape[1]))
  return joint_corruption(view) if random.random() < 0.5 else pose_augmentation(view)


def reference_pretrain_views(x: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
  """``(view1, view2)`` of one stored clip ``(3, 300, V, M)``, float32 ``(3, 64, V, M)`` each."""
  return (reference_pretrain_view(x, num_frames).astype(np.float32),
          reference_pretrain_view(x, num_frames).astype(np.float32))
