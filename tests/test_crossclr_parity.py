"""Numerical parity of the JAX CrosSCLR step with a PyTorch model of the reference step.

The torch side (``tests/torch_crossclr.py``: ``TorchCrosSCLRStep`` with six
``tests/torch_stgcn.py`` encoders whose heads are built and shared as the reference builds
them, ``torch.optim.SGD``) is written from the description of the reference's three-stream
model, its cross-view training forward and its processor's losses and SGD step; the JAX side
is the project's own ``cmd_jax.trainers.pretrain.train_step`` with ``config.method =
"crossclr"``.

Same weights: the JAX state from ``create_train_state`` is written into the torch model
through the renaming rule (``renamed``, written in tests/test_stgcn.py, checked equal to
``cmd_jax.models.torch_key``): ``params[s]`` -> ``encoder_q[_s]``, ``key_params[s]`` ->
``encoder_k[_s]``, the joint encoder's ``fc_0``/``fc_2`` -> ``encoder_q.fc.0``/``fc.2`` AND the
nested ``encoder_q_<s>.fc.2.0``/``fc.2.2`` of the same shared module, the queues transposed,
the one pointer into the three. Same inputs: the random views are bypassed
(``crossclr.normal_views`` is monkeypatched to return two fixed views carried in the batch's
``"skeleton"``), the second person absent in all samples but the first.

Two full steps (``test_two_full_steps_match_the_reference_step_float64``),
``steps_per_epoch = 1``, ``crossclr.cross_epoch = 1``: step 1 (epoch 0, the reference's epoch
1 <= cross_epoch) is single-view training, step 2 (the reference's epoch 2 > 1) cross-view
training. After each: the loss terms, the three query encoders and the shared head after SGD,
the key encoders after the momentum updates, every BN running statistic, the queues after the
enqueue and the pointer; and the momentum rule itself: after step 1 the shared key head is the
``m^3`` average (not ``m``), after step 2 the joint and bone key encoders are bit-identical to
before it. The small config uses an EMA momentum of 0.9 (the release: 0.999) so that the
order of the EMA and the SGD step and the number of head updates are observable.

Precision: as tests/test_hiclr_parity.py (whose docstring says why float32 parameters after
SGD are not compared): the two steps in float64 on both sides within ``F64_ATOL``; float32
for each phase's forward (loss terms, key encoders after the EMA, BN statistics, queues).

Also: the switch to cross-view training at ``cross_epoch`` in the full step (0-based epoch =
step // steps_per_epoch), and that the streams of a step come from ONE view draw per copy, so
that row ``i`` of the three queues holds the same clip.
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

from cmd_jax import data, modalities, models, optim  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.losses import l2_normalize  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.methods import crossclr  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.models import graph  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.models.common import head  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.trainers import pretrain as cp  # noqa: E402  pylint: disable=wrong-import-position
from configs import pretrain_crossclr  # noqa: E402  pylint: disable=wrong-import-position
from tests.test_hiclr_parity import (COMPILER_OPTIONS, as_float64, check, host, max_diff, to_np, unflat,  # noqa: E402  pylint: disable=wrong-import-position
                                     x64)
from tests.test_stgcn import flat, torch_key  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_crossclr import TorchCrosSCLRStep, make_optimizer, train_step  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_stgcn import TorchSTGCN  # noqa: E402  pylint: disable=wrong-import-position

# The small setup (as tests/test_hiclr_parity.py): ST-GCN with 4 base channels, feature 16,
# embedding 8, queue 16, batch 4, 16 frames.
N, T, C, V, M = 4, 16, 3, 25, 2
H, HIDDEN_DIM, D, K = 4, 16, 8, 16
LR, SGD_MOMENTUM, WD, EMA_M, MOCO_T, TOPK = 0.1, 0.9, 1e-4, 0.9, 0.07, 1
STEPS_PER_EPOCH, CROSS_EPOCH = 1, 1  # step 1 single-view, step 2 cross-view
STREAMS = ("joint", "motion", "bone")

ATOL = 1e-5       # float32 forward quantities (tests/test_hiclr_parity.py says why)
LOSS_RTOL = 1e-5  # float32 loss terms, relative
F64_ATOL = 1e-10  # float64, everything (comment above the float64 test)

renamed = torch_key  # the renaming rule of tests/test_stgcn.py, independent of cmd_jax.models.torch_key


def small_config():
  config = pretrain_crossclr.get_config("synthetic")
  config.model.name, config.model.init = "stgcn", "normal_0.02"  # the release's encoder and init
  config.model.stgcn.hidden_channels, config.model.stgcn.hidden_dim = H, HIDDEN_DIM
  config.model.stgcn.dropout = 0.0
  config.model.embed_dim = D
  config.batch_size, config.moco.queue_size = N, K
  config.moco.momentum, config.moco.temperature = EMA_M, MOCO_T
  config.crossclr.cross_epoch, config.crossclr.topk = CROSS_EPOCH, TOPK
  config.optimizer.lr, config.optimizer.momentum, config.optimizer.weight_decay = LR, SGD_MOMENTUM, WD
  config.optimizer.schedule, config.optimizer.milestones = "step", ()
  config.optimizer.nesterov = False
  config.evaluator.name = ""
  return config


def step_inputs(seed: int) -> np.ndarray:
  """Two fixed views ``[N, 2, C, T, V, M]`` (query, key), the second person absent (zeros)
  except in sample 0."""
  x = np.random.default_rng(seed).normal(size=(N, 2, C, T, V, M)).astype(np.float32)
  x[1:, :, :, :, :, 1] = 0.0
  return x


def patch_views(monkeypatch) -> None:
  monkeypatch.setattr(crossclr, "normal_views", lambda key, x, **kwargs: (x[:, 0], x[:, 1]))


def batch_of(views, dtype):
  return {"skeleton": views.astype(dtype), "num_frames": np.full((N,), T, np.int32)}


def new_torch_model(layout) -> TorchCrosSCLRStep:
  a = graph.layout_graph(layout)
  return TorchCrosSCLRStep(lambda: TorchSTGCN(a, hidden_channels=H, hidden_dim=HIDDEN_DIM, num_class=D, dropout=0.0),
                           HIDDEN_DIM, D, K, EMA_M, MOCO_T, STREAMS)


def torch_model(state, config, layout) -> TorchCrosSCLRStep:
  """The JAX state written into a new torch model through ``renamed`` (module docstring)."""
  model = new_torch_model(layout)
  sd = model.state_dict()
  written = set()
  for side, params, stats in (("q", state.params, state.batch_stats), ("k", state.key_params, state.key_batch_stats)):
    for s in STREAMS:
      prefix = model.encoder_name(side, s)
      for tree in (params[s], stats[s]):
        for path, leaf in flat(tree):
          assert renamed(path) == models.torch_key(config.model, path), path
          key = f"{prefix}.{renamed(path)}"
          assert tuple(sd[key].shape) == np.shape(leaf), key
          sd[key] = torch.from_numpy(np.array(leaf, np.float32))
          written.add(key)
      if s != "joint":  # the shared head, nested in this stream's fc (the same module as the joint one's)
        for i, layer in ((0, "fc_0"), (2, "fc_2")):
          for leaf in ("weight", "bias"):
            key = f"{prefix}.fc.2.{i}.{leaf}"
            sd[key] = torch.from_numpy(np.array(params["joint"][layer][leaf], np.float32))
            written.add(key)
  for s in STREAMS:
    suffix = "" if s == "joint" else f"_{s}"
    sd[f"queue{suffix}"] = torch.from_numpy(np.ascontiguousarray(np.asarray(state.queues[s], np.float32).T))
    sd[f"queue_ptr{suffix}"] = torch.tensor([int(state.queue_ptr)], dtype=torch.int64)
    written |= {f"queue{suffix}", f"queue_ptr{suffix}"}
  # Every tensor of the reference's state_dict written from the JAX state, but the graph
  # buffers and BatchNorm's batch counters, which the JAX state does not hold.
  assert {key for key in sd if key not in written} == {
      key for key in sd if key.endswith((".A", "num_batches_tracked"))}
  model.load_state_dict(sd, strict=True)
  # The head really is shared: one tensor under the joint encoder's and the others' keys.
  for side in ("q", "k"):
    shared = model.encoder(side, "joint").fc
    for s in STREAMS[1:]:
      assert model.encoder(side, s).fc[2] is shared
  return model


def torch_trees(model: TorchCrosSCLRStep, state) -> dict:
  """The torch model's tensors arranged as the ``CrosSCLRState`` fields (float64 numpy)."""
  sd = {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()}

  def tree(side, like):
    return {s: unflat((path, sd[f"{model.encoder_name(side, s)}.{renamed(path)}"]) for path, _ in flat(like[s]))
            for s in STREAMS}

  for side in ("q", "k"):  # the nested copies of the shared head are the joint encoder's head
    for s in STREAMS[1:]:
      for i in (0, 2):
        for leaf in ("weight", "bias"):
          np.testing.assert_array_equal(sd[f"{model.encoder_name(side, s)}.fc.2.{i}.{leaf}"],
                                        sd[f"{model.encoder_name(side, 'joint')}.fc.{i}.{leaf}"])
  ptrs = {int(model.state_dict()[f"queue_ptr{'' if s == 'joint' else '_' + s}"][0]) for s in STREAMS}
  assert len(ptrs) == 1
  return {"params": tree("q", state.params), "key_params": tree("k", state.key_params),
          "batch_stats": tree("q", state.batch_stats), "key_batch_stats": tree("k", state.key_batch_stats),
          "queues": {s: sd[f"queue{'' if s == 'joint' else '_' + s}"].T for s in STREAMS}, "queue_ptr": ptrs.pop()}


