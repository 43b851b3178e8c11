"""The protocols' options for HiCLR's settings, each against a hand computation or numpy.

- ``class_balanced`` subsets: ``round(ratio * class count)`` per class (Python's rounding),
  seeded; epochs as long as the whole split (``SubsetSource(length=N)``, record ``i`` =
  subset entry ``i mod n``);
- the classifier initialisations (``normal_0.01``, ``normal_0.02``, PyTorch's default);
- the optimizer: warmup values by hand, Nesterov momentum against ``torch.optim.SGD``,
  frozen modules unchanged;
- HiCLR's weighted-logit ensemble against numpy, and its weight-set parsing;
- the basic (crop + shear) training view of HiCLR's transformer fine-tuning;
- gradient clipping (AimCLR's semi-supervised processor): ``clip_grad_norm_`` then PyTorch
  SGD's coupled weight decay, against ``torch.optim.SGD`` in float64; each stream (each
  top-level group of the parameters) clipped by its own norm, against numpy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cmd_jax import optim
from cmd_jax.errors import ConfigError
from cmd_jax.layouts import NTU25
from cmd_jax.methods.common import views
from cmd_jax.protocols import heads, subsets, training


def test_class_balanced_subsets():
  labels = np.repeat(np.arange(4), [10, 25, 3, 15])  # round(0.1 * n): 1, 2 (2.5 -> 2), 0, 2 (1.5 -> 2)
  a = subsets.labelled_subset(labels, 0.1, seed=1, sampling="class_balanced", num_classes=4)
  assert np.bincount(labels[a], minlength=4).tolist() == [1, 2, 0, 2]
  np.testing.assert_array_equal(a, subsets.labelled_subset(labels, 0.1, 1, "class_balanced", 4))
  others = [subsets.labelled_subset(labels, 0.1, s, "class_balanced", 4) for s in range(2, 8)]
  assert any(not np.array_equal(a, b) for b in others)
  assert np.all(np.diff(a) > 0)
  with pytest.raises(ConfigError, match="is 0 for every class"):
    subsets.labelled_subset(labels, 0.01, 0, "class_balanced", 4)


def test_full_length_epochs_revisit_the_subset():
  source = [{"i": i} for i in range(10)]
  subset = subsets.SubsetSource(source, np.array([7, 2, 5]), length=10)
  assert len(subset) == 10
  assert [subset[i]["i"] for i in range(10)] == [7, 2, 5, 7, 2, 5, 7, 2, 5, 7]
  assert len(subsets.SubsetSource(source, np.array([7, 2, 5]))) == 3


@pytest.mark.parametrize("scheme,std,zero_bias", [("normal_0.01", 0.01, True), ("normal_0.02", 0.02, True)])
def test_normal_heads(scheme, std, zero_bias):
  """Sample std of 60 x 256 draws within 5 standard errors (std / sqrt(2n)) of the target."""
  head = heads.init_head(jax.random.PRNGKey(0), 60, 256, scheme)
  w = np.asarray(head["weight"])
  assert w.shape == (60, 256) and abs(w.std() - std) <= 5 * std / np.sqrt(2 * w.size)
  assert zero_bias and np.all(np.asarray(head["bias"]) == 0)


def test_default_head_is_pytorch_linear_default():
  head = heads.init_head(jax.random.PRNGKey(1), 60, 256, "default")
  bound = 1 / np.sqrt(256)
  for leaf in (np.asarray(head["weight"]), np.asarray(head["bias"])):
    assert np.all(np.abs(leaf) <= bound) and np.abs(leaf).max() > 0.9 * bound
  # uniform on [-b, b]: variance b^2 / 3, within 5 standard errors for the 15360 weights
  w = np.asarray(head["weight"])
  assert abs(w.var() - bound ** 2 / 3) <= 5 * np.sqrt(4 / 45) * bound ** 2 / np.sqrt(w.size)
  with pytest.raises(ConfigError, match="config.head_init='xavier'"):
    heads.init_head(jax.random.PRNGKey(1), 3, 4, "xavier")


def opt_config(**fields):
  c = ml_collections.ConfigDict({"num_epochs": 10, "optimizer": {
      "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "step", "milestones": (29, 54), "gamma": 0.1,
      "warmup_epochs": 5, "nesterov": True}})
  c.optimizer.update(fields)
  return c


def test_warmup_schedule_by_hand():
  """HiCLR's fine-tuning on 1-based epochs e: ``0.1 * e / 5`` for e < 5, then 0.1 until e >= 30,
  0.01 until e >= 55, then 0.001 (0-based milestones 29 and 54)."""
  schedule = optim.lr_schedule(opt_config(), steps_per_epoch=3)
  lrs = [float(schedule(epoch * 3 + 1)) for epoch in range(70)]  # one step inside each epoch
  expected = [0.1 * (e + 1) / 5 if e + 1 < 5 else 0.1 * 0.1 ** ((e >= 29) + (e >= 54)) for e in range(70)]
  np.testing.assert_allclose(lrs, expected, rtol=1e-6)
  assert lrs[0] == pytest.approx(0.02) and lrs[4] == pytest.approx(0.1) and lrs[29] == pytest.approx(0.01)


def test_nesterov_and_frozen_modules_against_torch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  params = {"joint": {"proj": {"w": rng.normal(size=(3,))}, "fc": {"w": rng.normal(size=(4,))}}}
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  grads = [jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params) for _ in range(3)]
  tx = optim.make_optimizer(opt_config(warmup_epochs=0, milestones=()), 1, frozen=("proj",))
  state, p = tx.init(params), params
  for g in grads:
    updates, state = tx.update(g, state, p)
    p = jax.tree.map(lambda a, u: a + u, p, updates)
  w = torch.tensor(np.asarray(params["joint"]["fc"]["w"]), requires_grad=True)
  opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
  for g in grads:
    w.grad = torch.tensor(np.asarray(g["joint"]["fc"]["w"]))
    opt.step()
  # Three elementwise float32 updates, ordered differently by optax and torch: a few u (6e-8).
  np.testing.assert_allclose(np.asarray(p["joint"]["fc"]["w"]), w.detach().numpy(), rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(p["joint"]["proj"]["w"]), np.asarray(params["joint"]["proj"]["w"]))


def test_weighted_logit_fusion_against_numpy():
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 5, size=40)
  logits = {m: rng.normal(size=(40, 5)) for m in ("joint", "motion", "bone")}
  sets = heads.parse_fusion_weights("joint=0.5,bone=0.5,motion=0.5;joint=0.6,bone=0.6,motion=0.4",
                                         ("joint", "motion", "bone"))
  assert sets == [{"joint": 0.5, "bone": 0.5, "motion": 0.5}, {"joint": 0.6, "bone": 0.6, "motion": 0.4}]
  out = heads.weighted_logit_fusion(logits, labels, sets)
  accs = [np.mean(np.argmax(0.5 * logits["joint"] + 0.5 * logits["bone"] + 0.5 * logits["motion"], 1) == labels),
          np.mean(np.argmax(0.6 * logits["joint"] + 0.6 * logits["bone"] + 0.4 * logits["motion"], 1) == labels)]
  assert [s["top1"] for s in out["sets"]] == pytest.approx(accs)
  assert out["best_of_sets_top1"] == pytest.approx(max(accs))
  assert heads.parse_fusion_weights("joint=1,bone=1", ("joint", "motion", "bone")) == []  # other streams
  with pytest.raises(ConfigError, match="unknown stream.s. jiont"):
    heads.parse_fusion_weights("jiont=1,bone=1", ("joint", "bone"))
  with pytest.raises(ConfigError, match="is not stream=weight"):
    heads.parse_fusion_weights("joint:1", ("joint",))
  assert heads.parse_fusion_weights("", ("joint",)) == []


def test_basic_view_is_crop_then_shear():
  """The fine-tuning view equals the parameterised crop + shear of its own draws."""
  x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 3, 50, 25, 2)), jnp.float32)
  key = jax.random.PRNGKey(4)
  out = views.basic_view(key, x)
  (params,) = views.view_params(key, x.shape, (False,), aug_method="")
  want = views.shear_with(views.temporal_crop_with(x, params.crop_start), params.shear)
  np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
  assert out.shape == x.shape and NTU25.num_joints == out.shape[3]


def _float64():
  """A context with float64 enabled (``jax.enable_x64(True)``; older JAX: the experimental one)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=import-outside-toplevel
  return enable_x64()


