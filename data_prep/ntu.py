"""NTU RGB+D 60/120 ``.skeleton`` files: parser, body selection, file names, splits, missing lists.

Follows the reference's ``data_gen/ntu_gendata.py`` (reference_cmd.md 1.1-1.4):

* ``read_bodies`` parses a file (LF or CRLF) into the reference's ``(4, T, 25, 3)`` slot
  array: the m-th body listed in frame n goes to slot m (bodies are not tracked by ID),
  bodies beyond the 4th are dropped;
* ``select_bodies`` keeps the two slots of highest energy (sum over x, y, z of the
  population std over non-empty frames x joints) and returns ``(3, T, 25, 2)``;
* ``read_xyz`` is both.

Only x, y, z of each joint line are used. The parser is vectorised: one character-class
check of the whole file, a walk over frames and bodies, and one numeric conversion of
all joint coordinates; no Python loop over joints.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np

from data_prep.errors import DataFormatError

NUM_JOINTS = 25
MAX_BODY_KINECT = 4
MAX_BODY_TRUE = 2

# NTU-120 cross-subject training subjects; the entries <= 40 are exactly NTU-60's list
# (reference_cmd.md 1.4), so one list serves both datasets.
XSUB_TRAIN_SUBJECTS = frozenset((
    1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38, 45, 46, 47, 49,
    50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91, 92,
    93, 94, 95, 97, 98, 100, 103))
XVIEW_TRAIN_CAMERAS = frozenset((2, 3))

_NAME_RE = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})$")

# Bytes a well-formed file may contain: digits, sign, point, exponent, whitespace.
_ALLOWED = np.zeros(256, bool)
_ALLOWED[np.frombuffer(b"0123456789+-.eE \t\r\n", np.uint8)] = True


@dataclasses.dataclass(frozen=True)
class NtuName:
  """The fields of ``SsssCcccPpppRrrrAaaa``."""
  setup: int
  camera: int
  subject: int
  replication: int
  action: int

  @property
  def label(self) -> int:
    return self.action - 1


def parse_name(filename: str) -> NtuName:
  """Parses ``S001C002P003R001A004[.skeleton]``; a ValueError names what was expected."""
  stem = os.path.basename(filename)
  if stem.endswith(".skeleton"):
    stem = stem[:-len(".skeleton")]
  match = _NAME_RE.match(stem)
  if match is None:
    raise ValueError(f"{filename}: not an NTU sample name; expected SsssCcccPpppRrrrAaaa.skeleton")
  return NtuName(*map(int, match.groups()))


def is_training(name: NtuName, benchmark: str) -> bool:
  """The reference's split rules: xsub by subject, xview by camera, xset by setup parity."""
  if benchmark == "xsub":
    return name.subject in XSUB_TRAIN_SUBJECTS
  if benchmark == "xview":
    return name.camera in XVIEW_TRAIN_CAMERAS
  if benchmark == "xset":
    return name.setup % 2 == 0
  raise ValueError(f"unknown NTU benchmark {benchmark!r}; expected xsub, xview or xset")


def read_missing_list(path: str | os.PathLike) -> frozenset[str]:
  """Sample names (without extension) from an official missing-skeleton list.

  Lines that are not sample names (the official files start with a prose header) are
  ignored, as the reference's name comparison ignores them.
  """
  names = set()
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if _NAME_RE.match(line):
        names.add(line)
  if not names:
    raise DataFormatError(path, "no sample names (SsssCcccPpppRrrrAaaa) found in the missing-skeleton list")
  return frozenset(names)


def _locate_bad_byte(path, raw: bytes, offset: int) -> DataFormatError:
  line_no = raw.count(b"\n", 0, offset) + 1
  start = raw.rfind(b"\n", 0, offset) + 1
  end = raw.find(b"\n", offset)
  line = raw[start:end if end >= 0 else len(raw)].decode("latin-1").strip()
  for k, token in enumerate(line.split(), 1):
    try:
      value = float(token)
    except ValueError:
      return DataFormatError(path, f"field {k} is {token!r}; expected a number", line_no)
    if not np.isfinite(value):
      return DataFormatError(path, f"field {k} is {token!r}; expected a finite number", line_no)
  return DataFormatError(path, f"unexpected byte {raw[offset:offset + 1]!r}; expected numbers", line_no)


def _count(lines: list[str], i: int, path, what: str) -> int:
  if i >= len(lines):
    raise DataFormatError(path, f"file ends where {what} was expected (truncated file?)", i + 1)
  text = lines[i].strip()
  try:
    return int(text)
  except ValueError:
    raise DataFormatError(path, f"expected {what} (one integer), got {text!r}", i + 1) from None


