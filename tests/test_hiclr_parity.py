"""Numerical parity of the JAX HiCLR step with a PyTorch model of the reference step.

The torch side (``tests/torch_hiclr.py``: ``TorchHiCLRStep`` with two
``tests/torch_stgcn.py`` encoders, ``torch.optim.SGD``) is written from the description of
the reference's masked-branch forward, its nearest-neighbour-mining variant and its
processor's loss and SGD step; the JAX side is the project's own
``cmd_jax.trainers.pretrain.train_step`` with ``config.method = "hiclr"``.

Same weights: the JAX state from ``create_train_state`` is exported by
``cmd_jax.interop.hiclr.state_to_state_dict`` and loaded STRICTLY into the torch model, which
must then hold the very same tensors as a second torch model filled through the renaming
rule (written here, ``renamed``, and checked equal to ``cmd_jax.models.torch_key``; queue
transposed; the graph ``A`` built by the torch encoder itself). Same inputs: the random
views are bypassed (``views.hiclr_views`` is monkeypatched to return four fixed views
carried in the batch's ``"skeleton"``, and ``views.joint_mask`` a fixed joint mask carried
as a fifth slot of it), the second person absent in all samples but the first (as in NTU).

Two full steps (``test_two_full_steps_match_the_reference_step_float64``),
``steps_per_epoch = 1`` and ``hiclr.mining_epoch = 1``: step 1 (epoch 0, the reference's
epoch 1) is plain InfoNCE, step 2 (the reference's epoch 2 > 1) the nearest-neighbour-mining
loss. After each: the logged loss terms, the query encoder and ``mask_param`` after SGD, the
key encoder after the EMA, both encoders' BN running statistics, the queue after the
enqueue and the pointer. The small config uses an EMA momentum of 0.9 and lr 0.1 (the
release: 0.999 and 0.1) so that the ORDER of the EMA (inside the forward, with the query
parameters from before ``optimizer.step()``) and the SGD step is observable: the test
checks that the other order, a missing SGD step or enqueue, and the other InfoNCE would be
told apart.

Precision: the two full steps run in float64 on both sides (``jax.enable_x64``, torch
double), compared within ``F64_ATOL = 1e-10``; float32 (JAX under
``jax.default_matmul_precision("float32")``) is compared for step 1's forward (loss terms,
EMA, BN statistics, queue). Why not the float32 parameters after SGD: float32 gradients of
this ReLU network are not continuous in the weights (a unit whose pre-activation lies within
rounding distance of 0 passes its gradient in one implementation and not in the other,
``tests/test_stgcn.py``), and here BN's backward makes the gradients cancel so heavily that
one such unit changes a weight's gradient by up to percents: PyTorch float32 against
PyTorch float64 on this setup is off by 3.8e-2 of a parameter's scale in one input draw of
12. A float32 bound loose enough for that would prove little; in float64 a flip would need
a pre-activation within ~1e-15 of 0. Measured maxima are in the tolerances' comments (CPU;
printed with ``pytest -s``).

Also: ``cmd_jax.methods.hiclr.losses`` against numpy formulas written here (plain InfoNCE,
each consistency term and where its gradient stops, the mined positive set with hand-made
similarities where the branches' top-1 coincide or differ, the mined loss, the total), and
the switch to mining at ``mining_epoch`` in the full step (epoch = step // steps_per_epoch,
0-based). The whole file: ~45-60 s on a 2-core CPU, most of it compiling the float64 step.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
from flax import linen as nn
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmd_jax import data, models, optim  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.interop import hiclr as hiclr_format  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.methods import hiclr  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.methods.common import mining  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.methods.hiclr import losses as hiclr_losses  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.methods.hiclr import views as hiclr_views  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.models import graph  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.trainers import pretrain as cp  # noqa: E402  pylint: disable=wrong-import-position
from configs import pretrain_hiclr  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_hiclr import TorchHiCLRStep, make_optimizer, train_step  # noqa: E402  pylint: disable=wrong-import-position
from tests.test_stgcn import flat, torch_key  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_stgcn import TorchSTGCN  # noqa: E402  pylint: disable=wrong-import-position

# The small setup: ST-GCN with 4 base channels, feature 16, embedding 8, queue 16, batch 4,
# 16 frames (the encoder is convolutional in time; the two stride-2 blocks give 8 and 4).
N, T, C, V, M = 4, 16, 3, 25, 2
H, HIDDEN_DIM, D, K = 4, 16, 8, 16
LR, SGD_MOMENTUM, WD, EMA_M, MOCO_T, TOPK = 0.1, 0.9, 1e-4, 0.9, 0.07, 1
MASK_RATIO = 0.1  # int(25 * 0.1) = 2 masked joints per frame
MASK_VALUE = 0.3  # mask_param at the start (created 0; see the setup fixture)
STEPS_PER_EPOCH, MINING_EPOCH = 1, 1  # step 1 plain, step 2 mined

ATOL = 1e-5       # float32 forward quantities (comment above the float32 test)
LOSS_RTOL = 1e-5  # float32 loss terms, relative (same comment)
F64_ATOL = 1e-10  # float64, everything (comment above the float64 test)


# ----------------------------------------------------------------------------------------
# Config, data, weights across frameworks
# ----------------------------------------------------------------------------------------

def small_config():
  config = pretrain_hiclr.get_config("synthetic")
  config.model.name, config.model.init = "stgcn", "normal_0.02"  # the release's encoder and init
  config.model.stgcn.hidden_channels, config.model.stgcn.hidden_dim = H, HIDDEN_DIM
  config.model.stgcn.dropout = 0.0
  config.model.embed_dim = D
  config.batch_size, config.moco.queue_size = N, K
  config.moco.momentum, config.moco.temperature = EMA_M, MOCO_T
  config.hiclr.mining_epoch, config.hiclr.topk, config.hiclr.mask_ratio = MINING_EPOCH, TOPK, MASK_RATIO
  config.optimizer.lr, config.optimizer.momentum, config.optimizer.weight_decay = LR, SGD_MOMENTUM, WD
  config.optimizer.schedule, config.optimizer.milestones = "step", ()
  if "nesterov" in config.optimizer:  # the release's SGD: no Nesterov
    config.optimizer.nesterov = False
  config.evaluator.name = ""
  return config


def step_inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Four fixed views ``[N, 4, C, T, V, M]`` (q, k, q1, q2) with the second person absent
  (zeros) except in sample 0, and a joint mask ``[T, V]`` (True = masked): 2 distinct joints
  per frame."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(N, 4, C, T, V, M)).astype(np.float32)
  x[1:, :, :, :, :, 1] = 0.0
  masked = np.zeros((T, V), bool)
  for t in range(T):
    masked[t, rng.choice(V, int(V * MASK_RATIO), replace=False)] = True
  return x, masked


def pack(views: np.ndarray, masked: np.ndarray, dtype=np.float32) -> np.ndarray:
  """The batch's ``"skeleton"``: the four views and, as a fifth, the mask (1 = masked)."""
  slot = np.broadcast_to(masked[None, None, :, :, None], (N, C, T, V, M)).astype(views.dtype)
  return np.concatenate([views, slot[:, None]], axis=1).astype(dtype)


