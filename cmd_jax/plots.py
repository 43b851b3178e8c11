"""Pictures of a run a researcher would rather look at than read: t-SNE maps and confusion matrices.

This module owns the PNG plots of the downstream protocols:

- ``tsne_plot``: a 2-D t-SNE map (``sklearn.manifold.TSNE``, PCA initialisation,
  perplexity adapted to the number of points) of features, one colour per class;
- ``confusion_matrix`` (a pure numpy function) and ``confusion_matrix_plot``: rows are the
  true classes, columns the predictions, row-normalised by default, top-1 in the title;
- ``plot_workdir``: both for every ``features_<stream>.npz`` (arrays ``features``,
  ``labels``) and ``predictions_<stream>.npz`` (arrays ``labels``, ``predictions``, optional
  ``num_classes``) that a downstream run wrote in its workdir.

Figures are drawn on matplotlib's Agg canvas (``matplotlib.figure.Figure`` with
``FigureCanvasAgg``), without pyplot, so importing this module never changes the user's
backend and needs no display. Command line: ``python -m cmd_jax.plots <workdir>``.
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Sequence

import numpy as np

_LEGEND_MAX_CLASSES = 20
_ANNOTATE_MAX_CLASSES = 20
_TICKS_MAX_CLASSES = 40


def _figure(width: float, height: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path: str | os.PathLike) -> str:
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fig.savefig(path, format="png", bbox_inches="tight")
  return path


def _class_name(class_names: Sequence[str] | None, c: int) -> str:
  return str(class_names[c]) if class_names is not None else str(c)


def _check_class_names(class_names, num_classes: int) -> None:
  if class_names is not None and len(class_names) < num_classes:
    raise ValueError(f"class_names has {len(class_names)} names; expected at least {num_classes} (one per class)")


def _labels(x, name: str, n: int | None = None) -> np.ndarray:
  a = np.asarray(x)
  if a.ndim != 1 or (n is not None and len(a) != n):
    raise ValueError(f"{name} has shape {a.shape}; expected [{n if n is not None else 'N'}] integers")
  if a.size and (a.dtype.kind not in "iuf" or not np.all(a == np.round(a))):
    raise ValueError(f"{name}: expected integer class indices, got dtype {a.dtype}")
  return a.astype(np.int64)


def _perplexity(n: int) -> float:
  """sklearn's default 30, lowered for small sets (it must stay below the number of points)."""
  return float(max(min(30.0, (n - 1) / 3.0), 1.0 if n > 2 else 0.5))


def tsne_embedding(features, seed: int = 0, normalize: bool = True) -> np.ndarray:
  """2-D t-SNE coordinates ``[N, 2]`` of ``features [N, D]`` (PCA init, perplexity for N).

  ``normalize`` L2-normalises the rows first (the protocols compare features by cosine).
  """
  from sklearn.manifold import TSNE  # pylint: disable=import-outside-toplevel
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or len(x) < 2:
    raise ValueError(f"t-SNE: features have shape {x.shape}; expected [N >= 2, D]")
  if not np.all(np.isfinite(x)):
    raise ValueError("t-SNE: the features contain NaN or infinite values")
  if normalize:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norm == 0, 1.0, norm)
  if x.shape[1] < 2:  # PCA initialisation needs 2 columns
    x = np.concatenate([x, np.zeros((len(x), 2 - x.shape[1]))], axis=1)
  tsne = TSNE(n_components=2, init="pca", perplexity=_perplexity(len(x)), random_state=seed,
              learning_rate="auto")
  return tsne.fit_transform(x).astype(np.float32)


def _colours(num_classes: int):
  from matplotlib import colormaps  # pylint: disable=import-outside-toplevel
  if num_classes <= 10:
    cmap = colormaps["tab10"]
    return [cmap(i) for i in range(num_classes)]
  if num_classes <= 20:
    cmap = colormaps["tab20"]
    return [cmap(i) for i in range(num_classes)]
  cmap = colormaps["turbo"]
  return [cmap(i / max(num_classes - 1, 1)) for i in range(num_classes)]


