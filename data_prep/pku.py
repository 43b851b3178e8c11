"""PKU-MMD phase 2 (PKU-MMD II): skeleton and label readers, split lists, and the dataset spec.

``load`` is CMD's reading of an instance (the ``standard`` conversion), ``load_hiclr``
HiCLR's (the ``frame50`` conversion, ``data_prep.datasets.load``).

Follows the reference's ``data_gen/pku_gendata.py`` (docs/references.md#cmd-pku-mmd-ii-conversion,
#cmd-quirks item 11).

Raw directory layout (``--raw``)::

    <raw>/skeleton/<video>.txt        one line per frame: 150 numbers = 2 bodies x 25 joints x xyz
    <raw>/label/<video>.txt           one CSV row per action instance: class,start,end,confidence
    <raw>/cross_subject_v2.txt        line 2 (index 1): the training videos of "xsub", ", "-separated
    <raw>/cross_view_v2.txt           line 2 (index 1): the training videos of "xview"

``skeleton``/``label`` may also be named after the official archives (``Skeleton_v2``,
``Label_PKUMMD_v2``), and the split files may sit in ``<raw>/Split/`` as in the official
download. The options ``skeleton_dir``, ``label_dir`` and ``split_dir`` (paths as given,
absolute or relative to the working directory) override the search.

Samples and their semantics, as in the reference unless marked otherwise:

* every label row is a sample named ``<video>.txt_<row>`` (``row``: 0-based index among the
  file's non-blank rows, as ``np.loadtxt`` counts them); it trains in the benchmarks whose
  split list names ``<video>``, and is a val (test) sample in the others;
* its frames are ``seq[start:end]`` (end exclusive) of the video's skeleton, a float64
  ``(3, end - start, 25, 2)`` with the bodies in file order (no energy sorting; an absent
  second body is zeros);
* label = class - 1 as an *integer* (deliberate deviation: the reference keeps the float64
  from ``np.loadtxt``); the class must be an integer in 1..51 (PKU-MMD's action list,
  named in ``cmd_jax.action_names.PKU_MMD2``);
* zero-length instances (start == end) stay in the listing but their ``load`` raises a
  ``DataFormatError``, so the converter skips them and reports them (the reference would
  keep an empty clip, on which its temporal crop crashes);
* all-zero instances are *kept* as all-zero inputs (``SPEC.drop_all_zero`` is False), as
  CMD's script does; the authors' later MAMP script drops them instead.

``list_samples`` reads the split files and every label file (small), never a skeleton file:
skeletons are parsed by ``load``, in the converter's worker processes, and a label row
ending after the skeleton's last frame is reported then. The skeleton parser is vectorised
(one byte-class check, per-line value counts by ``np.bincount``, one numeric conversion).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from cmd_jax import action_names
from cmd_jax.layouts import NTU25
from data_prep.spec import MAX_FRAMES, DatasetSpec, Sample
from data_prep.errors import DataFormatError
from data_prep.numeric_text import read_number_table

NUM_JOINTS = 25
NUM_BODIES = 2
NUM_CLASSES = len(action_names.PKU_MMD2)  # 51
BENCHMARKS = ("xsub", "xview")
SPLIT_FILES = {"xsub": "cross_subject_v2.txt", "xview": "cross_view_v2.txt"}
SKELETON_DIRS = ("skeleton", "Skeleton_v2")
LABEL_DIRS = ("label", "Label_PKUMMD_v2")
SPLIT_DIRS = (".", "Split")

# ---------------------------------------------------------------------------------------
# Readers

def read_skeleton(path: str | os.PathLike) -> np.ndarray:
  """Reads a PKU-MMD skeleton file as the reference does: float64 ``(3, T, 25, 2)``.

  Each line is a frame of 2 bodies x 25 joints x (x, y, z); bodies stay in file order.
  """
  table = read_number_table(path, NUM_BODIES * NUM_JOINTS * 3, "frame line")
  frames = table.reshape(len(table), NUM_BODIES, NUM_JOINTS, 3)
  return np.ascontiguousarray(frames.transpose(3, 0, 2, 1))


def _parse_integer(text: str) -> int | None:
  try:
    value = float(text)
  except ValueError:
    return None
  if not np.isfinite(value) or value != int(value):
    return None
  return int(value)


def read_label_rows(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Parses a label file without a frame count: ``(rows int64 [R, 3], lines int64 [R])``.

  ``rows`` holds (label = class - 1, start, end) per non-blank row, ``lines`` its 1-based
  line in the file. Checks the class (integer in 1..51), integer start/end, 0 <= start <= end.
  """
  rows, lines = [], []
  with open(path, encoding="utf-8", errors="replace") as f:
    text = f.read()
  for line_no, line in enumerate(text.splitlines(), 1):  # one row per action instance
    if not line.strip():
      continue
    fields = [field.strip() for field in line.split(",")]
    if len(fields) > 3 and fields[-1] == "":
      fields.pop()  # a trailing comma
    if len(fields) not in (3, 4):
      raise DataFormatError(path, f"row has {len(fields)} comma-separated fields; expected "
                            "4 (class,start,end,confidence)", line_no)
    cls = _parse_integer(fields[0])
    if cls is None:
      raise DataFormatError(path, f"class is {fields[0]!r}; expected an integer in 1..{NUM_CLASSES}", line_no)
    if not 1 <= cls <= NUM_CLASSES:
      raise DataFormatError(path, f"class is {cls}; expected an integer in 1..{NUM_CLASSES}", line_no)
    start, end = _parse_integer(fields[1]), _parse_integer(fields[2])
    if start is None or end is None:
      raise DataFormatError(path, f"start/end are {fields[1]!r}/{fields[2]!r}; expected integer frame "
                            "indices", line_no)
    if start < 0 or start > end:
      raise DataFormatError(path, f"instance [{start}, {end}) is outside the sequence; expected "
                            "0 <= start <= end", line_no)
    rows.append((cls - 1, start, end))
    lines.append(line_no)
  return np.array(rows, np.int64).reshape(-1, 3), np.array(lines, np.int64)