def patch_views(monkeypatch) -> None:
  """``hiclr_views`` returns the packed views, ``joint_mask`` the packed mask (read from the
  same batch within the same trace)."""
  carried = {}

  def fixed_views(key, x, **kwargs):
    del key, kwargs
    carried["mask"] = x[0, 4, 0, :, :, 0] > 0.5
    return x[:, 0], x[:, 1], x[:, 2], x[:, 3]

  def fixed_mask(key, num_frames, num_joints, mask_ratio=MASK_RATIO):
    del key
    assert (num_frames, num_joints, mask_ratio) == (T, V, MASK_RATIO)
    return carried["mask"]

  monkeypatch.setattr(hiclr_views, "hiclr_views", fixed_views)
  monkeypatch.setattr(hiclr_views, "joint_mask", fixed_mask)


renamed = torch_key  # the renaming rule written in tests/test_stgcn.py, independently of cmd_jax.models.torch_key


def unflat(items):
  out = {}
  for path, value in items:
    node = out
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return out


def stgcn_encoder(layout):
  return lambda: TorchSTGCN(graph.layout_graph(layout), hidden_channels=H, hidden_dim=HIDDEN_DIM, num_class=D,
                            dropout=0.0, mlp=True)


def new_torch_model(layout) -> TorchHiCLRStep:
  return TorchHiCLRStep(stgcn_encoder(layout), D, K, EMA_M, MOCO_T)


