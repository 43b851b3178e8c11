"""kNN retrieval: nearest-neighbour classification with the frozen pretrained encoders' features.

Follows docs/references.md#cmd-knn-retrieval (the reference's ``action_retrieval_cmd.py``):
1-NN cosine on the L2-normalised pooled features, the test view (CMD: 95% centre crop; 50-frame
data: the stored clip) on both splits, the train split as the bank and the test split as
the queries; ``cmd_jax.evaluators.knn`` does the work. No training: ``final_top1`` only.

Multi-stream fusion (not in the reference's scripts): the fused neighbour is the bank sample
with the largest **average cosine similarity** over the streams (``fused_knn_neighbours``:
the same as 1-NN on the concatenation of the per-stream L2-normalised features).

``config.knn_k = k > 1`` (default 1, the reference's 1-NN) is the weighted kNN of SimSiam's
``knn_monitor`` that AimCLR's authors report kNN numbers with (their issue #5: k = 200,
``config.knn_temperature`` = 0.1): each query's k most cosine-similar bank samples vote for
their labels with weight ``exp(similarity / temperature)``, the class with the most votes is
the prediction (``cmd_jax.evaluators.knn.weighted_knn_votes``). The fusion is the same kNN
with the average cosine similarity over the streams as its similarity (for k = 1, the fused
1-NN above). The saved probabilities are the votes divided by their sum.

Written in the workdir besides ``results.json``: ``predictions_<stream>.npz`` (probabilities:
one-hot of the neighbour's label) and ``features_<stream>.npz`` of the test split.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from cmd_jax import data, metrics as metrics_lib
from cmd_jax.errors import ConfigError
from cmd_jax.evaluators import knn as knn_lib
from cmd_jax.protocols import batches, common, heads, outputs, views

KNN_FUSION_NOTE = ("1-NN by the mean of the per-stream cosine similarities (= 1-NN on the concatenated "
                   "per-stream L2-normalised features); not in the reference's scripts")
WEIGHTED_KNN_NOTE = ("weighted kNN (SimSiam's knn_monitor, as AimCLR's authors report kNN): the k most cosine-similar "
                     "training samples vote for their labels with weight exp(similarity / temperature); top-1 of the "
                     "summed votes on the test split (no training: no best-of-evaluations)")
WEIGHTED_KNN_FUSION_NOTE = ("the same weighted kNN with the mean of the per-stream cosine similarities as the "
                            "similarity; not in the references' scripts")


def concatenated_unit_features(banks: Mapping[str, np.ndarray],
                               queries: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Bank and queries as the concatenation over the streams of their L2-normalised features.

  ``sum_m cos(q_m, b_m) = <concat_m q_m/|q_m|, concat_m b_m/|b_m|>``, and every concatenated
  vector has the same norm ``sqrt(S)``, so the cosine similarity of two concatenations is the
  mean of the streams' cosine similarities (an all-zero stream feature breaks the equal-norm
  argument; such a feature has no direction anyway).
  """
  def unit(x):
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm == 0, 1.0, norm)

  return (np.concatenate([unit(banks[m]) for m in banks], axis=-1),
          np.concatenate([unit(queries[m]) for m in banks], axis=-1))


def fused_knn_neighbours(banks: Mapping[str, np.ndarray], queries: Mapping[str, np.ndarray]) -> np.ndarray:
  """Per query, the bank index with the largest mean cosine similarity over the streams
  (``knn.nearest_neighbours`` on ``concatenated_unit_features``)."""
  bank, query = concatenated_unit_features(banks, queries)
  return np.asarray(knn_lib.nearest_neighbours(jnp.asarray(bank), jnp.asarray(query), chunk=min(1024, len(query))))


