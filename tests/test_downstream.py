"""Tests for the downstream protocols (cmd_jax.protocols) against independent computations.

Follows docs/references.md#cmd-downstream-protocols, #cmd-downstream-crops,
#cmd-downstream-views, #cmd-labelled-subsets and #cmd-quirks items 5-7. A tiny model (hidden 8, one
layer, 8 frames) is pretrained for one epoch on a tiny synthetic set (12 classes, 36 train /
36 test clips, built into a temporary folder); the protocols then run on it for two epochs
with an evaluation after each. What is checked, each against a computation made here:

- linear: every encoder parameter and BN statistic is bit-identical to the checkpoint's
  after training (only the heads change); the test features are the frozen encoder's, in
  inference mode, on the 95% centre crop (``Encoder.apply`` on ``augment`` crops); one and
  two head steps equal numpy SGD with momentum on the same features; the three-stream
  fusion equals the mean of the per-stream softmax probabilities (numpy, from the saved
  features and heads); results.json holds the final and the best-of-evaluations numbers;
- knn: the accuracy equals a brute-force numpy 1-NN (cosine) on features computed here, and
  the fused neighbour is the arg-max of the mean of the streams' cosine similarity matrices;
- semi: subsets (same seed, same subset; sizes; every class when stratified; errors), the
  fine-tuned model's saved predictions equal its eval-mode forward; BN statistics move;
- bad input: a missing/empty init_from, an incompatible checkpoint (layout, hidden size,
  modality), a ratio outside (0, 1], a class with no example: clear errors before any data
  is read;
- the contrastive family's options (section 6): ``drop_last`` (the torchlight loaders: N // B
  batches, the lr schedule counting them; composed with full-length epochs), CrosSCLR's
  mean-logit probe (one step against numpy, the per-stream heads untouched; a run's entry,
  files and table), AimCLR's eval-mode fine-tuning (one step against numpy, running statistics
  unchanged), its semi-supervised settings together (class-balanced subset, subset-length
  epochs, drop_last, eval mode, gradient clipping), SimSiam's weighted kNN against numpy, the
  configs' values and their one-line errors.

Speed: the test session's persistent compilation cache (tests/conftest.py).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmd_jax import action_names, augment, data, metrics as metrics_lib, modalities, pretrained, sharding
from cmd_jax.errors import ConfigError
from cmd_jax.protocols import batches as batches_lib, common, heads as heads_lib, subsets, training
from cmd_jax.protocols import finetune as finetune_protocol, knn as knn_protocol, linear as linear_protocol
from cmd_jax.trainers import pretrain as cmd_pretrain, get_trainer
from cmd_jax import optim
from configs import knn as knn_config, linear as linear_config, semi as semi_config, transfer as transfer_config
from tests.test_pretrained import make_workdir, set_fields, tiny_pretrain_config

REPO = Path(__file__).resolve().parents[1]
STREAMS = ("joint", "motion", "bone")
FRAMES = 8
NUM_CLASSES = 12
PRETRAIN_STEPS = 4  # 36 training clips // batch 8


@pytest.fixture(scope="module")
def tiny_data(tiny_synthetic) -> str:
  """The synthetic set with 2 subjects x 1 repetition (xsub: 36 train, 36 val; 3 clips per class)."""
  return tiny_synthetic


@pytest.fixture(scope="module")
def pretrain_dir(tiny_data, tmp_path_factory) -> str:
  """One epoch of CMD pretraining of the tiny model on the tiny set."""
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  config = tiny_pretrain_config(**{"data.data_dir": tiny_data, "num_epochs": 1})
  cmd_pretrain.train_and_evaluate(config, workdir)
  return workdir


def tiny_config(protocol: str, init_from: str, data_dir: str, name: str = "synthetic", **overrides):
  module = {"linear": linear_config, "knn": knn_config, "semi": semi_config, "transfer": transfer_config}[protocol]
  config = module.get_config(name)
  base = {"init_from": init_from, "data.data_dir": data_dir, "eval_batch_size": 12, "data.read_threads": 2}
  if protocol != "knn":
    base.update({"num_epochs": 2, "eval_every_epochs": 1, "batch_size": 12, "optimizer.milestones": (1,)})
  return set_fields(config, {**base, **overrides})


def run_protocol(config, workdir):
  """The trainer ``config.trainer`` names (``cmd_jax.trainers.TRAINERS``), as ``launch.py`` runs it."""
  return get_trainer(config.trainer)(config, workdir)


def load_split(data_dir: str, split: str):
  source = data.open_split(tiny_config("knn", "", data_dir).data, split)
  records = [source[i] for i in range(len(source))]
  return (np.stack([r["skeleton"] for r in records]).astype(np.float32),
          np.array([r["num_frames"] for r in records], np.int32), np.array([r["label"] for r in records]))


def centre_crop_features(pre, stream, skeleton, num_frames, variables=None):
  """The 2H features of the 95% centre crop, BN in inference mode, computed directly."""
  clip = augment.downstream_test_view(jnp.asarray(skeleton), jnp.asarray(num_frames), ratio=0.95, out_len=FRAMES)
  x = modalities.flatten(modalities.modality(clip, stream, pre.layout))
  return np.asarray(pre.model().apply(variables or pre.variables(stream), x, train=False, features_only=True))


def np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def read_msgpack(path):
  with open(path, "rb") as f:
    return flax.serialization.msgpack_restore(f.read())


def leaves(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


# ---------------------------------------------------------------------------------------------
# 1. Linear evaluation.


@pytest.fixture(scope="module")
def linear_run(pretrain_dir, tiny_data, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("linear"))
  config = tiny_config("linear", pretrain_dir, tiny_data, streams="joint,motion,bone")
  return workdir, run_protocol(config, workdir)


def test_linear_changes_only_the_classifier(linear_run, pretrain_dir):
  """The encoders after training (model.msgpack, taken from the device arrays the steps used)
  are bit-identical to the checkpoint's; the heads moved away from their N(0, 0.01) init."""
  workdir, _ = linear_run
  pre = pretrained.load_pretrained(pretrain_dir)
  model = read_msgpack(os.path.join(workdir, "model.msgpack"))
  heads = read_msgpack(os.path.join(workdir, "heads.msgpack"))
  assert sorted(model) == sorted(STREAMS) == sorted(heads)
  for m in STREAMS:
    got = leaves({k: v for k, v in model[m]["params"].items() if k != "fc"})
    want = leaves(pre.params[m])
    assert sorted(got) == sorted(want) and len(want) == 10  # input_norm scale, bias + 2 cells x 4 GRU tensors
    for k in want:
      assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), f"{m}/{k} changed"
    got, want = leaves(model[m]["batch_stats"]), leaves(pre.batch_stats[m])
    for k in want:
      assert np.array_equal(got[k], want[k]), f"{m} batch_stats {k} changed"
    np.testing.assert_array_equal(model[m]["params"]["fc"]["weight"], heads[m]["weight"])
    assert heads[m]["weight"].shape == (NUM_CLASSES, 16) and heads[m]["bias"].shape == (NUM_CLASSES,)
    assert np.abs(heads[m]["bias"]).max() > 0  # trained (the init is 0)


