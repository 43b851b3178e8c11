"""MSR Action3D: skeleton reader, file names, the cross-subject split, and the dataset spec.

The dataset (Li, Zhang and Liu, 2010; Kinect v1) has 567 sequences, 20 actions x 10
subjects x 2-3 takes, in files ``aAA_sSS_eEE_skeleton3D.txt`` (real-world coordinates)
directly in the raw directory; other files there (``MANIFEST.tsv``, the screen-coordinate
``*_skeleton.txt``, ...) are ignored. Each file holds one line ``x y z c`` per joint, 20
joints per frame, frames concatenated; ``c`` is a tracking confidence and is dropped.

* ``read_skeleton`` returns float64 ``(3, T, 20, 1)`` in the dataset's joint order, which
  is ``cmd_jax.layouts.MSR20`` (established from the recordings in tests/test_msr.py: y up,
  the person faces the camera, the right side has the larger x, as in NTU's camera space).
* Sample name: the file stem without the suffix, e.g. ``a01_s01_e01`` (the dataset's own
  sequence id); label = action - 1 (20 classes, named in ``cmd_jax.action_names.MSR_ACTION3D``).
* Benchmark ``xsub`` (the standard protocol): odd subjects train, even subjects test.
* ``a13_s09_e02`` is all zeros (a defect of the release). The reader loads it like any other
  file; ``SPEC.drop_all_zero`` is True, so the converter skips it and reports it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cmd_jax import action_names
from cmd_jax.layouts import MSR20
from data_prep.spec import DatasetSpec, Sample
from data_prep.errors import DataFormatError
from data_prep.numeric_text import read_number_table

NUM_JOINTS = 20
NUM_ACTIONS = len(action_names.MSR_ACTION3D)  # 20
SUFFIX = "_skeleton3D.txt"
BENCHMARKS = ("xsub",)

_NAME_RE = re.compile(r"^a(\d{2})_s(\d{2})_e(\d{2})$")


@dataclasses.dataclass(frozen=True)
class MsrName:
  """The fields of ``aAA_sSS_eEE``."""
  action: int
  subject: int
  take: int

  @property
  def label(self) -> int:
    return self.action - 1


def parse_name(filename: str) -> MsrName:
  """Parses ``a01_s02_e03[_skeleton3D.txt]``; a ValueError names what was expected."""
  stem = os.path.basename(filename)
  if stem.endswith(SUFFIX):
    stem = stem[:-len(SUFFIX)]
  match = _NAME_RE.match(stem)
  if match is None:
    raise ValueError(f"{filename}: not an MSR Action3D sample name; expected aAA_sSS_eEE{SUFFIX}")
  name = MsrName(*map(int, match.groups()))
  if not 1 <= name.action <= NUM_ACTIONS:
    raise ValueError(f"{filename}: action {name.action}; expected 1..{NUM_ACTIONS}")
  return name


def is_training(name: MsrName, benchmark: str) -> bool:
  """Cross-subject: odd subjects train."""
  if benchmark == "xsub":
    return name.subject % 2 == 1
  raise ValueError(f"unknown MSR Action3D benchmark {benchmark!r}; expected xsub")


def read_skeleton(path: str | os.PathLike) -> np.ndarray:
  """Reads a ``*_skeleton3D.txt`` file: float64 ``(3, T, 20, 1)`` (x, y, z; confidence dropped)."""
  table = read_number_table(path, 4, "joint line")
  if len(table) % NUM_JOINTS:
    last = len(table) - len(table) % NUM_JOINTS
    raise DataFormatError(path, f"{len(table)} joint lines is not a multiple of {NUM_JOINTS}: the frame "
                          f"starting here has {len(table) - last} (truncated file?)", last + 1)
  frames = table.reshape(-1, NUM_JOINTS, 4)[..., :3]
  return np.ascontiguousarray(frames.transpose(2, 0, 1)[..., None])


def list_samples(raw_dir: Path | None, options: Mapping[str, Any]) -> list[Sample]:
  """Every ``aAA_sSS_eEE_skeleton3D.txt`` in ``raw_dir``, sorted by name."""
  del options  # no options
  if raw_dir is None:
    raise FileNotFoundError("msr_action3d: a raw directory is required")
  raw_dir = Path(raw_dir)
  if not raw_dir.is_dir():
    raise FileNotFoundError(f"msr_action3d: raw directory {raw_dir} does not exist")
  samples = []
  for entry in sorted(os.listdir(raw_dir)):
    match = _NAME_RE.match(entry[:-len(SUFFIX)]) if entry.endswith(SUFFIX) else None
    if match is None:
      continue  # MANIFEST.tsv, screen-coordinate files, ...
    fields = MsrName(*map(int, match.groups()))
    if not 1 <= fields.action <= NUM_ACTIONS:
      raise DataFormatError(raw_dir / entry, f"action {fields.action} in the file name; expected 1..{NUM_ACTIONS}")
    train = frozenset(b for b in BENCHMARKS if is_training(fields, b))
    samples.append(Sample(entry[:-len(SUFFIX)], fields.label, train, str(raw_dir / entry)))
  if not samples:
    raise FileNotFoundError(f"msr_action3d: no aAA_sSS_eEE{SUFFIX} files in {raw_dir}")
  return samples


def load(sample: Sample) -> np.ndarray:
  return read_skeleton(sample.source)


SPEC = DatasetSpec(
    name="msr_action3d", layout=MSR20, class_names=action_names.MSR_ACTION3D, benchmarks=BENCHMARKS,
    list_samples=list_samples, load=load, drop_all_zero=True,
    description="MSR Action3D: the aAA_sSS_eEE_skeleton3D.txt files (real-world coordinates) in --raw")