@pytest.fixture(scope="module")
def setup():
  config = small_config()
  layout = data.layout_of(config.data)
  state = cp.create_train_state(config, layout, steps_per_epoch=STEPS_PER_EPOCH)
  return config, layout, jax.tree.map(lambda x: np.array(x, copy=True), state)


def compiled_step(config, layout, state, batch):
  tx = optim.make_optimizer(config, STEPS_PER_EPOCH)
  fn = jax.jit(functools.partial(cp.train_step, config=config, layout=layout, tx=tx,
                                 schedule=optim.lr_schedule(config, STEPS_PER_EPOCH), steps_per_epoch=STEPS_PER_EPOCH))
  return fn.lower(state, batch).compile(COMPILER_OPTIONS)


LOSS_TERMS = ("loss", "loss_joint", "loss_motion", "loss_bone")


def head_of(tree):
  return {n: tree["joint"][n] for n in ("fc_0", "fc_2")}


def own(tree, s):
  """A stream's key encoder without the shared head (the joint one's backbone, or the
  motion/bone backbone with its private fc_0)."""
  return models.strip_head(tree[s]) if s == "joint" else tree[s]


# Float64: every quantity after each step within F64_ATOL = 1e-10, as in
# tests/test_hiclr_parity.py (its comment derives the bound: ~100 float64 u of values that
# the SGD step scales up to ~1e2). Measured maxima are printed (pytest -s). The alternatives
# (the EMA after SGD, no SGD step, no enqueue, the shared key head moved by m once in
# single-view steps, every key encoder moved in cross-view steps) differ by > 1e4 x the bound.
def test_two_full_steps_match_the_reference_step_float64(setup, monkeypatch):
  config, layout, state = setup
  patch_views(monkeypatch)
  ref = torch_model(state, config, layout).double()
  opt = make_optimizer(ref, LR, WD, SGD_MOMENTUM)
  state = as_float64(state)
  print()
  with x64():
    start = time.time()
    step = compiled_step(config, layout, state, batch_of(step_inputs(30), np.float64))
    print(f" float64 step compiled in {time.time() - start:.1f} s")
    for i in range(2):
      views = step_inputs(30 + i)
      before = state
      state, metrics = step(state, batch_of(views, np.float64))
      state, metrics = host(state), host(metrics)
      assert all(a.dtype != np.float32 for a in jax.tree.leaves(state))
      cross = i + 1 > CROSS_EPOCH  # the reference's 1-based epoch i + 1 (steps_per_epoch 1)
      _, out = train_step(ref, opt, torch.from_numpy(views[:, 0].astype(np.float64)),
                          torch.from_numpy(views[:, 1].astype(np.float64)), cross=cross, topk=TOPK)
      got = torch_trees(ref, state)
      print(f" step {i + 1} ({'cross-view' if cross else 'single-view'}):")
      assert float(metrics["cross"]) == float(cross)
      for name in LOSS_TERMS:
        check(name, metrics[name], to_np(out[name]), F64_ATOL)
      check("query encoders and shared head after SGD", state.params, got["params"], F64_ATOL)
      check("key encoders after the momentum updates", state.key_params, got["key_params"], F64_ATOL)
      check("query BN running statistics", state.batch_stats, got["batch_stats"], F64_ATOL)
      check("key BN running statistics", state.key_batch_stats, got["key_batch_stats"], F64_ATOL)
      check("queues after the enqueue", state.queues, got["queues"], F64_ATOL)
      assert int(state.queue_ptr) == got["queue_ptr"] == (N * (i + 1)) % K

      ema = lambda k, q, times=1: k if times == 0 else ema(EMA_M * k + (1 - EMA_M) * q, q, times - 1)  # noqa: E731
      head_k, head_q = head_of(before.key_params), head_of(before.params)
      if not cross:  # the shared key head: m^3 (one update per stream), the rest m
        check("shared key head = the m^3 average", head_of(state.key_params),
              jax.tree.map(lambda k, q: EMA_M ** 3 * k + (1 - EMA_M ** 3) * q, head_k, head_q), F64_ATOL)
        wrong_head = jax.tree.map(ema, head_k, head_q)
      else:  # motion's update alone: the shared head once, joint and bone frozen, bit for bit
        check("shared key head = the m average", head_of(state.key_params), jax.tree.map(ema, head_k, head_q),
              F64_ATOL)
        for s in ("joint", "bone"):
          for x, y in zip(jax.tree.leaves(own(state.key_params, s)), jax.tree.leaves(own(before.key_params, s))):
            np.testing.assert_array_equal(x, y)
        wrong_head = jax.tree.map(lambda k, q: ema(k, q, 3), head_k, head_q)
      post = {s: jax.tree.map(ema, own(before.key_params, s), own(state.params, s)) for s in STREAMS}
      alternatives = {
          "EMA with the post-step query parameters": max_diff(post["motion"], own(got["key_params"], "motion")),
          "no SGD step": max_diff(before.params, got["params"]),
          "no enqueue": max_diff(before.queues, got["queues"]),
          "the shared key head updated " + ("once" if not cross else "three times"):
              max_diff(wrong_head, head_of(got["key_params"])),
      }
      if cross:
        alternatives["the joint key encoder updated"] = max_diff(
            jax.tree.map(ema, own(before.key_params, "joint"), own(before.params, "joint")),
            own(got["key_params"], "joint"))
      print("  alternatives would differ by: " + ", ".join(f"{k} {v:.3g}" for k, v in alternatives.items()))
      for what, diff in alternatives.items():
        assert diff > 1e4 * F64_ATOL, what