def fill_by_renaming(model: TorchHiCLRStep, state, config) -> None:
  """The JAX state -> ``model`` through ``renamed`` (the independent route; the project's
  ``models.torch_key`` must agree with it on every path)."""
  sd = model.state_dict()
  for prefix, params, stats in (("encoder_q", state.params["encoder"], state.batch_stats),
                                ("encoder_k", state.key_params, state.key_batch_stats)):
    for tree in (params, stats):
      for path, leaf in flat(tree):
        assert renamed(path) == models.torch_key(config.model, path), path
        key = f"{prefix}.{renamed(path)}"
        assert tuple(sd[key].shape) == np.shape(leaf), key
        sd[key] = torch.from_numpy(np.array(leaf, np.float32))
  sd["mask_param"] = torch.from_numpy(np.array(state.params["mask_param"], np.float32))
  sd["queue"] = torch.from_numpy(np.ascontiguousarray(np.asarray(state.queues["joint"], np.float32).T))
  sd["queue_ptr"] = torch.tensor([int(state.queue_ptr)], dtype=torch.int64)
  model.load_state_dict(sd, strict=True)


def torch_model(state, config, layout) -> TorchHiCLRStep:
  """The exported state loaded strictly; the same tensors as the renaming route."""
  model = new_torch_model(layout)
  model.load_state_dict(hiclr_format.state_to_state_dict(state, config), strict=True)
  independent = new_torch_model(layout)
  fill_by_renaming(independent, state, config)
  got, want = model.state_dict(), independent.state_dict()
  assert sorted(got) == sorted(want)
  for key in want:
    if not key.endswith("num_batches_tracked"):
      assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
  return model


def torch_trees(model: TorchHiCLRStep, state) -> dict:
  """The torch model's tensors arranged as the ``HiCLRState`` fields (float64 numpy)."""
  sd = {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()}

  def tree(prefix, like):
    return unflat((path, sd[f"{prefix}.{renamed(path)}"]) for path, _ in flat(like))

  return {"params": {"encoder": tree("encoder_q", state.params["encoder"]), "mask_param": sd["mask_param"]},
          "key_params": tree("encoder_k", state.key_params),
          "batch_stats": tree("encoder_q", state.batch_stats),
          "key_batch_stats": tree("encoder_k", state.key_batch_stats),
          "queues": {"joint": sd["queue"].T}, "queue_ptr": int(model.queue_ptr[0])}


def max_diff(a, b) -> float:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(jax.tree.map(np.asarray, a)) == jax.tree.structure(jax.tree.map(np.asarray, b))
  assert len(la) == len(lb) and la
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in zip(la, lb))


def check(what: str, jax_value, torch_value, atol: float) -> float:
  diff = max_diff(jax_value, torch_value)
  print(f"  {what}: max |diff| = {diff:.3g}")
  assert diff <= atol, f"{what}: max |diff| {diff} > {atol}"
  return diff


def to_np(x):
  return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ----------------------------------------------------------------------------------------
# The full step, JAX and torch side by side
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(compilation_cache_dir):  # the cache: the query and key inits compile once
  del compilation_cache_dir
  config = small_config()
  layout = data.layout_of(config.data)
  state = cp.create_train_state(config, layout, steps_per_epoch=STEPS_PER_EPOCH)
  state = jax.tree.map(lambda x: np.array(x, copy=True), state)
  assert state.params["mask_param"].tolist() == [0.0]  # the reference's zeros((1,))
  # A non-zero mask value from the start, so that the replaced entries' VALUE matters in
  # step 1 (the SGD steps move it by only ~1e-3).
  state = state.replace(params=dict(state.params, mask_param=np.array([MASK_VALUE], np.float32)))
  return config, layout, state


