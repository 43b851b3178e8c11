"""Tests for cmd_jax.plots: the confusion matrix against hand-worked counts, and the PNGs it writes.

The plots themselves are checked as files: a PNG signature, read back with
``matplotlib.image.imread`` to an RGBA image of a plausible size that is not blank; the
class names on them as the texts of the figure objects (tick labels, legend, key). The
numbers behind them are checked against hand-worked examples and sklearn.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from matplotlib import image as mpimg

from cmd_jax import action_names, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> np.ndarray:
  assert os.path.isfile(path)
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  img = mpimg.imread(path)
  assert img.ndim == 3 and img.shape[2] in (3, 4)
  assert img.shape[0] > 100 and img.shape[1] > 100
  assert img[..., :3].std() > 0.01  # something is drawn
  return img


def test_confusion_matrix_hand_worked():
  labels = [0, 0, 1, 1, 1, 2]
  predictions = [0, 1, 1, 1, 2, 0]
  # rows: true class, columns: predicted; class 3 has no sample and is never predicted
  expected = np.array([[1, 1, 0, 0],
                       [0, 2, 1, 0],
                       [1, 0, 0, 0],
                       [0, 0, 0, 0]])
  counts = plots.confusion_matrix(labels, predictions, 4)
  np.testing.assert_array_equal(counts, expected)
  assert counts.dtype == np.int64
  np.testing.assert_allclose(plots.normalize_rows(counts), [[1 / 2, 1 / 2, 0, 0],
                                                            [0, 2 / 3, 1 / 3, 0],
                                                            [1, 0, 0, 0],
                                                            [0, 0, 0, 0]])


def test_confusion_matrix_equals_sklearn():
  from sklearn import metrics  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  labels, predictions = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
  np.testing.assert_array_equal(plots.confusion_matrix(labels, predictions, 7),
                                metrics.confusion_matrix(labels, predictions, labels=np.arange(7)))


@pytest.mark.parametrize("labels,predictions,num_classes,match", [
    ([0, 1, 3], [0, 1, 1], 3, r"labels span \[0, 3\]; expected classes in \[0, 3\)"),
    ([0, 1, 2], [0, -1, 1], 3, r"predictions span \[-1, 1\]"),
    ([0, 1, 2], [0, 1], 3, r"expected \[3\] integers"),
    ([0.5, 1], [0, 1], 3, "integer class indices"),
    ([0], [0], 0, "num_classes=0"),
])
def test_confusion_matrix_bad_input(labels, predictions, num_classes, match):
  with pytest.raises(ValueError, match=match):
    plots.confusion_matrix(labels, predictions, num_classes)


def test_confusion_matrix_plot_writes_png(tmp_path):
  path = plots.confusion_matrix_plot([0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 2, 0], 3, tmp_path / "sub" / "c.png",
                                     class_names=["wave", "kick", "clap"])
  assert path == os.fspath(tmp_path / "sub" / "c.png")
  assert_png(path)
  assert_png(plots.confusion_matrix_plot(np.arange(30) % 25, np.arange(30) % 25, 25, tmp_path / "many.png",
                                         normalize=False))
  with pytest.raises(ValueError, match="class_names has 2 names; expected at least 3"):
    plots.confusion_matrix_plot([0, 2], [0, 2], 3, tmp_path / "x.png", class_names=["a", "b"])


def clusters(n_per_class=20, num_classes=3, dim=16, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim)) * 5
  labels = np.repeat(np.arange(num_classes), n_per_class)
  return (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def test_tsne_embedding_keeps_separated_clusters_apart():
  feats, labels = clusters()
  xy = plots.tsne_embedding(feats, seed=0)
  assert xy.shape == (len(feats), 2) and np.all(np.isfinite(xy))
  d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
  np.fill_diagonal(d, np.inf)
  assert np.mean(labels[np.argmin(d, axis=1)] == labels) > 0.95  # 1-NN in the map finds the class
  np.testing.assert_array_equal(xy, plots.tsne_embedding(feats, seed=0))  # the seed fixes the map


def test_tsne_plot_writes_png(tmp_path):
  feats, labels = clusters()
  assert_png(plots.tsne_plot(feats, labels, tmp_path / "t.png", class_names=["a", "b", "c"], title="joint"))
  # more classes than the legend shows, a subset of the points, and a tiny set
  feats, labels = clusters(n_per_class=4, num_classes=25, seed=1)
  assert_png(plots.tsne_plot(feats, labels, tmp_path / "many.png", max_points=50))
  assert_png(plots.tsne_plot(feats[:3], labels[:3], tmp_path / "tiny.png"))
  with pytest.raises(ValueError, match=r"expected \[100\] integers"):
    plots.tsne_plot(feats, labels[:-1], tmp_path / "bad.png")


def test_plot_workdir(tmp_path):
  feats, labels = clusters()
  np.savez(tmp_path / "features_joint.npz", features=feats, labels=labels)
  np.savez(tmp_path / "predictions_joint.npz", labels=labels, predictions=np.roll(labels, 1))
  np.savez(tmp_path / "predictions_three_stream.npz", labels=labels, predictions=labels, num_classes=5)
  paths = plots.plot_workdir(tmp_path)
  assert paths == [os.fspath(tmp_path / n) for n in ("tsne_joint.png", "confusion_joint.png",
                                                      "confusion_three_stream.png")]
  for p in paths:
    assert_png(p)
  for p in paths:
    os.remove(p)
  assert plots.plot_workdir(tmp_path, tsne=False) == [os.fspath(tmp_path / n) for n in (
      "confusion_joint.png", "confusion_three_stream.png")]  # the confusion matrices only
  assert not os.path.exists(tmp_path / "tsne_joint.png")
  (tmp_path / "empty").mkdir()
  assert plots.plot_workdir(tmp_path / "empty") == []
  np.savez(tmp_path / "features_bone.npz", feats=feats)
  with pytest.raises(ValueError, match="lacks features, labels"):
    plots.plot_workdir(tmp_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    plots.plot_workdir(tmp_path / "nope")


def _texts(artists) -> list[str]:
  return [a.get_text() for a in artists]


def _key_lines(fig) -> list[str]:
  """The lines of the names key: the texts of the figure's hidden-frame axes."""
  (key,) = [ax for ax in fig.axes if not ax.axison]
  return "\n".join(_texts(key.texts)).split("\n")


