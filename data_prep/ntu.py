"""NTU RGB+D 60/120 ``.skeleton`` files: parser, body selection, file names, splits, missing lists.

Follows the reference's ``data_gen/ntu_gendata.py`` (docs/references.md#cmd-ntu-reader,
#cmd-splits-and-files):

* ``read_bodies`` parses a file (LF, CRLF or CR line ends) into the reference's
  ``(4, T, 25, 3)`` slot array: the m-th body listed in frame n goes to slot m (bodies
  are not tracked by ID), bodies beyond the 4th are dropped;
* ``select_bodies`` keeps the two slots of highest energy (sum over x, y, z of the
  population std over non-empty frames x joints) and returns ``(3, T, 25, 2)``;
* ``first_bodies`` keeps the first two slots, i.e. the first two bodies listed in each
  frame in file order, as HiCLR's converter does (the "frame50" variant);
* ``read_xyz`` is the parser and one of the two selections (``selection``: ``"energy"``,
  the default, or ``"file_order"``).

Only x, y, z of each joint line are used, and they are exactly the values ``float()``
gives (as the reference's parser). The parser has no Python loop over lines or numbers:
a few whole-file numpy scans find the tokens and lines, the structure is checked from the
token counts and the count lines, and the coordinates are converted by ``_decode`` (an
exact vectorised decimal conversion); only malformed files go through a line-by-line walk,
which names the first bad line in its ``DataFormatError``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys

import numpy as np

from data_prep.errors import DataFormatError
from data_prep.numeric_text import ALLOWED, ALLOWED_BYTES, locate_bad_byte

NUM_JOINTS = 25
MAX_BODY_KINECT = 4
MAX_BODY_TRUE = 2

# NTU-120 cross-subject training subjects; the entries <= 40 are exactly NTU-60's list
# (docs/references.md#cmd-splits-and-files), so one list serves both datasets.
XSUB_TRAIN_SUBJECTS = frozenset((
    1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38, 45, 46, 47, 49,
    50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91, 92,
    93, 94, 95, 97, 98, 100, 103))
XVIEW_TRAIN_CAMERAS = frozenset((2, 3))

_NAME_RE = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})$")


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


# ----------------------------------------------------------------------------------------
# Number conversion, vectorised. A token is read from the 16 bytes that end where it ends
# (two little-endian uint64 words), the bytes before its start cleared.
# ----------------------------------------------------------------------------------------

_WINDOW = 16
_U64 = np.uint64
_KEEP_FROM = np.zeros((_WINDOW + 1, _WINDOW), np.uint8)  # row g: keeps window bytes g..15
for _g in range(_WINDOW + 1):
  _KEEP_FROM[_g, _g:] = 0xFF
_KEEP_FROM = _KEEP_FROM.view(np.complex128).ravel()  # one 16-byte item per row, for a 1-D take
# 10**f for the f digits after a point (f <= 15), 1 for index 16, meaning "no point"
_SCALE = np.append(10.0 ** np.arange(_WINDOW), 1.0)  # exact
_BYTE_INDEX = _U64(0x0102030405060708)  # (word * this) >> 56 = 1 + index of the one set byte
_TOKEN = re.compile(rb"[^ \t\r\n]+")
_LITTLE_ENDIAN = sys.byteorder == "little"  # the word arithmetic assumes it; else float() does all


def _digits_value(words: np.ndarray) -> np.ndarray:
  """The 8-digit decimal integer in each uint64 whose bytes are digit values 0-9, its first
  (lowest-addressed) byte the most significant digit. The classic SWAR reduction: pairs,
  then quadruples, then octets of digits, each step exact."""
  words = words * _U64(10) + (words >> _U64(8))
  words &= _U64(0x00FF00FF00FF00FF)
  words = words * _U64(100) + (words >> _U64(16))
  words &= _U64(0x0000FFFF0000FFFF)
  words = words * _U64(10000) + (words >> _U64(32))
  return words & _U64(0x00000000FFFFFFFF)


def _decode(buf: bytes, b: np.ndarray, starts: np.ndarray, ends: np.ndarray):
  """Values of the tokens ``buf[starts[k]:ends[k]]`` that are *plain*.

  Returns ``(values, plain, has_point)``. A plain token is ``[+-]digits[.digits]`` with
  at most 15 digits and point (every coordinate of a real file but the rare ``1.2E-05``):
  its digits form an integer m < 10**15 < 2**53 and its value is m / 10**f, both exact in
  float64, so the one division rounds correctly, as ``float()`` does. The values of the
  other tokens are meaningless. ``b`` is ``buf`` as uint8; every token needs 16 bytes of
  ``buf`` before its end and ``buf`` must hold only ``ALLOWED`` bytes.
  """
  length = ends - starts
  windows = np.ndarray((len(buf) - _WINDOW + 1,), np.complex128, buf, strides=(1,))
  keep = _KEEP_FROM[_WINDOW - np.minimum(length, _WINDOW)]
  words = (windows[ends - _WINDOW].view(_U64) & keep.view(_U64)).reshape(-1, 2)
  window = words.view(np.uint8)  # [K, 16], the token right-aligned, zeros before it
  digit = window - np.uint8(48)  # wraps around for every non-digit
  is_digit = digit < 10
  points = (window == 46).view(_U64).reshape(-1, 2)
  num_digits = np.bitwise_count(is_digit.view(_U64)).astype(np.int64)
  num_digits = num_digits[:, 0] + num_digits[:, 1]
  num_points = np.bitwise_count(points).astype(np.int64)
  num_points = num_points[:, 0] + num_points[:, 1]
  first = b[starts]
  negative = first == 45
  signed = negative | (first == 43)
  plain = ((num_digits + num_points + signed == length) & (num_points <= 1) & (num_digits >= 1)
           & (num_digits + num_points <= 15) & _LITTLE_ENDIAN)

  # All digits as one integer, the point read as a 0 digit: i * 10**(f+1) + r for the
  # integer part i and the f digits r after the point.
  octets = _digits_value((digit * is_digit).view(_U64).reshape(-1, 2))
  whole = octets[:, 0].astype(np.float64) * 1e8 + octets[:, 1]
  # f = 15 - the window index of the point; index 16 (scale 1) where there is none
  in_second = (points[:, 1] * _BYTE_INDEX) >> _U64(56)
  in_first = (points[:, 0] * _BYTE_INDEX) >> _U64(56)
  scale = _SCALE[np.where(in_second > 0, _U64(8) - in_second, _U64(16) - in_first)]
  # r = whole mod 10**f, exactly: whole is an integer < 10**15, so a quotient whole / 10**f
  # that is not an integer is at least 10**-f from the next one, more than half an ulp of
  # it; the floor of the rounded quotient is therefore exact, and so is the rest.
  fraction = whole - np.floor(whole / scale) * scale
  mantissa = np.where(num_points > 0, (whole - fraction) / 10 + fraction, whole)
  values = mantissa / scale  # the one rounding
  return np.where(negative, -values, values), plain, num_points > 0


def _token_ends(buf: bytes, b: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
  """Exact ends of the tokens starting at ``starts``, given ``ends`` that are right unless
  more whitespace precedes them (which is then skipped; rare in real files)."""
  for k in np.flatnonzero(b[ends - 1] <= 32).tolist():
    ends[k] = _TOKEN.match(buf, int(starts[k])).end()
  return ends


# ----------------------------------------------------------------------------------------
# The file structure
# ----------------------------------------------------------------------------------------

def read_bodies(path: str | os.PathLike) -> np.ndarray:
  """Parses a ``.skeleton`` file into the reference's slot array float64 ``(4, T, 25, 3)``.

  Raises ``DataFormatError`` naming the file and the 1-based line for anything that is
  not the format: a byte other than digits, ``+-.eE`` and whitespace; a count line that
  is not one integer; a body line without 10 values; a joint count other than 25; a
  joint line without 12 values; an x, y or z that ``float()`` rejects or that is not
  finite; a truncated file; non-blank lines after the announced frames. The other
  joint values are checked for their characters and number only (they are never used).
  Line ends may be LF, CRLF or CR.
  """
  with open(path, "rb") as f:
    # Read straight into the padded buffer the parser works on (saves a copy).
    size = os.fstat(f.fileno()).st_size
    buf = bytearray(_WINDOW + size + 1)
    buf[:_WINDOW] = b" " * _WINDOW
    buf[-1] = 10
    if f.readinto(memoryview(buf)[_WINDOW:_WINDOW + size]) != size or f.read(1):
      f.seek(0)  # the file changed size while being read
      buf = _padded(f.read())
  try:
    return _parse_skeleton(buf, path)
  except DataFormatError:
    # A lone CR ends a line for the reference's text-mode reading; any one breaks the
    # LF structure, so such a file cannot have parsed: normalise it and parse again.
    raw = bytes(buf[_WINDOW:-1])
    if b"\r" in raw and raw.count(b"\r") != raw.count(b"\r\n"):
      return _parse_skeleton(_padded(raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")), path)
    raise


def _padded(raw: bytes) -> bytes:
  """The buffer ``_parse_skeleton`` works on: ``_WINDOW`` spaces, the file, a newline."""
  return b" " * _WINDOW + raw + b"\n"


def _parse_skeleton(buf, path) -> np.ndarray:
  """``read_bodies`` of the file contents padded by ``_padded``, with LF or CRLF line ends.

  Leading spaces make every token start a whitespace -> non-whitespace step and give
  every token ``_WINDOW`` bytes before its end; the final newline ends the last line.
  Tokens and lines are located with a few whole-file numpy scans. The structure (frame,
  body and joint counts, values per line) is then checked without a Python loop, from the
  single-value lines; a file that fails the check goes through ``_walk``, the plain
  line-by-line reading, which names the first bad line.
  """
  if buf.translate(None, ALLOWED_BYTES):
    raw = bytes(buf[_WINDOW:-1])
    raise locate_bad_byte(path, raw, int(np.flatnonzero(~ALLOWED[np.frombuffer(raw, np.uint8)])[0]))
  b = np.frombuffer(buf, np.uint8)
  space = b <= 32  # the only allowed bytes <= 32 are whitespace
  starts = np.flatnonzero(space[:-1] > space[1:]) + 1  # token start offsets
  newlines = np.flatnonzero(b == 10)  # line k ends at newlines[k]
  tokens_upto = np.searchsorted(starts, newlines)  # tokens on lines 0..k
  num_tokens = np.diff(tokens_upto, prepend=0)
  first_token = tokens_upto - num_tokens
  nonblank = np.flatnonzero(num_tokens)
  num_lines = int(nonblank[-1]) + 1 if nonblank.size else 0  # trailing blank lines ignored

  # The candidate joint lines (12 values) and count lines (1 value), in one conversion.
  twelve = np.flatnonzero(num_tokens == 12)
  single = np.flatnonzero(num_tokens[:num_lines] == 1)
  xyz = (first_token[twelve][:, None] + np.arange(3)).ravel()
  xyz_starts = starts[xyz]
  single_starts = starts[first_token[single]]
  single_ends = newlines[single]
  single_ends -= b[single_ends - 1] == 13  # CRLF
  token_starts = np.concatenate([xyz_starts, single_starts])
  token_ends = _token_ends(buf, b, token_starts, np.concatenate([starts[xyz + 1] - 1, single_ends]))
  values, plain, has_point = _decode(buf, b, token_starts, token_ends)
  n_xyz = len(xyz)
  structure = _structure(num_tokens, num_lines, single, values[n_xyz:], (plain & ~has_point)[n_xyz:])
  if structure is not None and np.array_equal(structure[3], twelve):
    num_frames, frames, slots, joint_lines = structure
  else:
    num_frames, frames, slots, joint_lines = _walk(path, buf, num_tokens, newlines, num_lines)
    xyz = (first_token[joint_lines][:, None] + np.arange(3)).ravel()
    token_starts = starts[xyz]
    token_ends = _token_ends(buf, b, token_starts, starts[xyz + 1] - 1)
    values, plain, _ = _decode(buf, b, token_starts, token_ends)
    n_xyz = len(xyz)

  data = np.zeros((MAX_BODY_KINECT, num_frames, NUM_JOINTS, 3))
  if not n_xyz:
    return data
  values = values[:n_xyz]
  for k in np.flatnonzero(~plain[:n_xyz]).tolist():
    token = buf[token_starts[k]:token_ends[k]]
    try:
      values[k] = float(token)
    except ValueError:
      values[k] = np.nan
    if not np.isfinite(values[k]):
      raise DataFormatError(path, f"field {k % 3 + 1} is {token.decode()!r}; expected a finite number",
                            int(joint_lines[k // 3]) + 1)
  xyz = values.reshape(-1, NUM_JOINTS, 3)
  keep = slots < MAX_BODY_KINECT
  data[slots[keep], frames[keep]] = xyz[keep]
  return data


def _structure(num_tokens, num_lines, single, counts, integer):
  """The file structure from the single-value lines, or None if it is not the format.

  In a well-formed file, a single-value line is the frame count (line 0), a body count
  (frame header) or a joint count, and a joint count is exactly one that follows a body
  info line (10 values). The body counts then fix where every frame, body info line,
  joint count and joint line must be; all of that is checked here. Returns ``(num_frames,
  frames, slots, joint_lines)``: the frame and slot of each body and its 25 joint lines.
  """
  if not single.size or single[0] != 0 or not integer.all():
    return None
  counts = counts.astype(np.int64)
  num_frames = int(counts[0])
  rest, counts = single[1:], counts[1:]
  after_info = num_tokens[rest - 1] == 10
  frame_lines, num_bodies = rest[~after_info], counts[~after_info]
  joint_count_lines = rest[after_info]
  if len(frame_lines) != num_frames or (num_bodies < 0).any() or (counts[after_info] != NUM_JOINTS).any():
    return None
  next_frame = frame_lines + 1 + (2 + NUM_JOINTS) * num_bodies
  if num_frames == 0:
    if num_lines != 1:
      return None
  elif frame_lines[0] != 1 or (frame_lines[1:] != next_frame[:-1]).any() or next_frame[-1] != num_lines:
    return None
  if num_bodies.sum() != len(joint_count_lines):
    return None
  frames = np.repeat(np.arange(num_frames), num_bodies)
  slots = np.arange(len(frames)) - np.repeat(np.cumsum(num_bodies) - num_bodies, num_bodies)
  info_lines = frame_lines[frames] + 1 + (2 + NUM_JOINTS) * slots
  if (joint_count_lines != info_lines + 1).any() or (num_tokens[info_lines] != 10).any():
    return None
  joint_lines = (info_lines[:, None] + 2 + np.arange(NUM_JOINTS)).ravel()
  return num_frames, frames, slots, joint_lines


def _walk(path, buf: bytes, num_tokens: np.ndarray, newlines: np.ndarray, num_lines: int):
  """The line-by-line reading of the structure; raises ``DataFormatError`` at the first
  line that is not the format. Returns what ``_structure`` returns."""
  line_ends = newlines.tolist()
  counts = num_tokens.tolist()

  def count(i: int, what: str) -> int:
    """The integer on line i (0-based)."""
    if i >= num_lines:
      raise DataFormatError(path, f"file ends where {what} was expected (truncated file?)", i + 1)
    text = buf[line_ends[i - 1] + 1 if i else 0:line_ends[i]]
    try:
      return int(text)
    except ValueError:
      raise DataFormatError(path, f"expected {what} (one integer), got {text.decode().strip()!r}",
                            i + 1) from None

  num_frames = count(0, "the frame count")
  if num_frames < 0:
    raise DataFormatError(path, f"frame count is {num_frames}; expected >= 0", 1)
  i = 1
  frames, slots, joint_starts = [], [], []
  for frame in range(num_frames):
    num_bodies = count(i, f"the body count of frame {frame}")
    if num_bodies < 0:
      raise DataFormatError(path, f"body count is {num_bodies}; expected >= 0", i + 1)
    i += 1
    for slot in range(num_bodies):
      if i >= num_lines:
        raise DataFormatError(path, f"file ends inside frame {frame} (truncated file?)", i + 1)
      if counts[i] != 10:
        raise DataFormatError(path, f"body info line has {counts[i]} values; expected 10", i + 1)
      num_joints = count(i + 1, f"the joint count of frame {frame}")
      if num_joints != NUM_JOINTS:
        raise DataFormatError(path, f"joint count is {num_joints}; expected {NUM_JOINTS}", i + 2)
      i += 2
      if i + NUM_JOINTS > num_lines:
        raise DataFormatError(path, f"file ends inside the joints of frame {frame} (truncated file?)",
                              num_lines + 1)
      frames.append(frame)
      slots.append(slot)
      joint_starts.append(i)
      i += NUM_JOINTS
  if i != num_lines:
    raise DataFormatError(path, f"unexpected content after the {num_frames} frames the header announces", i + 1)
  joint_lines = (np.array(joint_starts, np.int64)[:, None] + np.arange(NUM_JOINTS)).ravel()
  wrong = np.flatnonzero(num_tokens[joint_lines] != 12)
  if wrong.size:
    line = int(joint_lines[wrong[0]])
    raise DataFormatError(path, f"joint line has {counts[line]} values; expected 12", line + 1)
  return num_frames, np.array(frames, np.int64), np.array(slots, np.int64), joint_lines


def _std(values: np.ndarray, count: int) -> float:
  """``values.std()`` computed as numpy computes it (same sums, same order), without the
  overhead of ``np.std``'s argument handling."""
  mean = np.add.reduce(values, axis=None) / count
  deviations = values - mean
  np.multiply(deviations, deviations, out=deviations)
  return float(np.sqrt(np.add.reduce(deviations, axis=None) / count))


