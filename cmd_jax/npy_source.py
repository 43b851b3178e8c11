"""A random-access data source over the PyTorch references' ``.npy``/``.pkl`` dataset formats.

CMD's reference data generators (docs/references.md#cmd-splits-and-files,
#cmd-pku-mmd-ii-conversion) write, per benchmark folder and part (``train`` / ``val``), the
``cmd`` format:

- ``{part}_data_joint.npy``: float32 ``(N, 3, 300, V, M)``, preprocessed joints;
- ``{part}_num_frame.npy``: 1-D integer ``(N,)``, the ORIGINAL frame counts (PKU-MMD II
  keeps counts above 300; consumers clamp with ``min(., 300)``);
- ``{part}_label.pkl``: a pickle of the tuple ``(names, labels)``. NTU labels are Python
  ints; PKU-MMD II labels are float64 (``class - 1`` from ``np.loadtxt``), so integral
  floats are accepted and cast to int.

HiCLR's 50-frame folders hold the ``hiclr`` format:

- ``{part}_position.npy``: float32 ``(N, 3, 50, V, M)``, the 50-frame clips;
- ``{part}_label.pkl``: as above.

There are no frame counts in it: every record's ``num_frames`` is the file's T (50), the
resize having filled every frame. ``NpySource`` detects the format from the files present
(``{part}_data_joint.npy`` -> cmd, else ``{part}_position.npy`` -> hiclr), or takes it as
``fmt``.

``NpySource(folder, part)`` validates the three files once (clear errors naming the file and
what was expected), memory-maps the joints and serves the project's record contract, the
same dict every data source returns for index ``i``::

  {"skeleton": float32 (3, T, V, M) copy, "num_frames": int, "label": int, "name": str}

It is a grain ``RandomAccessDataSource`` (``__len__``, ``__getitem__``), picklable for
grain worker processes (the memory map is reopened in the worker, not copied), with a
``repr`` that names the data but not its absolute path, so a grain iterator state saved
with the data in one place restores with the data moved elsewhere.

Writing these formats is the converter's job (``data_prep``); this module only reads.
"""

from __future__ import annotations

import operator
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.errors import DataFormatError

MAX_FRAMES = 300  # T of every sample in the cmd format
HICLR_FRAMES = 50  # T of every sample in the hiclr format

PARTS = ("train", "val")
FORMATS = ("cmd", "hiclr")
FORMAT_FRAMES = {"cmd": MAX_FRAMES, "hiclr": HICLR_FRAMES}
_FORMAT_DEFAULT = object()  # max_frames default: the format's T


def npy_paths(folder: str | os.PathLike, part: str, fmt: str = "cmd") -> dict[str, Path]:
  """The files of ``part`` in ``folder``: keys ``data``, ``num_frame`` (cmd only), ``label``."""
  if fmt not in FORMATS:
    raise ValueError(f"unknown npy format {fmt!r}; expected one of {', '.join(FORMATS)} (or 'auto')")
  folder = Path(folder)
  if fmt == "hiclr":
    return {"data": folder / f"{part}_position.npy", "label": folder / f"{part}_label.pkl"}
  return {
      "data": folder / f"{part}_data_joint.npy",
      "num_frame": folder / f"{part}_num_frame.npy",
      "label": folder / f"{part}_label.pkl",
  }


def detect_format(folder: str | os.PathLike, part: str) -> str:
  """``cmd`` if ``{part}_data_joint.npy`` is in ``folder``, else ``hiclr`` if
  ``{part}_position.npy`` is, else ``cmd`` (whose missing files the error then names)."""
  folder = Path(folder)
  if not (folder / f"{part}_data_joint.npy").is_file() and (folder / f"{part}_position.npy").is_file():
    return "hiclr"
  return "cmd"