def test_linear_test_features_are_the_frozen_encoders_centre_crop_features(linear_run, pretrain_dir, tiny_data):
  workdir, _ = linear_run
  pre = pretrained.load_pretrained(pretrain_dir)
  skeleton, num_frames, labels = load_split(tiny_data, "val")
  for m in STREAMS:
    with np.load(os.path.join(workdir, f"features_{m}.npz")) as z:
      np.testing.assert_array_equal(z["labels"], labels)
      # O(1) GRU features from two compiled programs (summation orders differ: a few u = 6e-8
      # of that scale; measured 3 u): 1e-5 is ~170 u.
      np.testing.assert_allclose(z["features"], centre_crop_features(pre, m, skeleton, num_frames), rtol=1e-5,
                                 atol=1e-5)


def test_three_stream_fusion_is_the_mean_of_the_softmax_probabilities(linear_run):
  """Per stream: logits = features @ W.T + b (numpy, from the saved features and heads),
  softmax; fusion: their mean. Saved probabilities, predictions and accuracies agree."""
  workdir, results = linear_run
  heads = read_msgpack(os.path.join(workdir, "heads.msgpack"))
  probs = {}
  for m in STREAMS:
    with np.load(os.path.join(workdir, f"features_{m}.npz")) as z:
      feats, labels = z["features"].astype(np.float64), z["labels"]
    probs[m] = np_softmax(feats @ heads[m]["weight"].astype(np.float64).T + heads[m]["bias"])
    with np.load(os.path.join(workdir, f"predictions_{m}.npz")) as z:
      np.testing.assert_allclose(z["probabilities"], probs[m], atol=1e-5)  # in [0, 1]: ~170 u
      np.testing.assert_array_equal(z["labels"], labels)
      assert np.mean(z["predictions"] == labels) == pytest.approx(results["streams"][m]["final_top1"])
  fused = np.mean([probs[m] for m in STREAMS], axis=0)
  with np.load(os.path.join(workdir, "predictions_three_stream.npz")) as z:
    np.testing.assert_allclose(z["probabilities"], fused, atol=1e-5)
    np.testing.assert_array_equal(z["predictions"], np.argmax(fused, -1))
  assert results["three_stream"]["final_top1"] == pytest.approx(np.mean(np.argmax(fused, -1) == labels))
  # The fusion is not the mean of the logits' argmax: check the function on a case where they differ.
  logits = {"a": np.array([[0.0, 3.0, 0.0]]), "b": np.array([[2.0, 0.0, 0.0]]), "c": np.array([[2.0, 0.0, 0.0]])}
  np.testing.assert_allclose(heads_lib.fused_probabilities(logits),
                             np.mean([np_softmax(v) for v in logits.values()], axis=0))


def test_linear_results_json_and_metrics(linear_run, pretrain_dir):
  workdir, results = linear_run
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(results))
  assert saved["protocol"] == "linear" and saved["init_from"] == os.path.abspath(pretrain_dir)
  assert saved["pretrain_step"] == PRETRAIN_STEPS and saved["random_init"] is False
  assert (saved["dataset"], saved["benchmark"], saved["num_classes"], saved["num_train"], saved["num_test"]) == (
      "synthetic", "xsub", NUM_CLASSES, 36, 36)
  assert "model selection on the test set" in saved["notes"]["best_of_evals_top1"]
  evals = metrics_lib.read_metrics(workdir, "eval")
  assert [r["epoch"] for r in evals] == [1, 2]
  for name in (*STREAMS, "three_stream"):
    entry = saved["streams"][name] if name in STREAMS else saved[name]
    curve = entry["curve"]
    assert [p["epoch"] for p in curve] == [1, 2]
    assert entry["final_top1"] == curve[-1]["top1"]  # after the last epoch
    assert entry["best_of_evals_top1"] == max(p["top1"] for p in curve)
    assert entry["best_epoch"] == next(p["epoch"] for p in curve if p["top1"] == entry["best_of_evals_top1"])
    assert [r[f"top1_{name}"] for r in evals] == pytest.approx([p["top1"] for p in curve])
  train = metrics_lib.read_metrics(workdir, "train")
  assert [r["lr"] for r in train] == pytest.approx([0.1, 0.01])  # milestone at epoch 1
  assert all(np.isfinite(r["loss_joint"]) for r in train)


def numpy_per_class(labels, predictions, num_classes):
  """Per class c: the test samples of class c, how many are predicted c, their ratio (None without samples)."""
  out = []
  for c in range(num_classes):
    members = np.asarray(labels) == c
    count, correct = int(members.sum()), int(np.sum(np.asarray(predictions)[members] == c))
    out.append({"class": c, "count": count, "correct": correct, "accuracy": correct / count if count else None})
  return out


def test_linear_stores_and_prints_per_class_accuracy_with_action_names(linear_run):
  """results.json names the classes (the synthetic set's motions) and holds, per stream and for
  the fusion, the per-class accuracy of the final predictions (recounted here from the saved
  predictions files)."""
  workdir, results = linear_run
  assert results["class_names"] == list(action_names.SYNTHETIC)
  for name in (*STREAMS, "three_stream"):
    entry = results["streams"][name] if name in STREAMS else results[name]
    with np.load(os.path.join(workdir, f"predictions_{name}.npz")) as z:
      assert entry["per_class"] == numpy_per_class(z["labels"], z["predictions"], NUM_CLASSES), name
      assert np.mean(z["predictions"] == z["labels"]) == pytest.approx(entry["final_top1"], abs=1e-12)