def optax_apply(params, updates):
  return jax.tree.map(lambda p, u: p + u, params, updates)


def test_clip_grad_norm_then_coupled_decay_against_torch():
  """AimCLR's semi step: ``clip_grad_norm_(params, 2, norm_type=2)``, then ``SGD.step()``, which adds
  the weight decay to the clipped gradient. Four steps whose gradient norms are above, below,
  above and near the limit, float64 on both sides; a clip after the decay would differ by
  about lr * wd * |p| (1e-3 here), far above the 1e-12 bound."""
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(5)
  shapes = {"conv": {"w": (3, 4)}, "fc": {"w": (5,), "b": (2,)}}
  start = jax.tree.map(lambda s: rng.normal(size=s), shapes, is_leaf=lambda x: isinstance(x, tuple))
  scales = [4.0, 0.1, 2.0, 0.5]  # |g| of 3 + 4 + 5 + 2 = 14 N(0, 1) draws, times these: ~15, 0.4, 7.5, 1.9
  grads = [jax.tree.map(lambda p, k=k: k * rng.normal(size=p.shape), start) for k in scales]
  config = opt_config(warmup_epochs=0, milestones=(), nesterov=False, weight_decay=0.05, clip_grad_norm=2.0)
  with _float64():
    tx = optim.make_optimizer(config, 1)
    params = jax.tree.map(jnp.asarray, start)
    state = tx.init(params)
    for g in grads:
      updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
      params = optax_apply(params, updates)
    got = jax.tree.map(np.asarray, params)
  leaves = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in jax.tree.leaves(start)]
  opt = torch.optim.SGD(leaves, lr=0.1, momentum=0.9, weight_decay=0.05)
  norms = []
  for g in grads:
    for leaf, grad in zip(leaves, jax.tree.leaves(g)):
      leaf.grad = torch.tensor(grad, dtype=torch.float64)
    norms.append(float(torch.nn.utils.clip_grad_norm_(leaves, 2.0, norm_type=2)))
    opt.step()
  assert norms[0] > 2 and norms[1] < 2 and norms[2] > 2  # the clip was on, off and on
  for a, b in zip(jax.tree.leaves(got), leaves):
    np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-12, atol=1e-12)