def _load_labels(path: Path, n: int) -> tuple[list[str], np.ndarray]:
  """Reads and checks ``{part}_label.pkl``: returns names (str) and int64 labels."""
  try:
    with open(path, "rb") as f:
      obj = pickle.load(f)
  except Exception as err:  # unpickling can raise nearly anything on a bad file
    raise DataFormatError(path, f"cannot unpickle ({type(err).__name__}: {err}); expected a pickle "
                                "of the tuple (list of names, list of labels)") from err
  if not isinstance(obj, (tuple, list)) or len(obj) != 2:
    what = f"a {type(obj).__name__} of length {len(obj)}" if isinstance(obj, (tuple, list)) else (
        f"a {type(obj).__name__}")
    raise DataFormatError(path, f"holds {what}; expected the pair (list of names, list of labels)")
  names, labels = obj
  try:
    names, labels = list(names), list(labels)
  except TypeError as err:
    raise DataFormatError(path, f"names and labels must be sequences ({err})") from err
  if len(names) != len(labels):
    raise DataFormatError(path, f"holds {len(names)} names but {len(labels)} labels; expected one "
                                "label per name")
  if len(names) != n:
    raise DataFormatError(path, f"holds {len(names)} samples but the data array holds {n}; the "
                                "three files of a part must describe the same samples")
  for i, name in enumerate(names):
    if isinstance(name, bytes):
      names[i] = name.decode("utf-8")
    elif not isinstance(name, str):
      raise DataFormatError(path, f"name {i} is a {type(name).__name__} ({name!r}); expected str")
  try:
    values = np.asarray(labels)
  except Exception as err:
    raise DataFormatError(path, f"labels are not numbers ({err})") from err
  if n == 0:
    return names, np.zeros((0,), np.int64)
  if values.ndim != 1 or not (np.issubdtype(values.dtype, np.integer)
                              or np.issubdtype(values.dtype, np.floating)):
    bad = next((i for i, v in enumerate(labels)
                if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))),
               0)
    raise DataFormatError(path, f"label {bad} is {labels[bad]!r} ({type(labels[bad]).__name__}); "
                                "expected an integer class index")
  if np.issubdtype(values.dtype, np.floating):
    integral = np.isfinite(values) & (values == np.round(values))
    if not integral.all():
      bad = int(np.argmin(integral))
      raise DataFormatError(path, f"label {bad} is {labels[bad]!r}; expected an integer class index "
                                  "(integral floats such as PKU-MMD's 3.0 are accepted)")
  values = values.astype(np.int64)
  if (values < 0).any():
    bad = int(np.argmax(values < 0))
    raise DataFormatError(path, f"label {bad} is {values[bad]}; expected a 0-based class index >= 0")
  return names, values