def test_linear_head_steps_equal_numpy_sgd_with_momentum(pretrain_dir):
  """Two steps of the jitted linear step vs numpy: features of the step's crop (drawn here
  from fold_in(rng, step)), softmax cross-entropy gradient, PyTorch SGD with momentum."""
  pre = pretrained.load_pretrained(pretrain_dir)
  config = tiny_config("linear", pretrain_dir, "unused")
  rng = np.random.default_rng(3)
  n, lr, momentum = 7, 0.1, 0.9
  batch = {"skeleton": rng.normal(size=(n, 3, 300, 25, 2)).astype(np.float32),
           "num_frames": rng.integers(10, 301, n).astype(np.int32),
           "label": rng.integers(0, NUM_CLASSES, n).astype(np.int32)}
  tx = optim.make_optimizer(config, steps_per_epoch=100)
  heads = {"joint": heads_lib.init_head(jax.random.PRNGKey(1), NUM_CLASSES, 16)}
  heads["joint"]["bias"] = jnp.asarray(rng.normal(size=NUM_CLASSES).astype(np.float32) * 0.1)
  state = training.DownstreamState(step=jnp.zeros((), jnp.int32), params=heads, batch_stats={},
                                     opt_state=tx.init(heads), rng=jax.random.PRNGKey(7))
  view = {"mode": "crop_resize", "out_len": FRAMES, "min_len": FRAMES, "ratio_range": (0.5, 1.0)}
  step = jax.jit(lambda s, f, b: linear_protocol.train_step(
      s, f, b, model=pre.model(), layout=pre.layout, streams=("joint",), tx=tx,
      schedule=optim.lr_schedule(config, 100), view=view))
  frozen = {"joint": pre.variables("joint")}

  w = np.asarray(heads["joint"]["weight"], np.float64)
  b = np.asarray(heads["joint"]["bias"], np.float64)
  buf_w, buf_b = np.zeros_like(w), np.zeros_like(b)
  onehot = np.eye(NUM_CLASSES)[batch["label"]]
  for i in range(2):
    clip = augment.downstream_train_view(jax.random.fold_in(state.rng, i), jnp.asarray(batch["skeleton"]),
                                         jnp.asarray(batch["num_frames"]), (0.5, 1.0), FRAMES, FRAMES)
    x = modalities.flatten(modalities.joint(clip))
    feats = np.asarray(pre.model().apply(frozen["joint"], x, train=False), np.float64)
    p = np_softmax(feats @ w.T + b)
    loss = -np.mean(np.log(p[np.arange(n), batch["label"]]))
    g_w, g_b = (p - onehot).T @ feats / n, np.mean(p - onehot, axis=0)
    buf_w, buf_b = (g_w, g_b) if i == 0 else (momentum * buf_w + g_w, momentum * buf_b + g_b)
    w, b = w - lr * buf_w, b - lr * buf_b
    state, metrics = step(state, frozen, batch)
    assert float(metrics["loss_joint"]) == pytest.approx(loss, rel=1e-5)
    # Entries near 0 carry lr (0.1) times a few u of the O(1) gradient terms, ~2e-8: atol 1e-7.
    np.testing.assert_allclose(state.params["joint"]["weight"], w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state.params["joint"]["bias"], b, rtol=1e-5, atol=1e-7)


class _FakeSource:
  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"skeleton": np.full((3, 4, 2, 1), i, np.float32), "num_frames": 4, "label": int(i), "name": str(i)}

  def __repr__(self):
    return f"_FakeSource({self.n})"


def test_epoch_batches_are_a_drop_last_false_loader():
  """ceil(10 / 4) = 3 batches of 4, 4 and 2: every record once per epoch, a new order each
  epoch, the same order for the same (seed, epoch)."""
  mesh = sharding.make_mesh()
  source = _FakeSource(10)

  def epoch(seed, e):
    batches = batches_lib.epoch_batches(source, batch_size=4, seed=seed, epoch=e, mesh=mesh)
    return [np.asarray(b["label"]) for b in batches]

  first = epoch(0, 1)
  assert [len(b) for b in first] == [4, 4, 2] and batches_lib.steps_per_epoch(10, 4) == 3
  assert sorted(np.concatenate(first).tolist()) == list(range(10))
  assert [b.tolist() for b in epoch(0, 1)] == [b.tolist() for b in first]
  assert np.concatenate(epoch(0, 2)).tolist() != np.concatenate(first).tolist()
  assert [len(b) for b in epoch(0, 3)] == [4, 4, 2]


# ---------------------------------------------------------------------------------------------
# 2. kNN retrieval.


# Cosine similarities closer than this to a query's k-th largest one are a tie at float32
# precision. The protocol computes them in float32 from its own float32 features (the same
# network as centre_crop_features, batched differently): a feature's relative error of ~1e-6 (a
# few u = 6e-8 times the network's depth and widths) moves a cosine by as much; 1e-5 is 10x
# that. The tiny pretraining's features are nearly collinear (cosines ~0.9999), so neighbours
# are often only 1e-6 - 1e-5 apart: in the weighted test ~10 of the 144 query rows have two or
# three candidates at the 5th place (one flipped order, 7e-8 apart, failed an AVX-512 CPU), and
# such a row is checked against each completion.
SIM_TIE = 1e-5


def knn_neighbour_sets(sims, k, tol=SIM_TIE):
  """Per query (a row of ``sims [queries, bank]``), every set of k bank indices that is its k
  nearest within ``tol``: those above the k-th similarity by more than ``tol``, completed in
  each possible way from those within ``tol`` of it (one set but for a near tie)."""
  sets = []
  for row in sims:
    kth = np.sort(row)[::-1][k - 1]
    sure, band = np.flatnonzero(row > kth + tol), np.flatnonzero(np.abs(row - kth) <= tol)
    assert len(band) <= 6, f"{len(band)} bank samples tie at the k-th place: widen the test data"
    sets.append([np.concatenate([sure, rest]) for rest in itertools.combinations(band, k - len(sure))])
  return sets


def check_knn_outputs(sims, bank_labels, k, workdir, stream, temperature=0.1):
  """Checks a kNN run's saved ``predictions_<stream>.npz`` against SimSiam's weighted votes in
  numpy (k = 1: the nearest neighbour's label, probabilities one-hot): per query, its votes
  ``sum exp(similarity / temperature)`` per class over its k nearest bank samples, divided by
  their sum, and the class with the most. A near tie at the k-th place (``knn_neighbour_sets``)
  admits the votes of each of its orders. Returns the checked predictions."""
  with np.load(os.path.join(workdir, f"predictions_{stream}.npz")) as z:
    probabilities, predictions = z["probabilities"], z["predictions"]
  classes = np.arange(probabilities.shape[1])
  for i, neighbour_sets in enumerate(knn_neighbour_sets(sims, k)):
    expected = []
    for idx in neighbour_sets:
      votes = np.sum(np.exp(sims[i, idx] / temperature)[:, None] * (bank_labels[idx][:, None] == classes), axis=0)
      expected.append((votes / votes.sum(), np.argmax(votes)))
    # votes exp(s / 0.1) of float32 similarities (a few tens of u of O(1) values): rtol 1e-4
    assert any(np.allclose(probabilities[i], p, rtol=1e-4, atol=1e-7) and predictions[i] == c
               for p, c in expected), (stream, i, probabilities[i], predictions[i], expected)
  return predictions