# XLA:CPU spends ~25 s compiling the step (four ST-GCN forwards, three backwards) at its
# default optimisation level on 2 cores, ~10-15 s at level 0; the step runs in < 1 s either way.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compiled_step(config, layout, state, batch):
  """``cp.train_step`` compiled for ``state`` and ``batch`` (their dtypes: call it under the
  precision context the step will run in)."""
  tx = optim.make_optimizer(config, STEPS_PER_EPOCH)
  fn = jax.jit(functools.partial(cp.train_step, config=config, layout=layout, tx=tx,
                                 schedule=optim.lr_schedule(config, STEPS_PER_EPOCH), steps_per_epoch=STEPS_PER_EPOCH))
  return fn.lower(state, batch).compile(COMPILER_OPTIONS)


def x64():
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=import-outside-toplevel
  return enable_x64()


def as_float64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating) else a,
                      tree)


def host(tree):
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def batch_of(views, masked, dtype):
  return {"skeleton": pack(views, masked, dtype), "num_frames": np.full((N,), T, np.int32)}


LOSS_TERMS = ("loss", "loss_info", "loss_h1", "loss_h2")


# Float64 (module docstring): every quantity after each step within F64_ATOL = 1e-10. In
# float32 the same comparisons differ by up to ~100 u (u = 6e-8) of a tensor's scale when no
# gradient flips (the first blocks' gradients: ~5e-6 relative, the float32 comment below);
# 100 float64 u (1.1e-16) is ~1e-14 relative, and the SGD step moves the head's last bias by
# ~80 (the head output's norm is ~1e-2 at HiCLR's N(0, 0.02) init, and the L2 normalisation
# scales its gradient by the inverse), so ~1e-12 absolute: 1e-10 leaves ~100x. A wrong
# formula, order or constant moves them far more (the alternatives checked below: >= 9e-4;
# even a missing weight decay: lr * wd * |p| ~ 1e-5). Measured: loss terms <= 1.1e-14, query
# parameters after SGD <= 3.4e-13, mask_param <= 5.6e-17, key encoder after the EMA
# <= 1.8e-14, BN statistics <= 1.5e-13, queue <= 2.4e-15.
def test_two_full_steps_match_the_reference_step_float64(setup, monkeypatch):
  """Two full steps in float64 (step 1 plain, step 2 mined): the logged loss terms, the
  query encoder and ``mask_param`` after SGD, the key encoder after the EMA, both BN
  running statistics, the queue after the enqueue and the pointer; and the alternatives
  (EMA with the post-step parameters, no SGD step, no enqueue, the other InfoNCE) are far
  outside the tolerance."""
  config, layout, state = setup
  patch_views(monkeypatch)
  ref = torch_model(state, config, layout).double()
  opt = make_optimizer(ref, LR, WD, SGD_MOMENTUM)
  state = as_float64(state)
  print()
  with x64():
    start = time.time()
    step = compiled_step(config, layout, state, batch_of(*step_inputs(30), np.float64))
    print(f" float64 step compiled in {time.time() - start:.1f} s")
    for i in range(2):
      views, masked = step_inputs(30 + i)
      before = state
      state, metrics = step(state, batch_of(views, masked, np.float64))
      state, metrics = host(state), host(metrics)
      assert all(a.dtype != np.float32 for a in jax.tree.leaves(state))
      mining = i + 1 > MINING_EPOCH  # the reference's 1-based epoch i + 1 (steps_per_epoch 1)
      tviews = [torch.from_numpy(views[:, j].astype(np.float64)) for j in range(4)]
      out = train_step(ref, opt, tviews, torch.from_numpy(~masked), mining=mining, topk=TOPK)
      got = torch_trees(ref, state)
      print(f" step {i + 1} ({'mined' if mining else 'plain'} InfoNCE):")
      assert float(metrics["mining"]) == float(mining)
      for name in LOSS_TERMS:
        check(name, metrics[name], to_np(out[name]), F64_ATOL)
      check("query encoder after SGD", state.params["encoder"], got["params"]["encoder"], F64_ATOL)
      check("mask_param after SGD", state.params["mask_param"], got["params"]["mask_param"], F64_ATOL)
      check("key encoder after the EMA", state.key_params, got["key_params"], F64_ATOL)
      check("query BN running statistics", state.batch_stats, got["batch_stats"], F64_ATOL)
      check("key BN running statistics", state.key_batch_stats, got["key_batch_stats"], F64_ATOL)
      check("queue after the enqueue", state.queues, got["queues"], F64_ATOL)
      assert int(state.queue_ptr) == got["queue_ptr"] == (N * (i + 1)) % K
      # The comparisons tell the alternatives apart.
      post = jax.tree.map(lambda k, q: EMA_M * k + (1 - EMA_M) * q, before.key_params, state.params["encoder"])
      alternatives = {
          "EMA with the post-step query parameters": max_diff(post, got["key_params"]),
          "no SGD step (query encoder)": max_diff(before.params["encoder"], got["params"]["encoder"]),
          "no SGD step (mask_param)": max_diff(before.params["mask_param"], got["params"]["mask_param"]),
          "no enqueue": max_diff(before.queues, got["queues"]),
          "the other InfoNCE (loss_info)": abs(float(to_np(out["loss_plain" if mining else "loss_mined"]))
                                               - float(to_np(out["loss_info"]))),
      }
      print("  alternatives would differ by: " + ", ".join(f"{k} {v:.3g}" for k, v in alternatives.items()))
      for what, diff in alternatives.items():
        assert diff > 1e4 * F64_ATOL, what


