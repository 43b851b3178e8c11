"""CrosSCLR's loss terms and momentum rule against numpy formulas and hand-made cases.

``cmd_jax.methods.crossclr.losses``: the single-view sum of per-stream InfoNCE, the cross-view
mining loss (context logits, positives from the partner stream's top-k, the mean of the
positives' log-probabilities, per stream the mean over its partners) for three and two
streams, with and without context, ``topk`` 1 and 2; the masks' positive counts (1 + 2k),
the symmetry of the context block, where gradients reach. ``crossclr.momentum_updates`` on
small trees: the shared head's ``m^S`` in single-view steps, the frozen joint/bone key
encoders in cross-view steps, ``update_all_keys``. The formulas are written here in numpy
(float64) from docs/references.md#crossclr-losses, independently of the code.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmd_jax.methods import crossclr
from cmd_jax.methods.crossclr import losses

T = 0.07
THREE = ("joint", "motion", "bone")
TWO = ("joint", "motion")

# The numpy side is float64, the JAX side float32: logits up to 1 / 0.07 = 14.3 (the
# context products S_u * S_v too) from 8-term dot products (~1e-6 rounding each), log-sum-exps
# over 33 terms, sums of three streams' terms of size ~3-10: ~1e-6 relative; 1e-5 of the value
# leaves 10x and is far below what a wrong positive, partner, normaliser or term changes
# (>= 1e-2 here).
RTOL = 1e-5


def unit_rows(rng, n, d):
  x = rng.normal(size=(n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def inputs(seed, names=THREE, n=6, d=8, k=16):
  rng = np.random.default_rng(seed)
  q = {s: unit_rows(rng, n, d) for s in names}
  key = {s: unit_rows(rng, n, d) for s in names}
  queues = {s: unit_rows(rng, k, d) for s in names}
  return q, key, queues


def np_log_softmax(z):
  m = z.max(axis=1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def np_parts(q, k, queues):
  """``l_pos [N]`` and ``S = q queue^T [N, K]`` per stream, float64."""
  f = lambda a: np.asarray(a, np.float64)  # noqa: E731
  return ({s: (f(q[s]) * f(k[s])).sum(1) for s in q}, {s: f(q[s]) @ f(queues[s]).T for s in q})


def np_single_view(q, k, queues):
  l_pos, l_neg = np_parts(q, k, queues)
  terms = {s: np.mean(-np_log_softmax(np.concatenate([l_pos[s][:, None], l_neg[s]], 1) / T)[:, 0]) for s in q}
  return sum(terms.values()), terms


def np_cross_view(q, k, queues, topk, context):
  """The release's cross_training + processor, row by row: for each pair (u, v) a mask over
  [l_pos_u, S_u, S_u * S_v] marking column 0 and the top-k of S_v in both blocks."""
  l_pos, l_neg = np_parts(q, k, queues)
  names = list(q)
  n, size = l_neg[names[0]].shape
  terms = {}
  for u in names:
    per_pair = []
    for v in names:
      if v == u:
        continue
      blocks = [l_pos[u][:, None], l_neg[u]] + ([l_neg[u] * l_neg[v]] if context else [])
      logits = np.concatenate(blocks, 1) / T
      mask = np.zeros(logits.shape)
      mask[:, 0] = 1
      for row in range(n):
        top = np.argsort(-l_neg[v][row], kind="stable")[:topk]
        mask[row, 1 + top] = 1
        if context:
          mask[row, 1 + size + top] = 1
      per_pair.append(-(np_log_softmax(logits) * mask).sum(1) / mask.sum(1))
    terms[u] = np.mean(sum(per_pair) / len(per_pair))
  return sum(terms.values()), terms


def close(got, want, what):
  got, want = float(got), float(want)
  assert abs(got - want) <= RTOL * max(1.0, abs(want)), f"{what}: {got} vs numpy {want}"


crossclr_loss = jax.jit(losses.crossclr_loss, static_argnames=("temperature", "topk", "context"))


@pytest.mark.parametrize("names", [THREE, TWO])
def test_single_view_loss_is_the_sum_of_per_stream_infonce(names):
  q, k, queues = inputs(1, names)
  want, terms = np_single_view(q, k, queues)
  total, metrics = crossclr_loss(q, k, queues, cross=False, temperature=T)
  close(total, want, "total")
  close(metrics["loss"], want, "logged total")
  for s in names:
    close(metrics[f"loss_{s}"], terms[s], f"loss_{s}")
  assert float(metrics["cross"]) == 0.0


@pytest.mark.parametrize("names,topk,context", [(THREE, 1, True), (THREE, 2, True), (THREE, 1, False),
                                                (TWO, 1, True), (TWO, 2, False)])
def test_cross_view_loss_matches_numpy(names, topk, context):
  q, k, queues = inputs(2, names)
  want, terms = np_cross_view(q, k, queues, topk, context)
  for cross in (True, jnp.asarray(True)):  # eager (a Python flag) and through lax.cond (a traced one)
    fn = losses.crossclr_loss if cross is True else crossclr_loss
    total, metrics = fn(q, k, queues, cross=cross, temperature=T, topk=topk, context=context)
    close(total, want, "total")
    for s in names:
      close(metrics[f"loss_{s}"], terms[s], f"loss_{s}")
    assert float(metrics["cross"]) == 1.0
  # The traced flag False gives the single-view loss from the same compiled function.
  close(crossclr_loss(q, k, queues, cross=jnp.asarray(False), temperature=T, topk=topk, context=context)[0],
        np_single_view(q, k, queues)[0], "traced False")


def test_masks_have_one_plus_two_k_positives_in_both_blocks():
  rng = np.random.default_rng(3)
  s_v = jnp.asarray(rng.normal(size=(5, 12)), jnp.float32)
  for topk in (1, 2, 4):
    mask = np.asarray(losses.cross_view_positives(s_v, topk, context=True))
    assert mask.shape == (5, 1 + 2 * 12)
    assert mask.sum(1).tolist() == [1 + 2 * topk] * 5
    assert mask[:, 0].all()
    np.testing.assert_array_equal(mask[:, 1:13], mask[:, 13:])  # the same entries in S_u and C_uv
    top = np.argsort(-np.asarray(s_v), axis=1)[:, :topk]
    for row in range(5):
      assert sorted(np.flatnonzero(mask[row, 1:13]).tolist()) == sorted(top[row].tolist())
    plain = np.asarray(losses.cross_view_positives(s_v, topk, context=False))
    assert plain.shape == (5, 13) and plain.sum(1).tolist() == [1 + topk] * 5


def test_context_block_is_symmetric_and_carries_gradient_into_both_streams():
  q, k, queues = inputs(4)
  logits, l_negs = losses.stream_logits(q, k, queues, T)
  for u, v in itertools.permutations(THREE, 2):
    uv = losses.cross_view_logits(logits[u], l_negs[u], l_negs[v], T)
    vu = losses.cross_view_logits(logits[v], l_negs[v], l_negs[u], T)
    assert uv.shape == (6, 1 + 32)
    np.testing.assert_array_equal(np.asarray(uv[:, 17:]), np.asarray(vu[:, 17:]))  # C_uv = C_vu, bit for bit

  # d l_jm / d q_motion is non-zero only through the context block (the positives are
  # indices): with context the joint stream's term reaches q_motion, without it does not.
  def joint_term(q_m, context):
    q2 = dict(q, motion=q_m)
    return losses.crossclr_loss(q2, k, queues, cross=True, temperature=T, context=context)[1]["loss_joint"]

  assert float(jnp.abs(jax.grad(joint_term)(q["motion"], True)).max()) > 1e-3
  assert float(jnp.abs(jax.grad(joint_term)(q["motion"], False)).max()) == 0.0
  # Keys and queues get no gradient in either phase.
  for cross in (False, True):
    g = jax.grad(lambda kk, qq: losses.crossclr_loss(q, kk, qq, cross=cross, temperature=T)[0], argnums=(0, 1))(
        k, queues)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g))


def test_cross_view_positives_come_from_the_partner_not_the_own_stream():
  """A hand-made case: the joint query's own nearest queue entry is 0, the motion query's is 3;
  the joint stream's term (partner motion) must count entry 3, not 0, as its positive."""
  d, size = 4, 4
  eye = np.eye(d, dtype=np.float32)
  queues = {"joint": eye, "motion": eye}
  q = {"joint": np.array([[0.9, 0.1, 0.0, 0.42]], np.float32), "motion": np.array([[0.1, 0.0, 0.2, 0.97]], np.float32)}
  q = {s: v / np.linalg.norm(v, axis=1, keepdims=True) for s, v in q.items()}
  k = {s: eye[1:2] for s in q}
  logits, l_negs = losses.stream_logits(q, k, queues, T)
  assert int(np.argmax(l_negs["joint"])) == 0 and int(np.argmax(l_negs["motion"])) == 3
  z = np.asarray(losses.cross_view_logits(logits["joint"], l_negs["joint"], l_negs["motion"], T), np.float64)
  lp = np_log_softmax(z)
  want = -(lp[0, 0] + lp[0, 1 + 3] + lp[0, 1 + size + 3]) / 3
  _, metrics = losses.cross_view_loss(logits, l_negs, temperature=T)
  close(metrics["loss_joint"], want, "joint term with the motion stream's neighbour")