def tsne_plot(features, labels, path: str | os.PathLike, class_names: Sequence[str] | None = None,
              title: str = "t-SNE of the features", seed: int = 0, max_points: int = 5000,
              normalize: bool = True) -> str:
  """Writes a PNG of the t-SNE map of ``features [N, D]``, points coloured by ``labels [N]``.

  At most ``max_points`` points (a random subset drawn with ``seed``) are embedded: t-SNE is
  quadratic-ish in N. A legend (with ``class_names`` when given) is drawn up to 20 classes.
  Returns ``path``.
  """
  x = np.asarray(features)
  if x.ndim != 2:
    raise ValueError(f"tsne_plot: features have shape {x.shape}; expected [N, D]")
  y = _labels(labels, "tsne_plot: labels", len(x))
  if len(y) and y.min() < 0:
    raise ValueError(f"tsne_plot: labels must be >= 0, found {y.min()}")
  total = len(x)
  if max_points and total > max_points:
    keep = np.sort(np.random.default_rng(seed).choice(total, int(max_points), replace=False))
    x, y = x[keep], y[keep]
  num_classes = int(y.max()) + 1 if len(y) else 0
  _check_class_names(class_names, num_classes)
  xy = tsne_embedding(x, seed=seed, normalize=normalize)

  fig = _figure(8, 7)
  ax = fig.add_subplot(1, 1, 1)
  colours = _colours(num_classes)
  present = np.unique(y)
  size = float(np.clip(4000.0 / len(xy), 4, 40))
  for c in present:
    sel = y == c
    ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=colours[c], alpha=0.8, linewidths=0,
               label=_class_name(class_names, int(c)))
  if len(present) <= _LEGEND_MAX_CLASSES:
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=max(1.0, 30.0 / size) ** 0.5,
              frameon=False)
  shown = f"{len(xy)} of {total} points" if len(xy) < total else f"{total} points"
  ax.set_title(f"{title}\n{shown}, {len(present)} classes, perplexity {_perplexity(len(xy)):g}", fontsize=10)
  ax.set_xticks([])
  ax.set_yticks([])
  return _save(fig, path)


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
  """Counts ``C [num_classes, num_classes]`` (int64): ``C[i, j]`` = samples of class i predicted j."""
  k = int(num_classes)
  if k < 1:
    raise ValueError(f"confusion_matrix: num_classes={num_classes}; expected >= 1")
  y = _labels(labels, "confusion_matrix: labels")
  p = _labels(predictions, "confusion_matrix: predictions", len(y))
  for name, a in (("labels", y), ("predictions", p)):
    if a.size and (a.min() < 0 or a.max() >= k):
      raise ValueError(f"confusion_matrix: {name} span [{a.min()}, {a.max()}]; expected classes in [0, {k})")
  return np.bincount(y * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def normalize_rows(matrix) -> np.ndarray:
  """Each row divided by its sum (rows of classes with no sample stay 0)."""
  m = np.asarray(matrix, np.float64)
  sums = m.sum(axis=1, keepdims=True)
  return m / np.where(sums == 0, 1.0, sums)


def confusion_matrix_plot(labels, predictions, num_classes: int, path: str | os.PathLike,
                          class_names: Sequence[str] | None = None, normalize: bool = True,
                          title: str = "Confusion matrix") -> str:
  """Writes a PNG of the confusion matrix (rows: true class, columns: prediction). Returns ``path``.

  ``normalize`` divides every row by the class's sample count (the diagonal is then the
  per-class recall); the title gives the top-1 accuracy over all samples. Cells are
  annotated up to 20 classes, axes carry class names up to 40.
  """
  counts = confusion_matrix(labels, predictions, num_classes)
  k = counts.shape[0]
  _check_class_names(class_names, k)
  total = int(counts.sum())
  top1 = float(np.trace(counts)) / total if total else float("nan")
  values = normalize_rows(counts) if normalize else counts.astype(np.float64)

  side = float(np.clip(0.45 * k + 3, 5, 16))
  fig = _figure(side + 1.5, side)
  ax = fig.add_subplot(1, 1, 1)
  image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(values.max(), 1.0),
                    interpolation="nearest")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
               label="fraction of the true class" if normalize else "samples")
  if k <= _TICKS_MAX_CLASSES:
    names = [_class_name(class_names, c) for c in range(k)]
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=90 if class_names is not None else 0, fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
  if k <= _ANNOTATE_MAX_CLASSES:
    for i in range(k):
      for j in range(k):
        if counts[i, j]:
          v = values[i, j]
          ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=7,
                  color="white" if v > 0.6 * (1.0 if normalize else values.max()) else "black")
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title(f"{title}\ntop-1 {100 * top1:.2f}% ({int(np.trace(counts))}/{total})", fontsize=10)
  return _save(fig, path)