# Float32, each phase's forward from the same start: ``crossclr.loss`` (what ``train_step``
# differentiates: the loss terms and every state update but the SGD step), within the bounds
# tests/test_hiclr_parity.py derives for the same encoder: loss terms relative LOSS_RTOL (the
# cross-view terms are log-sum-exps over 1 + 2K logits of the same size, S_u * S_v <= 1),
# key encoders after the EMA, BN statistics and queues (O(1)) within ATOL.
@pytest.mark.parametrize("cross", [False, True])
def test_forward_of_each_phase_matches_the_reference_step_float32(setup, monkeypatch, cross):
  config, layout, state = setup
  patch_views(monkeypatch)
  ref = torch_model(state, config, layout)
  opt = make_optimizer(ref, LR, WD, SGD_MOMENTUM)
  views = step_inputs(40)
  fn = jax.jit(functools.partial(crossclr.loss, config=config, layout=layout, steps_per_epoch=STEPS_PER_EPOCH))
  start = state.replace(step=np.int32(CROSS_EPOCH * STEPS_PER_EPOCH if cross else 0))
  print()
  with jax.default_matmul_precision("float32"):
    _, (metrics, updates) = fn(start.params, start, batch_of(views, np.float32), jax.random.PRNGKey(0))
  metrics, new = host(metrics), host(state.replace(**updates))
  _, out = train_step(ref, opt, torch.from_numpy(views[:, 0].copy()), torch.from_numpy(views[:, 1].copy()),
                      cross=cross, topk=TOPK)
  got = torch_trees(ref, new)
  assert float(metrics["cross"]) == float(cross)
  for name in LOSS_TERMS:
    check(name, metrics[name], to_np(out[name]), LOSS_RTOL * max(1.0, abs(float(to_np(out[name])))))
  check("key encoders after the momentum updates", new.key_params, got["key_params"], ATOL)
  check("query BN running statistics", new.batch_stats, got["batch_stats"], ATOL)
  check("key BN running statistics", new.key_batch_stats, got["key_batch_stats"], ATOL)
  check("queues after the enqueue", new.queues, got["queues"], ATOL)
  assert int(new.queue_ptr) == got["queue_ptr"] == N


