"""Tests for cmd_jax.trainers.cmd_pretrain against independent re-computations.

Follows docs/references.md#cmd-pretraining-step (one MoCo/CMD step), #cmd-pretraining-settings
(optimizer, schedule, weight decay) and #cmd-quirks items 3, 4 and 13. The expected values are
computed here, without the trainer: the EMA and SGD-with-momentum updates and the BatchNorm
statistics in numpy, the gradients with ``jax.grad`` of ``cmd_losses.cmd_loss`` on query
encoders applied by hand, the views re-drawn with
``cmd_views.pretrain_views(fold_in(rng, step))``, the lr schedules as hand-worked numbers. The
loop tests (non-finite loss, kill-and-resume, ``launch.py``) run a tiny model on a tiny
synthetic TFDS set built into a temporary folder.

Speed: every train step here has the same tiny config, so its XLA executable is the same
program; the test session's persistent compilation cache (tests/conftest.py, shared with the
``launch.py`` subprocess) compiles it once instead of once per run.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cmd_jax import augment, checkpoint, data, losses, metrics as metrics_lib, modalities, sharding
from cmd_jax.errors import ConfigError
from cmd_jax.models.gru import GRUEncoder as Encoder
from cmd_jax.trainers import pretrain as cp
from cmd_jax import optim
from cmd_jax.methods import cmd as cmd_method
from cmd_jax.methods.cmd import views as cmd_views
from cmd_jax.methods.cmd import losses as cmd_losses
from configs import pretrain_cmd
from tests.conftest import damage_checkpoint, folder_digest

REPO = Path(__file__).resolve().parents[1]
MODALITIES = ("joint", "motion", "bone")

# The tiny model and its hyperparameters (set explicitly so the hand formulas below can use
# them). EMA momentum 0.5 and weight decay 0.01 (instead of 0.999 and 1e-4) make the
# "pre-step vs post-step query params" and "with vs without decay" differences large
# enough to be told apart in float32; the formulas are the same.
TINY = {
    "model.hidden_size": 8, "model.num_layers": 1, "model.embed_dim": 8, "batch_size": 8,
    "moco.queue_size": 32, "moco.momentum": 0.5, "cmd.topk": 8, "augment.frames": 8,
    "augment.min_length": 8, "optimizer.lr": 0.05, "optimizer.weight_decay": 0.01,
    "optimizer.momentum": 0.9, "evaluator.name": "",
    # The reference's augmentation strength (the CPU configs are milder).
    "augment.num_corrupted_joints": 15, "augment.shear_amplitude": 1.0, "augment.corruption_amplitude": 1.0,
}
N, K, D, FRAMES = 8, 32, 8, 8
EMA_M, LR, WD, SGD_MOMENTUM = 0.5, 0.05, 0.01, 0.9
BN_KEEP = 0.9           # Flax convention: PyTorch BatchNorm momentum 0.1
STEPS_PER_EPOCH = 4     # 36 training records of the tiny synthetic xsub set // batch 8


def tiny_config(**overrides):
  config = pretrain_cmd.get_config("synthetic")
  for path, value in {**TINY, **overrides}.items():
    node = config
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def random_batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
  return {"skeleton": rng.normal(size=(N, 3, 300, 25, 2)).astype(np.float32),
          "num_frames": rng.integers(10, 301, size=N).astype(np.int32)}


def host_copy(tree):
  """A numpy copy of every leaf (the jitted step donates its input state)."""
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def leaf_paths(tree) -> list[str]:
  return ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def assert_trees_close(actual, expected, rtol, atol_frac, what):
  """Leaf by leaf; the absolute tolerance is ``atol_frac`` times the leaf's largest value.

  The expectations come from another compiled program (``recompute_step``), whose float32 sums
  run in other orders: a few u (6e-8) of a leaf's scale. Momentum buffers (sums of gradients)
  get rtol 1e-4 and 1e-5 of the scale, parameters 1e-5 and 1e-6; measured <= 1.6% of the bound."""
  for path, a, e in zip(leaf_paths(expected), jax.tree.leaves(actual), jax.tree.leaves(expected)):
    e = np.asarray(e, np.float64)
    atol = atol_frac * max(float(np.max(np.abs(e))), 1e-12)
    np.testing.assert_allclose(np.asarray(a, np.float64), e, rtol=rtol, atol=atol, err_msg=f"{what}: {path}")


def max_abs_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def tiny_data(tiny_synthetic) -> str:
  """The synthetic set with 2 subjects x 1 repetition (xsub: 36 train, 36 val records)."""
  out = tiny_synthetic
  assert len(data.open_split(tiny_config(**{"data.data_dir": out}).data, "train")) == N * STEPS_PER_EPOCH + 4
  return out


# ---------------------------------------------------------------------------------------------
# 1. One train step against a by-hand re-computation.

MODEL = Encoder(hidden_size=8, num_layers=1, num_outputs=D, mlp=True)


def unit(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnums=0)
def recompute_step(layout, rng, step, skeleton, num_frames, ema, key_params, key_stats, params, stats, queues):
  """The reference's order (#cmd-step-order), assembled here from the component functions: views from
  ``fold_in(rng, step)``; keys from the key encoders with the EMA'd params ``ema``
  (train-mode BN); the loss on the PRE-enqueue queues and its gradient w.r.t. the query
  params only. Also returns, to show the checks have power, the keys eval-mode BN or the
  pre-EMA key params would give."""
  view_q, view_k = cmd_views.pretrain_views(jax.random.fold_in(rng, step), skeleton, num_frames, ratio_range=(0.1, 1.0),
                                          min_len=8, out_len=FRAMES, num_corrupted=15)
  xq = {m: modalities.flatten(modalities.modality(view_q, m, layout)) for m in MODALITIES}
  xk = {m: modalities.flatten(modalities.modality(view_k, m, layout)) for m in MODALITIES}
  keys, keys_eval_bn, keys_old_params = {}, {}, {}
  for m in MODALITIES:
    out, _ = MODEL.apply({"params": ema[m], "batch_stats": key_stats[m]}, xk[m], train=True, mutable=["batch_stats"])
    keys[m] = unit(out)
    keys_eval_bn[m] = unit(MODEL.apply({"params": ema[m], "batch_stats": key_stats[m]}, xk[m], train=False))
    out, _ = MODEL.apply({"params": key_params[m], "batch_stats": key_stats[m]}, xk[m], train=True,
                         mutable=["batch_stats"])
    keys_old_params[m] = unit(out)

  def loss_of(p):
    queries = {}
    for m in MODALITIES:
      out, _ = MODEL.apply({"params": p[m], "batch_stats": stats[m]}, xq[m], train=True, mutable=["batch_stats"])
      queries[m] = unit(out)
    loss, _ = cmd_losses.cmd_loss(queries, keys, queues, topk=8, temperature=0.07, teacher_temperature=0.05,
                              student_temperature=0.1, cmd_weight=1.0)
    return loss, queries

  (loss, queries), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
  return dict(xq=xq, xk=xk, keys=keys, keys_eval_bn=keys_eval_bn, keys_old_params=keys_old_params, loss=loss,
              grads=grads, queries=queries)


def expected_step(layout, before, batch):
  """What one step must produce from the host state ``before``: ``recompute_step`` for the
  keys and gradients, numpy for the EMA (with the PRE-step query params), PyTorch SGD
  (coupled decay, momentum, dampening 0) and the BatchNorm running statistics."""
  f64 = lambda x: np.asarray(x, np.float64)  # pylint: disable=unnecessary-lambda-assignment
  ema = jax.tree.map(lambda k, q: np.float32(EMA_M) * k + np.float32(1 - EMA_M) * q, before.key_params, before.params)
  r = jax.device_get(recompute_step(layout, before.rng, before.step, batch["skeleton"], batch["num_frames"], ema,
                                    before.key_params, before.key_batch_stats, before.params, before.batch_stats,
                                    before.queues))
  grads = jax.tree.map(f64, r["grads"])
  old_trace = optax.tree_utils.tree_get(before.opt_state, "trace")
  trace = jax.tree.map(lambda t, g, p: SGD_MOMENTUM * f64(t) + g + WD * f64(p), old_trace, grads, before.params)
  trace_no_decay = jax.tree.map(lambda t, g: SGD_MOMENTUM * f64(t) + g, old_trace, grads)
  params = jax.tree.map(lambda p, t: f64(p) - LR * t, before.params, trace)

  def bn(old, x):  # PyTorch BatchNorm1d running stats: unbiased batch variance, momentum 0.1
    x = f64(x).reshape(-1, x.shape[-1])
    return {"mean": BN_KEEP * f64(old["mean"]) + (1 - BN_KEEP) * x.mean(0),
            "var": BN_KEEP * f64(old["var"]) + (1 - BN_KEEP) * x.var(0, ddof=1)}

  return types.SimpleNamespace(
      ema=ema, keys=r["keys"], queries=r["queries"], keys_eval_bn=r["keys_eval_bn"],
      keys_old_params=r["keys_old_params"], loss=float(r["loss"]), grads=grads, trace=trace,
      trace_no_decay=trace_no_decay, params=params,
      query_bn={m: bn(before.batch_stats[m]["input_norm"], r["xq"][m]) for m in MODALITIES},
      key_bn={m: bn(before.key_batch_stats[m]["input_norm"], r["xk"][m]) for m in MODALITIES})


@pytest.fixture(scope="module")
def two_steps():
  """Two consecutive jitted steps from a fresh state, each with its independent expectation."""
  config = tiny_config()
  layout = data.layout_of(config.data)
  mesh = sharding.make_mesh(-1)
  step_fn = cp.jit_train_step(config, layout, STEPS_PER_EPOCH, mesh)
  rng = np.random.default_rng(0)
  state = cp.create_train_state(config, layout, STEPS_PER_EPOCH)
  before = host_copy(state)
  state = sharding.put_replicated(before, mesh)
  steps = []
  for _ in range(2):
    batch = random_batch(rng)
    state, metrics = step_fn(state, sharding.put_batch(batch, mesh))
    after = host_copy(state)
    steps.append(types.SimpleNamespace(before=before, after=after, metrics=jax.device_get(metrics), batch=batch,
                                       expected=expected_step(layout, before, batch)))
    before = after
  return types.SimpleNamespace(config=config, layout=layout, steps=steps)


STEP = pytest.mark.parametrize("i", [0, 1], ids=["step1", "step2"])


@STEP
def test_key_params_are_the_ema_with_the_pre_step_query_params(two_steps, i):
  """(a) key params after the step == m*k_old + (1-m)*q_old, bit for bit (m = 0.5 is exact in
  float32), and NOT the EMA with the post-step query params."""
  s = two_steps.steps[i]
  for m in MODALITIES:
    for path, a, e in zip(leaf_paths(s.expected.ema[m]), jax.tree.leaves(s.after.key_params[m]),
                          jax.tree.leaves(s.expected.ema[m])):
      np.testing.assert_array_equal(a, e, err_msg=f"key_params[{m}]/{path}")
  if i == 1:  # at step 1 k_old == q_old; from step 2 on, the two orders differ
    post = jax.tree.map(lambda k, q: EMA_M * k + (1 - EMA_M) * q, s.before.key_params, s.after.params)
    assert max_abs_diff(post, s.after.key_params) > 1e-4


@STEP
def test_enqueued_rows_are_the_new_key_encoders_train_mode_embeddings(two_steps, i):
  """(b) queue rows [ptr, ptr+N) of every modality == L2-normalised key-encoder outputs (new key
  params, batch-statistic BN) on the key view; the other rows unchanged; ptr += N mod K, shared."""
  s = two_steps.steps[i]
  ptr = int(s.before.queue_ptr)
  assert ptr == N * i
  assert int(s.after.queue_ptr) == (ptr + N) % K
  for m in MODALITIES:
    new, old = np.asarray(s.after.queues[m]), np.asarray(s.before.queues[m])
    np.testing.assert_allclose(new[ptr:ptr + N], s.expected.keys[m], rtol=1e-5, atol=2e-6, err_msg=m)
    np.testing.assert_allclose(np.linalg.norm(new[ptr:ptr + N], axis=1), 1.0, rtol=1e-6)  # D = 8: <= 6 u off
    rest = np.ones(K, bool)
    rest[ptr:ptr + N] = False
    np.testing.assert_array_equal(new[rest], old[rest], err_msg=m)
    # Power: eval-mode BN (running statistics) would give different keys; so would, at step 2,
    # the key params before this step's EMA.
    assert np.max(np.abs(s.expected.keys_eval_bn[m] - s.expected.keys[m])) > 1e-3
    if i == 1:
      assert np.max(np.abs(s.expected.keys_old_params[m] - s.expected.keys[m])) > 1e-4


@STEP
def test_query_params_follow_torch_sgd_with_momentum_and_coupled_decay(two_steps, i):
  """(c) the momentum buffer == 0.9*buf + grad + wd*param (== grad + wd*param at step 1) and
  params == param - lr*buf, with grads of cmd_losses.cmd_loss taken here w.r.t. the query encoders
  (pre-enqueue queues, keys of (b)); the logged loss and lr match."""
  s = two_steps.steps[i]
  trace = optax.tree_utils.tree_get(s.after.opt_state, "trace")
  if i == 0:
    first = jax.tree.map(lambda g, p: g + WD * np.asarray(p, np.float64), s.expected.grads, s.before.params)
    assert_trees_close(trace, first, rtol=1e-4, atol_frac=1e-5, what="buffer after step 1 = grad + wd*param")
  assert_trees_close(trace, s.expected.trace, rtol=1e-4, atol_frac=1e-5, what="momentum buffer")
  assert_trees_close(s.after.params, s.expected.params, rtol=1e-5, atol_frac=1e-6, what="query params")
  assert int(optax.tree_utils.tree_get(s.after.opt_state, "count")) == i + 1
  assert int(s.after.step) == i + 1
  np.testing.assert_allclose(float(s.metrics["loss"]), s.expected.loss, rtol=1e-5)
  np.testing.assert_allclose(float(s.metrics["lr"]), LR, rtol=1e-7)
  # Power: the step moved the params, and the decay term is visible above the tolerance.
  assert max_abs_diff(s.after.params, s.before.params) > 1e-4
  with pytest.raises(AssertionError):
    assert_trees_close(trace, s.expected.trace_no_decay, rtol=1e-4, atol_frac=1e-5, what="no decay")


@STEP
def test_no_gradient_reaches_keys_key_stats_or_queues(two_steps, i):
  """(d) the optimizer state holds buffers for the query params only (the same tree), so key
  params, BN statistics and queues get no gradient: they change only by the EMA (exact, see (a)),
  their own forward ((e)) and the enqueue ((b))."""
  s = two_steps.steps[i]
  trace = optax.tree_utils.tree_get(s.after.opt_state, "trace")
  assert jax.tree.structure(trace) == jax.tree.structure(s.after.params)
  assert set(s.after.params) == set(MODALITIES)
  for m in MODALITIES:
    assert "batch_stats" not in leaf_paths(s.after.params[m])
    assert not any("mean" in p or p.endswith("var") for p in leaf_paths(s.after.params[m]))
  n_opt_arrays = sum(x.size > 1 for x in jax.tree.leaves(s.after.opt_state))
  assert n_opt_arrays == len(jax.tree.leaves(s.after.params))


@STEP
def test_batch_norm_running_statistics(two_steps, i):
  """(e) query BN stats = 0.9*old + 0.1*(mean, unbiased var) of the query-view input over N x T
  (numpy); key BN stats likewise from the key view (their own forward), not an EMA of the query
  statistics."""
  s = two_steps.steps[i]
  for m in MODALITIES:
    got_q = s.after.batch_stats[m]["input_norm"]
    got_k = s.after.key_batch_stats[m]["input_norm"]
    for name in ("mean", "var"):
      np.testing.assert_allclose(got_q[name], s.expected.query_bn[m][name], rtol=1e-5, atol=1e-6, err_msg=m)
      np.testing.assert_allclose(got_k[name], s.expected.key_bn[m][name], rtol=1e-5, atol=1e-6, err_msg=m)
    if i == 1:  # the stats that an EMA from the query encoder would give
      for name in ("mean", "var"):
        ema = EMA_M * np.asarray(s.before.key_batch_stats[m]["input_norm"][name]) + (1 - EMA_M) * np.asarray(
            got_q[name])
        assert np.max(np.abs(ema - got_k[name])) > 1e-3


def test_fresh_state_matches_the_reference_construction(two_steps):
  """#cmd-model-and-queues: key params are copies of the query params, key BN stats the defaults (0, 1), the
  three query encoders differ, unit-norm random queues, pointer 0, zero momentum buffers."""
  s = two_steps.steps[0].before
  for m in MODALITIES:
    for a, b in zip(jax.tree.leaves(s.key_params[m]), jax.tree.leaves(s.params[m])):
      np.testing.assert_array_equal(a, b)
    for stats in (s.batch_stats[m], s.key_batch_stats[m]):
      np.testing.assert_array_equal(stats["input_norm"]["mean"], 0.0)
      np.testing.assert_array_equal(stats["input_norm"]["var"], 1.0)
    assert s.queues[m].shape == (K, D)
    np.testing.assert_allclose(np.linalg.norm(s.queues[m], axis=1), 1.0, rtol=1e-6)
  assert not np.allclose(s.params["joint"]["fc_2"]["weight"], s.params["motion"]["fc_2"]["weight"])
  assert not np.allclose(s.queues["joint"], s.queues["bone"])
  assert int(s.queue_ptr) == 0 and int(s.step) == 0
  for t in jax.tree.leaves(optax.tree_utils.tree_get(s.opt_state, "trace")):
    np.testing.assert_array_equal(t, 0.0)


# ---------------------------------------------------------------------------------------------
# 2. The learning-rate schedules.

def test_step_schedule_milestones_in_epochs():
  """lr = base * gamma^(#milestones <= epoch), epoch = step // steps_per_epoch: hand values for
  base 0.1, milestones (4, 2) (unsorted), 3 steps per epoch; and the optimizer applies it."""
  config = tiny_config(**{"optimizer.lr": 0.1, "optimizer.milestones": (4, 2), "optimizer.gamma": 0.1,
                          "num_epochs": 6})
  schedule = optim.lr_schedule(config, 3)
  expected = [0.1] * 6 + [0.01] * 6 + [0.001] * 6  # epochs 0-1, 2-3, 4-5
  got = [float(schedule(jnp.int32(step))) for step in range(18)]
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  no_milestones = optim.lr_schedule(tiny_config(**{"optimizer.lr": 0.1, "optimizer.milestones": ()}), 3)
  np.testing.assert_allclose([float(no_milestones(jnp.int32(s))) for s in (0, 50, 500)], [0.1] * 3, rtol=1e-6)

  # The optimizer uses it per step: with momentum 0 and no decay, update = -lr(step) * grad.
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 0.0
  tx = optim.make_optimizer(config, 3)
  params = {"w": jnp.ones(2)}
  opt_state = tx.init(params)
  for step in range(8):
    updates, opt_state = tx.update({"w": jnp.ones(2)}, opt_state, params)
    np.testing.assert_allclose(updates["w"], -expected[step], rtol=1e-6)


def test_cosine_schedule_per_epoch():
  """MoCo's cosine, per epoch: lr = base * 0.5 * (1 + cos(pi * epoch / epochs)); base 0.1,
  4 epochs, 2 steps per epoch: 0.1, 0.0853553, 0.05, 0.0146447 (cos(pi/4) = 0.7071068)."""
  config = tiny_config(**{"optimizer.lr": 0.1, "optimizer.schedule": "cosine", "num_epochs": 4})
  schedule = optim.lr_schedule(config, 2)
  expected = [0.1, 0.1, 0.0853553390, 0.0853553390, 0.05, 0.05, 0.0146446609, 0.0146446609]
  np.testing.assert_allclose([float(schedule(jnp.int32(s))) for s in range(8)], expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# 3. Weight decay coverage.

def test_weight_decay_covers_every_query_parameter(two_steps):
  """With zero gradients and a fresh optimizer, every query leaf (GRU weights and biases, BN
  scale and bias, both MLP layers) gets update -lr * wd * p (numpy): PyTorch's coupled L2."""
  params0 = two_steps.steps[0].before.params
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params0)
  tx = optim.make_optimizer(tiny_config(), STEPS_PER_EPOCH)
  updates, _ = tx.update(jax.tree.map(np.zeros_like, params), tx.init(params), params)
  paths = leaf_paths(params)
  for path, u, p in zip(paths, jax.tree.leaves(updates), jax.tree.leaves(params)):
    np.testing.assert_allclose(u, -LR * WD * p.astype(np.float64), rtol=1e-5, err_msg=path)
  for m in MODALITIES:
    for leaf in ("input_norm/scale", "input_norm/bias", "gru/bias_ih_l0", "gru/bias_hh_l0_reverse",
                 "fc_0/weight", "fc_0/bias", "fc_2/weight", "fc_2/bias"):
      assert f"{m}/{leaf}" in paths