def test_knn_equals_brute_force_numpy_1nn(pretrain_dir, tiny_data, tmp_path, capsys):
  workdir = str(tmp_path / "knn")
  results = run_protocol(tiny_config("knn", pretrain_dir, tiny_data, streams="joint,motion,bone"),
                                          workdir)
  pre = pretrained.load_pretrained(pretrain_dir)
  train = load_split(tiny_data, "train")
  test = load_split(tiny_data, "val")
  sims, predicted = {}, {}
  for m in STREAMS:
    bank = centre_crop_features(pre, m, *train[:2]).astype(np.float64)
    queries = centre_crop_features(pre, m, *test[:2]).astype(np.float64)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    sims[m] = queries @ bank.T
    predicted[m] = check_knn_outputs(sims[m], train[2], 1, workdir, m)
    assert results["streams"][m]["final_top1"] == pytest.approx(np.mean(predicted[m] == test[2]), abs=1e-12), m
  fused = check_knn_outputs(np.mean([sims[m] for m in STREAMS], axis=0), train[2], 1, workdir, "three_stream")
  assert results["three_stream"]["final_top1"] == pytest.approx(np.mean(fused == test[2]), abs=1e-12)
  assert results["protocol"] == "knn" and results["num_train"] == 36
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    assert json.load(f)["three_stream"]["method"].startswith("1-NN by the mean of the per-stream cosine")
  assert results["class_names"] == list(action_names.SYNTHETIC)
  assert results["three_stream"]["per_class"] == numpy_per_class(test[2], fused, NUM_CLASSES)
  assert results["streams"]["joint"]["per_class"] == numpy_per_class(test[2], predicted["joint"], NUM_CLASSES)
  printed = capsys.readouterr().out
  assert "knn: per-class top-1" in printed and action_names.SYNTHETIC[0] in printed


def test_a_finished_run_is_skipped_and_a_changed_one_recomputed(pretrain_dir, tiny_data, tmp_path, monkeypatch,
                                                                 capsys):
  """Rerunning a finished protocol with the same config and pretraining returns the stored
  results without computing (the protocol's runner is booby-trapped); another config value,
  a newer pretraining checkpoint, or a results.json without the completion mark recompute."""
  import shutil  # pylint: disable=import-outside-toplevel
  pre_dir = tmp_path / "pretrain"
  shutil.copytree(pretrain_dir, pre_dir)
  config = tiny_config("knn", str(pre_dir), tiny_data, streams="joint")
  workdir = str(tmp_path / "knn")
  first = run_protocol(config, workdir)
  assert first["inputs"]["init_from_steps"] == {str(pre_dir): 4}
  real_run_knn = knn_protocol.run

  def trapped(*args, **kwargs):
    raise AssertionError("recomputed a finished run")
  monkeypatch.setattr(knn_protocol, "run", trapped)
  capsys.readouterr()
  assert run_protocol(config, workdir) == first
  assert "already done with this config and pretraining" in capsys.readouterr().out

  calls = []
  monkeypatch.setattr(knn_protocol, "run", lambda *a, **k: calls.append(1) or real_run_knn(*a, **k))
  run_protocol(set_fields(config, {"eval_batch_size": 6}), workdir)  # another config
  assert len(calls) == 1
  os.rename(pre_dir / "checkpoints" / "4", pre_dir / "checkpoints" / "5")  # a newer pretraining step
  run_protocol(config, workdir)
  assert len(calls) == 2
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    stored = json.load(f)
  del stored["inputs"]  # as a run killed before its last write leaves it
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(stored, f)
  run_protocol(config, workdir)
  assert len(calls) == 3


# ---------------------------------------------------------------------------------------------
# 3. Semi-supervised subsets and fine-tuning.


def test_same_seed_same_subset_other_seed_other_subset():
  labels = np.repeat(np.arange(10), 50)
  for sampling in ("global", "stratified"):
    a = subsets.labelled_subset(labels, 0.1, seed=3, sampling=sampling, num_classes=10)
    assert np.array_equal(a, subsets.labelled_subset(labels, 0.1, seed=3, sampling=sampling, num_classes=10))
    assert not np.array_equal(a, subsets.labelled_subset(labels, 0.1, seed=4, sampling=sampling, num_classes=10))
    assert len(np.unique(a)) == len(a) and a.min() >= 0 and a.max() < 500


@pytest.mark.parametrize("n,ratio", [(500, 0.1), (503, 0.01), (7, 0.5), (40, 1.0), (1000, 0.013)])
def test_global_subset_size_is_int_n_times_ratio(n, ratio):
  labels = np.arange(n) % 7
  assert len(subsets.labelled_subset(labels, ratio, seed=0)) == int(n * ratio)
  if ratio == 1.0:
    assert subsets.labelled_subset(labels, ratio, seed=0).tolist() == list(range(n))


def test_stratified_subset_has_every_class():
  rng = np.random.default_rng(0)
  labels = np.concatenate([np.full(k, c) for c, k in enumerate([200, 3, 57, 1, 90])])
  rng.shuffle(labels)
  subset = subsets.labelled_subset(labels, 0.05, seed=1, sampling="stratified", num_classes=5)
  counts = np.bincount(labels[subset], minlength=5)
  assert counts.tolist() == [10, 1, 2, 1, 4]  # max(1, int(n_c * 0.05))
  # The global sample at this ratio misses classes for some seed (why stratification exists).
  assert any(len(np.unique(labels[subsets.labelled_subset(labels, 0.05, seed=s)])) < 5 for s in range(10))


@pytest.mark.parametrize("ratio", [0, 0.0, 1.5, -0.1, float("nan")])
def test_ratio_outside_zero_one_is_an_error(ratio):
  with pytest.raises(ConfigError, match=r"expected a fraction of the training labels in \(0, 1\]"):
    subsets.labelled_subset(np.arange(10), ratio, seed=0)


def test_stratified_class_without_example_is_named():
  labels = np.array([0, 0, 1, 1, 2, 4, 4])
  with pytest.raises(ConfigError, match=r"class 3 has no example in the training split.*each of the 5 classes"):
    subsets.labelled_subset(labels, 0.5, seed=0, sampling="stratified", num_classes=5)
  with pytest.raises(ConfigError, match=r"class 3 has no example .*\(nor classes 5, 6\)"):
    subsets.labelled_subset(labels, 0.5, seed=0, sampling="stratified", num_classes=7)
  with pytest.raises(ConfigError, match="keeps int"):
    subsets.labelled_subset(labels, 0.1, seed=0)  # int(7 * 0.1) = 0