# ----------------------------------------------------------------------------------------
# The phase switch and the shared view draw, with a stand-in encoder
# ----------------------------------------------------------------------------------------

SEEN: list = []  # the inputs of a recording TinyEncoder's eager calls


class TinyEncoder(nn.Module):
  """A stand-in encoder (pooled coordinates -> BN -> Dense, then the head): the properties
  below do not depend on the encoder, and this one compiles in a moment. ``record``: append
  every (eager) input to ``SEEN``."""
  num_outputs: int | None
  mlp: bool = True
  record: bool = False
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False, features_only: bool = False):
    if self.record and not isinstance(x, jax.core.Tracer):
      SEEN.append(np.asarray(x))
    y = jnp.mean(x, axis=(2, 4)).reshape(x.shape[0], -1)
    y = nn.BatchNorm(use_running_average=not train)(y)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.Dense(HIDDEN_DIM)(y)
    if self.num_outputs is None or (features_only and not self.is_initializing()):
      return y
    return head(y, self.num_outputs, self.mlp)


def tiny_models(monkeypatch, record=False, dropout=0.0):
  monkeypatch.setattr(crossclr, "make_encoder", lambda config, layout, training=False: TinyEncoder(D))
  monkeypatch.setattr(crossclr, "make_backbone",
                      lambda config, layout, training=False: TinyEncoder(None, record=record, dropout=dropout))


