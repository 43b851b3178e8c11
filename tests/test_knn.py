"""The kNN evaluator against brute-force numpy 1-NN (and SimSiam's weighted kNN) and direct encoder features."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmd_jax import augment, modalities, sharding
from cmd_jax.evaluators import knn
from cmd_jax.layouts import NTU25
from cmd_jax.models.gru import GRUEncoder as Encoder


def _brute_force_1nn(bank, bank_labels, queries, query_labels):
  """sklearn's recipe written out: L2-normalise, cosine distance, nearest bank row."""
  b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  distance = 1.0 - q @ b.T
  return float(np.mean(bank_labels[np.argmin(distance, axis=1)] == query_labels))


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_knn_accuracy_equals_brute_force(chunk):
  rng = np.random.default_rng(0)
  bank = rng.normal(size=(200, 16)).astype(np.float32)
  bank_labels = rng.integers(0, 5, 200)
  # Queries near known bank rows, with noise, plus unrelated ones.
  queries = np.concatenate([bank[:60] * 3.0 + 0.05 * rng.normal(size=(60, 16)), rng.normal(size=(40, 16))])
  query_labels = rng.integers(0, 5, 100)
  query_labels[:60] = bank_labels[:60]
  got = knn.knn_accuracy(bank, bank_labels, queries.astype(np.float32), query_labels, chunk=chunk)
  assert got == pytest.approx(_brute_force_1nn(bank, bank_labels, queries, query_labels), abs=1e-12)
  assert got >= 0.6  # the 60 planted neighbours (scaled copies: cosine ignores the norm)


def test_knn_hand_worked():
  bank = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
  labels = np.array([0, 1, 2])
  queries = np.array([[0.9, 0.1], [0.2, 5.0], [-3.0, -0.5], [0.1, -1.0]], np.float32)
  # nearest by angle: 0, 1, 2, then [0.1, -1]: cos with bank rows = 0.0995, -0.995, -0.0995 -> row 0
  assert knn.knn_accuracy(bank, labels, queries, np.array([0, 1, 2, 0])) == 1.0
  assert knn.knn_accuracy(bank, labels, queries, np.array([0, 1, 2, 2])) == 0.75
  with pytest.raises(ValueError, match="empty"):
    knn.knn_accuracy(bank[:0], labels[:0], queries, labels)


class _Source:
  def __init__(self, n, seed):
    rng = np.random.default_rng(seed)
    self.x = rng.normal(size=(n, 3, 300, 25, 2)).astype(np.float32)
    self.frames = rng.integers(5, 300, n)
    self.labels = rng.integers(0, 4, n)

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {"skeleton": self.x[i], "num_frames": int(self.frames[i]), "label": int(self.labels[i]), "name": str(i)}

  def __repr__(self):
    return f"_Source({len(self)})"


def test_extract_features_in_order_and_equal_to_direct_encoder():
  source = _Source(21, 0)  # not a multiple of the batch: the last batch is padded, then trimmed
  model = Encoder(hidden_size=6, num_layers=1, num_outputs=4, mlp=True)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 150)), train=False)
  fn = knn.make_feature_fn(model, NTU25, "bone", frames=8)
  feats, labels = knn.extract_features(fn, variables, source, batch_size=8, mesh=sharding.make_mesh())
  assert feats.shape == (21, 12)
  np.testing.assert_array_equal(labels, source.labels)
  clip = augment.downstream_test_view(jnp.asarray(source.x), jnp.asarray(source.frames), ratio=0.95, out_len=8)
  x = modalities.flatten(modalities.bone(clip, NTU25))
  direct = model.apply(variables, x, train=False, features_only=True)
  # O(1) GRU features from two compiled programs (padded batches of 8 vs one call): summation
  # order differs, a few u (6e-8) of that scale; 1e-5 is ~170 u (measured 4.6 u).
  np.testing.assert_allclose(feats, np.asarray(direct), rtol=1e-5, atol=1e-5)


def _simsiam_votes(bank, bank_labels, queries, num_classes, k, temperature):
  """SimSiam's ``knn_predict`` in float64 numpy: L2-normalise, the k largest cosine similarities,
  weights exp(sim / temperature), one-hot labels weighted and summed per class."""
  b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  sims = q @ b.T
  top = np.argsort(-sims, axis=1)[:, :k]
  weights = np.exp(np.take_along_axis(sims, top, axis=1) / temperature)
  votes = np.zeros((len(queries), num_classes))
  for c in range(num_classes):
    votes[:, c] = np.sum(weights * (bank_labels[top] == c), axis=1)
  return votes


@pytest.mark.parametrize("k,chunk", [(10, 16), (200, 1024)])
def test_weighted_knn_votes_equal_simsiam_knn_predict(k, chunk):
  """37 queries (chunk 16: padded chunks), 250 bank rows of 16 dims, 5 classes. The votes are
  exp(s / 0.1) of float32 similarities s (error a few u times the 16-term dot product, ~1e-6):
  a relative error of ~1e-6 / 0.1 per weight, so rtol 1e-4."""
  rng = np.random.default_rng(8)
  bank = rng.normal(size=(250, 16)).astype(np.float32)
  bank_labels = rng.integers(0, 5, 250)
  queries = rng.normal(size=(37, 16)).astype(np.float32)
  got = np.asarray(knn.weighted_knn_votes(jnp.asarray(bank), jnp.asarray(bank_labels), jnp.asarray(queries), 0.1,
                                          num_classes=5, k=k, chunk=chunk))
  want = _simsiam_votes(bank.astype(np.float64), bank_labels, queries.astype(np.float64), 5, k, 0.1)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  np.testing.assert_array_equal(np.argmax(got, axis=1), np.argmax(want, axis=1))
  one = np.asarray(knn.weighted_knn_votes(jnp.asarray(bank), jnp.asarray(bank_labels), jnp.asarray(queries), 0.1,
                                          num_classes=5, k=1, chunk=chunk))
  nearest = np.asarray(knn.nearest_neighbours(jnp.asarray(bank), jnp.asarray(queries), chunk=chunk))
  np.testing.assert_array_equal(np.argmax(one, axis=1), bank_labels[nearest])  # k = 1: the 1-NN's label


def test_weighted_knn_hand_worked():
  """Bank at angles 0, 10, 90 and 180 degrees with labels 0, 1, 1, 0; a query at 0 degrees, k=3,
  temperature 1: class 0 gets e^1, class 1 gets e^cos(10 deg) + e^0 (the 180-degree row is 4th)."""
  angles = np.deg2rad([0.0, 10.0, 90.0, 180.0])
  bank = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
  votes = np.asarray(knn.weighted_knn_votes(jnp.asarray(bank), jnp.asarray([0, 1, 1, 0]),
                                            jnp.asarray([[2.0, 0.0]], jnp.float32), 1.0, num_classes=2, k=3))
  np.testing.assert_allclose(votes, [[np.e, np.exp(np.cos(np.deg2rad(10.0))) + 1.0]], rtol=1e-6)