# ---------------------------------------------------------------------------------------------
# 4. Single-modality MoCo.

def test_single_modality_moco_loss_is_info_nce(two_steps):
  """modalities="joint", cmd.weight=0 (jitted step): one encoder pair and queue; the step's loss ==
  losses.info_nce on the same embeddings (queries: ``recompute_step``'s joint queries of the
  first CMD step, which has the same joint params, BN stats, run key and batch; keys: the rows
  the step enqueued; the pre-step queue); no distillation terms; the topk check is off
  without distillation (topk 64 > queue 32 passes)."""
  config = tiny_config(**{"modalities": "joint", "cmd.weight": 0.0, "cmd.topk": 64})
  layout = two_steps.layout
  cp.validate_config(config, num_train=36, num_devices=1, process_count=1)
  state = cp.create_train_state(config, layout, STEPS_PER_EPOCH)
  batch = two_steps.steps[0].batch
  mesh = sharding.make_mesh(-1)
  step_fn = cp.jit_train_step(config, layout, STEPS_PER_EPOCH, mesh)
  new_state, metrics = step_fn(sharding.put_replicated(host_copy(state), mesh), sharding.put_batch(batch, mesh))
  assert set(new_state.params) == set(new_state.queues) == {"joint"}
  assert not any(k.startswith("kl_") for k in metrics)
  assert float(metrics["loss_cmd"]) == 0.0
  cmd_step = two_steps.steps[0]
  np.testing.assert_array_equal(state.rng, cmd_step.before.rng)
  for a, b in zip(jax.tree.leaves((state.params["joint"], state.batch_stats["joint"])),
                  jax.tree.leaves((cmd_step.before.params["joint"], cmd_step.before.batch_stats["joint"]))):
    np.testing.assert_array_equal(a, b)
  queries = cmd_step.expected.queries["joint"]
  keys = new_state.queues["joint"][:N]
  expected, _ = losses.info_nce(queries, keys, state.queues["joint"], 0.07)
  np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["loss_joint"]), float(expected), rtol=1e-5)
  assert np.all(np.isfinite(jax.tree.leaves(new_state.params)[0]))
  assert int(new_state.queue_ptr) == N