# ----------------------------------------------------------------------------------------
# The momentum rule (crossclr.momentum_updates) on small trees
# ----------------------------------------------------------------------------------------

M = 0.5  # large, so that m, m^2 and m^3 are far apart
# float32 leaves, at most three multiply-adds per leaf (each within 2 u = 1.2e-7 relative of
# the float64 formula, whatever fusing the backend does): 1e-6; m against m^2 differs by ~25%.
EMA_RTOL = 1e-6


def trees(names, seed):
  """Query and key trees in the state's layout: joint with the head (fc_0, fc_2), the others
  with their private fc_0; every leaf a distinct constant."""
  rng = np.random.default_rng(seed)
  leaf = lambda: jnp.asarray(rng.normal(size=(3,)))  # noqa: E731
  def one():
    out = {"joint": {"backbone": leaf(), "fc_0": {"weight": leaf()}, "fc_2": {"weight": leaf()}}}
    out.update({s: {"backbone": leaf(), "fc_0": {"weight": leaf()}} for s in names[1:]})
    return out
  return one(), one()


def ema(k, q, times=1):
  for _ in range(times):
    k = M * k + (1 - M) * q
  return k


@pytest.mark.parametrize("names", [THREE, TWO])
@pytest.mark.parametrize("phase", ["single", "cross", "cross_update_all"])
def test_momentum_rule_per_phase(names, phase):
  q, k = trees(names, 5)
  updated_all = phase != "cross"
  flags = {s: True if s == "motion" else jnp.asarray(updated_all) for s in names}
  new = crossclr.momentum_updates(k, q, names, flags, M)
  head_times = len(names) if updated_all else 1
  for layer in ("fc_0", "fc_2"):  # the shared head H_k: m^S (single-view) or m (cross-view, motion only)
    np.testing.assert_allclose(new["joint"][layer]["weight"], ema(k["joint"][layer]["weight"],
                                                                 q["joint"][layer]["weight"], head_times), rtol=EMA_RTOL)
    assert not np.allclose(new["joint"][layer]["weight"], ema(k["joint"][layer]["weight"],
                                                              q["joint"][layer]["weight"], head_times + 1))
  for s in names:
    own = [("backbone",), ("fc_0", "weight")] if s != "joint" else [("backbone",)]
    for path in own:
      get = lambda t, s=s, path=path: t[s][path[0]] if len(path) == 1 else t[s][path[0]][path[1]]  # noqa: E731
      if updated_all or s == "motion":
        np.testing.assert_allclose(get(new), ema(get(k), get(q)), rtol=EMA_RTOL)
      else:  # frozen: the very same values
        np.testing.assert_array_equal(np.asarray(get(new)), np.asarray(get(k)))