def check_instance(path, line: int, start: int, end: int, num_frames: int) -> None:
  """Raises a DataFormatError (naming the label file and line) unless [start, end) fits in num_frames."""
  if start < 0 or end > num_frames or start > end:
    raise DataFormatError(path, f"instance [{start}, {end}) is outside the sequence; expected "
                          f"0 <= start <= end <= {num_frames} (the skeleton's frame count)", line)


def read_labels(path: str | os.PathLike, num_frames: int | None = None) -> np.ndarray:
  """Reads a label file: int64 ``[R, 3]`` rows (label = class - 1, start, end).

  The reference keeps these as float64 (from ``np.loadtxt``); here they are integers. With
  ``num_frames``, every row must also end within the sequence (end <= num_frames).
  """
  rows, lines = read_label_rows(path)
  if num_frames is not None:
    outside = np.flatnonzero(rows[:, 2] > num_frames)
    if outside.size:
      k = int(outside[0])
      check_instance(path, int(lines[k]), int(rows[k, 1]), int(rows[k, 2]), num_frames)
  return rows


def read_split(path: str | os.PathLike) -> frozenset[str]:
  """The training video stems of a ``cross_{subject,view}_v2.txt``: its second line, comma-separated."""
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = f.read().splitlines()
  if len(lines) < 2:
    raise DataFormatError(path, "no second line; expected the training videos on line 2 (', '-separated)")
  names = frozenset(name.strip() for name in lines[1].split(",") if name.strip())
  if not names:
    raise DataFormatError(path, "line 2 is empty; expected the training videos (', '-separated)", 2)
  return names


# ---------------------------------------------------------------------------------------
# Dataset spec

class PkuSource(NamedTuple):
  """What ``load`` needs for one instance (picklable, with a stable repr)."""
  skeleton: str
  label_file: str
  line: int
  start: int
  end: int


def _find_dir(raw_dir: Path, option: Any, candidates: tuple[str, ...], what: str) -> Path:
  if option is not None:
    folder = Path(option)
    if not folder.is_dir():
      raise FileNotFoundError(f"pku_mmd2: {what} directory {folder} does not exist")
    return folder
  for name in candidates:
    if (raw_dir / name).is_dir():
      return raw_dir / name
  raise FileNotFoundError(f"pku_mmd2: no {what} directory in {raw_dir}; expected one of "
                          f"{', '.join(candidates)} (or pass the {what}_dir option)")


def _find_split_file(raw_dir: Path, option: Any, file_name: str) -> Path:
  folders = [Path(option)] if option is not None else [raw_dir / d for d in SPLIT_DIRS]
  for folder in folders:
    if (folder / file_name).is_file():
      return folder / file_name
  raise FileNotFoundError(f"pku_mmd2: split file {file_name} not found; looked for "
                          + ", ".join(str(folder / file_name) for folder in folders))