# ---------------------------------------------------------------------------------------------
# 4b. Speed options: the same function (stacked modalities, scan unrolling), and bfloat16.

def _run_steps(num_steps=2, **overrides):
  config = tiny_config(**overrides)
  layout = data.layout_of(config.data)
  mesh = sharding.make_mesh(-1)
  step_fn = cp.jit_train_step(config, layout, STEPS_PER_EPOCH, mesh)
  rng = np.random.default_rng(3)
  state = sharding.put_replicated(cp.create_train_state(config, layout, STEPS_PER_EPOCH), mesh)
  all_metrics = []
  for _ in range(num_steps):
    state, metrics = step_fn(state, sharding.put_batch(random_batch(rng), mesh))
    all_metrics.append(jax.device_get(metrics))
  return host_copy(state), all_metrics


def test_stacked_modalities_and_unrolled_scan_compute_the_same_steps():
  """``model.stack_modalities`` (one vmap-ed encoder for the three modalities) and
  ``model.scan_unroll`` are speed options: two steps end in the same state (params,
  momentum buffers, BN statistics, queues) as the plain per-modality loop, to float32
  rounding, and the losses agree."""
  hidden = {"model.hidden_size": 16, "model.num_layers": 2}
  plain, m_plain = _run_steps(**hidden, **{"model.stack_modalities": False, "model.scan_unroll": 1})
  stacked, m_stacked = _run_steps(**hidden, **{"model.stack_modalities": True, "model.scan_unroll": 1})
  unrolled, m_unrolled = _run_steps(**hidden, **{"model.stack_modalities": True, "model.scan_unroll": 4})
  # The same float32 sums, vmapped or unrolled: a few u of the O(1) state (parameters up to
  # 1.4, momentum buffers up to 14); measured 3.6e-7 and 4e-6, ~25x below the bounds.
  for other, metrics in ((stacked, m_stacked), (unrolled, m_unrolled)):
    assert max_abs_diff(other.params, plain.params) < 1e-5
    assert max_abs_diff(other.key_params, plain.key_params) < 1e-5
    assert max_abs_diff(other.opt_state, plain.opt_state) < 1e-4
    assert max_abs_diff(other.batch_stats, plain.batch_stats) < 1e-5
    assert max_abs_diff(other.queues, plain.queues) < 1e-5
    for a, b in zip(metrics, m_plain):
      np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
  # ... and the steps did change the state (the comparison is not between two no-ops).
  assert max_abs_diff(plain.params, host_copy(cp.create_train_state(
      tiny_config(**hidden), data.layout_of(tiny_config().data), STEPS_PER_EPOCH)).params) > 1e-3


