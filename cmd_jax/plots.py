"""Pictures of a run a researcher would rather look at than read: t-SNE maps and confusion matrices.

This module owns the PNG plots of the downstream protocols:

- ``tsne_plot``: a 2-D t-SNE map (``sklearn.manifold.TSNE``, PCA initialisation,
  perplexity adapted to the number of points) of features, one colour per class;
- ``confusion_matrix`` (a pure numpy function) and ``confusion_matrix_plot``: rows are the
  true classes, columns the predictions, row-normalised by default, top-1 in the title;
- ``plot_workdir``: both for every ``features_<stream>.npz`` (arrays ``features``,
  ``labels``) and ``predictions_<stream>.npz`` (arrays ``labels``, ``predictions``, optional
  ``num_classes``) that a downstream run wrote in its workdir.

Classes are named by their action names where they are known (``class_names``, index =
label): up to 60 classes the confusion matrix's ticks read ``"<label> <name>"`` (long names
cut with an ellipsis) and up to 20 the t-SNE legend does; with more classes the ticks and
the t-SNE clusters carry the label only, and a key under the plot lists ``<label> <name>``
for every class. ``plot_workdir`` finds the names itself: ``class_names`` of the workdir's
``results.json`` (written by the downstream protocols), else the names of the ``dataset``
named there (``cmd_jax.action_names``), else it shows labels only.

Figures are drawn on matplotlib's Agg canvas (``matplotlib.figure.Figure`` with
``FigureCanvasAgg``), without pyplot, so importing this module never changes the user's
backend and needs no display. Command line: ``python -m cmd_jax.plots <workdir>``.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from typing import Sequence

import numpy as np

from cmd_jax import action_names

_LEGEND_MAX_CLASSES = 20  # t-SNE: a legend up to here, labels on the clusters and a key beyond
_ANNOTATE_MAX_CLASSES = 20  # confusion matrix: the values written in the cells up to here
_NAMED_TICKS_MAX_CLASSES = 60  # confusion matrix: "<label> <name>" ticks up to here, a key beyond
_TICKS_MAX_CLASSES = 130  # confusion matrix: a tick per class up to here
_KEY_NAME_WIDTH = 44  # characters of a name in a key
RESULTS_FILE = "results.json"


def _figure(width: float, height: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(fig)
  return fig


def _short(name: str, width: int) -> str:
  """``name`` cut to ``width`` characters, the last one an ellipsis when cut."""
  return name if len(name) <= width else name[:width - 1].rstrip() + "\u2026"


def class_label(class_names: Sequence[str] | None, c: int, width: int = 30) -> str:
  """``"<c> <name>"`` (the name cut to ``width``), or ``"<c>"`` without names."""
  return f"{c} {_short(str(class_names[c]), width)}" if class_names is not None else str(c)


def _key_lines(class_names: Sequence[str], classes: Sequence[int], columns: int) -> list[str]:
  """The ``"<label> <name>"`` lines of a key, split into ``columns`` columns (one string each)."""
  lines = [class_label(class_names, int(c), _KEY_NAME_WIDTH) for c in classes]
  rows = -(-len(lines) // columns)
  return ["\n".join(lines[i * rows:(i + 1) * rows]) for i in range(columns) if lines[i * rows:(i + 1) * rows]]


def _key_height(num_lines: int, columns: int, fontsize: float) -> float:
  """Inches a key of ``num_lines`` names in ``columns`` columns takes (1.3 line spacing)."""
  return -(-num_lines // columns) * fontsize * 1.3 / 72 + 0.3


def _draw_key(ax, class_names: Sequence[str], classes: Sequence[int], columns: int, fontsize: float) -> None:
  """A key of the class names in the axes ``ax`` (its frame and ticks hidden)."""
  ax.axis("off")
  for i, text in enumerate(_key_lines(class_names, classes, columns)):
    ax.text(i / columns, 1.0, text, transform=ax.transAxes, va="top", ha="left", fontsize=fontsize,
            linespacing=1.3)


def _save(fig, path: str | os.PathLike) -> str:
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fig.savefig(path, format="png", bbox_inches="tight")
  return path


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


def tsne_figure(features, labels, class_names: Sequence[str] | None = None, title: str = "t-SNE of the features",
                seed: int = 0, max_points: int = 5000, normalize: bool = True):
  """The figure (``matplotlib.figure.Figure``) of the t-SNE map of ``features [N, D]``, points
  coloured by ``labels [N]``.

  At most ``max_points`` points (a random subset drawn with ``seed``) are embedded: t-SNE is
  quadratic-ish in N. Up to 20 classes a legend names them (``"<label> <name>"`` with
  ``class_names``, index = label); beyond, each cluster carries its label at its median
  point and, with ``class_names``, a key under the map lists the names.
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

  present = np.unique(y)
  legend = len(present) <= _LEGEND_MAX_CLASSES
  key = class_names is not None and not legend
  key_columns, key_fontsize = 3, 6
  key_height = _key_height(len(present), key_columns, key_fontsize) if key else 0.0
  fig = _figure(8, 7 + key_height)
  if key:
    grid = fig.add_gridspec(2, 1, height_ratios=[7, key_height], hspace=0.05)
    ax = fig.add_subplot(grid[0])
    _draw_key(fig.add_subplot(grid[1]), class_names, present, key_columns, key_fontsize)
  else:
    ax = fig.add_subplot(1, 1, 1)
  colours = _colours(num_classes)
  size = float(np.clip(4000.0 / len(xy), 4, 40))
  for c in present:
    sel = y == c
    ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=colours[c], alpha=0.8, linewidths=0,
               label=class_label(class_names, int(c), 40))
    if not legend:
      cx, cy = np.median(xy[sel], axis=0)
      ax.text(cx, cy, str(int(c)), fontsize=7, ha="center", va="center",
              bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.7, "linewidth": 0})
  if legend:
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=max(1.0, 30.0 / size) ** 0.5,
              frameon=False)
  shown = f"{len(xy)} of {total} points" if len(xy) < total else f"{total} points"
  ax.set_title(f"{title}\n{shown}, {len(present)} classes, perplexity {_perplexity(len(xy)):g}", fontsize=10)
  ax.set_xticks([])
  ax.set_yticks([])
  return fig


