"""One run per folder at a time: a lock file that a second run refuses on, and a dead run's lock taken over.

Every command that writes a folder holds this lock for as long as it writes there: the
pretraining and every protocol on their workdir, ``python -m data_prep build`` on
``<out>/<dataset>``, ``export-npy`` on its ``--out``, ``python -m cmd_jax.torch_import`` on its
target (import and ``--export``: a lock file beside the target, which appears only by a rename
at the end). docs/runs.md#running-on-clusters says what it does and does not protect.

The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local file systems, NFSv3 and
v4, Lustre: exactly one creator wins) holding a JSON record of its holder: host, process id,
start time, command, the boot id, the process's start tick and PID namespace (to tell a live
process from a reused pid), a random token. POSIX ``fcntl``/``flock`` locks are not used:
over NFSv3 they depend on lockd/statd and become silently host-local with ``nolock`` (Lustre:
``localflock``), object-store mounts (gcsfuse) do not have them, and the NFSv3 lock of a lost
client can outlive it. While it runs, the holder touches the file every ``HEARTBEAT_SECONDS``
(``os.utime`` with no time: on NFS the server's clock sets it) from a daemon thread.

Another run that finds the file reads the record and decides whether its holder is gone:

- same host, same boot and PID namespace: gone when its process no longer runs (or is a
  zombie, or the pid now belongs to a process started at another tick); at once, so the rerun
  after a ``kill -9`` goes ahead;
- same host name, another boot: gone (the machine restarted);
- another host (or PID namespace): gone when the file has not been touched for
  ``STALE_AFTER_SECONDS``, measured on the file system's clock (the age of the lock's mtime
  against a probe file created beside it), so client clock skew does not count;
- an empty or unreadable record (a holder that died between creating and writing it): by
  its age, as for another host.

A live holder: the new run refuses at once, in one line naming the holder (``WorkdirLocked``).
A gone holder: its file is renamed aside (atomic: of two runs taking over at once, one
renames it), checked to be the record judged stale (else put back), removed, and the lock
created again; one line says so. ``release`` removes the file only if it still holds this
run's token, and the folder too when the lock created it and nothing else was written.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Callable

from cmd_jax.errors import ConfigError

LOCK_NAME = ".cmd_jax.lock"
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 180.0   # six heartbeats missed: a lost host's lock is taken over after this


class WorkdirLocked(ConfigError):
  """Another run holds the folder's lock (one line naming it)."""


def sibling_lock_path(target: str | os.PathLike) -> str:
  """``<parent>/.<name>.lock``: the lock of a target that appears only complete, by a rename."""
  target = os.path.abspath(os.fspath(target))
  return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.lock")


def _read_text(path: str) -> str | None:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except (OSError, UnicodeDecodeError):
    return None


def _boot_id() -> str | None:
  text = _read_text("/proc/sys/kernel/random/boot_id")
  return text.strip() if text else None


def _pid_namespace() -> str | None:
  try:
    return os.readlink("/proc/self/ns/pid")
  except OSError:
    return None


def _process_start(pid: int) -> tuple[int | None, str | None]:
  """``(start tick since boot, state letter)`` of a process from ``/proc/<pid>/stat``; Nones
  where there is no /proc (the state is then unknown)."""
  text = _read_text(f"/proc/{pid}/stat")
  if not text or ")" not in text:
    return None, None
  fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
  try:
    return int(fields[19]), fields[0]
  except (IndexError, ValueError):
    return None, None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # another user's live process
  return True


def own_record(what: str) -> dict[str, Any]:
  """The record a lock holds: who holds it and how to tell when it is gone."""
  start, _ = _process_start(os.getpid())
  return {"what": what, "host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "command": " ".join([os.path.basename(sys.executable), *sys.argv])[:500],
          "boot_id": _boot_id(), "pid_namespace": _pid_namespace(), "pid_start": start,
          "token": uuid.uuid4().hex, "heartbeat_seconds": HEARTBEAT_SECONDS}


def describe(record: dict[str, Any] | None) -> str:
  """A holder in words: ``host H, process P, started T: COMMAND``."""
  if not record:
    return "a run whose lock record is empty or unreadable (being written, or its writer died)"
  return (f"{record.get('what', 'a run')} on host {record.get('host')}, process {record.get('pid')}, started "
          f"{record.get('started')}: {record.get('command')}")