def test_bfloat16_compute_mode_tolerance():
  """``model.compute_dtype=bfloat16`` rounds the GRU and head matmul operands to bfloat16
  (float32 accumulation). Documented tolerance against float32, for the same initial state
  and batches, at a moderate size (H 64, 2 layers, 16 frames): the losses of two steps within
  5% relative (+0.01 absolute for the small terms), the encoder outputs within 0.05
  (unit-norm embeddings), and the parameters after two SGD steps within 25% of the steps'
  parameter change. Also: the state stays float32 (bf16 is a compute mode, not a storage mode).

  How the bounds were chosen: bfloat16 rounds each operand by up to 2^-9 relative, but CMD's
  loss keeps the top-k most similar queue entries, and a rounding can swap one of them: a
  discontinuity no rounding analysis bounds. So the bounds come from measurement over batch
  seeds (7 seeds, two versions of the views): parameter deviations 1-12% of the change, loss
  deviations up to 5% relative or 0.005 absolute; the bounds are about 2x the worst seen.
  The check that the outputs differ keeps the test from passing with the mode off."""
  size = {"model.hidden_size": 64, "model.num_layers": 2, "augment.frames": 16, "augment.min_length": 16}
  f32, m32 = _run_steps(**size, **{"model.compute_dtype": "float32"})
  b16, m16 = _run_steps(**size, **{"model.compute_dtype": "bfloat16"})
  assert all(a.dtype == np.float32 for a in jax.tree.leaves(b16.params))
  for a, b in zip(m16, m32):
    for k in ("loss", "loss_joint", "loss_motion", "loss_bone"):
      np.testing.assert_allclose(a[k], b[k], rtol=0.05, atol=0.01, err_msg=k)
  init = host_copy(cp.create_train_state(tiny_config(**size), data.layout_of(tiny_config().data), STEPS_PER_EPOCH))
  change = max_abs_diff(f32.params, init.params)
  assert change > 1e-4
  assert max_abs_diff(b16.params, f32.params) < 0.25 * change
  # Encoder outputs on the same input: unit-norm embeddings within 0.05.
  config = tiny_config(**size)
  x = jnp.asarray(np.random.default_rng(5).normal(size=(N, 16, 150)).astype(np.float32))
  variables = {"params": init.params["joint"], "batch_stats": init.batch_stats["joint"]}
  outs = {}
  for dtype in ("float32", "bfloat16"):
    config.model.compute_dtype = dtype
    out = cmd_method.make_model(config, data.layout_of(config.data), training=True).apply(variables, x, train=False)
    outs[dtype] = np.asarray(losses.l2_normalize(out))
  diff = float(np.max(np.abs(outs["bfloat16"] - outs["float32"])))
  assert 0 < diff < 0.05, diff  # differs (the mode is on) but within tolerance


