"""Stopping cleanly on SIGTERM and SIGINT: the preemption notice of clusters and Ctrl-C.

A run watches for a stop request while it runs (``watch()``, a context manager that restores
the previous signal handlers when the run returns) and asks ``requested(step)`` where it can
stop cleanly; the pretraining loop after every step, the protocols after every step and
every evaluation batch. Two ways to decide, one per kind of run:

- one process (no ``jax.distributed``): the signal handlers record the signal and the next
  check stops;
- ``jax.distributed`` initialised (``launch.py --distributed`` or ``--coordinator_address``):
  JAX's preemption sync point (``jax.experimental.multihost_utils.reached_preemption_sync_point``).
  JAX's preemption service catches SIGTERM itself in C++ (its notifier; a Python handler
  for SIGTERM would replace it, so none is installed) and tells the coordination service;
  every process then reports its step, and the sync point is the largest step + 1, the
  first step every process can still reach. ``requested(step)`` is True on every process at
  that same step, whichever process got the signal. SIGINT (Ctrl-C) is handled in Python
  and passed on as a SIGTERM to this process, so it takes the same path. The service must
  see every step's check from the same counter sequence on every process: the pretraining
  passes the train step (what orbax's ``CheckpointManager.save`` also passes it, through
  ``reached_preemption``), the protocols a running count of their checks.

A second SIGINT or SIGTERM caught in Python stops at once (``KeyboardInterrupt``): whatever
was being written is abandoned, which orbax's temporary folders and the atomic renames of
the other files make harmless.

What stops reports is ``RunStopped``: one line, and ``exit_status`` 128 + the signal number
(143 for SIGTERM, 130 for SIGINT; a process of a multi-process run stopped at the sync
point exits 143 whichever signal started it), what a shell reports for a process ended by
that signal. ``interrupted_by_signals()`` is the simpler form for the short commands
(dataset builds, exports, imports): a SIGTERM is raised as ``RunStopped`` at once, so their
``finally`` blocks release the lock and remove temporary files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Callable, Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunStopped(Exception):
  """A run stopped on a signal (one line); ``exit_status`` is 128 + the signal number."""

  def __init__(self, message: str, signum: int = signal.SIGTERM):
    super().__init__(message)
    self.signum = int(signum)

  @property
  def exit_status(self) -> int:
    return 128 + self.signum


def signal_name(signum: int | None) -> str:
  return signal.Signals(signum).name if signum else "a preemption notice"


def _distributed_sync() -> bool:
  """Whether JAX's preemption sync point decides (``jax.distributed`` initialised, its
  preemption service on)."""
  import jax  # pylint: disable=import-outside-toplevel
  return bool(jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service)


def _jax_sync_point(step: int) -> bool:
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  try:
    return bool(multihost_utils.reached_preemption_sync_point(step))
  except RuntimeError:  # the preemption service is off
    return False


class Watcher:
  """A run's stop request; see the module docstring."""

  def __init__(self, synced: bool):
    self.synced = synced
    self.signum: int | None = None
    self._checks = 0
    self._previous: dict[int, object] = {}

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signum is not None:
      raise KeyboardInterrupt(f"a second {signal_name(signum)}: stopping at once")
    self.signum = signum
    if self.synced:  # SIGINT: hand it to JAX's preemption notifier, which listens for SIGTERM
      os.kill(os.getpid(), signal.SIGTERM)

  def install(self) -> None:
    if threading.current_thread() is not threading.main_thread():
      return  # Python installs handlers from the main thread only: this run is not watched
    for signum in ((signal.SIGINT,) if self.synced else SIGNALS):
      self._previous[signum] = signal.signal(signum, self._handle)

  def restore(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    self._previous.clear()

  def requested(self, step: int | None = None, sync_point: Callable[[int], bool] = _jax_sync_point) -> bool:
    """Whether to stop now. ``step``: the counter every process passes at this check (the
    train step); None counts this watcher's checks. ``sync_point(step)``: JAX's sync point or a
    wrapper of it (orbax's ``CheckpointManager.reached_preemption``)."""
    if not self.synced:
      return self.signum is not None
    if step is None:
      self._checks += 1
      step = self._checks
    return sync_point(step)

  @property
  def cause(self) -> str:
    """What stopped the run, in words."""
    if self.synced:
      return "the preemption sync point of all processes (a process got SIGTERM or SIGINT)"
    return signal_name(self.signum)

  @property
  def exit_signum(self) -> int:
    return self.signum if (self.signum and not self.synced) else signal.SIGTERM

  def check(self, where: str) -> None:
    """Raises ``RunStopped`` (naming ``where``) when a stop is requested."""
    if self.requested():
      raise RunStopped(where, self.exit_signum)


_ACTIVE: list[Watcher] = []


class _DropSyncNote(logging.Filter):
  """Drops orbax's warning at each sync-point check that comes true (a run says it stopped in its own line)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "Reached preemption sync point" not in str(record.msg)


_ORBAX_SYNC_NOTE = _DropSyncNote()


@contextlib.contextmanager
def watch(first_step: int = 0) -> Iterator[Watcher]:
  """Watches for SIGTERM/SIGINT while the block runs; the previous handlers come back after.

  ``first_step``: where the counter of the sync point starts (the pretraining: its newest
  saved step, so that a notice during the restore sets the sync point to the step after it;
  JAX's counter is 0 before its first call, which would set a sync point a resumed run never
  reaches)."""
  watcher = Watcher(_distributed_sync())
  if watcher.synced:
    _jax_sync_point(int(first_step))
  watcher.install()
  _ACTIVE.append(watcher)
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(_ORBAX_SYNC_NOTE)
  try:
    yield watcher
  finally:
    absl_logger.removeFilter(_ORBAX_SYNC_NOTE)
    _ACTIVE.remove(watcher)
    watcher.restore()


def check(where: str) -> None:
  """``RunStopped(where)`` when the innermost watched run is asked to stop; nothing when no
  run is watched (a library call outside a run)."""
  if _ACTIVE:
    _ACTIVE[-1].check(where)


@contextlib.contextmanager
def interrupted_by_signals() -> Iterator[None]:
  """SIGTERM and SIGINT raise ``RunStopped`` at once while the block runs (its ``finally``
  blocks then run: locks released, temporary files removed); previous handlers restored."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def handle(signum, frame):
    del frame
    raise RunStopped(f"stopped by {signal_name(signum)}", signum)

  previous = {signum: signal.signal(signum, handle) for signum in SIGNALS}
  try:
    yield
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