def test_cross_view_training_starts_at_cross_epoch(monkeypatch):
  """``crossclr.loss`` switches from 0-based epoch ``cross_epoch`` on, epoch = step //
  steps_per_epoch (the reference's ``epoch <= cross_epoch`` on 1-based epochs is single-view):
  with 3 steps per epoch and ``cross_epoch = 2``, steps 0-5 single-view and 6, 7, 8 cross-view,
  from one compiled step."""
  config = small_config()
  config.crossclr.cross_epoch = 2
  steps_per_epoch = 3
  layout = data.layout_of(config.data)
  tiny_models(monkeypatch)
  patch_views(monkeypatch)
  state = cp.create_train_state(config, layout, steps_per_epoch=steps_per_epoch)
  tx = optim.make_optimizer(config, steps_per_epoch)
  step = jax.jit(functools.partial(cp.train_step, config=config, layout=layout, tx=tx,
                                   schedule=optim.lr_schedule(config, steps_per_epoch),
                                   steps_per_epoch=steps_per_epoch))
  batch = batch_of(step_inputs(50), np.float32)
  flags, joint_terms = [], []
  for s in range(9):
    _, metrics = step(state.replace(step=jnp.int32(s)), batch)
    flags.append(float(metrics["cross"]))
    joint_terms.append(float(metrics["loss_joint"]))
  assert flags == [0.0] * 6 + [1.0] * 3
  assert len(set(joint_terms[:6])) == 1 and len(set(joint_terms[6:])) == 1
  assert abs(joint_terms[0] - joint_terms[6]) > 1e-3
  assert step._cache_size() == 1  # pylint: disable=protected-access