# ---------------------------------------------------------------------------------------------
# 5. Configuration errors.

@pytest.mark.parametrize("overrides,num_devices,message", [
    ({"moco.queue_size": 36}, 1, "queue size 36 is not a multiple of the global batch 8"),
    ({"cmd.topk": 64}, 1, "topk 64 is larger than the queue size 32"),
    ({}, 3, "batch_size=8 must be a positive multiple of the 3 devices"),
    ({"modalities": "joint,depth"}, 1, "config.modalities='joint,depth'.*joint, motion, bone"),
    ({"modalities": "joint,joint"}, 1, "config.modalities='joint,joint'"),
    ({"data.dataset": "ntu61"}, 1, "config.data.dataset='ntu61' is unknown"),
    ({"optimizer.schedule": "linear"}, 1, "config.optimizer.schedule='linear'.*'step' or 'cosine'"),
    ({"moco.momentum": 1.5}, 1, "config.moco.momentum=1.5"),
    ({"evaluator.name": "linear"}, 1, "config.evaluator.name='linear'"),
    ({"model.compute_dtype": "float16"}, 1, "config.model.compute_dtype='float16'.*'float32' or 'bfloat16'"),
    ({"model.scan_unroll": 0}, 1, "config.model.scan_unroll=0 must be >= 1"),
    # runs that would train nothing, keep no model or divide by zero (each exited 0 or with a
    # ZeroDivisionError traceback before these checks)
    ({"num_epochs": 0}, 1, r"config.num_epochs=0: expected at least 1 \(epochs to train\)"),
    ({"keep_checkpoints": 0}, 1, r"config.keep_checkpoints=0: expected at least 1"),
    ({"checkpoint_every_steps": 0}, 1, r"config.checkpoint_every_steps=0: expected at least 1"),
    ({"log_every_steps": 0}, 1, r"config.log_every_steps=0: expected at least 1"),
    ({"moco.temperature": 0.0}, 1, r"config.moco.temperature=0.0 must be positive"),
    ({"evaluator.name": "knn", "evaluator.every_epochs": 0}, 1, r"config.evaluator.every_epochs=0 and batch_size=.*expected at least 1"),
    ({"model.hidden_size": 0}, 1, r"config.model.hidden_size=0 must be positive"),
])
def test_validate_config_errors(overrides, num_devices, message):
  """Each impossible setup raises ValueError with a message naming the field and values."""
  with pytest.raises(ValueError, match=message):
    cp.validate_config(tiny_config(**overrides), num_train=36, num_devices=num_devices, process_count=1)


