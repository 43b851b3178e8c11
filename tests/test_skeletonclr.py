"""SkeletonCLR: the views, the loss, and two full steps against PyTorch.

- ``views.skeletonclr_views`` against the per-sample numpy feeder chain
  (``tests/hiclr_feeder_reference.py``) on the numbers ``view_params`` draws: two normal views
  (crop, shear), each with its own numbers;
- ``losses.skeletonclr_loss`` against numpy (MoCo's InfoNCE) and where its gradient stops;
- two full steps against a PyTorch model of the reference step (``tests/torch_skeletonclr.py``
  on ``tests/torch_stgcn.py``) in float64: the loss, the query encoder after SGD, the key
  encoder after the EMA, both encoders' BatchNorm statistics, the queue and the pointer (the
  small setup, the views' bypass and the tolerances are tests/test_hiclr_parity.py's), and
  step 1's forward in float32.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmd_jax import data, models  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.methods import skeletonclr  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.methods.common import views as common_views  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.methods.skeletonclr import losses as skeletonclr_losses  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.methods.skeletonclr import views as skeletonclr_views  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.models import graph  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.trainers import pretrain as cp  # noqa: E402  pylint: disable=wrong-import-position
from configs import pretrain_skeletonclr  # noqa: E402  pylint: disable=wrong-import-position
from tests import hiclr_feeder_reference as ref  # noqa: E402  pylint: disable=wrong-import-position
from tests.test_hiclr_parity import (  # noqa: E402  pylint: disable=wrong-import-position
    ATOL, F64_ATOL, LOSS_RTOL, as_float64, check, compiled_step, host, max_diff, np_log_softmax, to_np, unflat, x64)
from tests.test_stgcn import flat, torch_key as renamed  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_hiclr import make_optimizer  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_skeletonclr import TorchSkeletonCLRStep, train_step  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_stgcn import TorchSTGCN  # noqa: E402  pylint: disable=wrong-import-position


def test_views_are_two_independent_normal_views():
  """Float32 against the float64 chain: tests/test_hiclr_views.py's tolerance."""
  x = np.random.default_rng(0).normal(size=(8, 3, 50, 25, 2)).astype(np.float32)
  key = jax.random.key(3)
  q, k = jax.jit(skeletonclr_views.skeletonclr_views)(key, jnp.asarray(x))
  params = jax.tree.map(np.asarray, common_views.view_params(key, x.shape, (False, False), aug_method=""))
  assert not np.array_equal(params[0].shear, params[1].shear)
  for view, p in ((q, params[0]), (k, params[1])):
    for b in range(len(x)):
      want = ref.shear_with(ref.temporal_crop_with(x[b], int(p.crop_start[b])), p.shear[b])
      np.testing.assert_allclose(np.asarray(view)[b], want, rtol=1e-5, atol=1e-5)


def test_loss_is_infonce_and_reaches_only_the_query():
  rng = np.random.default_rng(1)

  def unit(n, d=8):
    z = rng.normal(size=(n, d))
    return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)

  q, k, queue = unit(8), unit(8), unit(16)
  logits = np.concatenate([(q * k).sum(1, keepdims=True), q @ queue.T], 1).astype(np.float64) / 0.07
  want = np.mean(-np_log_softmax(logits)[:, 0])
  total, metrics = skeletonclr_losses.skeletonclr_loss(q, k, queue)
  # float32 logits <= 14.3 from 8-term dot products: tests/test_hiclr_parity.py's UNIT_RTOL
  assert abs(float(total) - want) <= 1e-5 * want and float(metrics["loss"]) == float(total)
  assert float(metrics["acc1"]) == float(np.float32(np.mean(np.argmax(logits, 1) == 0)))
  g = jax.grad(lambda *a: skeletonclr_losses.skeletonclr_loss(*a)[0], argnums=(0, 1, 2))(q, k, queue)
  assert np.abs(g[0]).max() > 1e-3 and np.all(np.asarray(g[1]) == 0) and np.all(np.asarray(g[2]) == 0)


