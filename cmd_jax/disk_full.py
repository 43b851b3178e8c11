"""A full disk or an exceeded quota, recognised wherever it surfaces, and reported in one line.

Writes fail for lack of space with ``OSError(ENOSPC)`` or ``OSError(EDQUOT)`` from Python's
own files, but other writers wrap it: orbax's asynchronous checkpoint writer re-raises
TensorStore's status as a ``ValueError`` whose text ends in ``No space left on device
[os_error_code='28']`` (when the next save or ``close`` waits for it), TFDS's ArrayRecord
writer raises ``RuntimeError(... write() failed: No space left on device ...)``, and
``torch.save`` to a Python file object raises a ``RuntimeError`` chained to the ``OSError``.
``reason(err)`` looks through the exception, its causes and contexts (and the members of an
exception group) for an errno or those texts; ``DiskFullError`` is the one-line error the
commands raise instead (an ``OSError`` with the errno), naming the folder and the file.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import threading
import warnings

_TEXTS = {"No space left on device": errno.ENOSPC, "os_error_code='28'": errno.ENOSPC,
          "Disk quota exceeded": errno.EDQUOT, "os_error_code='122'": errno.EDQUOT}
_WORDS = {errno.ENOSPC: "no space left on the device (ENOSPC)", errno.EDQUOT: "the disk quota is exceeded (EDQUOT)"}
_QUOTED_PATH = re.compile(r"\"(/[^\"]+)\"")


class DiskFullError(OSError):
  """A command stopped for lack of space (one line: the folder, the file, what was kept)."""

  def __init__(self, code: int, message: str):
    super().__init__(code, message)
    self.message = message

  def __str__(self) -> str:
    return self.message


def _chain(err: BaseException):
  """``err``, its causes, contexts and group members, each once."""
  seen, todo = set(), [err]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    yield e
    todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]


def errno_of(err: BaseException) -> int | None:
  """ENOSPC or EDQUOT when ``err`` (or what it wraps) is a write that found no space; else None."""
  for e in _chain(err):
    if isinstance(e, DiskFullError):
      return e.errno
    if isinstance(e, OSError) and e.errno in _WORDS:
      return e.errno
    text = str(e)
    for needle, code in _TEXTS.items():
      if needle in text:
        return code
  return None


# Where a write fails inside ``f.write`` the OSError has no filename (orbax writes its metadata
# with ``epath.Path.write_text`` in a worker thread): the path is then the innermost frame's
# path-like local of these names (``self`` for a method of a path object).
_PATH_LOCALS = ("path", "filename", "file_path", "self")


def _path_in_traceback(err: BaseException) -> str | None:
  """The absolute path a frame of ``err``'s traceback was writing, innermost frame first."""
  frames, tb = [], err.__traceback__
  while tb is not None:
    frames.append(tb.tb_frame)
    tb = tb.tb_next
  for frame in reversed(frames):
    for name in _PATH_LOCALS:
      value = frame.f_locals.get(name)
      if isinstance(value, (str, os.PathLike)):
        try:
          path = os.fspath(value)
        except TypeError:
          continue
        if isinstance(path, str) and os.path.isabs(path):
          return path
  return None


def failed_path(err: BaseException) -> str | None:
  """The file a full-disk error names: an ``OSError``'s filename, else the first quoted
  absolute path in a message, else the path the failing write's frame held."""
  chain = list(_chain(err))
  for e in chain:
    if isinstance(e, OSError) and e.filename:
      return os.fspath(e.filename)
    match = _QUOTED_PATH.search(str(e))
    if match:
      return match.group(1)
  for e in chain:
    if isinstance(e, OSError) and e.errno in _WORDS:
      path = _path_in_traceback(e)
      if path:
        return path
  return None


def reported(err: BaseException, folder: str | os.PathLike, outcome: str) -> DiskFullError | None:
  """The one-line ``DiskFullError`` for ``err`` when it is a full disk, else None:
  ``<folder>: <no space / quota> while writing <file>; <outcome>``."""
  code = errno_of(err)
  if code is None:
    return None
  folder = os.path.abspath(os.fspath(folder))
  path = failed_path(err)
  where = ""
  if path:
    path = os.path.abspath(path)
    where = f" while writing {os.path.relpath(path, folder) if path.startswith(folder + os.sep) else path}"
  return DiskFullError(code, f"{folder}: {_WORDS[code]}{where}; {outcome}")


_LOOP_CLOSED = "Event loop is closed"


def _loop_closed_off_main_thread(exc_type, exc) -> bool:
  return (exc_type is RuntimeError and str(exc) == _LOOP_CLOSED
          and threading.current_thread() is not threading.main_thread())


class _FullDiskRecords(logging.Filter):
  """Drops log records that carry a full disk's exception (the command reports it in one line)."""

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return exc is None or errno_of(exc) is None


def quiet_write_failures() -> None:
  """For a command (``launch.py``, ``python -m cmd_jax.torch_import``), from its start: what a checkpoint
  write that fails on a full disk prints on its way, before the command's one line.

  - Orbax's writer threads log the failure with its traceback (``_SignalingThread.run()
    raised an exception``); the same error reaches the command, which reports it in one line.
    Log records whose exception is a full disk (``errno_of``) are dropped; every other
    record is kept.
  - TensorStore's writes still in flight finish on their own threads after orbax closed its
    event loop; their completion callbacks (``loop.call_soon_threadsafe``, called from C++)
    raise ``RuntimeError('Event loop is closed')``, printed through ``sys.excepthook`` or
    ``sys.unraisablehook`` once per write (dozens). That error is no longer printed when it
    comes from a thread other than the main thread (it never says more than the failure
    that came first); every other exception is printed as before.
  """
  excepthook, unraisablehook, thread_hook = sys.excepthook, sys.unraisablehook, threading.excepthook

  def quiet_excepthook(exc_type, exc, tb):
    if not _loop_closed_off_main_thread(exc_type, exc):
      excepthook(exc_type, exc, tb)

  def quiet_unraisablehook(unraisable):
    if not _loop_closed_off_main_thread(unraisable.exc_type, unraisable.exc_value):
      unraisablehook(unraisable)

  def quiet_thread_hook(args):
    if not _loop_closed_off_main_thread(args.exc_type, args.exc_value):
      thread_hook(args)

  sys.excepthook, sys.unraisablehook, threading.excepthook = quiet_excepthook, quiet_unraisablehook, quiet_thread_hook
  for handler in logging.getLogger().handlers:
    handler.addFilter(_FullDiskRecords())


def quiet_dropped_writes() -> None:
  """For a command ending with a ``DiskFullError``'s one line (after ``quiet_write_failures``):
  orbax's asynchronous writer tasks that met the full disk are dropped with the process, and
  what they leave would be printed after that line, which says it all. For the rest of the
  process the ``asyncio`` logger is silenced (each dropped task: "Task exception was never
  retrieved" and the storage error's text), and so are the interpreter's "coroutine ... was
  never awaited" warnings at exit (the writes orbax had not started)."""
  logging.getLogger("asyncio").disabled = True
  warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