def tsne_plot(features, labels, path: str | os.PathLike, class_names: Sequence[str] | None = None,
              title: str = "t-SNE of the features", seed: int = 0, max_points: int = 5000,
              normalize: bool = True) -> str:
  """Writes the PNG of ``tsne_figure`` (same arguments) to ``path``; returns ``path``."""
  return _save(tsne_figure(features, labels, class_names=class_names, title=title, seed=seed,
                           max_points=max_points, normalize=normalize), path)


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


def confusion_matrix_figure(labels, predictions, num_classes: int, class_names: Sequence[str] | None = None,
                            normalize: bool = True, title: str = "Confusion matrix"):
  """The figure (``matplotlib.figure.Figure``) of the confusion matrix (rows: true class,
  columns: prediction).

  ``normalize`` divides every row by the class's sample count (the diagonal is then the
  per-class recall); the title gives the top-1 accuracy over all samples. Cells are
  annotated up to 20 classes. Ticks read ``"<label> <name>"`` up to 60 classes with
  ``class_names`` (index = label; long names cut), the label alone otherwise; beyond 60
  classes a key under the matrix lists the names; beyond 130 there is no tick per class.
  """
  counts = confusion_matrix(labels, predictions, num_classes)
  k = counts.shape[0]
  _check_class_names(class_names, k)
  total = int(counts.sum())
  top1 = float(np.trace(counts)) / total if total else float("nan")
  values = normalize_rows(counts) if normalize else counts.astype(np.float64)

  named_ticks = class_names is not None and k <= _NAMED_TICKS_MAX_CLASSES
  key = class_names is not None and not named_ticks
  side = float(np.clip(0.45 * k + 3, 5, 16 if k <= _NAMED_TICKS_MAX_CLASSES else 20))
  key_columns, key_fontsize = 4, 7
  key_height = _key_height(k, key_columns, key_fontsize) if key else 0.0
  fig = _figure(side + 1.5, side + key_height)
  if key:
    grid = fig.add_gridspec(2, 1, height_ratios=[side, key_height], hspace=0.08)
    ax = fig.add_subplot(grid[0])
    _draw_key(fig.add_subplot(grid[1]), class_names, range(k), key_columns, key_fontsize)
  else:
    ax = fig.add_subplot(1, 1, 1)
  image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(values.max(), 1.0),
                    interpolation="nearest")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
               label="fraction of the true class" if normalize else "samples")
  if k <= _TICKS_MAX_CLASSES:
    if named_ticks:
      names = [class_label(class_names, c, 30 if k <= 20 else 24) for c in range(k)]
    else:
      names = [str(c) for c in range(k)]
    fontsize = 8 if k <= 20 else 7 if k <= 40 else 6 if k <= 60 else 5
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=90 if named_ticks or k > 20 else 0, fontsize=fontsize)
    ax.set_yticklabels(names, fontsize=fontsize)
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
  return fig