def read_bodies(path: str | os.PathLike) -> np.ndarray:
  """Parses a ``.skeleton`` file into the reference's slot array float64 ``(4, T, 25, 3)``."""
  raw = Path(path).read_bytes()
  bad = np.flatnonzero(~_ALLOWED[np.frombuffer(raw, np.uint8)])
  if bad.size:
    raise _locate_bad_byte(path, raw, int(bad[0]))
  lines = raw.decode("ascii").splitlines()
  while lines and not lines[-1].strip():
    lines.pop()

  num_frames = _count(lines, 0, path, "the frame count")
  if num_frames < 0:
    raise DataFormatError(path, f"frame count is {num_frames}; expected >= 0", 1)
  i = 1
  blocks = []  # (frame, slot, first joint line)
  for frame in range(num_frames):
    num_bodies = _count(lines, i, path, f"the body count of frame {frame}")
    if num_bodies < 0:
      raise DataFormatError(path, f"body count is {num_bodies}; expected >= 0", i + 1)
    i += 1
    for slot in range(num_bodies):
      if i >= len(lines):
        raise DataFormatError(path, f"file ends inside frame {frame} (truncated file?)", i + 1)
      fields = len(lines[i].split())
      if fields != 10:
        raise DataFormatError(path, f"body info line has {fields} values; expected 10", i + 1)
      num_joints = _count(lines, i + 1, path, "the joint count")
      if num_joints != NUM_JOINTS:
        raise DataFormatError(path, f"joint count is {num_joints}; expected {NUM_JOINTS}", i + 2)
      i += 2
      if i + NUM_JOINTS > len(lines):
        raise DataFormatError(path, f"file ends inside the joints of frame {frame} (truncated file?)",
                              len(lines) + 1)
      blocks.append((frame, slot, i))
      i += NUM_JOINTS
  if i != len(lines):
    raise DataFormatError(path, f"unexpected content after the {num_frames} frames the header announces", i + 1)

  data = np.zeros((MAX_BODY_KINECT, num_frames, NUM_JOINTS, 3))
  if not blocks:
    return data
  starts = np.array([b[2] for b in blocks])
  joint_lines = [lines[s + j] for s in starts for j in range(NUM_JOINTS)]
  fields = np.fromiter((len(line.split()) for line in joint_lines), int, len(joint_lines))
  wrong = np.flatnonzero(fields != 12)
  if wrong.size:
    k = int(wrong[0])
    raise DataFormatError(path, f"joint line has {fields[k]} values; expected 12",
                          int(starts[k // NUM_JOINTS]) + k % NUM_JOINTS + 1)
  try:
    xyz = np.loadtxt(joint_lines, dtype=np.float64, usecols=(0, 1, 2), ndmin=2)
  except ValueError as err:  # a malformed number such as "1.2.3"
    raise DataFormatError(path, f"joint coordinates are not numbers: {err}") from None
  xyz = xyz.reshape(len(blocks), NUM_JOINTS, 3)
  frames = np.array([b[0] for b in blocks])
  slots = np.array([b[1] for b in blocks])
  keep = slots < MAX_BODY_KINECT
  data[slots[keep], frames[keep]] = xyz[keep]
  return data


def body_energy(body: np.ndarray) -> float:
  """The reference's ``get_nonzero_std`` of one slot ``(T, 25, 3)``."""
  valid = body[body.sum(-1).sum(-1) != 0]
  if len(valid) == 0:
    return 0.0
  return float(valid[:, :, 0].std() + valid[:, :, 1].std() + valid[:, :, 2].std())


def select_bodies(data: np.ndarray, max_body_true: int = MAX_BODY_TRUE) -> np.ndarray:
  """Keeps the ``max_body_true`` slots of highest energy: ``(4, T, V, 3)`` -> ``(3, T, V, max_body_true)``.

  The reference orders with ``energy.argsort()[::-1]``; on 4 values numpy 1.22 (the
  reference's version) sorts by insertion, which is stable, so ties go to the higher slot
  index first. That order is reproduced explicitly here, independent of numpy's sort.
  """
  energy = np.array([body_energy(b) for b in data])
  order = np.lexsort((np.arange(len(energy)), energy))[::-1][:max_body_true]
  return data[order].transpose(3, 1, 2, 0)


def read_xyz(path: str | os.PathLike) -> np.ndarray:
  """Reads a ``.skeleton`` file as the reference does: float64 ``(3, T, 25, 2)``."""
  return select_bodies(read_bodies(path))
