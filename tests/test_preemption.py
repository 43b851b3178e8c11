"""Stopping on SIGTERM/SIGINT (cmd_jax/preemption.py) and recognising a full disk (cmd_jax/disk_full.py).

The signals are sent to this test process itself (``os.kill``): a watched run records the
first one and stops at its next check, a second one stops at once, the previous handlers
come back when the run returns, and the short commands' form raises at once. With
``jax.distributed`` the decision is JAX's sync point (a stand-in callable here: the real one
is checked with two processes in tests/test_distributed.py). The full-disk errors are the
forms the writers raise, written out by hand: Python's ``OSError``, orbax's (TensorStore's)
``ValueError`` text, TFDS's ``RuntimeError`` text, torch's ``RuntimeError`` chained to the
``OSError``, an exception group.
"""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import threading
from unittest import mock

import pytest

from cmd_jax import disk_full, preemption


def test_a_watched_run_records_the_signal_and_stops_at_its_check():
  before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
  with preemption.watch() as stop:
    assert not stop.synced and not stop.requested(3)
    preemption.check("nothing asked yet")  # no stop request: nothing happens
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested(4) and stop.cause == "SIGTERM"
    with pytest.raises(preemption.RunStopped, match="in epoch 2") as err:
      preemption.check("in epoch 2")
    assert err.value.exit_status == 143
    with pytest.raises(KeyboardInterrupt, match="second"):  # a second signal: at once
      os.kill(os.getpid(), signal.SIGINT)
  assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before


def test_sigint_gives_130_and_the_callers_own_handlers_come_back():
  seen = []
  previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
  try:
    with preemption.watch() as stop:
      os.kill(os.getpid(), signal.SIGINT)
      assert stop.requested() and stop.exit_signum == signal.SIGINT
      assert preemption.RunStopped("x", stop.exit_signum).exit_status == 130
    os.kill(os.getpid(), signal.SIGTERM)  # the caller's handler again
    assert seen == [signal.SIGTERM]
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_nested_runs_check_the_innermost_and_outside_a_run_nothing_stops():
  preemption.check("outside any run")
  with preemption.watch():
    with preemption.watch() as inner:
      os.kill(os.getpid(), signal.SIGTERM)
      assert inner.signum == signal.SIGTERM
      with pytest.raises(preemption.RunStopped):
        preemption.check("inner")
  preemption.check("outside again")


def test_the_distributed_path_asks_the_sync_point_and_passes_sigint_on_as_sigterm():
  """With ``jax.distributed`` (``synced``) SIGTERM stays with JAX's notifier (no Python handler
  is installed for it; here a recording handler stands in for the notifier) and SIGINT is
  sent on as a SIGTERM; the decision is the sync point's, at the step all processes pass."""
  seen = []
  previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
  try:
    stop = preemption.Watcher(synced=True)
    stop.install()
    try:
      assert signal.getsignal(signal.SIGTERM) is not stop._handle  # pylint: disable=protected-access
      os.kill(os.getpid(), signal.SIGINT)
      assert seen == [signal.SIGTERM] and stop.signum == signal.SIGINT
      assert not stop.requested(4, sync_point=lambda step: step == 5)  # the flag alone does not decide
      assert stop.requested(5, sync_point=lambda step: step == 5)
      counted = []
      assert not stop.requested(sync_point=counted.append) and not stop.requested(sync_point=counted.append)
      assert counted == [1, 2]  # no step: the watcher counts its checks, the same on every process
      assert stop.exit_signum == signal.SIGTERM and "sync point" in stop.cause
    finally:
      stop.restore()
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_a_run_off_the_main_thread_is_not_watched():
  out = {}

  def run():
    with preemption.watch() as stop:
      out["handlers"] = dict(stop._previous)  # pylint: disable=protected-access
  thread = threading.Thread(target=run)
  thread.start()
  thread.join()
  assert out["handlers"] == {}


def test_short_commands_raise_at_once_and_restore_the_handlers():
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(preemption.RunStopped, match="stopped by SIGTERM") as err:
    with preemption.interrupted_by_signals():
      os.kill(os.getpid(), signal.SIGTERM)
      signal.pause()  # not reached: the handler raises
  assert err.value.exit_status == 143 and signal.getsignal(signal.SIGTERM) == before


def _torch_error() -> RuntimeError:
  try:
    try:
      raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as inner:
      raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from inner
  except RuntimeError as outer:
    return outer


def test_a_full_disk_inside_a_path_objects_write_names_the_file(tmp_path):
  """An OSError raised by ``f.write`` carries no filename (orbax writes its checkpoint metadata
  with ``epath.Path.write_text``, in a worker thread): the file is the path the failing
  frame held, here a pathlib.Path method's ``self`` (an error raised the same way)."""
  target = tmp_path / "w" / "checkpoints" / "8" / "_METADATA"

  class FullFile:
    def __init__(self, *_, **__):
      pass

    def __enter__(self):
      return self

    def __exit__(self, *_):
      return False

    def write(self, _):
      raise OSError(errno.ENOSPC, "No space left on device")

  with mock.patch.object(pathlib.Path, "open", FullFile):
    with pytest.raises(OSError) as raised:
      target.write_text("{}")
  assert raised.value.filename is None  # nothing in the error itself names the file
  wrapped = ValueError("metadata write failed")
  wrapped.__cause__ = raised.value
  assert disk_full.failed_path(wrapped) == str(target)
  reported = disk_full.reported(wrapped, tmp_path / "w", "run the same command again")
  assert str(reported).startswith(f"{tmp_path / 'w'}: no space left on the device (ENOSPC) while writing "
                                  f"{os.path.join('checkpoints', '8', '_METADATA')}; ")