def list_samples(raw_dir: Path | None, options: Mapping[str, Any]) -> list[Sample]:
  """One sample per label row of every video (see the module docstring), sorted by name."""
  if raw_dir is None:
    raise FileNotFoundError("pku_mmd2: a raw directory is required")
  raw_dir = Path(raw_dir)
  if not raw_dir.is_dir():
    raise FileNotFoundError(f"pku_mmd2: raw directory {raw_dir} does not exist")
  skeleton_dir = _find_dir(raw_dir, options.get("skeleton_dir"), SKELETON_DIRS, "skeleton")
  label_dir = _find_dir(raw_dir, options.get("label_dir"), LABEL_DIRS, "label")
  train_lists = {b: read_split(_find_split_file(raw_dir, options.get("split_dir"), SPLIT_FILES[b]))
                 for b in BENCHMARKS}

  label_files = sorted(e for e in os.listdir(label_dir) if e.endswith(".txt"))
  skeleton_files = {e for e in os.listdir(skeleton_dir) if e.endswith(".txt")}
  missing = [e for e in label_files if e not in skeleton_files]
  if missing:
    raise FileNotFoundError(f"pku_mmd2: {len(missing)} label files have no skeleton file in {skeleton_dir}: "
                            + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
  samples = []
  for entry in label_files:
    video = entry[:-len(".txt")]
    rows, lines = read_label_rows(label_dir / entry)
    train = frozenset(b for b in BENCHMARKS if video in train_lists[b])
    skeleton = str(skeleton_dir / entry)
    for row, ((label, start, end), line) in enumerate(zip(rows.tolist(), lines.tolist())):
      source = PkuSource(skeleton, str(label_dir / entry), line, start, end)
      samples.append(Sample(f"{entry}_{row}", label, train, source))
  if not samples:
    raise FileNotFoundError(f"pku_mmd2: no action instances in the label files of {label_dir}")
  return sorted(samples, key=lambda s: s.name)


@functools.lru_cache(maxsize=2)
def _cached_skeleton(path: str, mtime_ns: int, size: int) -> np.ndarray:
  data = read_skeleton(path)
  data.flags.writeable = False
  return data


def load(sample: Sample) -> np.ndarray:
  """The instance's frames ``seq[start:end]``: float64 ``(3, end - start, 25, 2)``.

  The last two skeletons read are cached per process (a video holds ~20 instances, which
  are consecutive in name order).
  """
  src = sample.source
  if src.start == src.end:
    raise DataFormatError(src.label_file, f"zero-length instance (start == end == {src.start}): no frame "
                          "to use (the reference's temporal crop would fail on it)", src.line)
  stat = os.stat(src.skeleton)
  seq = _cached_skeleton(src.skeleton, stat.st_mtime_ns, stat.st_size)
  check_instance(src.label_file, src.line, src.start, src.end, seq.shape[1])
  return np.array(seq[:, src.start:src.end])


def load_hiclr(sample: Sample) -> np.ndarray:
  """A PKU-MMD II instance as HiCLR's scripts cut and read it: float64 ``(3, T, 25, 2)``, T <= 300.

  HiCLR writes each label row (class, start, end, ...) as an NTU-style file of the video's
  frames ``start - 1 .. end - 1`` (the 1-based, inclusive ``[start, end]``; CMD's reader
  takes ``[start, end)`` instead), with body 2 only in the frames where the sum of its 75
  values is non-zero, and its reader keeps the centre 300 frames of a longer clip (from
  ``(T - 300) // 2``). A row with start 0 makes its script write a file that its reader
  cannot parse; it is reported (``DataFormatError``) and skipped.
  """
  src = sample.source
  if src.start < 1:
    raise DataFormatError(src.label_file, f"start frame {src.start}: HiCLR cuts frames start-1..end-1 (1-based "
                          "labels), so start must be >= 1 (its script writes an unreadable clip for start 0)",
                          src.line)
  stat = os.stat(src.skeleton)
  seq = _cached_skeleton(src.skeleton, stat.st_mtime_ns, stat.st_size)
  check_instance(src.label_file, src.line, src.start - 1, src.end, seq.shape[1])
  clip = np.array(seq[:, src.start - 1:src.end])  # (3, T, 25, 2)
  second = clip[..., 1].transpose(1, 2, 0).reshape(clip.shape[1], -1)  # [T, 75] in file order
  clip[:, second.sum(axis=1) == 0, :, 1] = 0.0
  if clip.shape[1] > MAX_FRAMES:
    start = (clip.shape[1] - MAX_FRAMES) // 2
    clip = clip[:, start:start + MAX_FRAMES]
  return clip


SPEC = DatasetSpec(
    name="pku_mmd2", layout=NTU25, class_names=action_names.PKU_MMD2, benchmarks=BENCHMARKS,
    list_samples=list_samples, load=load, drop_all_zero=False, option_keys=("skeleton_dir", "label_dir", "split_dir"),
    description="PKU-MMD II: <raw>/skeleton/*.txt, <raw>/label/*.txt, <raw>/cross_{subject,view}_v2.txt")