@dataclasses.dataclass
class Found:
  """A lock file as read: its record (None if empty or damaged) and its age on the file system's clock."""
  record: dict[str, Any] | None
  age: float


def _fs_now(folder: str) -> float:
  """The file system's current time: the mtime of a probe file created in ``folder`` (on NFS,
  the server's clock, the clock that stamps the heartbeats)."""
  probe = os.path.join(folder, f"{LOCK_NAME}.probe-{socket.gethostname()}-{os.getpid()}")
  fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
  try:
    return os.fstat(fd).st_mtime
  finally:
    os.close(fd)
    try:
      os.unlink(probe)
    except OSError:
      pass


def read_lock(path: str) -> Found | None:
  """The lock at ``path`` (None when there is none). Opening the file revalidates NFS's
  cached attributes (close-to-open consistency), so the mtime read is the server's."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except FileNotFoundError:
    return None
  try:
    mtime = os.fstat(fd).st_mtime
    with os.fdopen(fd, "r", encoding="utf-8", closefd=False) as f:
      text = f.read()
  except (OSError, UnicodeDecodeError):
    text = ""
  finally:
    os.close(fd)
  try:
    record = json.loads(text)
    record = record if isinstance(record, dict) and record.get("token") else None
  except ValueError:
    record = None
  try:
    now = _fs_now(os.path.dirname(path))
  except OSError:
    now = time.time()
  return Found(record, max(0.0, now - mtime))


def stale_reason(found: Found, stale_after: float = STALE_AFTER_SECONDS) -> str | None:
  """Why the holder of ``found`` is gone (its lock may be taken over), or None if it may be alive."""
  record = found.record
  if record is None:
    return (f"its record is empty or unreadable and {found.age:.0f} s old" if found.age > stale_after else None)
  same_host = record.get("host") == socket.gethostname()
  if same_host and record.get("boot_id") and _boot_id() and record["boot_id"] != _boot_id():
    return "its host has restarted since"
  if same_host and record.get("pid_namespace") == _pid_namespace():
    pid = int(record.get("pid", -1))
    if pid <= 0 or not _pid_alive(pid):
      return f"process {pid} no longer runs"
    start, state = _process_start(pid)
    if state == "Z":
      return f"process {pid} has ended (a zombie)"
    if start is not None and record.get("pid_start") is not None and start != record["pid_start"]:
      return f"process {pid} is now another program (started at another time)"
    return None
  if found.age > stale_after:
    return f"its heartbeat stopped {found.age:.0f} s ago (more than {stale_after:.0f} s)"
  return None


def _say(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


class WorkdirLock:
  """The lock of ``folder`` (``<folder>/.cmd_jax.lock``, or ``lock_path``); a context manager.

  ``what`` names the holder in other runs' messages ("pretraining", "the linear protocol",
  ...). ``wait_seconds > 0``: a live holder is waited for (polling) instead of refused.
  """

  def __init__(self, folder: str | os.PathLike, what: str, *, lock_path: str | None = None,
               wait_seconds: float = 0.0, heartbeat: float = HEARTBEAT_SECONDS,
               stale_after: float = STALE_AFTER_SECONDS, say: Callable[[str], None] = _say):
    self.folder = os.path.abspath(os.fspath(folder))
    self.path = lock_path or os.path.join(self.folder, LOCK_NAME)
    self.what, self.wait_seconds, self.heartbeat, self.stale_after, self.say = (
        what, wait_seconds, heartbeat, stale_after, say)
    self.record: dict[str, Any] | None = None
    self._made_folder = False
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> "WorkdirLock":
    """Takes the lock; ``WorkdirLocked`` (one line) when a live run holds it."""
    lock_dir = os.path.dirname(self.path)
    if not os.path.isdir(lock_dir):
      os.makedirs(lock_dir, exist_ok=True)
      self._made_folder = lock_dir == self.folder
    deadline = time.monotonic() + self.wait_seconds
    attempts = 0
    while True:
      if self._create():
        self._start_heartbeat()
        return self
      found = read_lock(self.path)
      if found is None:
        continue  # released in between: try again
      reason = stale_reason(found, self.stale_after)
      if reason is None:
        if time.monotonic() < deadline:
          time.sleep(min(2.0, self.heartbeat))
          continue
        self._undo_folder()
        raise WorkdirLocked(f"{self.folder} is in use by {describe(found.record)}; nothing was changed: wait for "
                            f"that run to end, or use another folder (its lock: {self.path})")
      attempts += 1
      if attempts > 5:
        self._undo_folder()
        raise WorkdirLocked(f"{self.folder}: could not take over the lock {self.path} (other runs are taking it "
                            "at the same moment); run the command again")
      if self._take_over(found):
        self.say(f"{self.folder}: taking over the lock of {describe(found.record)}: {reason}")

  def _create(self) -> bool:
    """Creates the lock file with this run's record; False if it exists."""
    record = own_record(self.what)
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    try:
      os.write(fd, json.dumps(record, indent=1).encode())
      os.fsync(fd)
    except BaseException:
      os.close(fd)
      os.unlink(self.path)
      self._undo_folder()
      raise
    os.close(fd)
    self.record = record
    return True

  def _take_over(self, found: Found) -> bool:
    """Moves a gone holder's lock aside and removes it; False when another run moved or
    replaced it first (the caller then reads the lock again)."""
    aside = f"{self.path}.stale-{uuid.uuid4().hex[:12]}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return False
    moved = read_lock(aside)
    judged = (found.record or {}).get("token")
    if moved is not None and (moved.record or {}).get("token") != judged:
      # Another run took it over and created its own between our read and our rename: put it back.
      try:
        os.link(aside, self.path)
        os.unlink(aside)
      except FileExistsError:
        os.unlink(aside)
      except OSError:  # no hard links on this file system
        if not os.path.exists(self.path):
          os.rename(aside, self.path)
      return False
    os.unlink(aside)
    return True

  def _start_heartbeat(self) -> None:
    self._stop.clear()
    self._thread = threading.Thread(target=self._beat, name=f"lock heartbeat {self.folder}", daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    warned = False
    while not self._stop.wait(self.heartbeat):
      found = read_lock(self.path)
      if found is None or (found.record or {}).get("token") != self.record["token"]:
        if not warned:
          self.say(f"{self.folder}: this run's lock was taken over by {describe(found.record if found else None)}; "
                   "two runs may now be writing this folder")
          warned = True
        continue
      try:
        os.utime(self.path)  # no time given: the file system's clock (the server's on NFS)
      except OSError:
        pass  # a passing network error: the next beat tries again

  def release(self) -> None:
    """Removes the lock if it is still this run's (and the folder the lock alone created)."""
    if self.record is None:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    found = read_lock(self.path)
    if found is not None and (found.record or {}).get("token") == self.record["token"]:
      try:
        os.unlink(self.path)
      except FileNotFoundError:
        pass
    self.record = None
    self._undo_folder()

  def _undo_folder(self) -> None:
    """Removes the folder this lock created when nothing else was written into it."""
    if self._made_folder:
      try:
        os.rmdir(self.folder)
      except OSError:
        pass
      self._made_folder = False


class _Nothing:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return None


def hold_across_processes(folder: str | os.PathLike, what: str):
  """The lock of ``folder`` for a JAX run: on several processes (one shared workdir) only
  process 0 takes it, and every process learns the outcome (a broadcast) so that all stop
  with a refusal. Taken when called; a context manager that releases it."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return _Held(WorkdirLock(folder, what).acquire())
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = WorkdirLock(folder, f"{what} (process 0 of {jax.process_count()})").acquire()
    except Exception as err:  # pylint: disable=broad-except  # the others must hear of it, not wait
      error = err
  ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
  if error is not None:
    raise error
  if not ok:
    raise WorkdirLocked(f"{os.path.abspath(os.fspath(folder))}: process 0 could not take the lock (it says why); "
                        "nothing was changed")
  return _Held(lock) if lock is not None else _Nothing()


class _Held:
  """An acquired lock as a context manager that releases it."""

  def __init__(self, lock: WorkdirLock):
    self.lock = lock

  def __enter__(self):
    return self.lock

  def __exit__(self, *exc):
    self.lock.release()
