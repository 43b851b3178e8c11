"""Per-class accuracy of a classification, and the text table a person reads it in.

``per_class_accuracy(labels, predictions, num_classes)`` is a pure numpy function: for
every class ``c`` in ``0..num_classes-1``, the test samples of that class (``count``), how
many of them are predicted ``c`` (``correct``) and their ratio (``accuracy``, a fraction
in [0, 1]; None for a class with no test sample, which has no accuracy). It is the
diagonal of the confusion matrix over its row sums (the per-class recall), as a list of
JSON-ready dicts (``results.json`` stores it per stream).

``per_class_table(rows, class_names)`` formats those rows as fixed-width text, one line per
class with its name (``cmd_jax.action_names``), the accuracy in percent, and a last line
with the mean over the classes that have samples and the overall top-1;
``per_class_columns(rows_by_entry, class_names)`` puts several classifications of the same
test split (the streams and their fusion) side by side, one accuracy column each.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _indices(x, what: str, n: int | None = None) -> np.ndarray:
  a = np.asarray(x)
  if a.ndim != 1 or (n is not None and len(a) != n):
    raise ValueError(f"per_class_accuracy: {what} has shape {a.shape}; expected [{n if n is not None else 'N'}] "
                     "integer class indices")
  if a.size and (a.dtype.kind not in "iuf" or not np.all(a == np.round(a))):
    raise ValueError(f"per_class_accuracy: {what} has dtype {a.dtype} values; expected integer class indices")
  return a.astype(np.int64)


def per_class_accuracy(labels, predictions, num_classes: int) -> list[dict[str, Any]]:
  """``[{"class": c, "count": n_c, "correct": k_c, "accuracy": k_c / n_c or None}]`` for c < num_classes.

  ``labels`` and ``predictions`` are ``[N]`` integer class indices in ``[0, num_classes)``.
  """
  k = int(num_classes)
  if k < 1:
    raise ValueError(f"per_class_accuracy: num_classes={num_classes}; expected >= 1")
  y = _indices(labels, "labels")
  p = _indices(predictions, "predictions", len(y))
  for what, a in (("labels", y), ("predictions", p)):
    if a.size and (a.min() < 0 or a.max() >= k):
      raise ValueError(f"per_class_accuracy: {what} span [{a.min()}, {a.max()}]; expected classes in [0, {k})")
  count = np.bincount(y, minlength=k)
  correct = np.bincount(y[y == p], minlength=k)
  return [{"class": c, "count": int(count[c]), "correct": int(correct[c]),
           "accuracy": float(correct[c] / count[c]) if count[c] else None} for c in range(k)]


def _short(name: str, width: int) -> str:
  return name if len(name) <= width else name[:width - 3] + "..."


def per_class_table(rows: Sequence[dict[str, Any]], class_names: Sequence[str] | None = None,
                    title: str = "", name_width: int = 40) -> str:
  """The rows of ``per_class_accuracy`` as a text table::

      class  name                          correct / count   accuracy
          0  drink water                        28 /    31     90.32%
          ...
      mean over 60 classes with samples: 81.20%; overall top-1 80.95% (9612/11864)

  ``class_names`` (index = class; None: no name column) longer than ``name_width`` are
  cut with ``...``; a class with no sample shows ``-`` as its accuracy.
  """
  if class_names is not None and len(class_names) < len(rows):
    raise ValueError(f"per_class_table: class_names has {len(class_names)} names; expected at least {len(rows)} "
                     "(one per class)")
  width = max([4] + [len(_short(str(class_names[r["class"]]), name_width)) for r in rows]) if class_names else 0
  name_head = f"  {'name':{width}s}" if class_names is not None else ""
  lines = [title] if title else []
  lines.append(f"{'class':>5s}{name_head}  {'correct / count':>15s}  {'accuracy':>8s}")
  for r in rows:
    name = f"  {_short(str(class_names[r['class']]), name_width):{width}s}" if class_names is not None else ""
    accuracy = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%"
    lines.append(f"{r['class']:5d}{name}  {r['correct']:7d} / {r['count']:5d}  {accuracy:>8s}")
  present = [r for r in rows if r["count"]]
  total, correct = sum(r["count"] for r in rows), sum(r["correct"] for r in rows)
  if present:
    mean = sum(r["accuracy"] for r in present) / len(present)
    lines.append(f"mean over {len(present)} classes with samples: {100 * mean:.2f}%; "
                 f"overall top-1 {100 * correct / total:.2f}% ({correct}/{total})")
  else:
    lines.append("no test samples")
  return "\n".join(lines)


def per_class_columns(rows_by_entry: dict[str, Sequence[dict[str, Any]]], class_names: Sequence[str] | None = None,
                      title: str = "", name_width: int = 40) -> str:
  """Several ``per_class_accuracy`` results of one test split side by side::

      class  name                    count     joint    motion  three_stream
          0  drink water                31    90.32%    80.65%        93.55%
          ...
       mean                          81.20%    77.02%        84.51%
      (mean: over the classes with test samples)

  ``rows_by_entry`` maps a column name (a stream, a fusion) to its rows, every entry with
  the same classes and counts; a class with no sample shows ``-``."""
  entries = list(rows_by_entry)
  if not entries:
    raise ValueError("per_class_columns: no classification to show")
  first = rows_by_entry[entries[0]]
  for name in entries[1:]:
    rows = rows_by_entry[name]
    if [(r["class"], r["count"]) for r in rows] != [(r["class"], r["count"]) for r in first]:
      raise ValueError(f"per_class_columns: {name!r} has other classes or counts than {entries[0]!r}; expected "
                       "classifications of the same test split")
  if class_names is not None and len(class_names) < len(first):
    raise ValueError(f"per_class_columns: class_names has {len(class_names)} names; expected at least {len(first)} "
                     "(one per class)")
  width = max([4] + [len(_short(str(class_names[r["class"]]), name_width)) for r in first]) if class_names else 0
  columns = [max(8, len(e)) for e in entries]
  name_head = f"  {'name':{width}s}" if class_names is not None else ""
  lines = [title] if title else []
  lines.append(f"{'class':>5s}{name_head}  {'count':>5s}" + "".join(f"  {e:>{w}s}" for e, w in zip(entries, columns)))
  for i, r in enumerate(first):
    name = f"  {_short(str(class_names[r['class']]), name_width):{width}s}" if class_names is not None else ""
    cells = []
    for e, w in zip(entries, columns):
      accuracy = rows_by_entry[e][i]["accuracy"]
      cells.append(f"  {'-' if accuracy is None else f'{100 * accuracy:.2f}%':>{w}s}")
    lines.append(f"{r['class']:5d}{name}  {r['count']:5d}" + "".join(cells))
  means = []
  for e, w in zip(entries, columns):
    present = [r["accuracy"] for r in rows_by_entry[e] if r["count"]]
    means.append(f"  {'-' if not present else f'{100 * sum(present) / len(present):.2f}%':>{w}s}")
  lines.append(f"{'mean':>5s}" + " " * (len(name_head) + 7) + "".join(means))
  lines.append("(mean: over the classes with test samples)")
  return "\n".join(lines)


__all__ = ["per_class_accuracy", "per_class_columns", "per_class_table"]
