"""1-nearest-neighbour cosine accuracy of frozen encoder features (docs/references.md#cmd-knn-retrieval).

The reference's retrieval protocol: features are the encoder's pooled feature (CMD's GRU:
the 2H-d last-step output; BatchNorm in inference mode, no head) of the 95% centre crop
resized to the model's frame count (or the stored clip as it is, for 50-frame data), for the whole train split (the bank) and the whole test split (the queries);
both are L2-normalised and each query takes the label of its most cosine-similar bank
feature (sklearn ``KNeighborsClassifier(n_neighbors=1, metric='cosine')``). Here the
features are computed batch-sharded over the device mesh, and the neighbour search runs on
the device in chunks of queries.

``weighted_knn_votes`` is the weighted kNN of SimSiam's ``knn_monitor`` (``knn_predict``), which
AimCLR's authors report kNN numbers with (their issue #5): the ``k`` most
cosine-similar bank features of each query (L2-normalised both), each voting for its label
with weight ``exp(similarity / temperature)`` (k = 200, temperature 0.1 there); the votes are
summed per class and the arg-max is the prediction. With ``k = 1`` it predicts what
``nearest_neighbours`` does.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from cmd_jax import augment, input_pipeline, modalities, sharding
from cmd_jax.layouts import SkeletonLayout


def make_feature_fn(model, layout: SkeletonLayout, modality: str, frames: int,
                    crop_ratio: float | None = augment.CENTER_CROP_RATIO) -> Callable[..., jax.Array]:
  """``fn(variables, skeleton [N,3,T,V,M], num_frames [N]) -> features [N, D]`` (eval mode).

  The clip is the centre crop of ``crop_ratio`` of the valid frames resized to ``frames``
  (CMD's test view), or, for ``crop_ratio=None``, the stored clip as it is (HiCLR's
  50-frame clips; ``frames`` and ``num_frames`` are then unused)."""

  def fn(variables, skeleton, num_frames):
    if crop_ratio is None:
      clip = skeleton
    else:
      clip = augment.downstream_test_view(skeleton, num_frames, ratio=crop_ratio, out_len=frames)
    return model.apply(variables, modalities.modality(clip, modality, layout), train=False, features_only=True)

  return fn


def extract_features(feature_fn: Callable[..., jax.Array], variables: Any, source, *, batch_size: int,
                     mesh: jax.sharding.Mesh,
                     after_batch: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Features and labels of every record of ``source``, in index order (host numpy).
  ``after_batch()`` runs after each batch (the protocols' check for a stop request)."""
  sharding.check_batch_divisible(batch_size, mesh, "evaluator batch size")
  rep = sharding.replicated(mesh)
  jitted = jax.jit(feature_fn, in_shardings=(rep, sharding.batch_sharding(mesh), sharding.batch_sharding(mesh)),
                   out_shardings=rep)
  feats, labels = [], []
  for batch in input_pipeline.global_batches(source, global_batch_size=batch_size, seed=0, shuffle=False,
                                             num_epochs=1, drop_remainder=False):
    device_batch = sharding.put_batch({k: batch[k] for k in ("skeleton", "num_frames")}, mesh)
    out = np.asarray(jax.device_get(jitted(variables, device_batch["skeleton"], device_batch["num_frames"])))
    valid = _gather_host(batch["valid"])
    feats.append(out[valid])
    labels.append(_gather_host(batch["label"])[valid])
    if after_batch is not None:
      after_batch()
  return np.concatenate(feats), np.concatenate(labels)


def _gather_host(x: np.ndarray) -> np.ndarray:
  """The global batch's rows of a host array that each process holds its part of."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def l2_normalize(x: jax.Array) -> jax.Array:
  """sklearn ``normalize``: x / ||x||, zero rows stay zero."""
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.where(norm == 0, 1.0, norm)


@functools.partial(jax.jit, static_argnames=("chunk",))
def nearest_neighbours(bank: jax.Array, queries: jax.Array, chunk: int = 1024) -> jax.Array:
  """Index of the most cosine-similar bank row for every query row (chunked over queries)."""
  bank = l2_normalize(bank.astype(jnp.float32))
  queries = l2_normalize(queries.astype(jnp.float32))
  n = queries.shape[0]
  pad = (-n) % chunk
  padded = jnp.pad(queries, ((0, pad), (0, 0))).reshape(-1, chunk, queries.shape[-1])

  def one(q):
    return jnp.argmax(jnp.matmul(q, bank.T, precision=jax.lax.Precision.HIGHEST), axis=-1)

  return jax.lax.map(one, padded).reshape(-1)[:n]


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "chunk"))
def weighted_knn_votes(bank: jax.Array, bank_labels: jax.Array, queries: jax.Array, temperature: float, *,
                       num_classes: int, k: int, chunk: int = 1024) -> jax.Array:
  """``[Q, num_classes]`` class votes: per query, ``sum exp(cos / temperature)`` over its ``k`` most
  cosine-similar bank rows of each class (SimSiam's ``knn_predict``; chunked over queries)."""
  bank = l2_normalize(bank.astype(jnp.float32))
  queries = l2_normalize(queries.astype(jnp.float32))
  n = queries.shape[0]
  pad = (-n) % chunk
  padded = jnp.pad(queries, ((0, pad), (0, 0))).reshape(-1, chunk, queries.shape[-1])

  def one(q):
    similarity, index = jax.lax.top_k(jnp.matmul(q, bank.T, precision=jax.lax.Precision.HIGHEST), k)
    onehot = jax.nn.one_hot(bank_labels[index], num_classes, dtype=jnp.float32)  # [chunk, k, C]
    return jnp.sum(jnp.exp(similarity / temperature)[..., None] * onehot, axis=1)

  return jax.lax.map(one, padded).reshape(-1, num_classes)[:n]


def knn_accuracy(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray,
                 chunk: int = 1024) -> float:
  """1-NN cosine top-1 accuracy of the queries against the bank."""
  if len(bank) == 0 or len(queries) == 0:
    raise ValueError(f"knn_accuracy: empty bank ({len(bank)}) or queries ({len(queries)})")
  nearest = np.asarray(nearest_neighbours(jnp.asarray(bank), jnp.asarray(queries), chunk=min(chunk, len(queries))))
  return float(np.mean(np.asarray(bank_labels)[nearest] == np.asarray(query_labels)))


def evaluate(feature_fn, variables, bank_source, query_source, *, batch_size: int, mesh) -> dict[str, float]:
  """``{"knn_top1": accuracy}`` of the frozen features (bank = train split, queries = val split)."""
  bank, bank_labels = extract_features(feature_fn, variables, bank_source, batch_size=batch_size, mesh=mesh)
  queries, query_labels = extract_features(feature_fn, variables, query_source, batch_size=batch_size, mesh=mesh)
  return {"knn_top1": knn_accuracy(bank, bank_labels, queries, query_labels)}