def _stream(path: str, prefix: str) -> str:
  return os.path.basename(path)[len(prefix):-len(".npz")]


def _load_arrays(npz: str, names: Sequence[str], optional: Sequence[str] = ()) -> list:
  """The arrays ``names`` (then ``optional`` ones, None when absent) of an npz file; a
  ValueError naming the file, what it lacks and what it has."""
  with np.load(npz) as z:
    missing = set(names) - set(z.files)
    if missing:
      raise ValueError(f"plot_workdir: {npz} lacks {', '.join(sorted(missing))} (it has {', '.join(z.files)}); "
                       f"expected arrays {' and '.join(repr(n) for n in names)}")
    return [z[n] for n in names] + [z[n] if n in z.files else None for n in optional]


def plot_workdir(workdir: str | os.PathLike, class_names: Sequence[str] | None = None, seed: int = 0,
                 max_points: int = 5000) -> list[str]:
  """``tsne_<stream>.png`` for every ``features_<stream>.npz`` and ``confusion_<stream>.png`` for
  every ``predictions_<stream>.npz`` in ``workdir``; returns the PNG paths written (sorted by stream).
  """
  workdir = os.fspath(workdir)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"plot_workdir: {workdir} does not exist or is not a directory")
  written = []
  for npz in sorted(glob.glob(os.path.join(glob.escape(workdir), "features_*.npz"))):
    stream = _stream(npz, "features_")
    feats, labels = _load_arrays(npz, ("features", "labels"))
    written.append(tsne_plot(feats, labels, os.path.join(workdir, f"tsne_{stream}.png"), class_names=class_names,
                             title=f"t-SNE of the {stream} features", seed=seed, max_points=max_points))
  for npz in sorted(glob.glob(os.path.join(glob.escape(workdir), "predictions_*.npz"))):
    stream = _stream(npz, "predictions_")
    labels, predictions, num_classes = _load_arrays(npz, ("labels", "predictions"), optional=("num_classes",))
    if num_classes is not None:
      num_classes = int(num_classes)
    else:
      num_classes = int(max(np.max(labels, initial=0), np.max(predictions, initial=0))) + 1
    written.append(confusion_matrix_plot(labels, predictions, num_classes,
                                         os.path.join(workdir, f"confusion_{stream}.png"), class_names=class_names,
                                         title=f"Confusion matrix ({stream})"))
  return written


__all__ = ["tsne_plot", "tsne_embedding", "confusion_matrix", "normalize_rows", "confusion_matrix_plot",
           "plot_workdir"]


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if len(argv) != 1 or argv[0].startswith("-"):
    print("usage: python -m cmd_jax.plots <workdir>   (writes tsne_*.png and confusion_*.png from its "
          "features_*.npz and predictions_*.npz)", file=sys.stderr)
    return 2
  paths = plot_workdir(argv[0])
  for p in paths:
    print(p)
  if not paths:
    print(f"no features_*.npz or predictions_*.npz in {argv[0]}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
