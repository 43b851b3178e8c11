"""Tests for cmd_jax.losses against independent numpy formulas and hand-worked cases.

Follows docs/references.md#cmd-step-order steps 4-5 and #cmd-quirks item 4. The numpy helpers
below (softmax, log-softmax, cross-entropy, top-k, KLDivLoss 'batchmean') are written from the
PyTorch definitions, in float64, without using the code under test.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmd_jax import losses
from cmd_jax.methods.cmd import losses as cmd_losses

MODALITIES = ("joint", "motion", "bone")

# Tolerances: the JAX side is float32 (unit roundoff u = 2^-24 = 6e-8), the numpy side
# float64, so every bound is float32 rounding of the compared quantity, in any summation order
# (AVX2 / AVX-512 kernels, thread counts). A similarity of two unit D-vectors (D <= 16) carries
# <= D u = 1e-6 absolute; a loss or KL term is a log-sum-exp of logits of size <= 1/tau, so it
# carries a few u of 1/tau plus, where the similarities are computed, up to 1e-6 / tau. InfoNCE
# losses (tau 0.07, values 1-50) are compared with rtol 1e-5 (~170 u of the value); KL terms
# whose teacher logits reach 1/0.05 = 20 with rtol 2e-4 (5e-4 where the float32 similarities
# of the step feed them, vs the float64 ones), ~10x the 1e-6 / 0.05 = 2e-5 that a logit can
# carry; measured errors are <= 1e-6 relative. Each is far below the change a wrong formula,
# index or temperature makes (>= 1e-3).


# ---------------------------------------------------------------------------------------------
# Independent numpy versions.

def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(axis=-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def np_softmax(x):
  return np.exp(np_log_softmax(x))


def np_normalize(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_info_nce(q, k, queue_rows, temperature):
  """CrossEntropy(target 0) of [q.k, q @ queue] / T, plus top-1 / top-5 accuracy."""
  q, k, queue_rows = (np.asarray(a, np.float64) for a in (q, k, queue_rows))
  logits = np.concatenate([(q * k).sum(-1, keepdims=True), q @ queue_rows.T], 1) / temperature
  loss = -np_log_softmax(logits)[:, 0].mean()
  order = np.argsort(-logits, axis=1, kind="stable")
  acc1 = (order[:, 0] == 0).mean()
  acc5 = (order[:, :5] == 0).any(axis=1).mean()
  return loss, acc1, acc5


def np_topk_indices(x, k):
  return np.argsort(-np.asarray(x), axis=-1, kind="stable")[:, :k]


def np_kl_batchmean(teacher_values, student_values, tt, ts):
  """torch KLDivLoss(reduction='batchmean')(log_softmax(s/ts), softmax(v/tt))."""
  p = np_softmax(np.asarray(teacher_values, np.float64) / tt)
  log_q = np_log_softmax(np.asarray(student_values, np.float64) / ts)
  pointwise = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - log_q), 0.0)
  return pointwise.sum() / p.shape[0]


def np_cmd_terms(teacher, student, topk, tt=0.05, ts=0.1, directions=None):
  names = list(teacher)
  directions = directions or [(a, b) for a in names for b in names if a != b]
  out = {}
  for a, b in directions:
    idx = np_topk_indices(teacher[a], topk)
    v = np.take_along_axis(np.asarray(teacher[a], np.float64), idx, 1)
    s = np.take_along_axis(np.asarray(student[b], np.float64), idx, 1)
    out[f"kl_{a}_to_{b}"] = np_kl_batchmean(v, s, tt, ts)
  return out


def random_unit(rng, shape):
  return np_normalize(rng.standard_normal(shape)).astype(np.float32)


def random_sims(rng, n, k, names=MODALITIES):
  """Cosine-like similarities in [-1, 1], distinct values (no top-k ties)."""
  return {m: np.tanh(rng.standard_normal((n, k))).astype(np.float32) for m in names}


# ---------------------------------------------------------------------------------------------
# InfoNCE.

def test_info_nce_hand_worked_case():
  # q = k = e1; queue rows e2 and -e1 -> l_pos = 1, l_neg = [0, -1].
  q = jnp.array([[1.0, 0.0]])
  queue = jnp.array([[0.0, 1.0], [-1.0, 0.0]])
  loss, metrics = losses.info_nce(q, q, queue, temperature=1.0)
  # logits [1, 0, -1]: -log(e / (e + 1 + 1/e)) = log(1 + e^-1 + e^-2)
  # Absolute bounds: the loss is log-sum-exp minus the positive logit, a few float32 roundings
  # of the logits' size (<= 2 here, 1.2e-7 each), whatever the loss's own size (0.14 below).
  assert float(loss) == pytest.approx(math.log(1 + math.exp(-1) + math.exp(-2)), rel=1e-6, abs=1e-6)
  assert float(metrics["acc1"]) == 1.0 and float(metrics["acc5"]) == 1.0
  loss, _ = losses.info_nce(q, q, queue, temperature=0.5)  # logits [2, 0, -2]
  assert float(loss) == pytest.approx(math.log(1 + math.exp(-2) + math.exp(-4)), rel=1e-6, abs=1e-6)
  # A key orthogonal to q and a negative equal to q: positive logit 0 loses to 1/T.
  loss, metrics = losses.info_nce(q, jnp.array([[0.0, 1.0]]), jnp.array([[1.0, 0.0], [0.0, 1.0]]),
                                  temperature=1.0)
  assert float(loss) == pytest.approx(math.log(1 + math.e + 1) - 0.0, rel=1e-6, abs=1e-6)
  assert float(metrics["acc1"]) == 0.0 and float(metrics["acc5"]) == 1.0


@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
def test_info_nce_matches_numpy(temperature):
  rng = np.random.default_rng(0)
  n, d, k = 32, 16, 64
  q = random_unit(rng, (n, d))
  # Positives of varying quality so that accuracy is neither 0 nor 1.
  noise = rng.uniform(0.0, 3.0, (n, 1))
  key = np_normalize(q + noise * rng.standard_normal((n, d))).astype(np.float32)
  queue = random_unit(rng, (k, d))
  loss, metrics = jax.jit(losses.info_nce, static_argnums=3)(q, key, queue, temperature)
  want_loss, want1, want5 = np_info_nce(q, key, queue, temperature)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["loss"]), want_loss, rtol=1e-5)
  assert float(metrics["acc1"]) == pytest.approx(want1)
  assert float(metrics["acc5"]) == pytest.approx(want5)
  assert 0.0 < want1 < want5 <= 1.0


def test_similarities_are_q_times_queue_transpose():
  rng = np.random.default_rng(1)
  q, queue = random_unit(rng, (5, 8)), random_unit(rng, (11, 8))
  sims = losses.similarities(q, queue)
  assert sims.shape == (5, 11)
  np.testing.assert_allclose(sims, q.astype(np.float64) @ queue.T, atol=1e-6)  # 8-term unit dots: <= 8 u
  # bf16 inputs are computed in float32.
  assert losses.similarities(jnp.asarray(q, jnp.bfloat16), queue).dtype == jnp.float32


def test_l2_normalize_matches_torch_semantics():
  x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
  # Exact arithmetic: the norm is 5, and 3/5, 4/5 are correctly rounded (default rtol 1e-7).
  np.testing.assert_allclose(losses.l2_normalize(jnp.asarray(x)), [[0.6, 0.8], [0.0, 0.0]])


# ---------------------------------------------------------------------------------------------
# CMD distillation.

def test_cmd_distillation_hand_worked_case():
  # Two modalities, N=1, K=3, topk=2, both temperatures 1.
  teacher = {"joint": jnp.array([[0.9, 0.1, 0.5]]), "motion": jnp.array([[0.0, 0.3, 0.2]])}
  student = {"joint": jnp.array([[0.6, 0.8, 0.1]]), "motion": jnp.array([[0.2, 0.7, 0.4]])}
  loss, metrics = cmd_losses.cmd_distillation(teacher, student, 2, 1.0, 1.0)
  sig = lambda z: 1.0 / (1.0 + math.exp(-z))

  def kl2(t0, t1, s0, s1):  # two-entry KL(softmax(t) || softmax(s))
    p0, q0 = sig(t0 - t1), sig(s0 - s1)
    return p0 * math.log(p0 / q0) + (1 - p0) * math.log((1 - p0) / (1 - q0))

  # joint teacher keeps columns {0, 2} (values 0.9, 0.5); motion student there: 0.2, 0.4.
  j2m = kl2(0.9, 0.5, 0.2, 0.4)
  # motion teacher keeps columns {1, 2} (values 0.3, 0.2); joint student there: 0.8, 0.1.
  m2j = kl2(0.3, 0.2, 0.8, 0.1)
  # KLs of ~0.05 from log-probabilities of size ~1: a few float32 roundings of 1 (abs 1e-6).
  assert float(metrics["kl_joint_to_motion"]) == pytest.approx(j2m, rel=1e-5, abs=1e-6)
  assert float(metrics["kl_motion_to_joint"]) == pytest.approx(m2j, rel=1e-5, abs=1e-6)
  assert float(loss) == pytest.approx(j2m + m2j, rel=1e-5, abs=1e-6)
  assert float(metrics["distillation"]) == pytest.approx(j2m + m2j, rel=1e-5, abs=1e-6)
  assert set(metrics) == {"kl_joint_to_motion", "kl_motion_to_joint", "distillation"}


@pytest.mark.parametrize("topk", [1, 7, 32, 64])
def test_cmd_distillation_each_term_matches_numpy(topk):
  rng = np.random.default_rng(topk)
  teacher, student = random_sims(rng, 8, 64), random_sims(rng, 8, 64)
  loss, metrics = jax.jit(cmd_losses.cmd_distillation, static_argnums=2)(teacher, student, topk)
  want = np_cmd_terms(teacher, student, topk)
  assert list(want) == ["kl_joint_to_motion", "kl_joint_to_bone", "kl_motion_to_joint",
                        "kl_motion_to_bone", "kl_bone_to_joint", "kl_bone_to_motion"]
  for name, value in want.items():
    np.testing.assert_allclose(float(metrics[name]), value, rtol=2e-4, atol=1e-6)
    assert value >= 0.0
  np.testing.assert_allclose(float(loss), sum(want.values()), rtol=2e-4)
  assert len(metrics) == 7


def test_cmd_distillation_gathers_teacher_indices_on_the_other_students_sims():
  rng = np.random.default_rng(5)
  n, k, topk = 4, 32, 8
  teacher, student = random_sims(rng, n, k), random_sims(rng, n, k)
  _, base = cmd_losses.cmd_distillation(teacher, student, topk)
  idx_joint = np_topk_indices(teacher["joint"], topk)
  # Changing the motion student OUTSIDE the joint teacher's top-k leaves J->M unchanged...
  outside = np.ones((n, k), bool)
  np.put_along_axis(outside, idx_joint, False, axis=1)
  perturbed = dict(student, motion=np.where(outside, student["motion"] + 5.0, student["motion"]))
  _, m = cmd_losses.cmd_distillation(teacher, perturbed, topk)
  np.testing.assert_allclose(m["kl_joint_to_motion"], base["kl_joint_to_motion"], rtol=1e-6)
  # ... and changing it INSIDE changes it.
  perturbed = dict(student, motion=np.where(outside, student["motion"],
                                            rng.standard_normal((n, k)).astype(np.float32)))
  _, m = cmd_losses.cmd_distillation(teacher, perturbed, topk)
  assert abs(float(m["kl_joint_to_motion"]) - float(base["kl_joint_to_motion"])) > 1e-3
  # J->M reads neither the joint student nor the motion teacher.
  changed = dict(student, joint=rng.standard_normal((n, k)).astype(np.float32))
  _, m = cmd_losses.cmd_distillation(teacher, changed, topk)
  np.testing.assert_allclose(m["kl_joint_to_motion"], base["kl_joint_to_motion"], rtol=1e-6)
  changed = dict(teacher, motion=rng.standard_normal((n, k)).astype(np.float32))
  _, m = cmd_losses.cmd_distillation(changed, student, topk)
  np.testing.assert_allclose(m["kl_joint_to_motion"], base["kl_joint_to_motion"], rtol=1e-6)
  # Gathering the motion student at the MOTION teacher's (or its own) indices is different.
  for wrong_src in (teacher["motion"], student["motion"]):
    idx = np_topk_indices(wrong_src, topk)
    v = np.take_along_axis(teacher["joint"], idx_joint, 1)
    wrong = np_kl_batchmean(v, np.take_along_axis(student["motion"], idx, 1), 0.05, 0.1)
    assert abs(wrong - float(base["kl_joint_to_motion"])) > 1e-3


def test_cmd_distillation_is_independent_of_the_topk_order():
  rng = np.random.default_rng(7)
  n, k, topk = 6, 40, 12
  teacher, student = random_sims(rng, n, k), random_sims(rng, n, k)
  _, metrics = cmd_losses.cmd_distillation(teacher, student, topk)
  for a, b in cmd_losses.all_directions(MODALITIES):
    idx = np_topk_indices(teacher[a], topk)
    idx = np.stack([row[rng.permutation(topk)] for row in idx])  # shuffled per sample
    v = np.take_along_axis(np.asarray(teacher[a], np.float64), idx, 1)
    s = np.take_along_axis(np.asarray(student[b], np.float64), idx, 1)
    np.testing.assert_allclose(float(metrics[f"kl_{a}_to_{b}"]),
                               np_kl_batchmean(v, s, 0.05, 0.1), rtol=2e-4)


def test_cmd_distillation_is_zero_when_student_matches_teacher():
  rng = np.random.default_rng(9)
  sims = np.tanh(rng.standard_normal((5, 30))).astype(np.float32)
  same = {m: sims for m in MODALITIES}
  loss, metrics = cmd_losses.cmd_distillation(same, same, 10, 0.1, 0.1)
  # Both sides are the same float32 logits (2 * s / 0.1 == s / 0.05 exactly): 0.0 here; the
  # bounds only allow a KL of a few u of the logits' size (10, 20) per term.
  assert abs(float(loss)) < 1e-6
  # tau_t = 0.05, tau_s = 0.1: a student with twice the teacher's similarities matches it.
  loss, _ = cmd_losses.cmd_distillation(same, {m: 2 * sims for m in MODALITIES}, 10, 0.05, 0.1)
  assert abs(float(loss)) < 1e-5
  # ... and with the raw similarities it does not.
  loss, _ = cmd_losses.cmd_distillation(same, same, 10, 0.05, 0.1)
  assert float(loss) > 1e-3


def test_cmd_distillation_directions_restrict_the_terms():
  rng = np.random.default_rng(11)
  teacher, student = random_sims(rng, 4, 16), random_sims(rng, 4, 16)
  directions = [("joint", "bone"), ("bone", "motion")]
  loss, metrics = cmd_losses.cmd_distillation(teacher, student, 5, directions=directions)
  want = np_cmd_terms(teacher, student, 5, directions=directions)
  assert set(metrics) == {"kl_joint_to_bone", "kl_bone_to_motion", "distillation"}
  np.testing.assert_allclose(float(loss), sum(want.values()), rtol=2e-4)
  # Two modalities: two terms; one modality: no terms, zero loss.
  two = {m: teacher[m] for m in ("joint", "motion")}
  _, metrics = cmd_losses.cmd_distillation(two, {m: student[m] for m in two}, 5)
  assert set(metrics) == {"kl_joint_to_motion", "kl_motion_to_joint", "distillation"}
  loss, _ = cmd_losses.cmd_distillation({"joint": teacher["joint"]}, {"joint": student["joint"]}, 5)
  assert float(loss) == 0.0


def test_cmd_distillation_approximate_option():
  rng = np.random.default_rng(13)
  teacher, student = random_sims(rng, 4, 128), random_sims(rng, 4, 128)
  exact, _ = cmd_losses.cmd_distillation(teacher, student, 32)
  approx, metrics = cmd_losses.cmd_distillation(teacher, student, 32, approximate_recall=0.95)
  assert np.isfinite(float(approx)) and len(metrics) == 7
  if jax.default_backend() == "cpu":  # approx_max_k is exact on CPU
    np.testing.assert_allclose(float(approx), float(exact), rtol=1e-6)


def test_cmd_distillation_errors():
  sims = {m: jnp.zeros((2, 8)) for m in MODALITIES}
  with pytest.raises(ValueError, match="topk must be an int in"):
    cmd_losses.cmd_distillation(sims, sims, 9)
  with pytest.raises(ValueError, match="topk must be an int in"):
    cmd_losses.cmd_distillation(sims, sims, 0)
  with pytest.raises(ValueError, match="differ"):
    cmd_losses.cmd_distillation(sims, {"joint": sims["joint"]}, 4)
  with pytest.raises(ValueError, match="same shape"):
    cmd_losses.cmd_distillation(sims, dict(sims, bone=jnp.zeros((2, 9))), 4)
  with pytest.raises(ValueError, match="not in"):
    cmd_losses.cmd_distillation(sims, sims, 4, directions=[("joint", "depth")])
  with pytest.raises(ValueError, match="duplicate"):
    cmd_losses.cmd_distillation(sims, sims, 4, directions=[("joint", "bone"), ("joint", "bone")])
  with pytest.raises(ValueError, match="approximate_recall"):
    cmd_losses.cmd_distillation(sims, sims, 4, approximate_recall=1.5)


# ---------------------------------------------------------------------------------------------
# The combined loss.

def test_cmd_loss_matches_numpy_sum_of_terms():
  rng = np.random.default_rng(17)
  n, d, k, topk = 8, 16, 32, 10
  queries = {m: random_unit(rng, (n, d)) for m in MODALITIES}
  keys = {m: np_normalize(queries[m] + rng.standard_normal((n, d))).astype(np.float32)
          for m in MODALITIES}
  queues = {m: random_unit(rng, (k, d)) for m in MODALITIES}
  fn = jax.jit(lambda q, kk, qu: cmd_losses.cmd_loss(q, kk, qu, topk=topk, cmd_weight=0.5))
  total, metrics = fn(queries, keys, queues)
  want = 0.0
  for m in MODALITIES:
    loss, acc1, acc5 = np_info_nce(queries[m], keys[m], queues[m], 0.07)
    np.testing.assert_allclose(float(metrics[f"loss_{m}"]), loss, rtol=1e-5)
    assert float(metrics[f"acc1_{m}"]) == pytest.approx(acc1)
    assert float(metrics[f"acc5_{m}"]) == pytest.approx(acc5)
    want += loss
  teacher = {m: keys[m].astype(np.float64) @ queues[m].T for m in MODALITIES}
  student = {m: queries[m].astype(np.float64) @ queues[m].T for m in MODALITIES}
  terms = np_cmd_terms(teacher, student, topk)
  for name, value in terms.items():
    np.testing.assert_allclose(float(metrics[name]), value, rtol=5e-4, atol=1e-6)
  np.testing.assert_allclose(float(metrics["loss_cmd"]), 0.5 * sum(terms.values()), rtol=5e-4)
  want += 0.5 * sum(terms.values())
  np.testing.assert_allclose(float(total), want, rtol=2e-4)
  np.testing.assert_allclose(float(metrics["loss"]), want, rtol=2e-4)


def test_single_modality_moco_has_no_distillation():
  rng = np.random.default_rng(19)
  q, kk, queue = random_unit(rng, (4, 8)), random_unit(rng, (4, 8)), random_unit(rng, (16, 8))
  want, _, _ = np_info_nce(q, kk, queue, 0.07)
  for loss, metrics in (cmd_losses.moco_loss({"joint": q}, {"joint": kk}, {"joint": queue}),
                        cmd_losses.cmd_loss({"joint": q}, {"joint": kk}, {"joint": queue}, topk=4)):
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(metrics["loss_cmd"]) == 0.0
    assert not any(name.startswith("kl_") for name in metrics)
  # Three modalities with cmd_weight 0: plain MoCo, no top-k needed.
  three = lambda x: {m: x for m in MODALITIES}
  loss, metrics = cmd_losses.cmd_loss(three(q), three(kk), three(queue), topk=None, cmd_weight=0.0)
  np.testing.assert_allclose(float(loss), 3 * want, rtol=1e-5)
  with pytest.raises(ValueError, match="topk is required"):
    cmd_losses.cmd_loss(three(q), three(kk), three(queue), topk=None)


# ---------------------------------------------------------------------------------------------
# Gradients.

N, F, D, K, TOPK = 4, 3, 5, 8, 4
TAU, TAU_T, TAU_S = 0.07, 0.05, 0.1


def _tiny_setting(seed=0):
  rng = np.random.default_rng(seed)
  x = {m: rng.standard_normal((N, F)).astype(np.float32) for m in MODALITIES}
  x_key = {m: (x[m] + 0.3 * rng.standard_normal((N, F))).astype(np.float32) for m in MODALITIES}
  w_q = {m: rng.standard_normal((F, D)).astype(np.float32) for m in MODALITIES}
  w_k = {m: (w_q[m] + 0.1 * rng.standard_normal((F, D))).astype(np.float32) for m in MODALITIES}
  queues = {m: random_unit(rng, (K, D)) for m in MODALITIES}
  return x, x_key, w_q, w_k, queues


def _jax_loss(w_q, w_k, queues, x, x_key):
  queries = {m: losses.l2_normalize(x[m] @ w_q[m]) for m in MODALITIES}
  keys = {m: losses.l2_normalize(x_key[m] @ w_k[m]) for m in MODALITIES}
  loss, _ = cmd_losses.cmd_loss(queries, keys, queues, topk=TOPK, temperature=TAU,
                            teacher_temperature=TAU_T, student_temperature=TAU_S)
  return loss


def _np_loss(w_q, w_k, queues, x, x_key):
  total = 0.0
  teacher, student = {}, {}
  for m in MODALITIES:
    q = np_normalize(np.asarray(x[m], np.float64) @ w_q[m])
    k = np_normalize(np.asarray(x_key[m], np.float64) @ w_k[m])
    total += np_info_nce(q, k, queues[m], TAU)[0]
    teacher[m] = k @ np.asarray(queues[m], np.float64).T
    student[m] = q @ np.asarray(queues[m], np.float64).T
  return total + sum(np_cmd_terms(teacher, student, TOPK, TAU_T, TAU_S).values())


def test_gradient_flows_only_to_the_query_side():
  x, x_key, w_q, w_k, queues = _tiny_setting()
  g_q, g_k, g_queue = jax.jit(jax.grad(_jax_loss, argnums=(0, 1, 2)))(w_q, w_k, queues, x, x_key)
  for m in MODALITIES:
    np.testing.assert_array_equal(g_k[m], 0.0)
    np.testing.assert_array_equal(g_queue[m], 0.0)
    assert float(jnp.abs(g_q[m]).max()) > 1e-3
  # Gradient w.r.t. the keys and the teacher similarities themselves is zero too.
  rng = np.random.default_rng(1)
  teacher, student = random_sims(rng, N, K), random_sims(rng, N, K)
  g_t, g_s = jax.jit(jax.grad(lambda t, s: cmd_losses.cmd_distillation(t, s, TOPK)[0],
                               argnums=(0, 1)))(teacher, student)
  for m in MODALITIES:
    np.testing.assert_array_equal(g_t[m], 0.0)
    assert float(jnp.abs(g_s[m]).max()) > 1e-3
  q, kk, queue = random_unit(rng, (N, D)), random_unit(rng, (N, D)), random_unit(rng, (K, D))
  g = jax.grad(lambda *a: losses.info_nce(*a, TAU)[0], argnums=(0, 1, 2))(q, kk, queue)
  np.testing.assert_array_equal(g[1], 0.0)
  np.testing.assert_array_equal(g[2], 0.0)
  assert float(jnp.abs(g[0]).max()) > 1e-3


def test_student_gradient_matches_the_analytic_kl_gradient():
  # d KL_batchmean / d s = (softmax(s / tau_s) - p) / (tau_s * N) at the gathered entries.
  rng = np.random.default_rng(3)
  teacher, student = random_sims(rng, N, K), random_sims(rng, N, K)
  directions = [("joint", "motion")]
  g = jax.grad(lambda s: cmd_losses.cmd_distillation(teacher, s, TOPK, TAU_T, TAU_S,
                                                 directions=directions)[0])(student)
  idx = np_topk_indices(teacher["joint"], TOPK)
  p = np_softmax(np.take_along_axis(np.asarray(teacher["joint"], np.float64), idx, 1) / TAU_T)
  s = np.take_along_axis(np.asarray(student["motion"], np.float64), idx, 1)
  want = np.zeros((N, K))
  np.put_along_axis(want, idx, (np_softmax(s / TAU_S) - p) / (TAU_S * N), axis=1)
  np.testing.assert_allclose(g["motion"], want, atol=1e-5)  # entries <= 1/(tau_s N) = 2.5: 1e-5 is ~70 u of it
  np.testing.assert_array_equal(g["joint"], 0.0)
  np.testing.assert_array_equal(g["bone"], 0.0)


def test_query_gradient_matches_finite_differences():
  x, x_key, w_q, w_k, queues = _tiny_setting(seed=2)
  np.testing.assert_allclose(float(_jax_loss(w_q, w_k, queues, x, x_key)),
                             _np_loss(w_q, w_k, queues, x, x_key), rtol=1e-5)
  grads = jax.jit(jax.grad(_jax_loss))(w_q, w_k, queues, x, x_key)
  eps = 1e-6
  w64 = {m: np.asarray(w, np.float64) for m, w in w_q.items()}
  for m in MODALITIES:
    fd = np.zeros((F, D))
    for i, j in itertools.product(range(F), range(D)):
      plus = {**w64, m: w64[m].copy()}
      minus = {**w64, m: w64[m].copy()}
      plus[m][i, j] += eps
      minus[m][i, j] -= eps
      fd[i, j] = (_np_loss(plus, w_k, queues, x, x_key)
                  - _np_loss(minus, w_k, queues, x, x_key)) / (2 * eps)
    # float32 backward vs a float64 central difference (truncation ~eps^2): loose on purpose, a
    # wrong gradient (a missing stop-gradient or term) is off by O(1) of its size.
    np.testing.assert_allclose(grads[m], fd, rtol=2e-3, atol=2e-4)
