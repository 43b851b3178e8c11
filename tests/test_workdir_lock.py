"""The lock every writing command holds on its folder (cmd_jax/workdir_lock.py).

Hand-made lock files stand for the other runs: a live one (this test process's own pid and
start tick), a dead one (the pid of a child that has ended and been reaped), a zombie (a child
that has ended and not been reaped), a reused pid (this process's pid with another start
tick), another boot, another PID namespace, another host whose heartbeat is fresh or old (the
file's mtime set back), an empty record. Each must be refused or taken over as
docs/runs.md#running-on-clusters says, with nothing changed on a refusal. Then each command
that writes a folder is refused while the lock is held: the pretraining, a protocol, a
dataset build, an npy export, a PyTorch import and export.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from cmd_jax import workdir_lock
from cmd_jax.workdir_lock import LOCK_NAME, WorkdirLock, WorkdirLocked
from tests.conftest import folder_digest


def _write_record(folder, age: float = 0.0, **fields) -> str:
  """A lock file in ``folder`` holding this process's record with ``fields`` replaced, its
  mtime ``age`` seconds in the past."""
  os.makedirs(folder, exist_ok=True)
  record = dict(workdir_lock.own_record("pretraining"), **fields)
  path = os.path.join(folder, LOCK_NAME)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(record, f)
  if age:
    then = time.time() - age
    os.utime(path, (then, then))
  return path


def _ended_pid() -> int:
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  child.wait()
  return child.pid


def _take(folder, **kwargs) -> tuple[WorkdirLock, list[str]]:
  said = []
  lock = WorkdirLock(folder, "the test", say=said.append, **kwargs).acquire()
  return lock, said


def test_acquire_writes_the_holder_and_release_removes_it(tmp_path):
  folder = tmp_path / "run"
  lock, said = _take(folder)
  record = json.loads((folder / LOCK_NAME).read_text())
  assert record["pid"] == os.getpid() and record["what"] == "the test" and record["host"]
  assert record["command"] and record["started"] and said == []
  (folder / "metrics.jsonl").write_text("{}\n")
  lock.release()
  assert sorted(os.listdir(folder)) == ["metrics.jsonl"]  # the lock's file gone, the run's kept


def test_a_folder_the_lock_created_and_nothing_else_wrote_is_removed(tmp_path):
  lock, _ = _take(tmp_path / "new")
  assert (tmp_path / "new" / LOCK_NAME).exists()
  lock.release()
  assert not (tmp_path / "new").exists()


def test_a_live_holder_refuses_in_one_line_naming_it_and_nothing_changes(tmp_path):
  held, _ = _take(tmp_path / "run")
  try:
    before = folder_digest(tmp_path / "run")
    with pytest.raises(WorkdirLocked) as err:
      _take(tmp_path / "run")
    message = str(err.value)
    assert "\n" not in message
    for needle in (str(tmp_path / "run"), "is in use by the test", f"process {os.getpid()}",
                   held.record["host"], held.record["started"], held.record["command"][:40]):
      assert needle in message, (needle, message)
    assert folder_digest(tmp_path / "run") == before
  finally:
    held.release()


@pytest.mark.parametrize("case", ["ended", "zombie", "reused pid", "another boot", "old heartbeat", "old empty"])
def test_a_gone_holder_is_taken_over_saying_why(tmp_path, case):
  zombie = None
  if case == "ended":
    path = _write_record(tmp_path, pid=_ended_pid())
    why = "no longer runs"
  elif case == "zombie":
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    while workdir_lock._process_start(zombie.pid)[1] != "Z":  # pylint: disable=protected-access
      time.sleep(0.01)
    path = _write_record(tmp_path, pid=zombie.pid, pid_start=workdir_lock._process_start(zombie.pid)[0])  # pylint: disable=protected-access
    why = "a zombie"
  elif case == "reused pid":
    path = _write_record(tmp_path, pid_start=workdir_lock.own_record("x")["pid_start"] - 1)
    why = "another program"
  elif case == "another boot":
    path = _write_record(tmp_path, boot_id="another-boot")
    why = "restarted"
  elif case == "old heartbeat":
    path = _write_record(tmp_path, age=workdir_lock.STALE_AFTER_SECONDS + 60, host="another-host")
    why = "heartbeat stopped"
  else:
    path = os.path.join(tmp_path, LOCK_NAME)
    open(path, "w").close()
    then = time.time() - workdir_lock.STALE_AFTER_SECONDS - 60
    os.utime(path, (then, then))
    why = "empty or unreadable"
  try:
    old = open(path, encoding="utf-8").read()
    lock, said = _take(tmp_path)
    try:
      assert len(said) == 1 and "taking over the lock" in said[0] and why in said[0], said
      assert json.loads(open(path, encoding="utf-8").read())["token"] == lock.record["token"] != old
      assert [n for n in os.listdir(tmp_path) if n.startswith(LOCK_NAME)] == [LOCK_NAME]  # nothing set aside left
    finally:
      lock.release()
  finally:
    if zombie is not None:
      zombie.wait()


@pytest.mark.parametrize("case", ["another host", "another PID namespace", "young empty"])
def test_a_holder_that_may_be_alive_elsewhere_is_refused(tmp_path, case):
  if case == "another host":
    _write_record(tmp_path, host="another-host", pid=_ended_pid())
  elif case == "another PID namespace":  # the same host name, a pid this namespace cannot see
    _write_record(tmp_path, pid_namespace="pid:[1]", pid=_ended_pid())
  else:
    open(os.path.join(tmp_path, LOCK_NAME), "w").close()
  with pytest.raises(WorkdirLocked, match="is in use by"):
    _take(tmp_path)


def test_the_heartbeat_keeps_the_file_fresh_and_release_leaves_another_runs_lock(tmp_path):
  lock, _ = _take(tmp_path, heartbeat=0.05)
  path = os.path.join(tmp_path, LOCK_NAME)
  then = time.time() - 1000
  os.utime(path, (then, then))
  deadline = time.time() + 10
  while workdir_lock.read_lock(path).age > 100 and time.time() < deadline:
    time.sleep(0.05)
  assert workdir_lock.read_lock(path).age < 100  # touched again
  record = dict(lock.record, token="another-run")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(record, f)
  lock.release()
  assert json.loads(open(path, encoding="utf-8").read())["token"] == "another-run"


def test_a_take_over_that_finds_a_new_lock_puts_it_back(tmp_path):
  """Two runs take over the same gone lock: the one that renames the other's new lock aside
  (not the record it judged) puts it back and does not remove it."""
  path = _write_record(tmp_path, pid=_ended_pid())
  judged = workdir_lock.read_lock(path)
  _write_record(tmp_path)  # meanwhile, another run took it over: a live record
  live = open(path, encoding="utf-8").read()
  lock = WorkdirLock(tmp_path, "the test")
  assert not lock._take_over(judged)  # pylint: disable=protected-access
  assert open(path, encoding="utf-8").read() == live
  assert [n for n in os.listdir(tmp_path) if n.startswith(LOCK_NAME)] == [LOCK_NAME]


def test_waiting_for_a_holder_takes_the_lock_when_it_ends(tmp_path):
  held, _ = _take(tmp_path)
  threading.Timer(0.3, held.release).start()
  lock, said = _take(tmp_path, wait_seconds=30, heartbeat=0.05)
  assert said == []
  lock.release()


def test_sibling_lock_path():
  assert workdir_lock.sibling_lock_path("/a/b/out.pth.tar") == "/a/b/.out.pth.tar.lock"


# ---------------------------------------------------------------------------------------
# Every writing command refuses a folder whose lock is held (here: by this test process).
# ---------------------------------------------------------------------------------------

def test_every_writing_command_refuses_a_held_folder(tmp_path):
  import data_prep  # pylint: disable=import-outside-toplevel
  from cmd_jax.interop import convert  # pylint: disable=import-outside-toplevel
  from cmd_jax.trainers import get_trainer  # pylint: disable=import-outside-toplevel
  from configs import linear as linear_config  # pylint: disable=import-outside-toplevel
  from tests.test_cmd_pretrain import tiny_config  # pylint: disable=import-outside-toplevel

  def refused(folder, call, lock_path=None):
    held = WorkdirLock(folder, "another run", lock_path=lock_path).acquire()
    try:
      before = folder_digest(folder) if os.path.isdir(folder) else None
      with pytest.raises(WorkdirLocked, match="is in use by another run"):
        call()
      assert (folder_digest(folder) if os.path.isdir(folder) else None) == before
    finally:
      held.release()

  refused(tmp_path / "pretrain", lambda: get_trainer("pretrain")(tiny_config(), tmp_path / "pretrain"))
  config = linear_config.get_config("synthetic")
  with config.unlocked():
    config.init_from = str(tmp_path / "pretrain")
  refused(tmp_path / "linear", lambda: get_trainer("linear")(config, tmp_path / "linear"))
  refused(tmp_path / "data" / "synthetic", lambda: data_prep.build_dataset("synthetic", tmp_path / "data",
                                                                           progress=False))
  refused(tmp_path / "npy", lambda: data_prep.export_npy("synthetic", "xsub", tmp_path / "npy", progress=False))
  target = tmp_path / "imported"
  refused(target, lambda: convert.import_checkpoint(tmp_path / "x.pth.tar", target),
          lock_path=workdir_lock.sibling_lock_path(target))
  out = tmp_path / "out.pth.tar"
  refused(out, lambda: convert.export_checkpoint(tmp_path / "pretrain", out),
          lock_path=workdir_lock.sibling_lock_path(out))