def test_confusion_matrix_ticks_name_the_classes():
  labels, predictions = [0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 2, 0]
  fig = plots.confusion_matrix_figure(labels, predictions, 3, class_names=["wave", "kick", "clap"])
  assert _texts(fig.axes[0].get_xticklabels()) == ["0 wave", "1 kick", "2 clap"]
  assert _texts(fig.axes[0].get_yticklabels()) == ["0 wave", "1 kick", "2 clap"]
  fig = plots.confusion_matrix_figure(labels, predictions, 3)
  assert _texts(fig.axes[0].get_yticklabels()) == ["0", "1", "2"]

  # 60 classes: label and name on every tick, names longer than 24 characters cut with an ellipsis
  y = np.arange(60)
  fig = plots.confusion_matrix_figure(y, y, 60, class_names=action_names.NTU60)
  ticks = _texts(fig.axes[0].get_yticklabels())
  assert ticks[0] == "0 drink water" and ticks[57] == "57 handshaking"
  assert ticks[59] == "59 walking apart from each\u2026"  # "walking apart from each other" has 29
  assert len(fig.axes) == 2  # the matrix and its colour bar: no key

  # 120 classes: labels on the ticks, every name in a key under the matrix (cut at 44 characters)
  y = np.arange(120)
  fig = plots.confusion_matrix_figure(y, y, 120, class_names=action_names.NTU120)
  assert _texts(fig.axes[0].get_xticklabels()) == [str(c) for c in range(120)]
  key = _key_lines(fig)
  assert len(key) == 120 and key[0] == "0 drink water" and key[59] == "59 walking apart from each other"
  assert key[119] == "119 finger-guessing game (playing rock-paper-sc\u2026"