@pytest.fixture(scope="module")
def semi_run(pretrain_dir, tiny_data, tmp_path_factory):
  """Half of the labels (18 clips: a batch of 12 and a partial batch of 6 per epoch), 2 seeds."""
  workdir = str(tmp_path_factory.mktemp("semi"))
  config = tiny_config("semi", pretrain_dir, tiny_data, label_ratio=0.5, seeds=(0, 1))
  return workdir, run_protocol(config, workdir)


def test_semi_reports_every_seed_with_mean_and_std(semi_run):
  workdir, results = semi_run
  assert results["protocol"] == "semi" and results["seeds"] == [0, 1] and results["num_labelled"] == 18
  entry = results["streams"]["joint"]
  finals = [s["final_top1"] for s in entry["per_seed"]]
  bests = [s["best_of_evals_top1"] for s in entry["per_seed"]]
  assert entry["final_top1"] == pytest.approx(np.mean(finals))
  assert entry["final_top1_std"] == pytest.approx(np.std(finals, ddof=1))
  assert entry["best_of_evals_top1"] == pytest.approx(np.mean(bests))
  for s in entry["per_seed"]:
    assert [p["epoch"] for p in s["curve"]] == [1, 2] and s["final_top1"] == s["curve"][-1]["top1"]
    assert s["best_of_evals_top1"] == max(p["top1"] for p in s["curve"]) and s["num_labelled"] == 18
  per_class = results["labelled_per_class"]
  assert sum(per_class["0"]) == sum(per_class["1"]) == 18 and per_class["0"] != per_class["1"]
  assert {r["seed"] for r in metrics_lib.read_metrics(workdir, "eval_seed1")} == {1}


def test_semi_fine_tunes_the_whole_encoder_and_tests_in_eval_mode(semi_run, pretrain_dir, tiny_data):
  """Every encoder tensor and the BN running statistics moved (full fine-tuning, train-mode
  BN); the saved test predictions are the eval-mode forward of the saved model."""
  workdir, results = semi_run
  pre = pretrained.load_pretrained(pretrain_dir)
  model = read_msgpack(os.path.join(workdir, "model.msgpack"))["joint"]
  got, start = leaves(model["params"]), leaves(pre.params["joint"])
  assert all(not np.array_equal(got[k], start[k]) for k in start)
  assert not np.array_equal(model["batch_stats"]["input_norm"]["mean"], pre.batch_stats["joint"]["input_norm"]["mean"])
  skeleton, num_frames, labels = load_split(tiny_data, "val")
  clip = augment.downstream_test_view(jnp.asarray(skeleton), jnp.asarray(num_frames), ratio=0.95, out_len=FRAMES)
  logits = pre.model(num_outputs=NUM_CLASSES).apply(model, modalities.flatten(clip), train=False)
  with np.load(os.path.join(workdir, "predictions_joint.npz")) as z:
    np.testing.assert_allclose(z["probabilities"], np_softmax(np.asarray(logits)), atol=1e-5)
    first_seed = results["streams"]["joint"]["per_seed"][0]
    assert np.mean(z["predictions"] == labels) == pytest.approx(first_seed["final_top1"])


def test_transfer_fine_tunes_on_all_target_labels(pretrain_dir, tiny_data, tmp_path):
  """synthetic xsub pretraining -> synthetic xview (36 train clips: 3 full batches), one epoch."""
  config = tiny_config("transfer", pretrain_dir, tiny_data, name="synthetic_xsub_to_xview", num_epochs=1)
  results = get_trainer("transfer")(config, str(tmp_path))
  assert results["protocol"] == "transfer" and results["label_ratio"] == 1.0
  assert (results["dataset"], results["benchmark"], results["pretrain_dataset"]) == (
      "synthetic", "xview", "synthetic/xsub")
  assert results["num_labelled"] == results["num_train"] and results["num_classes"] == NUM_CLASSES
  assert 0.0 <= results["streams"]["joint"]["final_top1"] <= 1.0


# ---------------------------------------------------------------------------------------------
# 4. Bad input: clear errors, before any data is read or anything compiled.


