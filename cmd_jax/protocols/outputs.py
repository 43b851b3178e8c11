"""What a protocol run leaves in its workdir and prints: results records, files, the table.

This module owns the results' shape and their files (written by process 0, each replaced
atomically):

- ``results.json``: the header every protocol shares (``base_results``: protocol, init_from,
  pretraining step and dataset, the downstream dataset, sizes, deviations), per stream
  ``final_top1``, ``best_of_evals_top1``, ``best_epoch`` and the curve of evaluations
  (``summarize_curve``; semi/transfer/finetune: per seed, with mean and sample standard
  deviation, ``mean_std``), the fusion entry;
- ``predictions_<stream>.npz`` (``labels``, ``predictions``, ``probabilities`` of the test
  split; kNN: one-hot of the neighbour's label, or the normalised class votes of a weighted
  kNN) and ``predictions_<fusion>.npz`` (and ``predictions_mean_logit_probe.npz``),
  ``features_<stream>.npz`` (``features``, ``labels``): ``save_outputs``;
- msgpack trees (``model.msgpack``, ``heads.msgpack``): ``save_msgpack``;
- the printed table (``print_table``): final and best-of-evaluations top-1 per stream and
  fusion, marked as the reference's test-set-selected number (docs/references.md#cmd-quirks
  item 6);
- the classes' action names (``class_names``) and each entry's per-class accuracy after the
  last epoch (``per_class`` of every stream, fusion and probe; ``add_per_class``), printed
  as one table with a column per entry (linear and kNN).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import flax.serialization
import jax
import numpy as np

from cmd_jax import per_class
from cmd_jax.protocols import heads

MODEL_FILE = "model.msgpack"
BEST_NOTE = ("best_of_evals_top1: the best test accuracy over the evaluations every eval_every_epochs epochs, "
             "the reference's reported number (model selection on the test set); final_top1: after the last epoch")
DEVIATIONS = (
    "crops (and semi-supervised subsets) come from seeded JAX/numpy generators: the same in distribution as the "
    "reference's numpy/random ones, not bit by bit; the reference's semi subset is unseeded",
    "multi-stream fusion is not in the reference's scripts (they evaluate the joint stream only)",
    "final-epoch accuracy is reported beside the reference's best-of-evaluations (test-set selection) number",
)


def is_writer() -> bool:
  """Whether this process writes files and prints (process 0)."""
  return jax.process_index() == 0


def save_npz(path: str, **arrays) -> None:
  if is_writer():
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def save_msgpack(path: str, tree) -> None:
  """``flax.serialization`` msgpack of ``tree`` (read back with ``msgpack_restore``)."""
  if is_writer():
    with open(path + ".tmp", "wb") as f:
      f.write(flax.serialization.to_bytes(jax.tree.map(np.asarray, tree)))
    os.replace(path + ".tmp", path)


def save_json(path: str, obj) -> None:
  if is_writer():
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


def save_outputs(workdir: str, features: Mapping[str, np.ndarray], logits: Mapping[str, np.ndarray] | None,
                 labels: np.ndarray, fusion: str | None, predictions: Mapping[str, np.ndarray] | None = None,
                 num_classes: int | None = None, probes: Mapping[str, np.ndarray] | None = None,
                 votes: Mapping[str, np.ndarray] | None = None) -> None:
  """``features_<stream>.npz`` and ``predictions_<stream>.npz`` (+ the fusion's predictions).

  ``logits``: the streams' (probabilities: softmax; the fusion's: their mean); ``probes``:
  other logits by name (softmax); ``predictions`` (kNN): hard predictions by name, with
  one-hot probabilities, or ``votes[name] / votes[name].sum()`` where ``votes`` has the name."""
  for m, f in features.items():
    save_npz(os.path.join(workdir, f"features_{m}.npz"), features=np.asarray(f, np.float32), labels=labels)
  if logits is not None:
    for m, v in logits.items():
      probs = heads.softmax(v).astype(np.float32)
      save_npz(os.path.join(workdir, f"predictions_{m}.npz"), labels=labels, predictions=np.argmax(probs, -1),
               probabilities=probs)
    if fusion:
      probs = heads.fused_probabilities(logits).astype(np.float32)
      save_npz(os.path.join(workdir, f"predictions_{fusion}.npz"), labels=labels, predictions=np.argmax(probs, -1),
               probabilities=probs)
  for name, v in (probes or {}).items():
    probs = heads.softmax(v).astype(np.float32)
    save_npz(os.path.join(workdir, f"predictions_{name}.npz"), labels=labels, predictions=np.argmax(probs, -1),
             probabilities=probs)
  if predictions is not None:  # kNN: hard predictions, one-hot "probabilities" (or the normalised votes)
    for m, p in predictions.items():
      if votes and m in votes:
        v = np.asarray(votes[m], np.float64)
        probs = (v / v.sum(axis=-1, keepdims=True)).astype(np.float32)
      else:
        probs = np.eye(num_classes, dtype=np.float32)[p]
      save_npz(os.path.join(workdir, f"predictions_{m}.npz"), labels=labels, predictions=p, probabilities=probs)


def summarize_curve(curve: list[dict[str, Any]], names: Sequence[str]) -> dict[str, dict[str, Any]]:
  """Per name: ``final_top1`` (the last evaluation, after the last epoch), ``best_of_evals_top1``
  and its epoch, and the curve ``[{"epoch", "top1"}]``."""
  out = {}
  for name in names:
    points = [{"epoch": int(c["epoch"]), "top1": float(c[name])} for c in curve]
    best = max(points, key=lambda p: p["top1"])  # the first epoch reaching the best
    out[name] = {"final_top1": points[-1]["top1"], "best_of_evals_top1": best["top1"], "best_epoch": best["epoch"],
                 "curve": points}
  return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; 0 for one value)."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def base_results(config, protocol, pre, streams, train_size, test_size, num_classes) -> dict[str, Any]:
  """The ``results.json`` fields every protocol writes first."""
  downstream = f"{config.data.dataset}/{config.data.benchmark}"
  results = {
      "protocol": protocol, "name": config.get("name", ""),
      "init_from": ",".join(pre.workdirs) if pre.workdirs else pre.workdir, "pretrain_step": pre.step,
      "random_init": pre.random_init,
      "pretrain_dataset": pre.dataset, "pretrain_config": pre.config.get("name", ""),
      "pretrain_method": pre.method, "encoder": pre.model_name,
      "dataset": str(config.data.dataset), "benchmark": str(config.data.benchmark), "data_variant": pre.variant,
      "num_classes": num_classes, "num_train": train_size, "num_test": test_size,
      "streams_evaluated": list(streams), "fusion_name": heads.fusion_name(streams),
      "accuracy_unit": "fraction in [0, 1]",
      "reference_top1": float(config.get("reference_top1", 0.0)) or None,
      "reference_note": str(config.get("reference_note", "")),
      "deviations": list(DEVIATIONS) + list(config.get("deviations", ())),
  }
  if pre.dataset != downstream and protocol != "transfer":
    results["note"] = f"pretrained on {pre.dataset}, evaluated on {downstream}"
  return results


def print_table(results: dict[str, Any]) -> None:
  """The run's accuracies as a table on stdout (process 0)."""
  if not is_writer():
    return
  protocol = results["protocol"]
  lines = [f"{protocol} on {results['dataset']}/{results['benchmark']} ({results['num_classes']} classes, "
           f"{results['num_train']} train / {results['num_test']} test), from {results['init_from']} "
           f"({'random init' if results['random_init'] else 'pretraining step ' + str(results['pretrain_step'])})"]
  rows = list(results["streams"].items())
  fusion = results.get("fusion_name")
  if fusion:
    rows.append((fusion, results[fusion]))
  if heads.MEAN_LOGIT_PROBE in results:
    rows.append((heads.MEAN_LOGIT_PROBE, results[heads.MEAN_LOGIT_PROBE]))
  if protocol == "knn":
    k = results.get("knn_k", 1)
    title = "1-NN top-1" if k == 1 else f"{k}-NN top-1 (weighted votes)"
    lines.append(f"{'stream':14s} {title:>12s}")
    lines += [f"{name:14s} {100 * r['final_top1']:11.2f}%" for name, r in rows]
  else:
    seeds = len(results.get("seeds", ())) > 1  # the fine-tuning protocols' several seeds
    head = f"{'stream':14s} {'final top-1':>16s} {'best-of-evals top-1 *':>24s}"
    lines.append(head + ("   (mean +- std over seeds " + ", ".join(map(str, results["seeds"])) + ")" if seeds else ""))
    for name, r in rows:
      if seeds:
        lines.append(f"{name:14s} {100 * r['final_top1']:8.2f} +- {100 * r['final_top1_std']:4.2f}% "
                     f"{100 * r['best_of_evals_top1']:15.2f} +- {100 * r['best_of_evals_top1_std']:4.2f}%")
      else:
        best_epoch = r["best_epoch"] if "best_epoch" in r else r["per_seed"][0]["best_epoch"]
        lines.append(f"{name:14s} {100 * r['final_top1']:15.2f}% {100 * r['best_of_evals_top1']:16.2f}% "
                     f"(epoch {best_epoch})")
    lines.append("* the reference's number: the best test accuracy over evaluations every "
                 f"{results['eval_every_epochs']} epochs (model selection on the test set)")
  weighted = results.get("weighted_logit_fusion")
  if weighted:
    lines.append(f"HiCLR's weighted-logit ensemble (each stream at its best epoch, the better weight set on the test "
                 f"set *): {100 * weighted['best_of_sets_top1']:.2f}% with {weighted['best_weights']}")
  if results.get("reference_top1"):
    lines.append(f"reference: {results['reference_top1']} % ({results.get('reference_note', '')})")
  print("\n".join(lines))


def add_per_class(results: dict[str, Any], labels: np.ndarray, predictions: Mapping[str, np.ndarray],
                  num_classes: int, class_names: Sequence[str] | None) -> None:
  """Stores ``class_names`` and, for every entry of ``predictions`` (a stream, the fusion, the
  mean-logit probe: the test split's final predictions), its ``per_class`` accuracy in
  ``results`` (under ``results["streams"][stream]`` or ``results[entry]``), then prints them
  side by side with the action names (process 0)."""
  results["class_names"] = None if class_names is None else list(class_names)
  rows = {}
  for name, predicted in predictions.items():
    rows[name] = per_class.per_class_accuracy(labels, predicted, num_classes)
    target = results["streams"][name] if name in results["streams"] else results[name]
    target["per_class"] = rows[name]
  if is_writer() and rows:
    print(per_class.per_class_columns(
        rows, class_names, title=f"{results['protocol']}: per-class top-1 on the {results['dataset']}/"
        f"{results['benchmark']} test split (final epoch)"))