def test_validate_config_accepts_the_tiny_config_and_checks_the_training_set_size():
  """The tiny config passes; a batch larger than the training set is refused when it is known."""
  cp.validate_config(tiny_config(), num_train=36, num_devices=1, process_count=1)
  with pytest.raises(ValueError, match="batch_size=8 is larger than the 4 training samples"):
    cp.validate_config(tiny_config(), num_train=4, num_devices=1, process_count=1)


def test_config_errors_come_before_any_compilation_or_data_preparation(tmp_path, monkeypatch):
  """train_and_evaluate with an impossible queue fails with the queue message while jax.jit is
  booby-trapped, and before the (missing) synthetic set is built."""
  def no_jit(*args, **kwargs):
    raise AssertionError("jax.jit was called before the config was validated")
  monkeypatch.setattr(jax, "jit", no_jit)
  config = tiny_config(**{"moco.queue_size": 36, "data.data_dir": str(tmp_path / "data")})
  with pytest.raises(ValueError, match="queue size 36 is not a multiple of the global batch 8"):
    cp.train_and_evaluate(config, tmp_path / "work")
  assert not (tmp_path / "data").exists()
  assert not (tmp_path / "work" / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------
# 6. Non-finite losses.

def test_check_finite_names_the_step_and_the_term():
  """A NaN / inf loss term raises NonFiniteLossError naming the step and exactly the bad terms;
  non-loss metrics (accuracies, lr) are not checked; finite values pass."""
  good = {"loss": 1.0, "loss_joint": 0.5, "kl_joint_to_bone": 0.1, "loss_cmd": 0.2, "acc1_joint": float("nan"),
          "lr": 0.1}
  cp.check_finite(3, good)
  with pytest.raises(cp.NonFiniteLossError, match=r"step 7\b.*kl_joint_to_bone=nan") as err:
    cp.check_finite(7, {**good, "kl_joint_to_bone": float("nan")})
  assert "loss_joint" not in str(err.value) and "acc1" not in str(err.value)
  with pytest.raises(cp.NonFiniteLossError, match=r"step 12\b.*loss_motion=inf"):
    cp.check_finite(12, {**good, "loss_motion": np.float32(np.inf)})
  assert issubclass(cp.NonFiniteLossError, FloatingPointError)


def test_non_finite_loss_stops_the_run_with_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
  """End to end: a NaN clip in the 5th batch makes step 5's loss NaN. The run stops with an
  error naming step 5 and the loss terms (found while step 6 runs, before its checkpoint); the
  latest checkpoint is step 4 and all its parameters are finite."""
  put_batch = sharding.put_batch
  calls = []

  def poisoned(batch, mesh):
    calls.append(1)
    if len(calls) == 5:
      batch = dict(batch, skeleton=np.full_like(batch["skeleton"], np.nan))
    return put_batch(batch, mesh)

  monkeypatch.setattr(sharding, "put_batch", poisoned)
  config = tiny_config(**{"data.data_dir": tiny_data, "num_epochs": 3, "checkpoint_every_steps": 2,
                          "log_every_steps": 100, "keep_checkpoints": 5})
  workdir = tmp_path / "work"
  with pytest.raises(cp.NonFiniteLossError, match=r"non-finite loss at step 5\b.*loss=nan") as err:
    cp.train_and_evaluate(config, workdir)
  assert "loss_joint=nan" in str(err.value) and "kl_joint_to_motion=nan" in str(err.value)
  ckpt = checkpoint.Checkpointer(workdir, 5)
  try:
    assert ckpt.all_steps() == [2, 4]
    like = cp.create_train_state(config, data.layout_of(config.data), STEPS_PER_EPOCH)
    state, _, meta = ckpt.restore(4, like, sharding.make_mesh(-1))
  finally:
    ckpt.close()
  assert meta["step"] == 4 and int(state.step) == 4
  for leaf in jax.tree.leaves((state.params, state.key_params, state.batch_stats, state.queues)):
    assert np.all(np.isfinite(np.asarray(leaf)))


# ---------------------------------------------------------------------------------------------
# 7. Kill and resume.

def test_kill_and_resume_ends_in_the_same_state(resume_config_and_reference, tmp_path):
  """Run A (the module's reference run): 3 epochs (12 steps) uninterrupted. Run B: stopped
  after step 3 (as a preemption with a checkpoint), then rerun. The final TrainStates are
  identical leaf for leaf (CPU is deterministic), B's metrics.jsonl continues at step 4 with
  A's values, and orbax keeps at most keep_checkpoints steps."""
  config, final_a, workdir_a = resume_config_and_reference
  first = cp.train_and_evaluate(config, tmp_path / "b", stop_after_step=3)
  assert first.step == 3 and int(first.state.step) == 3
  steps_b1 = [r["step"] for r in metrics_lib.read_metrics(tmp_path / "b", "train")]
  assert steps_b1 == [1, 2, 3]
  run_b = cp.train_and_evaluate(config, tmp_path / "b")

  assert run_b.step == 12 == 3 * STEPS_PER_EPOCH and int(final_a.step) == 12
  final_b = jax.device_get(run_b.state)
  paths = leaf_paths(final_a)
  assert paths == leaf_paths(final_b)
  for path, a, b in zip(paths, jax.tree.leaves(final_a), jax.tree.leaves(final_b)):
    np.testing.assert_array_equal(a, b, err_msg=path)
  assert int(final_b.step) == 12 and int(final_b.queue_ptr) == (12 * N) % K

  records_a = metrics_lib.read_metrics(workdir_a, "train")
  records_b = metrics_lib.read_metrics(tmp_path / "b", "train")
  assert [r["step"] for r in records_a] == [r["step"] for r in records_b] == list(range(1, 13))
  for ra, rb in zip(records_a, records_b):
    for name in ("loss", "loss_joint", "loss_cmd", "kl_bone_to_motion", "lr", "epoch"):
      assert ra[name] == rb[name], (ra["step"], name)
    assert math.isfinite(ra["loss"])

  for run, workdir in (("a", workdir_a), ("b", tmp_path / "b")):
    ckpt = checkpoint.Checkpointer(workdir, 2)
    try:
      assert ckpt.all_steps() == [10, 12]
      restored, _, meta = ckpt.restore(12, final_a, sharding.make_mesh(-1))
    finally:
      ckpt.close()
    assert meta["step"] == 12
    for path, a, b in zip(paths, jax.tree.leaves(final_a), jax.tree.leaves(jax.device_get(restored))):
      np.testing.assert_array_equal(a, b, err_msg=f"checkpoint {run}: {path}")
    on_disk = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert on_disk == [10, 12]


@pytest.fixture(scope="module")
def resume_config_and_reference(tiny_data, tmp_path_factory):
  """The resume tests' config and its uninterrupted run (12 steps): ``(config, final state on
  the host, workdir)``; the tests only read the workdir."""
  config = tiny_config(**{"data.data_dir": tiny_data, "num_epochs": 3, "checkpoint_every_steps": 2,
                          "log_every_steps": 1, "keep_checkpoints": 2})
  workdir = tmp_path_factory.mktemp("reference")
  return config, jax.device_get(cp.train_and_evaluate(config, workdir).state), workdir


# Every file kind of an orbax step folder (orbax 0.12): the state's tree metadata, the data file
# holding most of its array bytes, the OCDBT manifest, the sharding and array-metadata records,
# the data iterator's and the meta item's JSON, and the step's own _CHECKPOINT_METADATA (which
# restoring does not need: damaged, it changes nothing).
DAMAGE_KINDS = ["metadata", "array_data", "state/manifest.ocdbt", "state/_sharding", "state/array_metadatas/process_0",
                "data/metadata", "meta/metadata", "_CHECKPOINT_METADATA"]


@pytest.fixture(scope="module")
def stopped_at_step_6(resume_config_and_reference, tmp_path_factory):
  """A workdir of the run stopped after step 6 (checkpoints 4 and 6), copied by each test."""
  workdir = tmp_path_factory.mktemp("stopped")
  cp.train_and_evaluate(resume_config_and_reference[0], workdir, stop_after_step=6)
  return workdir


@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(resume_config_and_reference, stopped_at_step_6,
                                                                  tmp_path, capsys, kind):
  """Stopped after step 6 (checkpoints 4 and 6), one file of step 6 damaged: the rerun says so
  in one line naming the folder, resumes from step 4, sets step 6 aside, and ends in the same
  state as an uninterrupted run (steps 5-6 are recomputed identically); a damaged file that
  restoring does not read changes nothing."""
  config, reference, _ = resume_config_and_reference
  tmp_path = tmp_path / "w"
  shutil.copytree(stopped_at_step_6, tmp_path)
  ckpt_dir = tmp_path / "checkpoints"
  assert sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) == [4, 6]
  damage_checkpoint(ckpt_dir / "6", kind)
  capsys.readouterr()
  final = jax.device_get(cp.train_and_evaluate(config, tmp_path).state)
  out = capsys.readouterr().out
  if kind == "_CHECKPOINT_METADATA":
    assert "unreadable" not in out and not (tmp_path / "checkpoints_unreadable").exists(), out
  else:
    assert f"checkpoint {ckpt_dir / '6'} is unreadable (" in out and f"resuming from {ckpt_dir / '4'}" in out, out
    assert (tmp_path / "checkpoints_unreadable" / "6").is_dir()
  for path, a, b in zip(leaf_paths(reference), jax.tree.leaves(reference), jax.tree.leaves(final)):
    np.testing.assert_array_equal(a, b, err_msg=path)