def test_init_from_missing_or_empty(tmp_path):
  nowhere = str(tmp_path / "no_data")
  with pytest.raises(ConfigError, match="config.init_from is empty: pass --config.init_from="):
    run_protocol(tiny_config("linear", "", nowhere), str(tmp_path / "w"))
  with pytest.raises(FileNotFoundError, match="does not exist; expected a pretraining workdir"):
    run_protocol(tiny_config("knn", str(tmp_path / "nothing"), nowhere), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
  with pytest.raises(ConfigError, match="is the pretraining workdir"):
    run_protocol(tiny_config("knn", str(tmp_path), nowhere), str(tmp_path))


@pytest.mark.parametrize("ratio", [0.0, 1.5])
def test_semi_ratio_outside_zero_one(tmp_path, ratio):
  with pytest.raises(ConfigError, match=r"config.label_ratio=.*expected a fraction"):
    run_protocol(tiny_config("semi", str(tmp_path), str(tmp_path), label_ratio=ratio),
                                  str(tmp_path / "w"))


def test_incompatible_checkpoints(pretrain_dir, tmp_path):
  """Another layout (MSR Action3D: 20 joints), another hidden size than the checkpoint holds,
  a stream that was not pretrained: ConfigError naming what was found and expected."""
  nowhere = str(tmp_path / "no_data")  # never opened: the checks come first
  with pytest.raises(ConfigError, match=r"layout ntu25.*'msr_action3d' has layout msr20"):
    run_protocol(tiny_config("linear", pretrain_dir, nowhere, name="msr_action3d"),
                                  str(tmp_path / "a"))
  edited = tmp_path / "edited"
  shutil.copytree(pretrain_dir, edited)
  with open(edited / "config.json", encoding="utf-8") as f:
    raw = json.load(f)
  raw["model"]["hidden_size"] = 12
  (edited / "config.json").write_text(json.dumps(raw))
  with pytest.raises(ConfigError, match=r"found modalities joint, motion, bone, hidden size 8.*hidden size 12"):
    run_protocol(tiny_config("knn", str(edited), nowhere), str(tmp_path / "b"))
  joint_only = str(tmp_path / "joint_only")
  make_workdir(joint_only, steps=(1,), modalities="joint")
  with pytest.raises(ConfigError, match="asks for bone, but init_from=.* pretrained only joint"):
    run_protocol(tiny_config("semi", joint_only, nowhere, streams="joint,bone"), str(tmp_path / "c"))
  with pytest.raises(ConfigError, match="config.streams='joint,hand'"):
    run_protocol(tiny_config("linear", joint_only, nowhere, streams="joint,hand"), str(tmp_path / "d"))


# ---------------------------------------------------------------------------------------------
# 5. Configs and launch.py.


@pytest.mark.parametrize("module,names", [
    (linear_config, linear_config.DATASETS), (knn_config, linear_config.DATASETS),
    (semi_config, linear_config.DATASETS), (transfer_config, transfer_config.TRANSFERS)])
def test_every_config_loads_and_is_locked(module, names):
  for name in names:
    c = module.get_config(name)
    assert c.trainer in common.PROTOCOLS and c.init_from == "" and c.streams == "joint"
    with pytest.raises(AttributeError):
      c.optimizer_lr = 1.0  # a mistyped field
    if c.trainer != "knn":
      assert c.batch_size == 64 and c.optimizer.weight_decay == 0.0 and c.optimizer.momentum == 0.9
      if name.startswith(("ntu", "pku")):
        assert (c.num_epochs, tuple(c.optimizer.milestones)) == (80, (50, 70))
  with pytest.raises(ValueError, match="unknown config 'ntu61'"):
    module.get_config("ntu61")


def test_reference_settings():
  assert linear_config.get_config("ntu60_xsub").optimizer.lr == 0.1
  assert linear_config.get_config("ntu60_xsub").reference_top1 == 79.8
  assert [linear_config.get_config(n).reference_top1 for n in ("ntu60_xview", "ntu120_xsub", "ntu120_xset",
                                                                "pku_mmd2_xsub")] == [86.9, 70.3, 71.5, 43.0]
  semi = semi_config.get_config("ntu60_xview")
  assert (semi.optimizer.lr, semi.label_ratio, semi.sampling, tuple(semi.seeds)) == (
      0.01, 0.01, "global", (0, 1, 2, 3, 4))
  transfer = transfer_config.get_config("ntu120_to_pku")
  assert (transfer.data.dataset, transfer.data.benchmark, transfer.label_ratio, transfer.optimizer.lr) == (
      "pku_mmd2", "xsub", 1.0, 0.01)
  assert "unverified" in transfer.reference_note


def test_launch_runs_a_protocol_and_its_errors(pretrain_dir, tiny_data, tmp_path, compilation_cache_dir):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=compilation_cache_dir)

  def launch(*args):
    cmd = [sys.executable, "launch.py", "--config", "configs/knn.py:synthetic", f"--config.init_from={pretrain_dir}",
           f"--config.data.data_dir={tiny_data}", "--config.eval_batch_size=12", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  good = launch(f"--workdir={tmp_path / 'good'}")
  typo = launch("--config.stream=bone", f"--workdir={tmp_path / 'typo'}")
  missing = launch("--config.init_from=" + str(tmp_path / "absent"), f"--workdir={tmp_path / 'missing'}")
  out = {name: p.communicate(timeout=300) for name, p in (("typo", typo), ("missing", missing), ("good", good))}
  assert typo.returncode != 0 and "stream" in out["typo"][1] and not (tmp_path / "typo").exists()
  assert missing.returncode != 0 and "does not exist; expected a pretraining workdir" in out["missing"][1]
  assert len([line for line in out["missing"][1].splitlines() if line.strip()]) == 1, out["missing"][1]
  assert good.returncode == 0, out["good"][1][-3000:]
  assert "1-NN top-1" in out["good"][0]
  with open(tmp_path / "good" / "results.json", encoding="utf-8") as f:
    assert json.load(f)["streams"]["joint"]["final_top1"] >= 0.0


# ---------------------------------------------------------------------------------------------
# 6. The contrastive family's options: drop_last, the mean-logit probe, eval-mode fine-tuning,
#    gradient clipping, weighted kNN.


def test_epoch_batches_with_drop_last_are_a_drop_last_true_loader():
  """N // B = 2 batches of 4 out of 10 records: 8 distinct records of a fresh permutation each
  epoch. The step counts are torch's ``len(DataLoader(...))``: HiCLR's 720-clip linear
  evaluation at batch 128 runs 5 steps per epoch with drop_last, 6 without. A subset read
  as a full-length epoch (HiCLR's semi-supervised feeder) composes: N // B batches of the
  whole split's length, every record a subset entry."""
  mesh = sharding.make_mesh()
  epochs = [[np.asarray(b["label"]) for b in batches_lib.epoch_batches(_FakeSource(10), batch_size=4, seed=0, epoch=e,
                                                                       mesh=mesh, drop_last=True)] for e in (1, 2)]
  for batches in epochs:
    labels = np.concatenate(batches)
    assert [len(b) for b in batches] == [4, 4] and len(np.unique(labels)) == 8 and labels.max() < 10
  assert np.concatenate(epochs[0]).tolist() != np.concatenate(epochs[1]).tolist()
  torch = pytest.importorskip("torch")
  for n, b in ((10, 4), (720, 128), (36, 12)):
    for drop_last in (True, False):
      loader = torch.utils.data.DataLoader(range(n), batch_size=b, shuffle=True, drop_last=drop_last)
      assert batches_lib.steps_per_epoch(n, b, drop_last) == len(loader)
  assert batches_lib.steps_per_epoch(720, 128, True) == 5 and batches_lib.steps_per_epoch(720, 128) == 6
  subset = subsets.SubsetSource(_FakeSource(10), np.array([7, 2, 5]), length=10)
  full = [np.asarray(b["label"]) for b in batches_lib.epoch_batches(subset, batch_size=4, seed=0, epoch=1, mesh=mesh,
                                                                    drop_last=True)]
  assert [len(b) for b in full] == [4, 4] and set(np.concatenate(full).tolist()) <= {2, 5, 7}
  with pytest.raises(ConfigError, match="config.batch_size=4 with config.drop_last=True leaves an epoch of 3 records"):
    batches_lib.steps_per_epoch(3, 4, True)


def _random_batch(seed, n=7):
  rng = np.random.default_rng(seed)
  return {"skeleton": rng.normal(size=(n, 3, 300, 25, 2)).astype(np.float32),
          "num_frames": rng.integers(10, 301, n).astype(np.int32),
          "label": rng.integers(0, NUM_CLASSES, n).astype(np.int32)}


CROP_VIEW = {"mode": "crop_resize", "out_len": FRAMES, "min_len": FRAMES, "ratio_range": (0.5, 1.0)}


def _step_features(pre, stream, key, batch):
  """The frozen encoder's eval-mode features (float64) of the crop a step draws from ``key``."""
  clip = augment.downstream_train_view(key, jnp.asarray(batch["skeleton"]), jnp.asarray(batch["num_frames"]),
                                       (0.5, 1.0), FRAMES, FRAMES)
  x = modalities.flatten(modalities.modality(clip, stream, pre.layout))
  return np.asarray(pre.model().apply(pre.variables(stream), x, train=False), np.float64)


def test_mean_logit_probe_step_equals_numpy_and_leaves_the_stream_heads_alone(pretrain_dir):
  """CrosSCLR's view 'all': z = (f_j W_j^T + b_j + f_m W_m^T + b_m) / 2, one cross-entropy on z:
  dL/dW_s = (softmax(z) - y)^T f_s / (2 n) (numpy). The per-stream heads of the same step equal
  those of a step without the probe (disjoint parameters and optimizers)."""
  pre = pretrained.load_pretrained(pretrain_dir)
  config = tiny_config("linear", pretrain_dir, "unused")
  lr, n, streams = 0.1, 7, ("joint", "motion")
  batch = _random_batch(3, n)
  rng = np.random.default_rng(11)

  def head(seed):
    h = heads_lib.init_head(jax.random.PRNGKey(seed), NUM_CLASSES, 16)
    return dict(h, bias=jnp.asarray(rng.normal(size=NUM_CLASSES).astype(np.float32) * 0.1))

  stream_heads = {m: head(i) for i, m in enumerate(streams)}
  probe = {m: head(10 + i) for i, m in enumerate(streams)}

  def run_step(params, joint_probe):
    tx = training.stream_optimizer(config, 100, list(params))
    state = training.DownstreamState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                                     opt_state=tx.init(params), rng=jax.random.PRNGKey(7))
    step = jax.jit(functools.partial(linear_protocol.train_step, model=pre.model(), layout=pre.layout,
                                     streams=streams, tx=tx, schedule=optim.lr_schedule(config, 100), view=CROP_VIEW,
                                     joint_probe=joint_probe))
    return step(state, {m: pre.variables(m) for m in streams}, batch)

  with_probe, metrics = run_step(dict(stream_heads, mean_logit_probe=probe), True)
  without, _ = run_step(dict(stream_heads), False)
  for m in streams:  # the same float operations on the stream heads: within a few u of 0.01-sized weights
    for k in ("weight", "bias"):
      np.testing.assert_allclose(with_probe.params[m][k], without.params[m][k], rtol=1e-6, atol=1e-9)
  feats = {m: _step_features(pre, m, jax.random.fold_in(jax.random.PRNGKey(7), 0), batch) for m in streams}
  w = {m: np.asarray(probe[m]["weight"], np.float64) for m in streams}
  b = {m: np.asarray(probe[m]["bias"], np.float64) for m in streams}
  z = sum(feats[m] @ w[m].T + b[m] for m in streams) / 2
  p = np_softmax(z)
  onehot = np.eye(NUM_CLASSES)[batch["label"]]
  assert float(metrics["loss_mean_logit_probe"]) == pytest.approx(-np.mean(np.log(p[np.arange(n), batch["label"]])),
                                                                  rel=1e-5)
  for m in streams:
    got = with_probe.params["mean_logit_probe"][m]
    # Entries near 0 carry lr (0.1) times a few u of the O(1) gradient terms, ~2e-8: atol 1e-7.
    np.testing.assert_allclose(got["weight"], w[m] - lr * (p - onehot).T @ feats[m] / (2 * n), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["bias"], b[m] - lr * np.mean(p - onehot, axis=0) / 2, rtol=1e-5, atol=1e-7)