def confusion_matrix_plot(labels, predictions, num_classes: int, path: str | os.PathLike,
                          class_names: Sequence[str] | None = None, normalize: bool = True,
                          title: str = "Confusion matrix") -> str:
  """Writes the PNG of ``confusion_matrix_figure`` (same arguments) to ``path``; returns ``path``."""
  return _save(confusion_matrix_figure(labels, predictions, num_classes, class_names=class_names,
                                       normalize=normalize, title=title), path)


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


def workdir_class_names(workdir: str | os.PathLike) -> tuple[str, ...] | None:
  """The class names a downstream run in ``workdir`` was evaluated with: ``class_names`` of its
  ``results.json``, else the names of the ``dataset`` named there; None without either (or
  without a readable ``results.json``)."""
  path = os.path.join(os.fspath(workdir), RESULTS_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      results = json.load(f)
  except (OSError, ValueError) as e:
    print(f"note: {path} is not readable JSON ({e}); classes are shown by label", file=sys.stderr)
    return None
  if not isinstance(results, dict):
    return None
  stored = results.get("class_names")
  if not isinstance(stored, list):
    stored = None
  return action_names.names_or_default(stored, results.get("dataset"))


def _names_for(class_names: Sequence[str] | None, num_classes: int, what: str) -> Sequence[str] | None:
  """Names found in a workdir, or None (labels only) when they are fewer than the classes."""
  if class_names is not None and len(class_names) < num_classes:
    print(f"note: {what}: {num_classes} classes but {len(class_names)} names; classes are shown by label",
          file=sys.stderr)
    return None
  return class_names


def plot_workdir(workdir: str | os.PathLike, class_names: Sequence[str] | None = None, seed: int = 0,
                 max_points: int = 5000, tsne: bool = True) -> list[str]:
  """``tsne_<stream>.png`` for every ``features_<stream>.npz`` (``tsne=False``: none) and
  ``confusion_<stream>.png`` for every ``predictions_<stream>.npz`` in ``workdir``; returns the
  PNG paths written (sorted by stream).

  Without ``class_names`` the names are those of ``workdir_class_names`` (none: labels only).
  """
  workdir = os.fspath(workdir)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"plot_workdir: {workdir} does not exist or is not a directory")
  found = class_names is None
  if found:
    class_names = workdir_class_names(workdir)
  written = []
  features = sorted(glob.glob(os.path.join(glob.escape(workdir), "features_*.npz"))) if tsne else []
  for npz in features:
    stream = _stream(npz, "features_")
    feats, labels = _load_arrays(npz, ("features", "labels"))
    names = _names_for(class_names, int(np.max(labels, initial=-1)) + 1, npz) if found else class_names
    written.append(tsne_plot(feats, labels, os.path.join(workdir, f"tsne_{stream}.png"), class_names=names,
                             title=f"t-SNE of the {stream} features", seed=seed, max_points=max_points))
  for npz in sorted(glob.glob(os.path.join(glob.escape(workdir), "predictions_*.npz"))):
    stream = _stream(npz, "predictions_")
    labels, predictions, num_classes = _load_arrays(npz, ("labels", "predictions"), optional=("num_classes",))
    if num_classes is not None:
      num_classes = int(num_classes)
    else:
      num_classes = int(max(np.max(labels, initial=0), np.max(predictions, initial=0))) + 1
    names = _names_for(class_names, num_classes, npz) if found else class_names
    written.append(confusion_matrix_plot(labels, predictions, num_classes,
                                         os.path.join(workdir, f"confusion_{stream}.png"), class_names=names,
                                         title=f"Confusion matrix ({stream})"))
  return written


__all__ = ["tsne_plot", "tsne_figure", "tsne_embedding", "confusion_matrix", "normalize_rows",
           "confusion_matrix_plot", "confusion_matrix_figure", "class_label", "plot_workdir", "workdir_class_names"]


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if len(argv) != 1 or argv[0].startswith("-"):
    print("usage: python -m cmd_jax.plots <workdir>   (writes tsne_*.png and confusion_*.png from its "
          "features_*.npz and predictions_*.npz, classes named from its results.json)", file=sys.stderr)
    return 2
  paths = plot_workdir(argv[0])
  for p in paths:
    print(p)
  if not paths:
    print(f"no features_*.npz or predictions_*.npz in {argv[0]}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