def test_no_readable_checkpoint_is_a_one_line_error(resume_config_and_reference, tmp_path):
  config, _, _ = resume_config_and_reference
  cp.train_and_evaluate(config, tmp_path, stop_after_step=4)
  for step in (2, 4):
    damage_checkpoint(tmp_path / "checkpoints" / str(step), "metadata")
  before = folder_digest(tmp_path)
  with pytest.raises(checkpoint.CheckpointError, match=r"none of the 2 checkpoints is readable \(the newest, step 4: "
                                                       r".*new --workdir") as err:
    cp.train_and_evaluate(config, tmp_path)
  assert "\n" not in str(err.value)
  assert folder_digest(tmp_path) == before  # nothing moved or rewritten


@pytest.mark.parametrize("overrides,message", [
    ({"model.hidden_size": 12}, r"checkpoint .*/4 does not match this config: found .*hidden size 8.*; this config implies .*hidden size 12"
                                r".*nothing was changed: use a new --workdir"),
    ({"modalities": "joint"}, r"holds another run \(modalities: 'joint,motion,bone' there, 'joint' asked\); nothing "
                              r"was changed: use a new --workdir"),
    ({"data.benchmark": "xview"}, r"holds another run \(data.benchmark: 'xsub' there, 'xview' asked\)"),
])
def test_an_incompatible_config_is_refused_with_the_workdir_unchanged(resume_config_and_reference, tmp_path,
                                                                       overrides, message):
  """Rerunning a workdir with another hidden size, modalities or benchmark refuses in one line
  before anything is written: config.json, checkpoints and metrics are byte-identical after."""
  config, _, _ = resume_config_and_reference
  cp.train_and_evaluate(config, tmp_path, stop_after_step=4)
  before = folder_digest(tmp_path)
  other = tiny_config(**{"data.data_dir": config.data.data_dir, "num_epochs": 3, "checkpoint_every_steps": 2,
                         "log_every_steps": 1, "keep_checkpoints": 2, **overrides})
  with pytest.raises(ConfigError, match=message) as err:
    cp.train_and_evaluate(other, tmp_path)
  assert "\n" not in str(err.value)
  assert folder_digest(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# 8. launch.py end to end.

def _launch(args, workdir, cache_dir):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache_dir)
  cmd = [sys.executable, "launch.py", "--config", "configs/pretrain_cmd.py:synthetic", *args, f"--workdir={workdir}"]
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_launch_end_to_end_and_its_errors(tiny_data, tmp_path, compilation_cache_dir):
  """launch.py (subprocesses, run side by side): the tiny config for one epoch writes
  metrics.jsonl and a checkpoint at step 4; a mistyped override exits non-zero with a one-line
  message suggesting "lr"; queue 100 with batch 64 exits non-zero with the queue message and
  writes no metrics or checkpoint."""
  tiny = [f"--config.{k}={v}" for k, v in TINY.items()] + [f"--config.data.data_dir={tiny_data}"]
  good = _launch([*tiny, "--config.num_epochs=1"], tmp_path / "good", compilation_cache_dir)
  typo = _launch([*tiny, "--config.optimizer.lrr=1"], tmp_path / "typo", compilation_cache_dir)
  queue = _launch([*tiny, "--config.moco.queue_size=100", "--config.batch_size=64"], tmp_path / "queue",
                  compilation_cache_dir)
  out = {name: p.communicate(timeout=300) for name, p in (("typo", typo), ("queue", queue), ("good", good))}

  assert typo.returncode != 0
  lines = [line for line in out["typo"][1].splitlines() if line.strip()]
  assert len(lines) == 1 and "lrr" in lines[0] and '"lr"' in lines[0], out["typo"][1]
  assert not (tmp_path / "typo" / "metrics.jsonl").exists()

  assert queue.returncode != 0
  assert "queue size 100 is not a multiple of the global batch 64" in out["queue"][1], out["queue"][1]
  assert not (tmp_path / "queue" / "metrics.jsonl").exists()
  assert not (tmp_path / "queue" / "checkpoints").exists()

  assert good.returncode == 0, out["good"][1][-3000:]
  records = metrics_lib.read_metrics(tmp_path / "good", "train")
  assert records and records[-1]["step"] == STEPS_PER_EPOCH and math.isfinite(records[-1]["loss"])
  assert (tmp_path / "good" / "checkpoints" / str(STEPS_PER_EPOCH)).is_dir()