def test_linear_with_the_mean_logit_probe(pretrain_dir, tiny_data, tmp_path, capsys):
  """The probe's entry (final, best, epoch, curve, note), its heads file, its saved predictions:
  the arg-max of the mean of its heads' logits on the saved test features (numpy)."""
  workdir = str(tmp_path / "probe")
  results = run_protocol(tiny_config("linear", pretrain_dir, tiny_data, streams="joint,motion", joint_probe=True),
                         workdir)
  entry = results["mean_logit_probe"]
  assert [p["epoch"] for p in entry["curve"]] == [1, 2] and entry["final_top1"] == entry["curve"][-1]["top1"]
  assert entry["best_of_evals_top1"] == max(p["top1"] for p in entry["curve"]) and "CrosSCLR" in entry["note"]
  assert entry["streams"] == ["joint", "motion"] and "fusion" in results
  assert sorted(read_msgpack(os.path.join(workdir, "heads.msgpack"))) == ["joint", "motion"]
  probe = read_msgpack(os.path.join(workdir, entry["heads"]))
  z = 0.0
  for m in ("joint", "motion"):
    with np.load(os.path.join(workdir, f"features_{m}.npz")) as f:
      feats, labels = f["features"].astype(np.float64), f["labels"]
    z = z + (feats @ probe[m]["weight"].astype(np.float64).T + probe[m]["bias"]) / 2
  assert entry["final_top1"] == pytest.approx(np.mean(np.argmax(z, -1) == labels))
  with np.load(os.path.join(workdir, "predictions_mean_logit_probe.npz")) as f:
    np.testing.assert_allclose(f["probabilities"], np_softmax(z), atol=1e-5)  # in [0, 1]: ~170 u
  assert "mean_logit_probe" in capsys.readouterr().out
  assert [r["top1_mean_logit_probe"] for r in metrics_lib.read_metrics(workdir, "eval")] == pytest.approx(
      [p["top1"] for p in entry["curve"]])


