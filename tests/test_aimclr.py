"""AimCLR: EADM, the encoders' map hook, the views, the losses, and one step against PyTorch.

- ``cmd_jax.methods.aimclr.eadm`` against numpy formulas written here from the description
  (SimAM's attention, the joint then the elementwise mask, batch-global rescale factors): the
  description's sanity values (i.i.d. Gaussian maps: ~23.9% of the elements dropped, no
  joint; one joint shifted by +3: that joint dropped in every row), the identity switch, the
  global factors, and the gradient (to ``x`` through both products, none through the masks);
- the encoders' ``map_transform`` hook (ST-GCN, DSTA-Net, CMD's GRU): the map each passes,
  its pooling, the shared head;
- ``views.aimclr_views`` against the per-sample numpy feeder chain
  (``tests/hiclr_feeder_reference.py``) fed the same random numbers, with and without the
  time reversal, and the first release's order of the time reversal against this one's;
- ``losses.aimclr_loss`` against numpy (InfoNCE, both D3M terms towards the normal view's
  distribution, the mined InfoNCE) and where its gradients stop;
- two full steps (plain InfoNCE, then mining: ``steps_per_epoch = 1``,
  ``aimclr.mining_epoch = 1``) against a PyTorch model of the reference step
  (``tests/torch_aimclr.py`` on ``tests/torch_stgcn.py``) in float64: every loss term, the
  query encoder after SGD, the key encoder after the EMA, both encoders' BatchNorm
  statistics, the queue and the pointer (the setup, the views' bypass and the tolerances are
  tests/test_hiclr_parity.py's); step 1's forward in float32 with the first release's EADM
  (identity: the dropped feature equals the extreme one).
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmd_jax import data, models  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.layouts import NTU25  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.methods import aimclr  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.methods.aimclr import eadm, losses as aimclr_losses, views as aimclr_views  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.methods.common import views as common_views  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.models import graph  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.trainers import pretrain as cp  # noqa: E402  pylint: disable=wrong-import-position
from configs import pretrain_aimclr  # noqa: E402  pylint: disable=wrong-import-position
from tests import hiclr_feeder_reference as ref  # noqa: E402  pylint: disable=wrong-import-position
from tests.test_hiclr_parity import (  # noqa: E402  pylint: disable=wrong-import-position
    F64_ATOL, as_float64, check, compiled_step, host, max_diff, np_log_softmax, to_np, unflat, x64)
from tests.test_stgcn import flat, torch_key as renamed  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_aimclr import TorchAimCLRStep, TorchEADM  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_hiclr import make_optimizer  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_skeletonclr import train_step  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_stgcn import TorchSTGCN  # noqa: E402  pylint: disable=wrong-import-position


# ----------------------------------------------------------------------------------------
# EADM against numpy
# ----------------------------------------------------------------------------------------

def np_eadm(x_nctv: np.ndarray, threshold: float = 0.7, e_lambda: float = 1e-4):
  """The description's formulas on the reference's layout ``(R, C, T, V)``, float64:
  ``(output, joint keep mask [R, V], element keep mask [R, C, T, V], joint factor, element factor)``."""
  x = np.asarray(x_nctv, np.float64)
  r, c, t, v = x.shape
  d2 = (x - x.mean(axis=(2, 3), keepdims=True)) ** 2
  var = d2.sum(axis=(2, 3), keepdims=True) / (t * v - 1)
  att = 1.0 / (1.0 + np.exp(-(d2 / (4 * (var + e_lambda)) + 0.5)))
  keep_s = (att.mean(axis=(1, 2)) < threshold).astype(np.float64)
  scale_s = keep_s.size / keep_s.sum()
  x1 = x * keep_s[:, None, None, :] * scale_s
  keep = (att < threshold).astype(np.float64)
  scale = keep.size / keep.sum()
  return x1 * keep * scale, keep_s, keep, scale_s, scale


def to_map(x_nctv: np.ndarray) -> jax.Array:
  """``(R, C, T, V)`` -> the encoders' channels-last ``[R, T, V, C]``."""
  return jnp.asarray(np.transpose(x_nctv, (0, 2, 3, 1)))


def from_map(y) -> np.ndarray:
  return np.transpose(np.asarray(y), (0, 3, 1, 2))