# Float32, step 1's forward: the step's loss function ``hiclr.loss`` (what ``train_step``
# differentiates; it returns the loss terms and every state update but the SGD step). The
# quantities are continuous functions of the inputs: the loss terms (relative LOSS_RTOL, as
# tests/test_parity.py: a term is a log-sum-exp of logits sim / 0.07 <= 14.3 whose
# similarities of two unit 8-vectors carry ~D u ~ 5e-7 of rounding, i.e. ~1e-5 per logit,
# and the ~50 reductions of the encoder (tests/test_stgcn.py) give the features ~1e-6
# relative; 1e-5 of the term's size is still far below a wrong formula, weight or branch),
# the key encoder after the EMA (the same products of the same float32 numbers), the BN
# running statistics and the queue (forward only, all O(1) here: largest entries 0.9-1.05),
# within ATOL = 1e-5, ~170 u of that size in any summation order. Measured: loss terms
# <= 2.9e-6 (3e-7 of a loss of 9.5), key encoder <= 1.2e-7 (XLA may fuse the EMA into an
# FMA), BN statistics <= 6e-8, queue <= 2.2e-7.
#
# The parameters after the SGD step are not compared in float32: a ReLU unit whose
# pre-activation is within rounding distance of 0 passes its gradient in one implementation
# and not in the other, and BN's backward (mean and projection removed) makes the gradients
# cancel heavily, so one such unit can change a weight's gradient by percents. Measured on
# this setup, PyTorch float32 against PyTorch float64 after two steps, over 12 input draws:
# ~5e-6 of the parameters' scale in 10 draws, 1.7e-4 and 3.8e-2 in the other two (JAX
# float32 against PyTorch float32 on the draw used here: 2.3e-5 absolute on a bias of 80.9,
# 3e-7 of it). The float64 test above checks them exactly.
def test_first_step_forward_matches_the_reference_step_float32(setup, monkeypatch):
  config, layout, state = setup
  patch_views(monkeypatch)
  ref = torch_model(state, config, layout)
  opt = make_optimizer(ref, LR, WD, SGD_MOMENTUM)
  views, masked = step_inputs(30)
  batch = batch_of(views, masked, np.float32)
  fn = jax.jit(functools.partial(hiclr.loss, config=config, layout=layout, steps_per_epoch=STEPS_PER_EPOCH))
  print()
  with jax.default_matmul_precision("float32"):
    _, (metrics, updates) = fn(state.params, state, batch, jax.random.PRNGKey(0))
  metrics, new = host(metrics), host(state.replace(**updates))
  out = train_step(ref, opt, [torch.from_numpy(views[:, j].copy()) for j in range(4)], torch.from_numpy(~masked),
                   mining=False, topk=TOPK)
  got = torch_trees(ref, new)
  masked_view = hiclr_views.apply_joint_mask(jnp.asarray(views[:, 3]), jnp.asarray(masked), state.params["mask_param"])
  check("masked branch-2 view", masked_view, to_np(out["im_q2"]), 0.0)
  assert np.sum(np.asarray(masked_view) == MASK_VALUE) == N * C * M * masked.sum()
  assert float(metrics["mining"]) == 0.0
  for name in LOSS_TERMS:
    check(name, metrics[name], to_np(out[name]), LOSS_RTOL * max(1.0, abs(float(to_np(out[name])))))
  check("key encoder after the EMA", new.key_params, got["key_params"], ATOL)
  check("query BN running statistics", new.batch_stats, got["batch_stats"], ATOL)
  check("key BN running statistics", new.key_batch_stats, got["key_batch_stats"], ATOL)
  check("queue after the enqueue", new.queues, got["queues"], ATOL)
  assert int(new.queue_ptr) == got["queue_ptr"] == N