def body_energies(data: np.ndarray) -> np.ndarray:
  """The reference's ``get_nonzero_std`` of every slot of ``(S, T, V, 3)``: float64 [S]."""
  frame_sums = ((data[..., 0] + data[..., 1]) + data[..., 2]).sum(-1)  # [S, T]
  valid = frame_sums != 0
  energies = np.zeros(len(data))
  for slot in np.flatnonzero(valid.any(-1)).tolist():
    body = data[slot][valid[slot]]
    count = body.shape[0] * body.shape[1]
    energies[slot] = _std(body[:, :, 0], count) + _std(body[:, :, 1], count) + _std(body[:, :, 2], count)
  return energies


def select_bodies(data: np.ndarray, max_body_true: int = MAX_BODY_TRUE) -> np.ndarray:
  """Keeps the ``max_body_true`` slots of highest energy: ``(4, T, V, 3)`` -> ``(3, T, V, max_body_true)``.

  The reference orders with ``energy.argsort()[::-1]``; on 4 values numpy 1.22 (the
  reference's version) sorts by insertion, which is stable, so ties go to the higher slot
  index first. That order is reproduced explicitly here, independent of numpy's sort.
  """
  energy = body_energies(data)
  order = np.lexsort((np.arange(len(energy)), energy))[::-1][:max_body_true]
  return data[order].transpose(3, 1, 2, 0)


def first_bodies(data: np.ndarray, max_body_true: int = MAX_BODY_TRUE) -> np.ndarray:
  """Keeps the first ``max_body_true`` slots: ``(4, T, V, 3)`` -> ``(3, T, V, max_body_true)``.

  Slot m holds the m-th body listed in each frame, so this is HiCLR's reading (bodies in
  file order, no energy ranking, no tracking by body ID); a frame listing fewer bodies
  leaves the rest zero.
  """
  return data[:max_body_true].transpose(3, 1, 2, 0)


SELECTIONS = ("energy", "file_order")


def read_xyz(path: str | os.PathLike, selection: str = "energy") -> np.ndarray:
  """Reads a ``.skeleton`` file into float64 ``(3, T, 25, 2)``.

  ``selection="energy"`` (default): the two bodies of highest energy, as CMD's reference
  (``select_bodies``); ``"file_order"``: the first two bodies of each frame, as HiCLR's
  converter (``first_bodies``).
  """
  if selection not in SELECTIONS:
    raise ValueError(f"body selection {selection!r}: expected one of {', '.join(SELECTIONS)}")
  bodies = read_bodies(path)
  return select_bodies(bodies) if selection == "energy" else first_bodies(bodies)