def test_eadm_matches_the_formulas_float64():
  rng = np.random.default_rng(0)
  x = np.maximum(rng.standard_normal((6, 8, 5, 7)), 0.0)  # post-ReLU maps, as the encoder's last block gives
  x[1, :, :, 3] += 2.5                                    # a salient joint in one row
  want, keep_s, keep, _, _ = np_eadm(x)
  with x64():
    got = from_map(eadm.eadm(to_map(x)))
  assert 0 < keep.mean() < 1 and keep_s[1, 3] == 0 and keep_s.sum() == keep_s.size - 1
  # float64 on both sides, the same operations: within ~10 u of the values
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_eadm_sanity_values_gaussian_and_shifted_joint():
  """i.i.d. N(0, 1) maps of the release's size per row (T' = 13, V = 25): an element is
  dropped where its attention reaches 0.7, i.e. where |x - mean| >= sqrt(4 logit(0.7) - 2)
  standard deviations, ``P = erfc(1.1786 / sqrt(2)) = 23.9%``; no joint (its mean attention
  is ~0.67). One joint shifted by +3 in every row: that joint, and only it, is dropped."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((16, 64, 13, 25)).astype(np.float32)  # (R, C, T', V)
  out = from_map(jax.jit(eadm.eadm)(to_map(x)))
  dropped = float(np.mean(out == 0))
  z = math.sqrt(4 * (math.log(0.7 / 0.3) - 0.5))
  expected = math.erfc(z / math.sqrt(2))
  n = x.size
  # 5 standard errors of a binomial fraction over n elements, plus 1e-3 for the per-row
  # variance estimate (325 values: the threshold in sigmas moves by ~1/sqrt(2 * 325) ~ 4%
  # of z per row, averaging out to a bias well below 1e-3)
  assert abs(dropped - expected) < 5 * math.sqrt(expected * (1 - expected) / n) + 1e-3, (dropped, expected)
  assert abs(expected - 0.2386) < 1e-3
  att = np.asarray(eadm.attention(to_map(x)))
  assert float(att.mean(axis=(1, 3)).max()) < 0.7  # no joint dropped
  kept = out != 0
  np.testing.assert_allclose(out[kept] / x[kept], 1.0 / (1.0 - dropped), rtol=1e-5)  # one global factor

  shifted = x.copy()
  shifted[:, :, :, 7] += 3.0
  out = from_map(jax.jit(eadm.eadm)(to_map(shifted)))
  joints_zero = np.all(out == 0, axis=(1, 2))  # [R, V]
  assert joints_zero[:, 7].all() and not joints_zero[:, np.arange(25) != 7].any()
  assert abs(joints_zero.mean() - 0.04) < 1e-9


def test_eadm_identity_switch_returns_the_input():
  x = to_map(np.random.default_rng(2).standard_normal((4, 8, 5, 7)))
  assert eadm.map_transform("identity")(x) is x
  np.testing.assert_array_equal(np.asarray(eadm.map_transform("threshold")(x)), np.asarray(eadm.eadm(x)))
  with pytest.raises(ValueError, match="EADM mode 'random'"):
    eadm.map_transform("random")


def test_eadm_rescale_factors_are_global_over_the_batch():
  """Row 0 alone and row 0 in a batch whose row 1 loses a joint and more elements: the joint
  factor is ``R V / (R V - 1)`` over the whole batch and the element factor counts every row,
  so row 0's output depends on row 1 (a per-sample factor would not)."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 8, 5, 7))
  x[1, :, :, 2] += 4.0
  x[1, :, 0, :] *= 3.0
  want, keep_s, keep, scale_s, scale = np_eadm(x)
  assert keep_s.sum() == 13 and scale_s == 14 / 13
  alone, *_ = np_eadm(x[:1])
  with x64():
    both = from_map(eadm.eadm(to_map(x)))
    single = from_map(eadm.eadm(to_map(x[:1])))
  np.testing.assert_allclose(both, want, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(single, alone, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(both[0], x[0] * keep[0] * scale_s * scale, rtol=1e-12)
  _, _, keep_alone, scale_s_alone, scale_alone = np_eadm(x[:1])
  np.testing.assert_array_equal(keep_alone[0], keep[0])  # the same elements kept, other factors
  ratio = scale_s * scale / (scale_s_alone * scale_alone)
  assert abs(ratio - 1) > 1e-3
  kept = keep[0] > 0
  np.testing.assert_allclose(both[0][kept] / single[0][kept], ratio, rtol=1e-12)


def test_eadm_gradient_reaches_x_through_both_products_not_through_the_masks():
  """``d sum(w * eadm(x)) / dx = w * keep_s * keep * factors``: the masks and factors are
  constants (the reference assigns them in place); a gradient through the attention would add
  terms everywhere."""
  rng = np.random.default_rng(4)
  x = rng.standard_normal((3, 8, 5, 7))
  x[2, :, :, 4] += 4.0
  w = rng.standard_normal(x.shape)
  _, keep_s, keep, scale_s, scale = np_eadm(x)
  with x64():
    g = jax.grad(lambda m: jnp.sum(to_map(w) * eadm.eadm(m)))(to_map(x))
  np.testing.assert_allclose(from_map(g), w * keep_s[:, None, None, :] * keep * scale_s * scale, rtol=1e-12,
                             atol=1e-12)
  assert np.all(from_map(g)[2, :, :, 4] == 0)


def test_eadm_matches_the_torch_module():
  x = np.maximum(np.random.default_rng(5).standard_normal((6, 16, 4, 25)), 0.0)
  x[0, :, :, 5] += 3.0
  want = TorchEADM()(torch.from_numpy(x)).numpy()
  with x64():
    got = from_map(eadm.eadm(to_map(x)))
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
  np.testing.assert_array_equal(TorchEADM(identity=True)(torch.from_numpy(x)).numpy(), x)


# ----------------------------------------------------------------------------------------
# The encoders' map hook
# ----------------------------------------------------------------------------------------

def tiny_model_config(name: str):
  c = models.default_config()
  c.name = name
  c.hidden_size, c.num_layers = 8, 1
  c.stgcn.hidden_channels, c.stgcn.hidden_dim = 4, 16
  c.dsta.blocks = ((8, 8, 4, 1), (8, 16, 4, 2))
  return c


@pytest.mark.parametrize("name,map_shape", [("stgcn", (4, 4, 25, 16)), ("dsta", (4, 8, 25, 16)),
                                            ("gru", (2, 16, 1, 16))])
def test_encoders_pass_their_last_map_and_pool_it_alike(name, map_shape):
  """``map_transform`` gets the map the encoder pools (ST-GCN, DSTA-Net: the last block's
  output ``[N*M, T', V, D]``; the GRU: its top layer's outputs ``[N, T, 1, 2H]``); the
  identity gives the plain output twice, through the same head; doubling the map doubles the
  pooled feature (a mean, or the GRU's last step)."""
  config = tiny_model_config(name)
  model = models.build_encoder(config, NTU25, num_outputs=8, mlp=True)
  x = jnp.asarray(np.random.default_rng(6).standard_normal((2, 3, 16, 25, 2)), jnp.float32)
  variables = models.init_variables(model, jax.random.key(0), x)
  seen = []

  def record(m):
    seen.append(m.shape)
    return m

  plain = model.apply(variables, x)
  out, out_t = model.apply(variables, x, map_transform=record)
  assert seen == [map_shape]
  # the same function (the head on 2N rows instead of N): float32 rounding of an 8-wide MLP
  np.testing.assert_allclose(np.asarray(out), np.asarray(plain), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out_t), np.asarray(plain), rtol=1e-6, atol=1e-6)
  feature = model.apply(variables, x, features_only=True)
  f, f2 = model.apply(variables, x, features_only=True, map_transform=lambda m: 2.0 * m)
  np.testing.assert_allclose(np.asarray(f), np.asarray(feature), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(f2), 2.0 * np.asarray(feature), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------
# The views against the numpy feeder
# ----------------------------------------------------------------------------------------

def _clips(batch: int, seed: int = 0) -> np.ndarray:
  x = np.random.default_rng(seed).normal(size=(batch, 3, 50, 25, 2)).astype(np.float32)
  x[1:, ..., 1] = 0.0
  return x


@pytest.mark.parametrize("time_flip", [False, True])
def test_views_are_the_feeders_extreme_and_normal_views(time_flip):
  """``aimclr_views`` = the numpy chain on the numbers ``view_params`` draws from the same key:
  the extreme view crop, shear, flip, rotation, noise, blur, axis mask (then the time
  reversal with ``time_flip``), the query and key views crop and shear, each branch its own
  numbers. Float32 against the float64 chain: tests/test_hiclr_views.py's tolerances."""
  x = _clips(8)
  key = jax.random.key(11)
  aug = aimclr_views.extreme_aug_method("12345", time_flip)
  assert aug == ("123456" if time_flip else "12345")
  extreme, q, k = jax.jit(lambda kk, xx: aimclr_views.aimclr_views(kk, xx, layout=NTU25, time_flip=time_flip))(
      key, jnp.asarray(x))
  params = jax.tree.map(np.asarray, common_views.view_params(key, x.shape, (True, False, False), aug_method=aug))
  assert params[1].noise is None and params[2].noise is None
  assert not np.array_equal(params[1].crop_start, params[2].crop_start)
  flips = 0
  for b in range(len(x)):
    e = ref.temporal_crop_with(x[b], int(params[0].crop_start[b]))
    e = ref.shear_with(e, params[0].shear[b])
    e = ref.spatial_flip_with(e, bool(params[0].flip[b]))
    e = ref.rotate_with(e, params[0].angles[b])
    e = ref.gauss_noise_with(e, bool(params[0].noise_on[b]), params[0].noise[b])
    e = ref.gauss_blur_with(e, bool(params[0].blur_on[b]), float(params[0].blur_sigma[b]))
    e = ref.axis_mask_with(e, bool(params[0].axis_mask_on[b]), int(params[0].masked_axis[b]))
    if time_flip:
      e = ref.time_flip_with(e, bool(params[0].time_flip[b]))
      flips += bool(params[0].time_flip[b])
    np.testing.assert_allclose(np.asarray(extreme)[b], e, rtol=1e-4, atol=1e-4)
    for view, p in ((q, params[1]), (k, params[2])):
      n = ref.shear_with(ref.temporal_crop_with(x[b], int(p.crop_start[b])), p.shear[b])
      np.testing.assert_allclose(np.asarray(view)[b], n, rtol=1e-5, atol=1e-5)
  assert not time_flip or 0 < flips < len(x)


def test_first_release_time_reversal_order_is_the_same_distribution():
  """The first release reversed time after the rotation, before noise, blur and axis mask;
  this one reverses last. Same numbers, numpy chain: the first release's view with noise
  ``n`` equals this order's view with the time-reversed noise, and reversed i.i.d. noise has
  the noise's distribution, so the two views have one distribution."""
  x = _clips(1)[0]
  rng = np.random.default_rng(7)
  noise = 0.01 * rng.standard_normal(x.shape)
  base = ref.rotate_with(ref.spatial_flip_with(ref.shear_with(ref.temporal_crop_with(x, 5), rng.uniform(-.5, .5, 6)),
                                               True), np.radians([20.0, 0.5, 0.3]))
  first = ref.axis_mask_with(ref.gauss_blur_with(ref.gauss_noise_with(ref.time_flip_with(base, True), True, noise),
                                                 True, 1.3), True, 1)
  head = ref.time_flip_with(ref.axis_mask_with(ref.gauss_blur_with(
      ref.gauss_noise_with(base, True, noise[:, ::-1]), True, 1.3), True, 1), True)
  np.testing.assert_allclose(first, head, rtol=1e-12, atol=1e-12)


def test_time_reversal_is_the_switch_not_a_digit():
  with pytest.raises(ValueError, match="time_flip switch"):
    aimclr_views.extreme_aug_method("123456")


# ----------------------------------------------------------------------------------------
# The losses against numpy
# ----------------------------------------------------------------------------------------

def np_logits(x, k, queue, temperature=0.07):
  x, k, queue = (np.asarray(a, np.float64) for a in (x, k, queue))
  return np.concatenate([(x * k).sum(1, keepdims=True), x @ queue.T], axis=1) / temperature


def unit_rows(rng, n, d):
  x = rng.normal(size=(n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def loss_inputs(seed, n=8, d=8, k=16):
  rng = np.random.default_rng(seed)
  return tuple(unit_rows(rng, n, d) for _ in range(4)) + (unit_rows(rng, k, d),)


aimclr_loss = jax.jit(aimclr_losses.aimclr_loss, static_argnames=("temperature", "topk", "ddm_weight"))
UNIT_RTOL = 1e-5  # tests/test_hiclr_parity.py's: float32 logits <= 14.3 from 8-term dot products


def close(got, want, what):
  got, want = float(got), float(want)
  assert abs(got - want) <= UNIT_RTOL * max(1.0, abs(want)), (what, got, want)


def test_losses_match_numpy_plain_and_mined():
  q, q_e, q_ed, k, queue = loss_inputs(1)
  lq, le, led = (np_logits(x, k, queue) for x in (q, q_e, q_ed))
  p = np.exp(np_log_softmax(lq))
  info = np.mean(-np_log_softmax(lq)[:, 0])
  l_e = -np.mean(np.sum(p * np_log_softmax(le), axis=1))     # towards the normal view, not chained
  l_ed = -np.mean(np.sum(p * np_log_softmax(led), axis=1))
  positives = np.zeros(lq.shape, bool)
  positives[:, 0] = True
  for x in (q, q_e, q_ed):
    positives[np.arange(len(x)), 1 + np.argmax(np.asarray(x, np.float64) @ np.asarray(queue, np.float64).T, 1)] = True
  assert positives.sum(1).max() > 2
  mined = np.mean(-(np_log_softmax(lq) * positives).sum(1) / positives.sum(1))
  for mining, want_info in ((False, info), (True, mined), (jnp.asarray(True), mined)):
    total, m = aimclr_loss(q, q_e, q_ed, k, queue, mining=mining)
    close(m["loss_info"], want_info, "InfoNCE")
    close(m["loss_e"], l_e, "L_e")
    close(m["loss_ed"], l_ed, "L_ed")
    close(total, want_info + 0.5 * (l_e + l_ed), "total")
    assert float(m["mining"]) == float(bool(mining))
  _, m = aimclr_loss(q, q_e, q_ed, k, queue, ddm_weight=0.25)
  close(m["loss"], info + 0.25 * (l_e + l_ed), "total, weight 0.25")
  assert float(m["acc1"]) == float(np.float32(np.mean(np.argmax(lq, axis=1) == 0)))


def test_gradients_stop_at_the_normal_target_keys_and_queue():
  q, q_e, q_ed, k, queue = loss_inputs(2)

  def grads(name, mining=False):
    fn = lambda *a: aimclr_losses.aimclr_loss(*a, mining=mining)[1][name]  # noqa: E731
    return jax.jit(jax.grad(fn, argnums=(0, 1, 2, 3, 4)))(q, q_e, q_ed, k, queue)

  g_e, g_ed, g_total = grads("loss_e"), grads("loss_ed"), grads("loss", mining=True)
  assert np.all(np.asarray(g_e[0]) == 0) and np.abs(g_e[1]).max() > 1e-3 and np.all(np.asarray(g_e[2]) == 0)
  assert np.all(np.asarray(g_ed[0]) == 0) and np.all(np.asarray(g_ed[1]) == 0) and np.abs(g_ed[2]).max() > 1e-3
  for g in (g_e, g_ed, g_total):
    assert np.all(np.asarray(g[3]) == 0) and np.all(np.asarray(g[4]) == 0)


# ----------------------------------------------------------------------------------------
# Two full steps against the PyTorch model of the reference step
# ----------------------------------------------------------------------------------------

N, T, C, V, M = 4, 16, 3, 25, 2
H, HIDDEN_DIM, D, K = 4, 16, 8, 16
LR, SGD_MOMENTUM, WD, EMA_M, MOCO_T, TOPK = 0.1, 0.9, 1e-4, 0.9, 0.07, 1
STEPS_PER_EPOCH, MINING_EPOCH = 1, 1  # step 1 plain, step 2 mined (compiled_step's steps_per_epoch)
LOSS_TERMS = ("loss", "loss_info", "loss_e", "loss_ed")


def small_config(eadm_mode: str = "threshold"):
  """tests/test_hiclr_parity.py's small setup (ST-GCN h4/d16 with the release's init, no
  dropout, embedding 8, queue 16, batch 4, 16 frames, EMA 0.9 so that its order shows)."""
  config = pretrain_aimclr.get_config("synthetic")
  config.model.name, config.model.init = "stgcn", "normal_0.02"
  config.model.stgcn.hidden_channels, config.model.stgcn.hidden_dim = H, HIDDEN_DIM
  config.model.stgcn.dropout = 0.0
  config.model.embed_dim = D
  config.batch_size, config.moco.queue_size = N, K
  config.moco.momentum, config.moco.temperature = EMA_M, MOCO_T
  config.aimclr.mining_epoch, config.aimclr.topk, config.aimclr.eadm = MINING_EPOCH, TOPK, eadm_mode
  config.optimizer.lr, config.optimizer.momentum, config.optimizer.weight_decay = LR, SGD_MOMENTUM, WD
  config.optimizer.schedule, config.optimizer.milestones = "step", ()
  config.evaluator.name = ""
  return config


def step_views(seed: int) -> np.ndarray:
  """Three fixed views ``[N, 3, C, T, V, M]`` (extreme, q, k), the second person absent but in sample 0."""
  x = np.random.default_rng(seed).normal(size=(N, 3, C, T, V, M)).astype(np.float32)
  x[1:, :, :, :, :, 1] = 0.0
  return x


def patch_views(monkeypatch) -> None:
  """``aimclr_views`` returns the three views carried in the batch's ``"skeleton"``."""
  monkeypatch.setattr(aimclr_views, "aimclr_views", lambda key, x, **kwargs: (x[:, 0], x[:, 1], x[:, 2]))


def batch_of(views, dtype):
  return {"skeleton": views.astype(dtype), "num_frames": np.full((N,), T, np.int32)}


def new_torch_model(layout, identity: bool = False) -> TorchAimCLRStep:
  return TorchAimCLRStep(lambda: TorchSTGCN(graph.layout_graph(layout), hidden_channels=H, hidden_dim=HIDDEN_DIM,
                                            num_class=D, dropout=0.0, mlp=True),
                         D, K, EMA_M, MOCO_T, TorchEADM(identity=identity))


def torch_model(state, config, layout, identity: bool = False) -> TorchAimCLRStep:
  """The JAX state -> the torch model through the renaming rule (checked equal to
  ``cmd_jax.models.torch_key`` on every path), the queue transposed; loaded strictly."""
  model = new_torch_model(layout, identity)
  sd = model.state_dict()
  for prefix, params, stats in (("encoder_q", state.params["encoder"], state.batch_stats),
                                ("encoder_k", state.key_params, state.key_batch_stats)):
    for tree in (params, stats):
      for path, leaf in flat(tree):
        assert renamed(path) == models.torch_key(config.model, path), path
        key = f"{prefix}.{renamed(path)}"
        assert tuple(sd[key].shape) == np.shape(leaf), key
        sd[key] = torch.from_numpy(np.array(leaf, np.float32))
  sd["queue"] = torch.from_numpy(np.ascontiguousarray(np.asarray(state.queues["joint"], np.float32).T))
  sd["queue_ptr"] = torch.tensor([int(state.queue_ptr)], dtype=torch.int64)
  model.load_state_dict(sd, strict=True)
  return model


def torch_trees(model, state) -> dict:
  """The torch model's tensors arranged as the ``MoCoState`` fields (float64 numpy)."""
  sd = {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()}

  def tree(prefix, like):
    return unflat((path, sd[f"{prefix}.{renamed(path)}"]) for path, _ in flat(like))

  return {"params": {"encoder": tree("encoder_q", state.params["encoder"])},
          "key_params": tree("encoder_k", state.key_params),
          "batch_stats": tree("encoder_q", state.batch_stats),
          "key_batch_stats": tree("encoder_k", state.key_batch_stats),
          "queues": {"joint": sd["queue"].T}, "queue_ptr": int(model.queue_ptr[0])}


@pytest.fixture(scope="module")
def setup():
  config = small_config()
  layout = data.layout_of(config.data)
  state = host(cp.create_train_state(config, layout, steps_per_epoch=STEPS_PER_EPOCH))
  return config, layout, state


def test_two_full_steps_match_the_reference_step_float64(setup, monkeypatch):
  """Step 1 plain InfoNCE, step 2 mined; after each, every loss term, both encoders, both BN
  statistics, the queue and the pointer within tests/test_hiclr_parity.py's ``F64_ATOL``
  (its comment derives it: the same encoder, init and scales); EADM drops elements (the
  dropped feature's D3M term differs from the extreme one's), and the alternatives (EMA with
  the post-step parameters, no SGD step, no enqueue, the other InfoNCE, no EADM) are far
  outside the tolerance."""
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
      mining = i + 1 > MINING_EPOCH  # the reference's 1-based epoch i + 1 (steps_per_epoch 1)
      out = train_step(ref_model, opt, [torch.from_numpy(views[:, j].astype(np.float64)) for j in range(3)],
                       mining=mining, topk=TOPK)
      got = torch_trees(ref_model, state)
      print(f" step {i + 1} ({'mined' if mining else 'plain'} InfoNCE):")
      assert float(metrics["mining"]) == float(mining)
      for name in LOSS_TERMS:
        check(name, metrics[name], to_np(out[name]), F64_ATOL)
      check("query encoder after SGD", state.params["encoder"], got["params"]["encoder"], F64_ATOL)
      check("key encoder after the EMA", state.key_params, got["key_params"], F64_ATOL)
      check("query BN running statistics", state.batch_stats, got["batch_stats"], F64_ATOL)
      check("key BN running statistics", state.key_batch_stats, got["key_batch_stats"], F64_ATOL)
      check("queue after the enqueue", state.queues, got["queues"], F64_ATOL)
      assert int(state.queue_ptr) == got["queue_ptr"] == (N * (i + 1)) % K
      post = jax.tree.map(lambda k, q: EMA_M * k + (1 - EMA_M) * q, before.key_params, state.params["encoder"])
      alternatives = {
          "EMA with the post-step query parameters": max_diff(post, got["key_params"]),
          "no SGD step": max_diff(before.params["encoder"], got["params"]["encoder"]),
          "no enqueue": max_diff(before.queues, got["queues"]),
          "the other InfoNCE": abs(float(to_np(out["loss_plain" if mining else "loss_mined"]))
                                   - float(to_np(out["loss_info"]))),
          "no EADM (L_ed = L_e)": abs(float(metrics["loss_e"]) - float(metrics["loss_ed"])),
      }
      print("  alternatives would differ by: " + ", ".join(f"{k} {v:.3g}" for k, v in alternatives.items()))
      for what, diff in alternatives.items():
        # After step 1's SGD the head's last bias (moved by ~70) dominates every feature, so
        # the drop moves L_ed by only ~1.6e-7 at step 2 (0.04 at step 1): 1e2 x the tolerance
        # for that one, 1e4 x for the others.
        assert diff > (1e2 if what.startswith("no EADM") else 1e4) * F64_ATOL, what


# Float32, step 1's forward with the first release's EADM (identity): the loss terms within
# tests/test_hiclr_parity.py's LOSS_RTOL, the EMA, BN statistics and queue within its ATOL
# (its comment derives both for this setup); the dropped feature IS the extreme feature, so
# L_ed == L_e exactly.
def test_first_step_forward_with_the_first_release_eadm_float32(setup, monkeypatch):
  from tests.test_hiclr_parity import ATOL, LOSS_RTOL  # pylint: disable=import-outside-toplevel
  config, layout, state = setup
  config = small_config("identity")
  patch_views(monkeypatch)
  ref_model = torch_model(state, config, layout, identity=True)
  opt = make_optimizer(ref_model, LR, WD, SGD_MOMENTUM)
  views = step_views(30)
  fn = jax.jit(lambda p, s, b, k: aimclr.loss(p, s, b, k, config=config, layout=layout,
                                                steps_per_epoch=STEPS_PER_EPOCH))
  with jax.default_matmul_precision("float32"):
    _, (metrics, updates) = fn(state.params, state, batch_of(views, np.float32), jax.random.PRNGKey(0))
  metrics, new = host(metrics), host(state.replace(**updates))
  out = train_step(ref_model, opt, [torch.from_numpy(views[:, j].copy()) for j in range(3)], mining=False, topk=TOPK)
  got = torch_trees(ref_model, new)
  assert float(metrics["loss_e"]) == float(metrics["loss_ed"])
  for name in LOSS_TERMS:
    check(name, metrics[name], to_np(out[name]), LOSS_RTOL * max(1.0, abs(float(to_np(out[name])))))
  check("key encoder after the EMA", new.key_params, got["key_params"], ATOL)
  check("query BN running statistics", new.batch_stats, got["batch_stats"], ATOL)
  check("key BN running statistics", new.key_batch_stats, got["key_batch_stats"], ATOL)
  check("queue after the enqueue", new.queues, got["queues"], ATOL)
  assert int(new.queue_ptr) == got["queue_ptr"] == N
