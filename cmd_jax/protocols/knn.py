"""kNN retrieval: nearest-neighbour classification with the frozen pretrained encoders' features.

Follows docs/references.md#cmd-knn-retrieval (the reference's ``action_retrieval_cmd.py``):
1-NN cosine on the L2-normalised pooled features, the test view (CMD: 95% centre crop; 50-frame
data: the stored clip) on both splits, the train split as the bank and the test split as
the queries; ``cmd_jax.evaluators.knn`` does the work. No training: ``final_top1`` only.

Multi-stream fusion (not in the reference's scripts): the fused neighbour is the bank sample
with the largest **average cosine similarity** over the streams (``fused_knn_neighbours``:
the same as 1-NN on the concatenation of the per-stream L2-normalised features).

Written in the workdir besides ``results.json``: ``predictions_<stream>.npz`` (probabilities:
one-hot of the neighbour's label) and ``features_<stream>.npz`` of the test split.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from cmd_jax import metrics as metrics_lib
from cmd_jax.evaluators import knn as knn_lib
from cmd_jax.protocols import batches, common, heads, outputs, views

KNN_FUSION_NOTE = ("1-NN by the mean of the per-stream cosine similarities (= 1-NN on the concatenated "
                   "per-stream L2-normalised features); not in the reference's scripts")


def fused_knn_neighbours(banks: Mapping[str, np.ndarray], queries: Mapping[str, np.ndarray]) -> np.ndarray:
  """Per query, the bank index with the largest mean cosine similarity over the streams.

  ``sum_m cos(q_m, b_m) = <concat_m q_m/|q_m|, concat_m b_m/|b_m|>``, and every concatenated
  vector has the same norm ``sqrt(S)``, so this is ``knn.nearest_neighbours`` on the
  concatenated per-stream L2-normalised features (an all-zero stream feature breaks the
  equal-norm argument; such a feature has no direction anyway).
  """
  def unit(x):
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm == 0, 1.0, norm)

  bank = np.concatenate([unit(banks[m]) for m in banks], axis=-1)
  query = np.concatenate([unit(queries[m]) for m in banks], axis=-1)
  return np.asarray(knn_lib.nearest_neighbours(jnp.asarray(bank), jnp.asarray(query), chunk=min(1024, len(query))))


def run(config, workdir: str) -> dict[str, Any]:
  """1-NN retrieval (#cmd-knn-retrieval): ``cmd_jax.evaluators.knn`` on the train (bank) and test splits."""
  mesh, streams, pre, train_source, test_source, num_classes = common.setup(config, workdir, "knn")
  frames, crop = views.evaluation_view(config, pre)
  model = pre.model(num_outputs=None)
  variables = {m: pre.variables(m) for m in streams}
  extractor = batches.StreamFeatures(model, pre.layout, streams, frames, crop, pre.feature_dim)
  batch = int(config.eval_batch_size)
  bank, bank_labels = extractor(variables, train_source, batch_size=batch, mesh=mesh)
  queries, query_labels = extractor(variables, test_source, batch_size=batch, mesh=mesh)
  fusion = heads.fusion_name(streams)
  predictions, accs = {}, {}
  for m in streams:
    nearest = np.asarray(knn_lib.nearest_neighbours(jnp.asarray(bank[m]), jnp.asarray(queries[m]),
                                                    chunk=min(1024, len(query_labels))))
    predictions[m] = bank_labels[nearest]
    accs[m] = float(np.mean(predictions[m] == query_labels))
  if fusion:
    predictions[fusion] = bank_labels[fused_knn_neighbours(bank, queries)]
    accs[fusion] = float(np.mean(predictions[fusion] == query_labels))
  writer = metrics_lib.MetricWriter(workdir)
  writer.write(0, {f"knn_top1_{k}": v for k, v in accs.items()}, split="eval")
  writer.close()
  outputs.save_outputs(workdir, queries, None, query_labels, fusion, predictions=predictions,
                       num_classes=max(num_classes, int(max(bank_labels.max(), query_labels.max())) + 1))
  results = outputs.base_results(config, "knn", pre, streams, len(bank_labels), len(query_labels), num_classes)
  results.update(frames=frames, crop=crop,
                 notes={"final_top1": "1-NN cosine top-1 on the test split (no training: no best-of-evaluations)",
                        "fusion": KNN_FUSION_NOTE})
  results["streams"] = {m: {"final_top1": accs[m]} for m in streams}
  if fusion:
    results[fusion] = {"final_top1": accs[fusion], "streams": list(streams), "method": KNN_FUSION_NOTE}
  results["files"] = {"predictions": "predictions_<stream>.npz (probabilities: one-hot of the 1-NN label)",
                      "features": "features_<stream>.npz"}
  outputs.save_json(os.path.join(workdir, "results.json"), results)
  outputs.print_table(results)
  return results


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict[str, Any]:
  """The ``knn`` trainer: ``run`` once per config and pretraining (``common.run_once``)."""
  return common.run_once(config, workdir, run)