def _first_two_columns(features, seed=0, normalize=True):
  """A stand-in for the t-SNE map where only the labelling is tested (t-SNE takes seconds)."""
  del seed, normalize
  return np.asarray(features, np.float32)[:, :2]


def test_tsne_legend_and_key_name_the_classes(monkeypatch, tmp_path):
  monkeypatch.setattr(plots, "tsne_embedding", _first_two_columns)
  feats, labels = clusters()
  fig = plots.tsne_figure(feats, labels, class_names=["wave", "kick", "clap"])
  assert _texts(fig.axes[0].get_legend().get_texts()) == ["0 wave", "1 kick", "2 clap"]
  # beyond 20 classes: no legend, each cluster labelled, the names in a key
  feats, labels = clusters(n_per_class=4, num_classes=25, seed=1)
  fig = plots.tsne_figure(feats, labels, class_names=[f"action {c}" for c in range(25)])
  ax = fig.axes[0]
  assert ax.get_legend() is None
  assert sorted(_texts(ax.texts), key=int) == [str(c) for c in range(25)]
  assert _key_lines(fig) == [f"{c} action {c}" for c in range(25)]
  assert_png(plots._save(fig, tmp_path / "key.png"))  # the figure with its key saves


def test_plot_workdir_names_classes_from_results_json(tmp_path, monkeypatch, capsys):
  figures = {}
  save = plots._save

  def keep(fig, path):
    figures[os.path.basename(path)] = fig
    return save(fig, path)

  monkeypatch.setattr(plots, "_save", keep)
  monkeypatch.setattr(plots, "tsne_embedding", _first_two_columns)
  feats, labels = clusters(n_per_class=4)
  np.savez(tmp_path / "features_joint.npz", features=feats, labels=labels)
  np.savez(tmp_path / "predictions_joint.npz", labels=labels, predictions=labels)

  def ticks():
    return _texts(figures["confusion_joint.png"].axes[0].get_yticklabels())

  def results(**fields):
    (tmp_path / "results.json").write_text(json.dumps({"protocol": "linear", **fields}))

  # the class_names a protocol stored, found by the command line without arguments
  results(dataset="msr_action3d", class_names=["wave", "kick", "clap"])
  assert plots.main([str(tmp_path)]) == 0
  assert ticks() == ["0 wave", "1 kick", "2 clap"]
  assert _texts(figures["tsne_joint.png"].axes[0].get_legend().get_texts()) == ["0 wave", "1 kick", "2 clap"]
  os.remove(tmp_path / "features_joint.npz")
  # else the names of the dataset named there
  results(dataset="msr_action3d")
  plots.plot_workdir(tmp_path)
  assert ticks() == ["0 high arm wave", "1 horizontal arm wave", "2 hammer"]
  # names that do not cover the classes, an unknown dataset, no results.json: labels
  results(dataset="msr_action3d", class_names=["wave"])
  plots.plot_workdir(tmp_path)
  assert ticks() == ["0", "1", "2"] and "3 classes but 1 names" in capsys.readouterr().err
  results(dataset="kinetics")
  plots.plot_workdir(tmp_path)
  assert ticks() == ["0", "1", "2"]
  os.remove(tmp_path / "results.json")
  plots.plot_workdir(tmp_path)
  assert ticks() == ["0", "1", "2"]
  # names passed in win
  results(dataset="msr_action3d")
  plots.plot_workdir(tmp_path, class_names=["a", "b", "c"])
  assert ticks() == ["0 a", "1 b", "2 c"]