def test_each_stream_is_clipped_by_its_own_norm():
  """One SGD step (no momentum history yet, no decay): ``p - lr * g * min(1, c / (|g_s| + 1e-6))``
  with ``|g_s|`` the norm of stream s's gradients only (numpy, float32 inputs: a few u)."""
  rng = np.random.default_rng(6)
  params = {m: {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
                "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)} for m in ("joint", "motion")}
  grads = {"joint": jax.tree.map(lambda p: 10.0 * jnp.ones_like(p), params["joint"]),  # |g| = 10 sqrt(16) = 40
           "motion": jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params["motion"])}  # |g| = 0.4 < 2
  config = opt_config(warmup_epochs=0, milestones=(), nesterov=False, weight_decay=0.0, clip_grad_norm=2.0)
  tx = training.stream_optimizer(config, 1, ("joint", "motion"))
  updates, _ = tx.update(grads, tx.init(params), params)
  for m, norm in (("joint", 40.0), ("motion", 0.4)):
    scale = min(1.0, 2.0 / (norm + 1e-6))
    for k in ("w", "b"):
      np.testing.assert_allclose(np.asarray(updates[m][k]), -0.1 * scale * np.asarray(grads[m][k]), rtol=1e-6)
  with pytest.raises(ValueError, match=r"config.optimizer.clip_grad_norm=-1.0: expected a finite gradient norm >= 0"):
    optim.validate(opt_config(clip_grad_norm=-1.0))