def run(config, workdir: str) -> dict[str, Any]:
  """kNN retrieval (#cmd-knn-retrieval; ``config.knn_k``): ``cmd_jax.evaluators.knn`` on the train (bank)
  and test splits."""
  mesh, streams, pre, train_source, test_source, num_classes = common.setup(config, workdir, "knn")
  frames, crop = views.evaluation_view(config, pre)
  model = pre.model(num_outputs=None)
  variables = {m: pre.variables(m) for m in streams}
  extractor = batches.StreamFeatures(model, pre.layout, streams, frames, crop, pre.feature_dim)
  batch = int(config.eval_batch_size)
  bank, bank_labels = extractor(variables, train_source, batch_size=batch, mesh=mesh)
  queries, query_labels = extractor(variables, test_source, batch_size=batch, mesh=mesh)
  fusion = heads.fusion_name(streams)
  k, temperature = int(config.get("knn_k", 1)), float(config.get("knn_temperature", 0.1))
  if k > len(bank_labels):
    raise ConfigError(f"config.knn_k={k} is more than the {len(bank_labels)} training samples of the bank; "
                      f"expected at most {len(bank_labels)}")
  classes = max(num_classes, int(max(bank_labels.max(), query_labels.max())) + 1)
  chunk = min(1024, len(query_labels))

  def weighted_votes(bank_features, query_features):
    return np.asarray(knn_lib.weighted_knn_votes(jnp.asarray(bank_features), jnp.asarray(bank_labels),
                                                 jnp.asarray(query_features), temperature, num_classes=classes,
                                                 k=k, chunk=chunk))

  predictions, accs, votes = {}, {}, {}
  for m in streams:
    if k == 1:
      nearest = np.asarray(knn_lib.nearest_neighbours(jnp.asarray(bank[m]), jnp.asarray(queries[m]), chunk=chunk))
      predictions[m] = bank_labels[nearest]
    else:
      votes[m] = weighted_votes(bank[m], queries[m])
      predictions[m] = np.argmax(votes[m], axis=-1)
    accs[m] = float(np.mean(predictions[m] == query_labels))
  if fusion:
    if k == 1:
      predictions[fusion] = bank_labels[fused_knn_neighbours(bank, queries)]
    else:
      votes[fusion] = weighted_votes(*concatenated_unit_features(bank, queries))
      predictions[fusion] = np.argmax(votes[fusion], axis=-1)
    accs[fusion] = float(np.mean(predictions[fusion] == query_labels))
  writer = metrics_lib.MetricWriter(workdir)
  writer.write(0, {f"knn_top1_{name}": v for name, v in accs.items()}, split="eval")
  writer.close()
  outputs.save_outputs(workdir, queries, None, query_labels, fusion, predictions=predictions, num_classes=classes,
                       votes=votes)
  results = outputs.base_results(config, "knn", pre, streams, len(bank_labels), len(query_labels), num_classes)
  if k == 1:
    results.update(frames=frames, crop=crop,
                   notes={"final_top1": "1-NN cosine top-1 on the test split (no training: no best-of-evaluations)",
                          "fusion": KNN_FUSION_NOTE})
  else:
    results.update(frames=frames, crop=crop, knn_k=k, knn_temperature=temperature,
                   notes={"final_top1": WEIGHTED_KNN_NOTE, "fusion": WEIGHTED_KNN_FUSION_NOTE})
  fusion_note = KNN_FUSION_NOTE if k == 1 else WEIGHTED_KNN_FUSION_NOTE
  results["streams"] = {m: {"final_top1": accs[m]} for m in streams}
  if fusion:
    results[fusion] = {"final_top1": accs[fusion], "streams": list(streams), "method": fusion_note}
  probabilities = "one-hot of the 1-NN label" if k == 1 else "the class votes divided by their sum"
  results["files"] = {"predictions": f"predictions_<stream>.npz (probabilities: {probabilities})",
                      "features": "features_<stream>.npz"}
  outputs.print_table(results)
  outputs.add_per_class(results, query_labels, predictions, classes,
                        data.class_names(config.data, train_source, classes))
  outputs.save_json(os.path.join(workdir, "results.json"), results)
  return results


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict[str, Any]:
  """The ``knn`` trainer: ``run`` once per config and pretraining (``common.run_once``)."""
  return common.run_once(config, workdir, run)