# ----------------------------------------------------------------------------------------
# The switch to mining in the full loss
# ----------------------------------------------------------------------------------------

class TinyEncoder(nn.Module):
  """A stand-in encoder (pooled coordinates -> BN -> Dense): the switch does not depend on
  the encoder, and this one compiles in a moment."""
  num_outputs: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = jnp.mean(x, axis=(2, 4)).reshape(x.shape[0], -1)
    y = nn.BatchNorm(use_running_average=not train)(y)
    return nn.Dense(self.num_outputs)(y)


def test_mining_switches_at_mining_epoch(monkeypatch):
  """``hiclr.loss`` mines from 0-based epoch ``mining_epoch`` on, epoch = step //
  steps_per_epoch (the reference's ``epoch > mining_epoch`` on 1-based epochs): with 3 steps
  per epoch and ``mining_epoch = 2``, steps 0-5 are plain and 6, 7, 8 mined; the logged
  InfoNCE is the plain one before and the mined one after (same state and batch, only the
  step counter changes)."""
  config = small_config()
  config.hiclr.mining_epoch = 2
  steps_per_epoch = 3
  layout = data.layout_of(config.data)
  monkeypatch.setattr(hiclr, "make_model", lambda config, layout, training=False: TinyEncoder(D))
  patch_views(monkeypatch)
  state = cp.create_train_state(config, layout, steps_per_epoch=steps_per_epoch)
  tx = optim.make_optimizer(config, steps_per_epoch)
  step = jax.jit(functools.partial(cp.train_step, config=config, layout=layout, tx=tx,
                                   schedule=optim.lr_schedule(config, steps_per_epoch),
                                   steps_per_epoch=steps_per_epoch))
  batch = batch_of(*step_inputs(40), np.float32)
  flags, infos = [], []
  for s in range(9):
    _, metrics = step(state.replace(step=jnp.int32(s)), batch)
    flags.append(float(metrics["mining"]))
    infos.append(float(metrics["loss_info"]))
  assert flags == [0.0] * 6 + [1.0] * 3
  assert len(set(infos[:6])) == 1 and len(set(infos[6:])) == 1
  assert abs(infos[0] - infos[6]) > 1e-3


# ----------------------------------------------------------------------------------------
# cmd_jax.methods.hiclr.losses against numpy formulas
# ----------------------------------------------------------------------------------------