# ----------------------------------------------------------------------------------------
# Two full steps against the PyTorch model of the reference step
# ----------------------------------------------------------------------------------------

N, T, C, V, M = 4, 16, 3, 25, 2
H, HIDDEN_DIM, D, K = 4, 16, 8, 16
LR, SGD_MOMENTUM, WD, EMA_M, MOCO_T = 0.1, 0.9, 1e-4, 0.9, 0.07


def small_config():
  """tests/test_hiclr_parity.py's small setup."""
  config = pretrain_skeletonclr.get_config("synthetic")
  config.model.name, config.model.init = "stgcn", "normal_0.02"
  config.model.stgcn.hidden_channels, config.model.stgcn.hidden_dim = H, HIDDEN_DIM
  config.model.stgcn.dropout = 0.0
  config.model.embed_dim = D
  config.batch_size, config.moco.queue_size = N, K
  config.moco.momentum, config.moco.temperature = EMA_M, MOCO_T
  config.optimizer.lr, config.optimizer.momentum, config.optimizer.weight_decay = LR, SGD_MOMENTUM, WD
  config.optimizer.schedule, config.optimizer.milestones = "step", ()
  config.evaluator.name = ""
  return config


def step_views(seed: int) -> np.ndarray:
  """Two fixed views ``[N, 2, C, T, V, M]`` (q, k), the second person absent but in sample 0."""
  x = np.random.default_rng(seed).normal(size=(N, 2, C, T, V, M)).astype(np.float32)
  x[1:, :, :, :, :, 1] = 0.0
  return x


def patch_views(monkeypatch) -> None:
  monkeypatch.setattr(skeletonclr_views, "skeletonclr_views", lambda key, x, **kwargs: (x[:, 0], x[:, 1]))


def batch_of(views, dtype):
  return {"skeleton": views.astype(dtype), "num_frames": np.full((N,), T, np.int32)}


def torch_model(state, config, layout) -> TorchSkeletonCLRStep:
  """The JAX state -> the torch model through the renaming rule (checked equal to
  ``cmd_jax.models.torch_key``), the queue transposed; loaded strictly."""
  model = TorchSkeletonCLRStep(lambda: TorchSTGCN(graph.layout_graph(layout), hidden_channels=H,
                                                  hidden_dim=HIDDEN_DIM, num_class=D, dropout=0.0, mlp=True),
                               D, K, EMA_M, MOCO_T)
  sd = model.state_dict()
  for prefix, params, stats in (("encoder_q", state.params["encoder"], state.batch_stats),
                                ("encoder_k", state.key_params, state.key_batch_stats)):
    for tree in (params, stats):
      for path, leaf in flat(tree):
        assert renamed(path) == models.torch_key(config.model, path), path
        sd[f"{prefix}.{renamed(path)}"] = torch.from_numpy(np.array(leaf, np.float32))
  sd["queue"] = torch.from_numpy(np.ascontiguousarray(np.asarray(state.queues["joint"], np.float32).T))
  sd["queue_ptr"] = torch.tensor([int(state.queue_ptr)], dtype=torch.int64)
  model.load_state_dict(sd, strict=True)
  return model


def torch_trees(model, state) -> dict:
  sd = {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()}

  def tree(prefix, like):
    return unflat((path, sd[f"{prefix}.{renamed(path)}"]) for path, _ in flat(like))

  return {"params": {"encoder": tree("encoder_q", state.params["encoder"])},
          "key_params": tree("encoder_k", state.key_params),
          "batch_stats": tree("encoder_q", state.batch_stats),
          "key_batch_stats": tree("encoder_k", state.key_batch_stats),
          "queues": {"joint": sd["queue"].T}, "queue_ptr": int(model.queue_ptr[0])}


@pytest.fixture(scope="module")
def setup(compilation_cache_dir):
  del compilation_cache_dir
  config = small_config()
  layout = data.layout_of(config.data)
  return config, layout, host(cp.create_train_state(config, layout, steps_per_epoch=1))


