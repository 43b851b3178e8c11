"""CMD's losses: the cross-modal mutual distillation and the total pretraining loss.

The per-modality InfoNCE is MoCo's (``cmd_jax.losses``). For every ordered modality pair
(A, B), teacher A's momentum-key similarities to A's queue pick ``topk`` queue rows; the
student is modality B's QUERY similarities to B's queue at those same rows (row j is the
same sample in every queue, ``cmd_jax.queue``); the term is
``KL(softmax(v_A / tau_t) || softmax(s_B / tau_s))`` with PyTorch's
``KLDivLoss(reduction='batchmean')``: summed over the top-k entries, averaged over the
batch. ``cmd_loss`` adds the unweighted six terms (three modalities), times ``cmd_weight``,
to the sum of the per-modality InfoNCE losses. Pure ``jnp`` functions of arrays returning
``(loss, metrics)``; gradients reach only the query side.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp

from cmd_jax.losses import Metrics, as_int, at_least_float32, info_nce_from_similarities, similarities

Direction = tuple[str, str]


def all_directions(modalities: Iterable[str]) -> list[Direction]:
  """Every ordered pair (teacher, student) of distinct modalities, teacher-major.

  For ``("joint", "motion", "bone")``: J->M, J->B, M->J, M->B, B->J, B->M, the
  reference's order.
  """
  return list(itertools.permutations(list(modalities), 2))


def kl_name(teacher: str, student: str) -> str:
  """The metric name of the directed distillation term, e.g. ``kl_joint_to_motion``."""
  return f"kl_{teacher}_to_{student}"


def cmd_distillation(
    teacher_sims: Mapping[str, jax.Array],
    student_sims: Mapping[str, jax.Array],
    topk: int,
    teacher_temperature: float = 0.05,
    student_temperature: float = 0.1,
    *,
    directions: Sequence[Direction] | None = None,
    approximate_recall: float | None = None,
) -> tuple[jax.Array, Metrics]:
  """The cross-modal mutual distillation loss (docs/references.md#cmd-step-order, step 5).

  Args:
    teacher_sims: modality -> ``[N, K]``, that modality's KEY (momentum) embeddings against
      its own queue. Stop-gradient'ed here.
    student_sims: modality -> ``[N, K]``, that modality's QUERY embeddings against its own
      queue (the InfoNCE ``l_neg``). Gradients flow through these.
    topk: how many queue entries the teacher keeps (8192 of 16384 in the reference).
    teacher_temperature, student_temperature: tau_t (0.05) and tau_s (0.1).
    directions: the (teacher, student) pairs to include; default ``all_directions`` of the
      modalities in ``teacher_sims`` order (six terms for three modalities). For ablations.
    approximate_recall: None (default) = exact ``lax.top_k``, as the reference's
      ``torch.topk``. A float in (0, 1] uses ``lax.approx_max_k`` with that recall target
      instead: an explicit, non-reference option for accelerators where top-k is slow.

  For each teacher A: ``v_A, idx_A = top_k(teacher_sims[A], topk)``; for each student B:
  ``s = take_along_axis(student_sims[B], idx_A)`` and the term is
  ``(1/N) sum_n sum_j p[n,j] (log p[n,j] - log_softmax(s / tau_s)[n,j])`` with
  ``p = softmax(v_A / tau_t)``. The order of the top-k entries is irrelevant.

  Returns ``(sum of the directed terms (unweighted), metrics)`` with one metric per term
  (``kl_name(A, B)``) and their sum as ``"distillation"``.
  """
  if set(teacher_sims) != set(student_sims):
    raise ValueError(f"cmd_distillation: teacher modalities {sorted(teacher_sims)} differ from "
                     f"student modalities {sorted(student_sims)}")
  if not teacher_sims:
    raise ValueError("cmd_distillation: no modalities given")
  all_shapes = {f"{side} {name}": tuple(sims[name].shape)
                for side, sims in (("teacher", teacher_sims), ("student", student_sims))
                for name in sims}
  first = next(iter(all_shapes.values()))
  if len(first) != 2 or any(shape != first for shape in all_shapes.values()):
    raise ValueError(f"cmd_distillation: every similarity matrix must have the same shape "
                     f"[N, K]; got {all_shapes}")
  size = first[1]
  topk = as_int(topk, "cmd_distillation: topk")
  if not 0 < topk <= size:
    raise ValueError(f"cmd_distillation: topk must be an int in [1, {size}] (the queue size), "
                     f"got {topk!r}")
  if approximate_recall is not None and not 0.0 < approximate_recall <= 1.0:
    raise ValueError(f"cmd_distillation: approximate_recall must be in (0, 1], got "
                     f"{approximate_recall}")
  if directions is None:
    directions = all_directions(teacher_sims)
  directions = [tuple(d) for d in directions]
  if len(set(directions)) != len(directions):
    raise ValueError(f"cmd_distillation: duplicate directions in {directions}")
  for teacher, student in directions:
    if teacher not in teacher_sims or student not in student_sims:
      raise ValueError(f"cmd_distillation: direction ({teacher!r}, {student!r}) names a modality "
                       f"not in {list(teacher_sims)}")

  # One top-k per teacher modality, shared by its student directions.
  teachers = {}
  for teacher in dict.fromkeys(t for t, _ in directions):
    sims = jax.lax.stop_gradient(at_least_float32(teacher_sims[teacher]))
    if approximate_recall is None:
      values, indices = jax.lax.top_k(sims, topk)
    else:
      values, indices = jax.lax.approx_max_k(sims, topk, recall_target=approximate_recall)
    log_p = jax.nn.log_softmax(values / teacher_temperature, axis=-1)
    teachers[teacher] = (indices, log_p)

  metrics: Metrics = {}
  total = jnp.zeros((), jnp.float32)
  for teacher, student in directions:
    indices, log_p = teachers[teacher]
    s = jnp.take_along_axis(at_least_float32(student_sims[student]), indices, axis=-1)
    log_q = jax.nn.log_softmax(s / student_temperature, axis=-1)
    term = jnp.sum(jnp.exp(log_p) * (log_p - log_q)) / s.shape[0]
    metrics[kl_name(teacher, student)] = term
    total = total + term
  metrics["distillation"] = total
  return total, metrics


def moco_loss(queries: Mapping[str, jax.Array], keys: Mapping[str, jax.Array],
              queues: Mapping[str, jax.Array],
              temperature: float = 0.07) -> tuple[jax.Array, Metrics]:
  """Sum of the per-modality InfoNCE losses, no distillation (plain MoCo, any modality set).

  ``queries``, ``keys``: modality -> ``[N, D]`` normalised embeddings; ``queues``:
  modality -> ``[K, D]``. Metrics: ``loss_{m}``, ``acc1_{m}``, ``acc5_{m}`` per modality
  and the total as ``"loss"``.
  """
  return cmd_loss(queries, keys, queues, temperature=temperature, topk=None, cmd_weight=0.0)


def cmd_loss(
    queries: Mapping[str, jax.Array],
    keys: Mapping[str, jax.Array],
    queues: Mapping[str, jax.Array],
    *,
    topk: int | None,
    temperature: float = 0.07,
    teacher_temperature: float = 0.05,
    student_temperature: float = 0.1,
    cmd_weight: float = 1.0,
    directions: Sequence[Direction] | None = None,
    approximate_recall: float | None = None,
) -> tuple[jax.Array, Metrics]:
  """CMD's full pretraining loss: ``sum_m InfoNCE_m + cmd_weight * distillation``.

  ``queries``, ``keys``: modality -> ``[N, D]`` normalised query / momentum-key embeddings;
  ``queues``: modality -> ``[K, D]`` (pre-enqueue state). Each modality's query-vs-queue
  similarities are computed once and serve both its InfoNCE and (as the student) the
  distillation; the teachers are the keys against their own queues.

  The distillation is skipped (not computed, no top-k) when ``cmd_weight`` is the Python
  number 0 or there are no directions (e.g. a single modality), which gives plain MoCo;
  ``topk`` may then be None. Metrics: ``loss_{m}``, ``acc1_{m}``, ``acc5_{m}`` per modality,
  each ``kl_{a}_to_{b}``, ``loss_cmd`` (= ``cmd_weight * distillation``, the reference's
  logged ``loss_sim``) and the total ``loss``.
  """
  if not queries:
    raise ValueError("cmd_loss: no modalities given")
  if set(queries) != set(keys) or set(queries) != set(queues):
    raise ValueError(f"cmd_loss: modalities differ: queries {sorted(queries)}, keys "
                     f"{sorted(keys)}, queues {sorted(queues)}")
  metrics: Metrics = {}
  total = jnp.zeros((), jnp.float32)
  student_sims = {}
  for name in queries:
    q, k = queries[name], keys[name]
    if q.shape != k.shape:
      raise ValueError(f"cmd_loss[{name!r}]: query {q.shape} and key {k.shape} shapes differ")
    k = jax.lax.stop_gradient(k)
    l_neg = similarities(q, queues[name])
    l_pos = jnp.sum(at_least_float32(q) * at_least_float32(k), axis=-1)
    loss, m = info_nce_from_similarities(l_pos, l_neg, temperature)
    student_sims[name] = l_neg
    metrics.update({f"{key}_{name}": value for key, value in m.items()})
    total = total + loss

  if directions is None:
    directions = all_directions(queries)
  skip = (isinstance(cmd_weight, (int, float)) and cmd_weight == 0) or not list(directions)
  if not skip:
    if topk is None:
      raise ValueError("cmd_loss: topk is required when the distillation is on "
                       "(cmd_weight != 0 and at least one direction)")
    teacher_sims = {name: similarities(jax.lax.stop_gradient(keys[name]), queues[name])
                    for name in queries}
    distill, m = cmd_distillation(teacher_sims, student_sims, topk, teacher_temperature,
                                  student_temperature, directions=directions,
                                  approximate_recall=approximate_recall)
    metrics.update({key: value for key, value in m.items() if key != "distillation"})
    metrics["loss_cmd"] = cmd_weight * distill
    total = total + cmd_weight * distill
  else:
    metrics["loss_cmd"] = jnp.zeros((), jnp.float32)
  metrics["loss"] = total
  return total, metrics