@pytest.mark.parametrize("streams", [STREAMS, ("joint", "motion")])
def test_streams_share_one_view_draw_and_queue_rows_align(monkeypatch, streams):
  """One eager step with the real views (3s- and 2s-CrosSCLR): the encoders see, in order,
  the query's joint, motion (and bone) of ONE query view, then the same of ONE key view
  (derived from the augmented joint clip, as the release derives them inside the model); the
  two views differ (independent draws); and row ``i`` of every stream's queue is the
  L2-normalised key of clip ``i`` of that stream."""
  config = small_config()
  config.modalities = ",".join(streams)
  layout = data.layout_of(config.data)
  SEEN.clear()
  tiny_models(monkeypatch, record=True)
  state = cp.create_train_state(config, layout, steps_per_epoch=1)
  x = np.random.default_rng(60).normal(size=(N, C, 50, V, M)).astype(np.float32)
  _, (_, updates) = crossclr.loss(state.params, state, {"skeleton": x}, jax.random.PRNGKey(3), config=config,
                                  layout=layout, steps_per_epoch=1)
  seen, n = list(SEEN), len(streams)
  assert len(seen) == 2 * n and set(updates["queues"]) == set(streams)
  q_joint, k_joint = seen[0], seen[n]
  assert q_joint.shape == (N, C, 50, V, M) and not np.allclose(q_joint, k_joint)
  for base, offset in ((q_joint, 0), (k_joint, n)):
    for i, s in enumerate(streams):
      np.testing.assert_array_equal(seen[offset + i], np.asarray(modalities.modality(base, s, layout)))
  backbone = TinyEncoder(None)
  new = state.replace(**updates)
  for s, x_k in zip(streams, seen[n:]):
    feature = backbone.apply({"params": models.strip_head(new.key_params[s]),
                              "batch_stats": state.key_batch_stats[s]}, x_k, train=True, mutable=["batch_stats"])[0]
    keys = l2_normalize(crossclr.project(new.key_params, s, feature))
    # The same float32 operations on the same inputs (eager both times): equal up to a few
    # u of these unit vectors' entries; a row of another clip or stream differs by O(0.1).
    np.testing.assert_allclose(np.asarray(new.queues[s][:N]), np.asarray(keys), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(new.queues[s][N:]), np.asarray(state.queues[s][N:]))


def test_key_encoders_run_with_dropout_on():
  """The key forwards are train-mode forwards (the release's ``model.train()`` covers the key
  encoders; ``no_grad`` only stops gradients): with dropout in the encoder, two step keys give
  different enqueued keys for the same views and weights; without dropout the same."""
  config = small_config()
  layout = data.layout_of(config.data)
  batch = batch_of(step_inputs(70), np.float32)
  enqueued = {}
  for rate in (0.0, 0.5):
    with pytest.MonkeyPatch.context() as patch:
      tiny_models(patch, dropout=rate)
      patch_views(patch)
      state = cp.create_train_state(config, layout, steps_per_epoch=1)
      fn = jax.jit(functools.partial(crossclr.loss, config=config, layout=layout, steps_per_epoch=1))
      enqueued[rate] = [np.asarray(fn(state.params, state, batch, jax.random.PRNGKey(seed))[1][1]["queues"]["joint"][:N])
                        for seed in (1, 2)]
  np.testing.assert_array_equal(*enqueued[0.0])
  assert np.abs(enqueued[0.5][0] - enqueued[0.5][1]).max() > 1e-3