def test_two_full_steps_match_the_reference_step_float64(setup, monkeypatch):
  """Within tests/test_hiclr_parity.py's ``F64_ATOL`` (its comment derives it for this
  encoder, init and scale); the alternatives (EMA with the post-step parameters, no SGD step,
  no enqueue) are far outside it."""
  config, layout, state = setup
  patch_views(monkeypatch)
  ref_model = torch_model(state, config, layout).double()
  opt = make_optimizer(ref_model, LR, WD, SGD_MOMENTUM)
  state = as_float64(state)
  print()
  with x64():
    start = time.time()
    step = compiled_step(config, layout, state, batch_of(step_views(30), np.float64))
    print(f" float64 step compiled in {time.time() - start:.1f} s")
    for i in range(2):
      views = step_views(30 + i)
      before = state
      state, metrics = step(state, batch_of(views, np.float64))
      state, metrics = host(state), host(metrics)
      out = train_step(ref_model, opt, [torch.from_numpy(views[:, j].astype(np.float64)) for j in range(2)])
      got = torch_trees(ref_model, state)
      print(f" step {i + 1}:")
      check("loss", metrics["loss"], to_np(out["loss"]), F64_ATOL)
      check("query encoder after SGD", state.params["encoder"], got["params"]["encoder"], F64_ATOL)
      check("key encoder after the EMA", state.key_params, got["key_params"], F64_ATOL)
      check("query BN running statistics", state.batch_stats, got["batch_stats"], F64_ATOL)
      check("key BN running statistics", state.key_batch_stats, got["key_batch_stats"], F64_ATOL)
      check("queue after the enqueue", state.queues, got["queues"], F64_ATOL)
      assert int(state.queue_ptr) == got["queue_ptr"] == (N * (i + 1)) % K
      post = jax.tree.map(lambda k, q: EMA_M * k + (1 - EMA_M) * q, before.key_params, state.params["encoder"])
      alternatives = {"EMA with the post-step query parameters": max_diff(post, got["key_params"]),
                      "no SGD step": max_diff(before.params["encoder"], got["params"]["encoder"]),
                      "no enqueue": max_diff(before.queues, got["queues"])}
      print("  alternatives would differ by: " + ", ".join(f"{k} {v:.3g}" for k, v in alternatives.items()))
      for what, diff in alternatives.items():
        assert diff > 1e4 * F64_ATOL, what


# Float32, step 1's forward (the loss, the EMA, BN statistics, the queue): tests/test_hiclr_parity.py's
# LOSS_RTOL and ATOL, derived there for this setup.
def test_first_step_forward_matches_the_reference_step_float32(setup, monkeypatch):
  config, layout, state = setup
  patch_views(monkeypatch)
  ref_model = torch_model(state, config, layout)
  opt = make_optimizer(ref_model, LR, WD, SGD_MOMENTUM)
  views = step_views(30)
  fn = jax.jit(lambda p, s, b, k: skeletonclr.loss(p, s, b, k, config=config, layout=layout, steps_per_epoch=1))
  with jax.default_matmul_precision("float32"):
    _, (metrics, updates) = fn(state.params, state, batch_of(views, np.float32), jax.random.PRNGKey(0))
  metrics, new = host(metrics), host(state.replace(**updates))
  out = train_step(ref_model, opt, [torch.from_numpy(views[:, j].copy()) for j in range(2)])
  got = torch_trees(ref_model, new)
  check("loss", metrics["loss"], to_np(out["loss"]), LOSS_RTOL * max(1.0, abs(float(to_np(out["loss"])))))
  check("key encoder after the EMA", new.key_params, got["key_params"], ATOL)
  check("query BN running statistics", new.batch_stats, got["batch_stats"], ATOL)
  check("key BN running statistics", new.key_batch_stats, got["key_batch_stats"], ATOL)
  check("queue after the enqueue", new.queues, got["queues"], ATOL)
  assert int(new.queue_ptr) == got["queue_ptr"] == N
