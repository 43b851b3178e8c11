"""Whitespace-separated numeric text: the byte classes, number tables, and error location.

Shared by the raw-format readers: ``read_number_table`` parses a file of lines of N numbers
(PKU-MMD skeletons, MSR Action3D), vectorised with numpy; ``ALLOWED`` is the byte class a
numeric file may contain (a byte outside it is text, NaN or inf), and
``locate_bad_byte``/``token_error`` turn a bad byte or token into a ``DataFormatError``
naming the file, the 1-based line and the field.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from data_prep.errors import DataFormatError

# Bytes a numeric text table may contain: digits, sign, point, exponent, whitespace.
ALLOWED_BYTES = b"0123456789+-.eE \t\r\n"
ALLOWED = np.zeros(256, bool)
ALLOWED[np.frombuffer(ALLOWED_BYTES, np.uint8)] = True
SPACE = np.zeros(256, bool)
SPACE[np.frombuffer(b" \t\r\n", np.uint8)] = True


def token_error(path, token: bytes, line: int, field: int) -> DataFormatError:
  """The error for a token that is not a finite number (``line``, ``field``: 0-based)."""
  token = token.decode("latin-1")
  try:
    finite = np.isfinite(float(token))
    expected = "a number" if finite else "a finite number"
  except ValueError:
    expected = "a number"
  return DataFormatError(path, f"field {field + 1} is {token!r}; expected {expected}", line + 1)


def read_number_table(path: str | os.PathLike, num_fields: int, what: str = "line") -> np.ndarray:
  """Parses a text file of whitespace-separated numbers, ``num_fields`` per line: float64 ``[L, num_fields]``.

  LF or CRLF; blank lines at the end are ignored, any other line must hold exactly
  ``num_fields`` finite numbers. Every error is a ``DataFormatError`` naming the file and
  the 1-based line (``what`` names a line in messages, e.g. "frame line").
  """
  raw = Path(path).read_bytes()
  buf = np.frombuffer(raw, np.uint8)
  is_space = SPACE[buf]
  if is_space.all():
    raise DataFormatError(path, f"empty file; expected lines of {num_fields} numbers")
  newline = buf == ord("\n")
  byte_line = np.cumsum(newline) - newline  # 0-based line of every byte (its newline included)
  starts = np.flatnonzero(~is_space & np.concatenate(([True], is_space[:-1])))
  token_line = byte_line[starts]
  counts = np.bincount(token_line)  # values per line, up to the last non-blank line
  token_field = np.arange(len(starts)) - np.concatenate(([0], np.cumsum(counts)))[token_line]

  # The first of: a line with the wrong number of values, a token with a byte no number has.
  bad_byte = np.flatnonzero(~ALLOWED[buf])
  wrong = np.flatnonzero(counts != num_fields)
  bad_line = int(byte_line[bad_byte[0]]) if bad_byte.size else len(counts)
  if wrong.size and wrong[0] < bad_line:
    line = int(wrong[0])
    raise DataFormatError(path, f"{what} has {counts[line]} values; expected {num_fields}", line + 1)
  if bad_byte.size:
    # The token holding the bad byte (a bad byte is never whitespace, so it is in one).
    k = int(np.searchsorted(starts, bad_byte[0], side="right")) - 1
    end = int(starts[k]) + int(np.argmax(np.append(is_space[starts[k]:], True)))
    raise token_error(path, raw[starts[k]:end], int(token_line[k]), int(token_field[k]))

  tokens = raw.split()
  try:
    values = np.array(tokens, dtype=np.float64)
  except ValueError:  # a malformed number such as "1.2.3" or "-": find it (error path only)
    for k, token in enumerate(tokens):
      try:
        float(token)
      except ValueError:
        raise token_error(path, token, int(token_line[k]), int(token_field[k])) from None
    raise
  nonfinite = np.flatnonzero(~np.isfinite(values))  # overflow such as 1e999
  if nonfinite.size:
    k = int(nonfinite[0])
    raise token_error(path, tokens[k], int(token_line[k]), int(token_field[k]))
  return values.reshape(len(counts), num_fields)


def locate_bad_byte(path, raw: bytes, offset: int) -> DataFormatError:
  """The error for the byte at ``offset`` of ``raw`` that is not ``ALLOWED``: names its token."""
  line = raw.count(b"\n", 0, offset)  # 0-based
  start = raw.rfind(b"\n", 0, offset) + 1
  end = raw.find(b"\n", offset)
  for field, token in enumerate(raw[start:end if end >= 0 else len(raw)].split()):
    try:
      finite = bool(np.isfinite(float(token)))
    except ValueError:
      finite = False
    if not finite:
      return token_error(path, token, line, field)
  return DataFormatError(path, f"unexpected byte {raw[offset:offset + 1]!r}; expected numbers", line + 1)