def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(axis=1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def np_logits(x, k, queue, temperature=MOCO_T):
  x, k, queue = (np.asarray(a, np.float64) for a in (x, k, queue))
  return np.concatenate([(x * k).sum(1, keepdims=True), x @ queue.T], axis=1) / temperature


def unit_rows(rng, n, d):
  x = rng.normal(size=(n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def loss_inputs(seed, n=8, d=D, k=16):
  rng = np.random.default_rng(seed)
  return tuple(unit_rows(rng, n, d) for _ in range(4)) + (unit_rows(rng, k, d),)


# The numpy side is float64, the JAX side float32: logits up to 1/0.07 = 14.3 from 8-term
# dot products (~1e-6 rounding each), a log-sum-exp of 13 terms: ~1e-6 of a term of size ~1-10.
UNIT_RTOL = 1e-5
# Jitted once per input shape (every test uses the same shapes): faster than op-by-op.
hiclr_loss = jax.jit(hiclr_losses.hiclr_loss, static_argnames=("temperature", "topk", "consistency_weight"))


def close(got, want, what):
  got, want = float(got), float(want)
  print(f"  {what}: {got:.6g} vs numpy {want:.6g}")
  assert abs(got - want) <= UNIT_RTOL * max(1.0, abs(want)), what


def test_plain_infonce_and_consistency_terms_match_numpy():
  q, q1, q2, k, queue = loss_inputs(1)
  lq, lq1, lq2 = (np_logits(x, k, queue) for x in (q, q1, q2))
  info = np.mean(-np_log_softmax(lq)[:, 0])
  h1 = -np.mean(np.sum(np.exp(np_log_softmax(lq)) * np_log_softmax(lq1), axis=1))
  h2 = -np.mean(np.sum(np.exp(np_log_softmax(lq1)) * np_log_softmax(lq2), axis=1))
  print()
  for weight in (0.5, 0.25):
    total, metrics = hiclr_loss(q, q1, q2, k, queue, temperature=MOCO_T, mining=False, topk=1,
                                consistency_weight=weight)
    close(metrics["loss_info"], info, "plain InfoNCE")
    close(metrics["loss_h1"], h1, "L_h1 (q -> q1)")
    close(metrics["loss_h2"], h2, "L_h2 (q1 -> q2)")
    close(total, info + weight * (h1 + h2), f"total, weight {weight}")
    close(metrics["loss"], total, "logged total")
  assert float(metrics["mining"]) == 0.0
  assert float(metrics["acc1"]) == float(np.float32(np.mean(np.argmax(lq, axis=1) == 0)))
  # Each term's own formula from the helpers, too.
  close(hiclr_losses.consistency(jnp.asarray(lq, jnp.float32), jnp.asarray(lq1, jnp.float32)), h1, "consistency()")


def test_gradients_stop_at_the_targets_keys_and_queue():
  """The weaker branch of each consistency term is a detached target; keys and queue get no
  gradient (the reference: ``.detach()`` targets, keys under ``no_grad``, a detached queue)."""
  q, q1, q2, k, queue = loss_inputs(2)

  def grads(name, mining=False):
    fn = lambda *a: hiclr_losses.hiclr_loss(*a, mining=mining)[1][name]  # noqa: E731
    return jax.jit(jax.grad(fn, argnums=(0, 1, 2, 3, 4)))(q, q1, q2, k, queue)

  g_h1, g_h2, g_total = grads("loss_h1"), grads("loss_h2"), grads("loss", mining=True)
  assert np.all(np.asarray(g_h1[0]) == 0) and np.abs(g_h1[1]).max() > 1e-3 and np.all(np.asarray(g_h1[2]) == 0)
  assert np.all(np.asarray(g_h2[0]) == 0) and np.all(np.asarray(g_h2[1]) == 0) and np.abs(g_h2[2]).max() > 1e-3
  for g in (g_h1, g_h2, g_total):
    assert np.all(np.asarray(g[3]) == 0) and np.all(np.asarray(g[4]) == 0)


def test_mined_positive_set_with_hand_made_similarities():
  """Row 0: the three branches' top-1 coincide (one extra positive); row 1: they all differ
  (three); row 2: two coincide (two). With ``topk = 2`` the union of the top-2 sets."""
  l0 = np.array([[0.1, 0.2, 0.9, 0.0, 0.3], [0.8, 0.1, 0.0, 0.2, 0.3], [0.0, 0.7, 0.1, 0.2, 0.3]], np.float32)
  l1 = np.array([[0.0, 0.1, 0.8, 0.3, 0.2], [0.1, 0.2, 0.0, 0.9, 0.3], [0.1, 0.6, 0.0, 0.2, 0.3]], np.float32)
  l2 = np.array([[0.3, 0.0, 0.7, 0.1, 0.2], [0.0, 0.1, 0.2, 0.3, 0.6], [0.2, 0.0, 0.1, 0.9, 0.3]], np.float32)
  got = np.asarray(mining.mining_positives((jnp.asarray(l0), jnp.asarray(l1), jnp.asarray(l2)), 1))
  want = np.zeros((3, 6), bool)
  want[:, 0] = True                               # the key
  want[0, 1 + 2] = True                           # 2, 2, 2
  want[1, [1 + 0, 1 + 3, 1 + 4]] = True           # 0, 3, 4
  want[2, [1 + 1, 1 + 3]] = True                  # 1, 1, 3
  np.testing.assert_array_equal(got, want)
  assert want.sum(1).tolist() == [2, 4, 3]
  got2 = np.asarray(mining.mining_positives((jnp.asarray(l0), jnp.asarray(l1), jnp.asarray(l2)), 2))
  want2 = np.zeros((3, 6), bool)
  want2[:, 0] = True
  for l_neg in (l0, l1, l2):
    for row in range(3):
      want2[row, 1 + np.argsort(-l_neg[row])[:2]] = True
  np.testing.assert_array_equal(got2, want2)
  # The multi-positive loss with that set, against numpy, on arbitrary logits.
  logits = np.random.default_rng(3).normal(size=(3, 6)).astype(np.float32) * 5
  lp = np_log_softmax(logits)
  print()
  close(mining.multi_positive_nce(jnp.asarray(logits), jnp.asarray(want)),
        np.mean(-(lp * want).sum(1) / want.sum(1)), "multi-positive NCE")


def test_mined_loss_matches_numpy():
  """``hiclr_loss(mining=True)``: the positive set from each branch's raw queue similarities
  (numpy argmax here), the mined InfoNCE against numpy, the consistency terms unchanged; a
  traced ``mining`` flag selects the same values."""
  q, q1, q2, k, queue = loss_inputs(4)
  lq, lq1, lq2 = (np_logits(x, k, queue) for x in (q, q1, q2))
  positives = np.zeros(lq.shape, bool)
  positives[:, 0] = True
  for x in (q, q1, q2):
    positives[np.arange(len(x)), 1 + np.argmax(np.asarray(x, np.float64) @ np.asarray(queue, np.float64).T, 1)] = True
  assert positives.sum(1).max() > 2  # some samples have more than one mined positive
  mined = np.mean(-(np_log_softmax(lq) * positives).sum(1) / positives.sum(1))
  total, metrics = hiclr_loss(q, q1, q2, k, queue, mining=True)
  _, plain = hiclr_loss(q, q1, q2, k, queue, mining=False)
  print()
  close(metrics["loss_info"], mined, "mined InfoNCE")
  assert float(metrics["mining"]) == 1.0
  for name in ("loss_h1", "loss_h2"):
    assert float(metrics[name]) == float(plain[name])
  close(total, mined + 0.5 * (float(plain["loss_h1"]) + float(plain["loss_h2"])), "total (mined)")
  close(hiclr_loss(q, q1, q2, k, queue, mining=jnp.asarray(True))[1]["loss_info"], mined, "traced flag True")
  close(hiclr_loss(q, q1, q2, k, queue, mining=jnp.asarray(False))[1]["loss_info"], plain["loss_info"],
        "traced flag False")