@pytest.mark.parametrize("err,code,path", [
    (OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl"), errno.ENOSPC, "/w/metrics.jsonl"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), errno.EDQUOT, None),
    (ValueError('RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/3.orbax-checkpoint-tmp/state/_sharding":'
                " Failed to write 18254 bytes to file 8: No space left on device [os_error_code='28']"), errno.ENOSPC,
     "/w/checkpoints/3.orbax-checkpoint-tmp/state/_sharding"),
    (RuntimeError('Failed to finalize writing of split "val": write() failed: No space left on device; writing '
                  "/d/synthetic/xsub/incomplete.X/synthetic-val.array_record"), errno.ENOSPC, None),
    (_torch_error(), errno.ENOSPC, None),
    (ExceptionGroup("saves", [ValueError("other"), OSError(errno.ENOSPC, "No space left on device")]),
     errno.ENOSPC, None),
    (ValueError("a bad config"), None, None),
    (OSError(errno.EACCES, "Permission denied"), None, None),
])
def test_full_disk_errors_are_recognised_in_every_wrapping(err, code, path):
  assert disk_full.errno_of(err) == code
  if code is None:
    assert disk_full.reported(err, "/w", "x") is None
    return
  assert disk_full.failed_path(err) == path
  reported = disk_full.reported(err, "/w", "free space and run the same command again")
  assert isinstance(reported, OSError) and reported.errno == code and "\n" not in str(reported)
  assert str(reported).startswith("/w: ") and str(reported).endswith("run the same command again")
  assert ("ENOSPC" if code == errno.ENOSPC else "EDQUOT") in str(reported)
  if path and path.startswith("/w/"):
    assert f"while writing {path[3:]};" in str(reported)  # relative to the folder


# What a checkpoint write that meets a full disk prints on its way, emulated: orbax's writer
# thread logs the failure with its traceback; TensorStore's completion callbacks, once orbax has
# closed its event loop, raise ``RuntimeError('Event loop is closed')`` on foreign threads,
# printed through the C API's ``PyErr_Print`` (``sys.excepthook``; ``PyRun_SimpleString``
# prints an uncaught exception the same way), through ``sys.unraisablehook`` (an exception in
# ``__del__`` goes there as ``PyErr_WriteUnraisable``'s do) or through ``threading.excepthook``;
# at exit, the writes orbax never started are "coroutine ... was never awaited" warnings.
# ``as_is``: all of it is printed around the command's one line (as a full-disk run printed it);
# ``quiet`` (``quiet_write_failures`` at the start, ``quiet_dropped_writes`` at the end): only
# the one line, while a main-thread "Event loop is closed", another error's log record and
# another exception are still printed.
_WRITE_FAILURE_SCRIPT = r"""
import asyncio, ctypes, logging, sys, threading
from cmd_jax import disk_full

logging.basicConfig(format="%(levelname)s %(message)s")
loop = asyncio.new_event_loop()
loop.close()
code = b"import asyncio\nloop = asyncio.new_event_loop()\nloop.close()\nloop.call_soon_threadsafe(print)\n"


class Dropped:
  def __del__(self):
    loop.call_soon_threadsafe(print)


def burst():
  try:
    raise ValueError("RESOURCE_EXHAUSTED: writing: No space left on device [os_error_code='28']")
  except ValueError:
    logging.exception("_SignalingThread.run() raised an exception")
  ctypes.pythonapi.PyRun_SimpleString(code)
  Dropped()
  thread = threading.Thread(target=loop.call_soon_threadsafe, args=(print,))
  thread.start()
  thread.join()


async def never_started():
  pass


quiet = sys.argv[1] == "quiet"
if quiet:
  disk_full.quiet_write_failures()
writer = threading.Thread(target=burst)
writer.start()
writer.join()
if quiet:
  disk_full.quiet_dropped_writes()
print("launch.py: /w: no space left on the device (ENOSPC) while writing x; run the same command again",
      file=sys.stderr, flush=True)
writer = threading.Thread(target=burst)
writer.start()
writer.join()
try:
  raise KeyError("another error")
except KeyError:
  logging.exception("another record")
ctypes.pythonapi.PyRun_SimpleString(code)  # on the main thread
ctypes.pythonapi.PyRun_SimpleString(b"raise ValueError('another error')\n")
coroutine = never_started()
"""


@pytest.mark.parametrize("mode", ["quiet", "as_is"])
def test_write_failures_are_quiet_around_the_one_line(mode):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  done = subprocess.run([sys.executable, "-c", _WRITE_FAILURE_SCRIPT, mode], capture_output=True, text=True,
                        timeout=120, check=False, cwd=pathlib.Path(__file__).resolve().parents[1])
  assert done.returncode == 0, done.stderr
  err = done.stderr
  closed = err.count("RuntimeError: Event loop is closed")
  full = err.count("_SignalingThread.run() raised an exception")
  never_awaited = err.count("was never awaited")
  # printed in both modes: another record, a main-thread "Event loop is closed", another error
  assert "ERROR another record" in err and "KeyError: 'another error'" in err, err
  assert "ValueError: another error" in err, err
  if mode == "as_is":  # three kinds of "Event loop is closed" twice, then once on the main thread
    assert (closed, full, never_awaited) == (7, 2, 1), err
    assert "Exception ignored" in err and "Exception in thread" in err, err
  else:
    assert (closed, full, never_awaited) == (1, 0, 0), err
    assert "Exception ignored" not in err and "Exception in thread" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("launch.py: /w: no space left on the device"), err  # nothing before it
