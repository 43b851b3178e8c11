"""The error every reader raises on bad input: it names the file, the line and what was expected."""

from __future__ import annotations


class DataFormatError(ValueError):
  """A raw file does not follow its format.

  ``str(err)`` reads ``<path>:<line>: <message>`` (or ``<path>: <message>`` when no line
  applies), so a conversion summary can print it as is.
  """

  def __init__(self, path, message: str, line: int | None = None):
    self.path = str(path)
    self.line = line
    self.message = message
    where = f"{self.path}:{line}" if line is not None else self.path
    super().__init__(f"{where}: {message}")

  def __reduce__(self):  # picklable across worker processes
    return (type(self), (self.path, self.message, self.line))