def test_finetune_step_in_eval_mode_keeps_the_running_statistics(pretrain_dir):
  """AimCLR's model.eval() fine-tuning: the loss is the cross-entropy of the eval-mode forward
  (numpy: the encoder's eval-mode features of the step's crop and the head), the head moves by
  lr times its numpy gradient, the BN running statistics stay bit-identical. A train-mode step
  (batch statistics) moves the head elsewhere."""
  pre = pretrained.load_pretrained(pretrain_dir)
  config = tiny_config("semi", pretrain_dir, "unused")
  lr, n = float(config.optimizer.lr), 7
  batch = _random_batch(4, n)
  head = heads_lib.init_head(jax.random.PRNGKey(2), NUM_CLASSES, 16)
  head["bias"] = jnp.asarray(np.random.default_rng(5).normal(size=NUM_CLASSES).astype(np.float32) * 0.1)
  params = {"joint": dict(pre.params["joint"], fc=head)}
  tx = training.stream_optimizer(config, 100, ["joint"])
  state = training.DownstreamState(step=jnp.zeros((), jnp.int32), params=params,
                                   batch_stats={"joint": pre.batch_stats["joint"]}, opt_state=tx.init(params),
                                   rng=jax.random.PRNGKey(7))

  def step(mode):
    return jax.jit(functools.partial(finetune_protocol.train_step, model=pre.model(num_outputs=NUM_CLASSES),
                                     layout=pre.layout, streams=("joint",), tx=tx,
                                     schedule=optim.lr_schedule(config, 100), view=CROP_VIEW, mode=mode))(state, batch)

  evaluated, metrics = step("eval")
  feats = _step_features(pre, "joint", jax.random.fold_in(state.rng, 0), batch)
  w, b = np.asarray(head["weight"], np.float64), np.asarray(head["bias"], np.float64)
  p = np_softmax(feats @ w.T + b)
  onehot = np.eye(NUM_CLASSES)[batch["label"]]
  assert float(metrics["loss_joint"]) == pytest.approx(-np.mean(np.log(p[np.arange(n), batch["label"]])), rel=1e-5)
  want_w = w - lr * (p - onehot).T @ feats / n
  # lr 0.01 times a few u of the O(1) gradient terms near 0: ~2e-9; atol 1e-8.
  np.testing.assert_allclose(evaluated.params["joint"]["fc"]["weight"], want_w, rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(evaluated.params["joint"]["fc"]["bias"], b - lr * np.mean(p - onehot, axis=0),
                             rtol=1e-5, atol=1e-8)
  got, start = leaves(evaluated.batch_stats), leaves({"joint": pre.batch_stats["joint"]})
  assert sorted(got) == sorted(start) and all(np.array_equal(got[k], start[k]) for k in start)
  trained, _ = step("train")
  assert not np.allclose(trained.params["joint"]["fc"]["weight"], want_w, rtol=1e-3, atol=0)
  assert not np.array_equal(leaves(trained.batch_stats)["joint/input_norm/mean"],
                            start["joint/input_norm/mean"])


def test_aimclr_semi_settings_together(pretrain_dir, tiny_data, tmp_path):
  """AimCLR's semi-supervised processor on the tiny set: Feeder_semi's class-balanced subset
  (round(0.5 * 3) = 2 of each class's 3 clips: 24) as the epoch (its __len__ is the subset's),
  drop_last: 24 // 10 = 2 steps per epoch (3 without), the lr schedule counting 2 (lr x0.1 from
  epoch 2), model.eval(): BN running statistics unchanged while the encoder trains, gradients
  clipped to norm 2."""
  config = tiny_config("semi", pretrain_dir, tiny_data, label_ratio=0.5, sampling="class_balanced",
                       epoch_length="subset", drop_last=True, finetune_mode="eval", batch_size=10, seeds=(0,),
                       **{"optimizer.clip_grad_norm": 2.0})
  workdir = str(tmp_path / "semi")
  results = run_protocol(config, workdir)
  assert results["num_labelled"] == 24 and results["labelled_per_class"]["0"] == [2] * NUM_CLASSES
  train = metrics_lib.read_metrics(workdir, "train")
  assert [r["step"] for r in train] == [2, 4]
  assert [r["lr"] for r in train] == pytest.approx([0.01, 0.001])
  pre = pretrained.load_pretrained(pretrain_dir)
  model = read_msgpack(os.path.join(workdir, "model.msgpack"))["joint"]
  got, start = leaves(model["batch_stats"]), leaves(pre.batch_stats["joint"])
  assert sorted(got) == sorted(start) and all(np.array_equal(got[k], start[k]) for k in start)
  got, start = leaves(model["params"]), leaves(pre.params["joint"])
  assert all(not np.array_equal(got[k], start[k]) for k in start)


def test_weighted_knn_equals_numpy_simsiam_votes(pretrain_dir, tiny_data, tmp_path):
  """k = 5, temperature 0.1: per stream SimSiam's votes on the centre-crop features; the fusion
  votes with the mean of the three streams' cosine similarities (numpy)."""
  workdir = str(tmp_path / "knn5")
  results = run_protocol(tiny_config("knn", pretrain_dir, tiny_data, streams="joint,motion,bone", knn_k=5), workdir)
  pre = pretrained.load_pretrained(pretrain_dir)
  train, test = load_split(tiny_data, "train"), load_split(tiny_data, "val")
  sims = {}
  for m in STREAMS:
    bank = centre_crop_features(pre, m, *train[:2]).astype(np.float64)
    queries = centre_crop_features(pre, m, *test[:2]).astype(np.float64)
    sims[m] = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        bank / np.linalg.norm(bank, axis=1, keepdims=True)).T
    predicted = check_knn_outputs(sims[m], train[2], 5, workdir, m)
    assert results["streams"][m]["final_top1"] == pytest.approx(np.mean(predicted == test[2]), abs=1e-12)
  fused = check_knn_outputs(np.mean([sims[m] for m in STREAMS], axis=0), train[2], 5, workdir, "three_stream")
  assert results["three_stream"]["final_top1"] == pytest.approx(np.mean(fused == test[2]), abs=1e-12)
  assert (results["knn_k"], results["knn_temperature"]) == (5, 0.1)


def test_drop_last_follows_each_reference():
  """The torchlight family (HiCLR's linear, fine-tuning and semi-supervised configs) drops the
  last partial batch; CMD's loaders keep it. Every new option is off by default."""
  from configs import finetune_hiclr, linear_hiclr, semi_hiclr  # pylint: disable=import-outside-toplevel
  for module in (linear_hiclr, finetune_hiclr, semi_hiclr):
    for name in ("ntu60_xsub", "ntu60_xsub_dsta", "synthetic"):
      assert module.get_config(name).drop_last is True
  for module in (linear_config, semi_config):
    c = module.get_config("ntu60_xsub")
    assert c.drop_last is False and c.optimizer.clip_grad_norm == 0.0
  assert linear_config.get_config("ntu60_xsub").joint_probe is False
  assert semi_config.get_config("ntu60_xsub").finetune_mode == "train"
  knn = knn_config.get_config("ntu60_xsub")
  assert (knn.knn_k, knn.knn_temperature) == (1, 0.1)


@pytest.mark.parametrize("protocol,overrides,match", [
    ("linear", {"optimizer.clip_grad_norm": -1.0}, r"config.optimizer.clip_grad_norm=-1.0: expected a finite"),
    ("linear", {"joint_probe": True}, r"config.joint_probe=True .*streams='joint': expected the linear protocol "
                                      r"and 2\+ streams"),
    ("semi", {"finetune_mode": "test"}, r"config.finetune_mode='test': expected 'train'"),
    ("knn", {"knn_k": 0}, r"config.knn_k=0: expected a neighbour count >= 1"),
    ("knn", {"knn_temperature": 0.0}, r"config.knn_temperature=0.0: expected a finite temperature > 0"),
])
def test_family_options_errors(tmp_path, protocol, overrides, match):
  """One-line ConfigErrors naming the field, before any data or checkpoint is read."""
  nowhere = str(tmp_path / "nothing")
  with pytest.raises(ConfigError, match=match) as err:
    run_protocol(tiny_config(protocol, nowhere, nowhere, **overrides), str(tmp_path / "w"))
  assert "\n" not in str(err.value)