class NpySource:
  """Random access to one part (``train`` / ``val``) of a reference-format folder.

  Attributes:
    folder: the folder holding the files.
    part: ``"train"`` or ``"val"`` (any prefix the files use is accepted).
    format: ``"cmd"`` or ``"hiclr"``.
    names: the sample names, as str.
    labels: int64 ``(N,)``, 0-based.
    num_frames: int64 ``(N,)``, original frame counts (may exceed 300) in the cmd format;
      the file's T (50) for every sample in the hiclr format.
    shape: the per-sample skeleton shape ``(3, T, V, M)``.
  """

  def __init__(self, folder: str | os.PathLike, part: str, *, max_frames: Any = _FORMAT_DEFAULT,
               fmt: str = "auto"):
    """Opens and validates the files.

    Args:
      folder: the benchmark folder, e.g. ``data/NTU-RGB-D-60-AGCN/xsub``.
      part: file prefix, ``"train"`` or ``"val"``.
      max_frames: the T every sample must have; default: the format's (300 for cmd, 50
        for hiclr); None accepts any T.
      fmt: ``"cmd"``, ``"hiclr"`` or ``"auto"`` (``detect_format``: from the files present).

    Raises:
      FileNotFoundError: the folder or one of the format's files is missing.
      DataFormatError: a file does not follow the format (the message names the file
        and what was expected).
      ValueError: an unknown ``fmt``.
    """
    self.folder = Path(folder)
    self.part = str(part)
    if fmt != "auto" and fmt not in FORMATS:
      raise ValueError(f"NpySource: fmt={fmt!r}; expected 'auto' or one of {', '.join(FORMATS)}")
    if not self.folder.is_dir():
      raise FileNotFoundError(f"reference-format folder {self.folder} does not exist")
    self.format = detect_format(self.folder, self.part) if fmt == "auto" else fmt
    if max_frames is _FORMAT_DEFAULT:
      max_frames = FORMAT_FRAMES[self.format]
    paths = npy_paths(self.folder, self.part, self.format)
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
      present = sorted(e for e in os.listdir(self.folder) if e.endswith((".npy", ".pkl")))
      expected = ("{part}_data_joint.npy, {part}_num_frame.npy and {part}_label.pkl (or, in HiCLR's format, "
                  "{part}_position.npy and {part}_label.pkl)" if self.format == "cmd"
                  else "{part}_position.npy and {part}_label.pkl in HiCLR's format")
      raise FileNotFoundError(
          f"{self.folder}: missing {', '.join(missing)} for part {self.part!r}; a reference-format "
          f"folder holds {expected} (present: {', '.join(present) or 'no .npy/.pkl files'})")
    data = self._open_data()
    n = data.shape[0]
    if data.ndim != 5 or data.shape[1] != 3:
      raise DataFormatError(paths["data"], f"has shape {data.shape}; expected (N, 3, T, V, M)")
    if data.dtype != np.float32:
      raise DataFormatError(paths["data"], f"has dtype {data.dtype}; expected float32")
    if max_frames is not None and data.shape[2] != max_frames:
      raise DataFormatError(paths["data"], f"has shape {data.shape}; expected T = {max_frames} frames "
                                           f"per sample, i.e. (N, 3, {max_frames}, V, M)")
    self._data = data
    self.shape = tuple(int(s) for s in data.shape[1:])
    if self.format == "hiclr":
      self.num_frames = np.full(n, data.shape[2], np.int64)  # the resize fills every frame
      self.names, self.labels = _load_labels(paths["label"], n)
      return

    try:
      num_frames = np.load(paths["num_frame"], allow_pickle=False)
    except Exception as err:
      raise DataFormatError(paths["num_frame"], f"cannot be read as a .npy array ({err})") from err
    if num_frames.ndim != 1 or not np.issubdtype(num_frames.dtype, np.integer):
      raise DataFormatError(paths["num_frame"], f"has shape {num_frames.shape} and dtype "
                                                f"{num_frames.dtype}; expected a 1-D integer array")
    if num_frames.shape[0] != n:
      raise DataFormatError(paths["num_frame"], f"holds {num_frames.shape[0]} frame counts but "
                                                f"{paths['data'].name} holds {n} samples")
    if n and num_frames.min() < 0:
      bad = int(np.argmin(num_frames))
      raise DataFormatError(paths["num_frame"], f"entry {bad} is {num_frames[bad]}; expected a "
                                                "frame count >= 0")
    self.num_frames = num_frames.astype(np.int64)
    self.names, self.labels = _load_labels(paths["label"], n)

  def _open_data(self) -> np.ndarray:
    path = npy_paths(self.folder, self.part, self.format)["data"]
    try:
      return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:
      raise DataFormatError(path, f"cannot be read as a .npy array ({err}); expected float32 "
                                  f"(N, 3, {FORMAT_FRAMES[self.format]}, V, M)") from err

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index) -> dict[str, Any]:
    i = operator.index(index)
    n = len(self)
    if not -n <= i < n:
      raise IndexError(f"index {i} out of range for {self!r}")
    if i < 0:
      i += n
    return {
        "skeleton": np.array(self._data[i], dtype=np.float32),
        "num_frames": int(self.num_frames[i]),
        "label": int(self.labels[i]),
        "name": self.names[i],
    }

  def __repr__(self) -> str:
    # Stable across runs and machines: grain compares it when restoring an iterator state.
    where = "/".join(self.folder.resolve().parts[-2:])
    fmt = "" if self.format == "cmd" else f", format={self.format!r}"  # the cmd repr is as it always was
    return f"NpySource(folder=.../{where}, part={self.part!r}{fmt}, num_records={len(self)}, shape={self.shape})"

  # Pickling (grain worker processes): send the small arrays, reopen the memory map.
  def __getstate__(self):
    state = self.__dict__.copy()
    del state["_data"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self.__dict__.setdefault("format", "cmd")  # a state pickled before the hiclr format existed
    self._data = self._open_data()


__all__ = ["NpySource", "npy_paths", "detect_format", "MAX_FRAMES", "HICLR_FRAMES", "FORMATS", "PARTS",
           "DataFormatError"]
