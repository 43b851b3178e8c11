"""Fault injection: commands killed, stopped by SIGTERM, run twice into one folder, or out of disk space; then rerun.

Kills. For each command (dataset conversion, reference-format export, pretraining through
``launch.py``, each downstream protocol through ``launch.py``: linear, kNN, semi-supervised and
transfer fine-tuning, HiCLR's fine-tuning on a HiCLR pretraining; the import of a PyTorch
reference checkpoint, ``python -m cmd_jax.torch_import``, and the export of a workdir to one,
``--export``) the same command runs once uninterrupted, and once killed with ``kill -9`` at
moments drawn uniformly between 20% and 100% of the uninterrupted run's wall time (a seeded
``random.Random``, so a failure can be replayed; the first 20% is mostly the interpreter
starting) and then rerun to the end: ``KILLS`` moments for conversion, export, pretraining and
the linear protocol, one for the others (each of these is three launches of a Python process
that restores a checkpoint: one kill each keeps the module's time down). A first run that ends
before its kill moment is discarded and the moment drawn again over its own wall time, so
every case kills at least once. The outcome must equal the uninterrupted run's:

- conversion: every record of every built benchmark (name, label, frames, coordinates);
- export: the bytes of every exported file;
- pretraining: every leaf of the final train state (the resumed run continues from its last
  readable checkpoint with the data iterator's position, so it recomputes the same steps);
- protocols: the whole ``results.json`` (accuracies, curves, per-seed entries, the fusion,
  the run's inputs), the ``metrics.jsonl`` records and the test predictions (a killed
  protocol leaves no complete ``results.json``, so the rerun recomputes it from scratch and
  replaces the killed run's log);
- import: ``config.json``, the checkpoint's step and meta and every restored array. The import
  builds the workdir in a temporary sibling folder renamed at the end, so a kill leaves no
  workdir or the complete one; a rerun onto the complete one is refused in one line that says
  so (an accepted end of the rerun). A killed import's temporary folder is removed by the next
  import into that target, which says so (a case of its own: killed the moment the folder
  appears);
- ``--export``: the bytes of the ``.pth.tar``; a kill leaves no file there or the complete one.

A killed run leaves its folder's lock (``cmd_jax.workdir_lock``): the rerun takes it over and
says so in one line (checked whenever a kill left one).

SIGTERM (docs/runs.md#running-on-clusters). CMD's pretraining is stopped twice, once during
its start-up and compilation (the step being compiled runs, is checkpointed, and the run
stops) and once mid-run, while a second pretraining into the same workdir is refused in one
line naming the first; HiCLR's pretraining once mid-run (with its kNN monitor every epoch);
HiCLR's fine-tuning protocol once. Each stop must exit with 143 in one line (a pretraining:
naming the step and its checkpoint, which exists; a protocol: no complete ``results.json``),
release the lock, and the reruns end in the uninterrupted run's state (every leaf) or results.

Full disk. The pretraining, ``--export`` and ``export-npy`` write onto a small tmpfs mounted
inside the test (needs root or CAP_SYS_ADMIN; skipped elsewhere, saying why) with a ballast
file leaving too little space: the command must fail in one line naming the folder and the
lack of space, leave every earlier checkpoint readable and no unfinished one (nor a partial
file where the complete one would be), and, with the ballast removed, the same command must
finish with the uninterrupted run's state or bytes.

Each case prints what happened (``pytest -s`` shows it); the counts in
docs/runs.md#kills-damaged-files-and-mixed-runs follow these cases. Subprocesses run on CPU with
the test session's compilation cache (tests/conftest.py), so the JAX ones compile once.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from pathlib import Path

import jax
import numpy as np
import pytest

from cmd_jax import checkpoint, data, sharding, workdir_lock
from cmd_jax.trainers import pretrain as cp
from tests.conftest import REPO
from tests.test_cmd_pretrain import TINY, tiny_config

LOCK = workdir_lock.LOCK_NAME
TAKEOVER = "taking over the lock of"

KILLS = 2            # kill moments of conversion, export, pretraining and the linear protocol
SEED = 20261203      # the kill moments' random stream


def _env(cache_dir: str | None = None) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
  if cache_dir:
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
  return env


def _run(cmd, env, refusal: str | None = None) -> tuple[float, str]:
  """Runs ``cmd`` to completion; returns its wall time and stderr. ``refusal``: an error line
  that is also an accepted end (a rerun refusing to redo finished work, saying so)."""
  start = time.monotonic()
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  refused = refusal is not None and done.returncode == 1 and refusal in done.stderr
  assert done.returncode == 0 or refused, done.stderr[-3000:]
  return time.monotonic() - start, done.stderr


def _kill_at(cmd, env, delay: float) -> tuple[int | None, float, str]:
  """Starts ``cmd``, sends SIGKILL after ``delay`` seconds; ``(exit code if it ended first, else
  None; its wall time; its stderr)``."""
  with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: a chatty process never blocks
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
      code = proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
      os.kill(proc.pid, signal.SIGKILL)
      proc.wait()
      code = None
    took = time.monotonic() - start
    err.seek(0)
    return code, took, err.read()


def _killed_then_finished(cmd, out, env, full_time: float, rng: random.Random, kills: int = KILLS, *,
                          left=None, refusal: str | None = None, lock: str | None = None) -> list[str]:
  """Kills ``cmd`` (writing ``out``) ``kills`` times at uniform moments of ``full_time``, then
  runs it to the end.

  A first run that ends before its kill moment (the uninterrupted run filled the compilation
  cache, so the later runs are shorter) is discarded with ``out``, and the moment is drawn
  again over that run's own wall time (three discards at most): the first kill always lands
  inside a run. A later run may end first (a rerun after a kill is shorter): that is
  reported. Every run after a kill is a rerun: it must not fail (``refusal``: an accepted
  one-line refusal). ``left()``: a note on what a killed run left (it may assert on it).
  ``lock``: the lock file ``cmd`` holds (default ``<out>/.cmd_jax.lock``); when a kill left it,
  a later run must say that it took it over."""
  lock = lock or os.path.join(out, LOCK)
  outcomes, first, killed, discarded = [], full_time, 0, 0
  locks_left, reruns_said = 0, []
  while len(outcomes) < kills:
    delay = rng.uniform(0.2, 1.0) * full_time  # past most of the interpreter's start-up
    code, took, err = _kill_at(cmd, env, delay)
    assert code in (None, 0) or (refusal is not None and code == 1 and refusal in err), err[-3000:]
    if killed:
      reruns_said.append(err)
    if code is None:
      killed += 1
      locks_left += os.path.exists(lock)
      outcomes.append(f"{delay:.1f}s: killed" + (", left its lock" if os.path.exists(lock) else "")
                      + (f", {left()}" if left else ""))
    elif killed:
      outcomes.append(f"{delay:.1f}s: the rerun {'finished' if code == 0 else 'refused'} first ({took:.1f}s)")
    else:
      print(f"{' '.join(cmd[1:4])}: a run ended before its kill at {delay:.1f}s ({took:.1f}s): discarded")
      discarded += 1
      assert discarded <= 3, "every run ended before its kill moment"
      shutil.rmtree(out)
      full_time = took
  reruns_said.append(_run(cmd, env, refusal)[1])
  assert not os.path.exists(lock), f"the finished run left its lock {lock}"
  if locks_left:
    assert any(TAKEOVER in said for said in reruns_said), ("a kill left the lock and no rerun said it took it over",
                                                           outcomes)
  print(f"{' '.join(cmd[1:4])}: full run {first:.1f}s; kills at {'; '.join(outcomes)}")
  return outcomes


class _Started:
  """A command running in the background, its stdout and stderr in files."""

  def __init__(self, cmd, env, logs, name: str):
    self.out, self.err = logs / f"{name}.out", logs / f"{name}.err"
    with open(self.out, "w") as out, open(self.err, "w") as err:
      self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
    self.start = time.monotonic()

  def text(self) -> str:
    return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

  def wait_for(self, condition, what: str, timeout: float = 300) -> bool:
    """Polls ``condition()`` until it holds (True) or the command ends first (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
      if self.proc.poll() is not None:
        return False
      assert time.monotonic() < deadline, f"no {what} after {timeout:.0f}s: {self.text()[-2000:]}"
      time.sleep(0.05)
    return True

  def sigterm(self, timeout: float = 300) -> tuple[int, float]:
    """Sends SIGTERM; ``(exit status, seconds from the signal to the exit)``."""
    sent = time.monotonic()
    self.proc.send_signal(signal.SIGTERM)
    code = self.proc.wait(timeout=timeout)
    return code, time.monotonic() - sent

  def last_line(self) -> str:
    lines = [line for line in re.split(r"[\r\n]", self.err.read_text(errors="replace")) if line.strip()]
    return lines[-1] if lines else ""


@contextlib.contextmanager
def _small_disk(path, size_mb: int):
  """A tmpfs of ``size_mb`` MiB mounted at ``path`` for the block (unmounted after, lazily if busy);
  skips the test where mounting is not permitted."""
  path.mkdir()
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                        capture_output=True, text=True, check=False)
  if done.returncode:
    pytest.skip(f"the full-disk case mounts a small tmpfs (`mount -t tmpfs`), which needs root or CAP_SYS_ADMIN; "
                f"here: {done.stderr.strip() or done.returncode}")
  try:
    yield path
  finally:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
      subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _fill(disk, leave: int):
  """A ballast file on ``disk`` leaving ``leave`` bytes free; its path (delete it to free the space)."""
  stat = os.statvfs(disk)
  ballast = os.path.join(disk, "ballast")
  size = stat.f_bavail * stat.f_frsize - leave
  assert size > 0, (stat.f_bavail * stat.f_frsize, leave)
  with open(ballast, "wb") as f:
    os.posix_fallocate(f.fileno(), 0, size)
  return ballast


def _disk_bytes(folder) -> int:
  """The space the files under ``folder`` take (allocated blocks)."""
  return sum(os.stat(os.path.join(root, name)).st_blocks * 512 for root, _, names in os.walk(folder)
             for name in names)


def _records(data_dir, name):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  out = {}
  for split in ("train", "val"):
    source = tfds.data_source(name, data_dir=str(data_dir), try_gcs=False)[split]
    for i in range(len(source)):
      r = source[i]
      out[bytes(r["name"])] = (int(r["label"]), int(r["num_frames"]), np.asarray(r["skeleton"]))
  return out


SYNTHETIC = ["--option", "synthetic_subjects=2"]  # 288 clips: seconds of conversion


def test_conversion_killed_and_rerun_builds_the_same_dataset(tmp_path):
  rng = random.Random(SEED)

  def cmd(out):
    return [sys.executable, "-m", "data_prep", "build", "synthetic", "--out", str(out), *SYNTHETIC,
            "--workers", "1", "--quiet"]
  full = _run(cmd(tmp_path / "a"), _env())[0]
  outcomes = _killed_then_finished(cmd(tmp_path / "b"), tmp_path / "b", _env(), full, rng,
                                   lock=os.path.join(tmp_path, "b", "synthetic", LOCK))
  for benchmark in ("xsub", "xview"):
    a, b = _records(tmp_path / "a", f"synthetic/{benchmark}"), _records(tmp_path / "b", f"synthetic/{benchmark}")
    assert sorted(a) == sorted(b), (benchmark, outcomes)
    for name, (label, frames, skeleton) in a.items():
      assert (label, frames) == b[name][:2], name
      np.testing.assert_array_equal(skeleton, b[name][2], err_msg=f"{name} {outcomes}")


def _npy_export_cmd(out) -> list[str]:
  return [sys.executable, "-m", "data_prep", "export-npy", "synthetic", "--benchmark", "xsub", "--out", str(out),
          *SYNTHETIC, "--workers", "1", "--quiet"]


@pytest.fixture(scope="module")
def npy_export(tmp_path_factory) -> tuple[str, float]:
  """The uninterrupted npy export (synthetic xsub) and its wall time."""
  out = tmp_path_factory.mktemp("npy_export") / "a"
  return str(out), _run(_npy_export_cmd(out), _env())[0]


def _same_files(a, b, outcomes) -> None:
  files = sorted(p.name for p in a.iterdir())
  assert files == sorted(p.name for p in b.iterdir()), outcomes
  for name in files:
    assert (a / name).read_bytes() == (b / name).read_bytes(), (name, outcomes)


def test_export_killed_and_rerun_writes_the_same_files(tmp_path, npy_export):
  rng = random.Random(SEED + 1)
  reference, full = npy_export
  outcomes = _killed_then_finished(_npy_export_cmd(tmp_path / "b"), tmp_path / "b", _env(), full, rng)
  _same_files(Path(reference), tmp_path / "b", outcomes)


@pytest.fixture(scope="module")
def tiny_data(tiny_synthetic) -> str:
  return tiny_synthetic


def _launch_cmd(config: str, overrides: dict, workdir) -> list[str]:
  return [sys.executable, "launch.py", "--config", config, *[f"--config.{k}={v}" for k, v in overrides.items()],
          f"--workdir={workdir}"]


PRETRAIN = {**TINY, "num_epochs": 3, "checkpoint_every_steps": 1, "log_every_steps": 1, "keep_checkpoints": 2}
CMD_PRETRAIN = "configs/pretrain_cmd.py:synthetic"


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, tiny_data, compilation_cache_dir) -> tuple[str, float]:
  """The uninterrupted pretraining (``PRETRAIN``: 12 steps) and its wall time: the pretraining
  cases' reference, and the workdir that every protocol case and the import case start from."""
  out = tmp_path_factory.mktemp("pretrain")
  full = _run(_launch_cmd(CMD_PRETRAIN, {**PRETRAIN, "data.data_dir": tiny_data}, out), _env(compilation_cache_dir))
  return str(out), full[0]


@pytest.fixture(scope="module")
def pretrain_dir(pretrained_run) -> str:
  return pretrained_run[0]


def _final_state(workdir, config, steps_per_epoch: int, step: int, outcomes=()):
  """Every leaf of the train state saved at ``step`` in ``workdir``."""
  like = cp.create_train_state(config, data.layout_of(config.data), steps_per_epoch)
  ckpt = checkpoint.Checkpointer(workdir, 2)
  try:
    assert ckpt.latest_step() == step, (workdir, ckpt.all_steps(), outcomes)
    return jax.tree.leaves(jax.device_get(ckpt.restore(step, like, sharding.make_mesh(-1))[0]))
  finally:
    ckpt.close()


def _cmd_config(tiny_data):
  return tiny_config(**{"data.data_dir": tiny_data, **{k: v for k, v in PRETRAIN.items() if k not in TINY}})


def _assert_same_states(a, b, outcomes) -> None:
  assert len(a) == len(b), outcomes
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y, err_msg=str(outcomes))


def test_pretraining_killed_and_rerun_ends_in_the_same_state(tmp_path, tiny_data, pretrained_run,
                                                             compilation_cache_dir):
  rng = random.Random(SEED + 2)
  overrides = {**PRETRAIN, "data.data_dir": tiny_data}
  env = _env(compilation_cache_dir)
  reference, full = pretrained_run
  outcomes = _killed_then_finished(_launch_cmd(CMD_PRETRAIN, overrides, tmp_path / "b"), tmp_path / "b", env, full,
                                   rng)
  config = _cmd_config(tiny_data)
  _assert_same_states(_final_state(reference, config, 4, 12, outcomes),
                      _final_state(tmp_path / "b", config, 4, 12, outcomes), outcomes)


STOPPED = re.compile(r"launch\.py: (\S+): stopped by SIGTERM after step (\d+) of (\d+); (\S+) holds it")


def _stopped_at(run: _Started, code: int, took: float, workdir) -> int:
  """The step a pretraining stopped by SIGTERM says it stopped at; checks the exit status, the
  one line, the checkpoint of that step and the released lock."""
  line = run.last_line()
  match = STOPPED.match(line)
  assert code == 143 and match, (code, run.text()[-3000:])
  step = int(match.group(2))
  assert match.group(4) == os.path.join(os.path.abspath(workdir), "checkpoints", str(step))
  assert checkpoint.saved_steps(workdir)[-1] == step and not os.path.exists(os.path.join(workdir, LOCK))
  assert sum(STOPPED.match(l) is not None for l in re.split(r"[\r\n]", run.text())) == 1, run.text()[-3000:]
  print(f"SIGTERM -> exit {code} after {took:.1f}s, stopped after step {step}: {line}")
  return step


def test_pretraining_stopped_by_sigterm_continues_to_the_same_state_and_a_second_run_is_refused(
    tmp_path, tiny_data, pretrained_run, compilation_cache_dir):
  """CMD's pretraining: SIGTERM during start-up/compilation, then mid-run while a second
  pretraining into the same workdir is refused (in-process: the refusal comes before any
  import or compilation), then the rerun to the end."""
  from cmd_jax.trainers import get_trainer  # pylint: disable=import-outside-toplevel

  env = _env(compilation_cache_dir)
  workdir = tmp_path / "b"
  cmd = _launch_cmd(CMD_PRETRAIN, {**PRETRAIN, "data.data_dir": tiny_data}, workdir)
  first = _Started(cmd, env, tmp_path, "first")
  assert first.wait_for(lambda: "parameters" in first.out.read_text(), "encoder line")  # before restore and compile
  first_step = _stopped_at(first, *first.sigterm(), workdir)
  assert first_step < 12

  second = _Started(cmd, env, tmp_path, "second")
  progressed = second.wait_for(lambda: checkpoint.saved_steps(workdir)[-1] > first_step, "checkpoint after resuming")
  if progressed:
    with pytest.raises(workdir_lock.WorkdirLocked) as refused:
      get_trainer("pretrain")(_cmd_config(tiny_data), workdir)
    message = str(refused.value)
    assert "\n" not in message and f"{workdir} is in use by pretraining on host" in message, message
    assert f"process {second.proc.pid}, started " in message and "launch.py --config " + CMD_PRETRAIN in message
    print(f"second run refused: {message}")
    code, took = second.sigterm()
    if code == 0:
      print("the resumed run finished before its SIGTERM")
    else:
      assert _stopped_at(second, code, took, workdir) > first_step
  _run(cmd, env)
  config = _cmd_config(tiny_data)
  _assert_same_states(_final_state(pretrained_run[0], config, 4, 12), _final_state(workdir, config, 4, 12),
                      "SIGTERM cases")


# ---------------------------------------------------------------------------------------
# HiCLR: pretraining (GRU encoder: the loop does not depend on the encoder, and it compiles
# fast) on 50-frame clips, and its fine-tuning protocol.

@pytest.fixture(scope="module")
def frame50_data(tiny_frame50) -> str:
  return tiny_frame50


HICLR_PRETRAIN = {"model.name": "gru", "model.init": "default", "model.hidden_size": 8, "model.num_layers": 1,
                  "model.embed_dim": 8, "batch_size": 12, "moco.queue_size": 24, "num_epochs": 3,
                  "hiclr.mining_epoch": 1, "evaluator.every_epochs": 1, "evaluator.batch_size": 12,
                  "log_every_steps": 1, "checkpoint_every_steps": 100}   # 3 steps per epoch, 9 in all
HICLR_CONFIG = "configs/pretrain_hiclr.py:synthetic"


@pytest.fixture(scope="module")
def hiclr_pretrained(tmp_path_factory, frame50_data, compilation_cache_dir) -> str:
  out = tmp_path_factory.mktemp("hiclr_pretrain")
  _run(_launch_cmd(HICLR_CONFIG, {**HICLR_PRETRAIN, "data.data_dir": frame50_data}, out), _env(compilation_cache_dir))
  return str(out)


def test_hiclr_pretraining_stopped_by_sigterm_continues_to_the_same_state(tmp_path, frame50_data, hiclr_pretrained,
                                                                          compilation_cache_dir):
  """SIGTERM once the second step is logged: the run stops after the step in progress (the
  kNN monitor at an epoch's end, if the signal came during it, runs to its end first)."""
  from cmd_jax import metrics  # pylint: disable=import-outside-toplevel
  from tests.test_hiclr_pretrain import tiny_config as hiclr_config  # pylint: disable=import-outside-toplevel

  env = _env(compilation_cache_dir)
  workdir = tmp_path / "b"
  cmd = _launch_cmd(HICLR_CONFIG, {**HICLR_PRETRAIN, "data.data_dir": frame50_data}, workdir)
  run = _Started(cmd, env, tmp_path, "hiclr")
  logged = run.wait_for(lambda: any(r["step"] >= 2 for r in metrics.read_metrics(workdir, "train")), "step 2")
  assert logged, run.text()[-3000:]
  step = _stopped_at(run, *run.sigterm(), workdir)
  assert step < 9
  _run(cmd, env)
  config = hiclr_config(frame50_data, encoder="gru")
  _assert_same_states(_final_state(hiclr_pretrained, config, 3, 9), _final_state(workdir, config, 3, 9),
                      f"stopped after step {step}")


HICLR_FINETUNE = "configs/finetune_hiclr.py:synthetic"


def _hiclr_finetune_cmd(init_from, frame50_data, workdir) -> list[str]:
  overrides = {"init_from": init_from, "data.data_dir": frame50_data, "expected_encoder": "", "streams": "joint",
               "num_epochs": 2, "eval_every_epochs": 1, "batch_size": 12, "eval_batch_size": 12,
               "optimizer.warmup_epochs": 1, "optimizer.milestones": "1,", "plots": False}
  return _launch_cmd(HICLR_FINETUNE, overrides, workdir)


@pytest.fixture(scope="module")
def hiclr_finetuned(tmp_path_factory, frame50_data, hiclr_pretrained, compilation_cache_dir) -> tuple[str, float]:
  """HiCLR's fine-tuning protocol (every label, 2 epochs of 3 steps) on the HiCLR pretraining,
  uninterrupted, and its wall time."""
  out = tmp_path_factory.mktemp("hiclr_finetune") / "a"
  took, _ = _run(_hiclr_finetune_cmd(hiclr_pretrained, frame50_data, out), _env(compilation_cache_dir))
  return str(out), took


TRAINED = {"num_epochs": 2, "eval_every_epochs": 1, "batch_size": 12, "optimizer.milestones": "1,"}
# protocol: (config, overrides, kill moments): KILLS for linear, one for the others (see the module docstring).
PROTOCOLS = {
    "linear": ("configs/linear.py:synthetic", TRAINED, KILLS),
    "knn": ("configs/knn.py:synthetic", {}, 1),
    # 12 of the 36 training clips (one batch per epoch), two seeds: two fine-tuning runs in one command.
    "semi": ("configs/semi.py:synthetic", {**TRAINED, "label_ratio": 0.34, "seeds": "0,1"}, 1),
    # pretrained on synthetic xsub, fine-tuned on every label of synthetic xview (48 clips, 4 batches).
    "transfer": ("configs/transfer.py:synthetic_xsub_to_xview", TRAINED, 1),
}


def _metric_records(workdir):
  from cmd_jax import metrics  # pylint: disable=import-outside-toplevel
  return metrics.read_metrics(workdir)


def _protocol_left(workdir, *, killed: bool = False):
  """What a killed protocol run left in ``workdir``, in words.

  A stopped run (SIGTERM) must leave no complete ``results.json``. A ``kill -9`` may land
  after the run wrote its complete ``results.json`` (its last write), while the process
  releases its lock and exits: that is a finished run (``killed=True`` accepts it; the caller
  then compares its results with the uninterrupted run's as for any other outcome)."""

  def note():
    if not os.path.isdir(workdir):
      return "left no workdir"
    names = os.listdir(workdir)
    parts = [f"{len(_metric_records(workdir))} metric records"]
    if any(n.startswith("predictions_") for n in names):
      parts.append("predictions")
    if "results.json" in names:
      complete = "inputs" in json.loads((workdir / "results.json").read_text())
      if complete and killed:
        parts.append("its complete results.json (killed while exiting)")
      else:
        assert not complete, "a stopped run left a complete results.json"
        parts.append("results.json without inputs")
    return "left " + ", ".join(parts)
  return note


def _same_protocol_results(a, b, names, outcomes) -> None:
  """The whole ``results.json``, the metric records and every stream's test predictions."""
  results = [json.loads((run / "results.json").read_text()) for run in (a, b)]
  assert results[0] == results[1], outcomes  # every entry: accuracies, curves, fusion, counts, inputs
  assert _metric_records(a) == _metric_records(b), outcomes
  for name in names:
    file = f"predictions_{name}.npz"
    with np.load(a / file) as x, np.load(b / file) as y:
      for key in ("labels", "predictions", "probabilities"):
        np.testing.assert_array_equal(x[key], y[key], err_msg=f"{name} {key} {outcomes}")


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_protocol_killed_and_rerun_reports_the_same_accuracies(protocol, tmp_path, tiny_data, pretrain_dir,
                                                              compilation_cache_dir):
  rng = random.Random(SEED + 3 + list(PROTOCOLS).index(protocol))  # linear: SEED + 3, as before
  env = _env(compilation_cache_dir)
  config, overrides, kills = PROTOCOLS[protocol]
  overrides = {"init_from": pretrain_dir, "data.data_dir": tiny_data, "eval_batch_size": 12,
               "streams": "joint,motion", "plots": False, **overrides}
  full = _run(_launch_cmd(config, overrides, tmp_path / "a"), env)[0]
  outcomes = _killed_then_finished(_launch_cmd(config, overrides, tmp_path / "b"), tmp_path / "b", env, full, rng,
                                   kills, left=_protocol_left(tmp_path / "b", killed=True))
  results = json.loads((tmp_path / "a" / "results.json").read_text())
  assert results["protocol"] == protocol and results["fusion_name"] == "fusion"
  _same_protocol_results(tmp_path / "a", tmp_path / "b", ("joint", "motion", "fusion"), outcomes)


def test_hiclr_finetune_killed_and_rerun_reports_the_same_accuracies(tmp_path, frame50_data, hiclr_pretrained,
                                                                    hiclr_finetuned, compilation_cache_dir):
  rng = random.Random(SEED + 8)
  reference, full = hiclr_finetuned
  outcomes = _killed_then_finished(_hiclr_finetune_cmd(hiclr_pretrained, frame50_data, tmp_path / "b"),
                                   tmp_path / "b", _env(compilation_cache_dir), full, rng, 1,
                                   left=_protocol_left(tmp_path / "b", killed=True))
  assert json.loads((Path(reference) / "results.json").read_text())["protocol"] == "finetune"
  _same_protocol_results(Path(reference), tmp_path / "b", ("joint",), outcomes)


def test_hiclr_finetune_stopped_by_sigterm_is_redone_by_the_rerun(tmp_path, frame50_data, hiclr_pretrained,
                                                                  hiclr_finetuned, compilation_cache_dir):
  """SIGTERM once the first epoch is logged: a clean stop in one line (exit 143), no complete
  ``results.json``, the lock released; the rerun recomputes the same results."""
  env = _env(compilation_cache_dir)
  workdir = tmp_path / "b"
  cmd = _hiclr_finetune_cmd(hiclr_pretrained, frame50_data, workdir)
  run = _Started(cmd, env, tmp_path, "finetune")
  assert run.wait_for(lambda: _metric_records(workdir), "a metric record"), run.text()[-3000:]
  code, took = run.sigterm()
  line = run.last_line()
  assert code == 143, run.text()[-3000:]
  assert re.match(rf"launch\.py: {re.escape(str(workdir))}: the finetune protocol stopped by SIGTERM \((in epoch "
                  r"\d of 2|while computing features)\); protocols keep no checkpoint", line), line
  left = _protocol_left(workdir)()
  assert not os.path.exists(workdir / LOCK)
  print(f"SIGTERM -> exit {code} after {took:.1f}s, {left}: {line}")
  _run(cmd, env)
  _same_protocol_results(Path(hiclr_finetuned[0]), workdir, ("joint",), left)


# ---------------------------------------------------------------------------------------
# PyTorch import and export


IMPORT_REFUSAL = "already holds a complete import"


def _restored(workdir):
  """``(config.json text, the checkpoint's step, meta and every state leaf)`` of an imported workdir."""
  from cmd_jax import pretrained  # pylint: disable=import-outside-toplevel
  config = pretrained.read_pretrain_config(workdir)
  like = jax.eval_shape(lambda: cp.create_train_state(config, data.layout_of(config.data), 1))
  ckpt = checkpoint.Checkpointer(workdir, 1)
  try:
    step = ckpt.latest_step()
    state, _, meta = ckpt.restore(step, like, sharding.make_mesh(-1))
  finally:
    ckpt.close()
  return (workdir / "config.json").read_text(), step, meta, jax.tree.leaves(jax.device_get(state))


def _same_import(a, b, outcomes) -> None:
  a, b = _restored(a), _restored(b)
  assert a[:3] == b[:3], outcomes
  assert len(a[3]) == len(b[3]), outcomes
  for x, y in zip(a[3], b[3]):
    np.testing.assert_array_equal(x, y, err_msg=str(outcomes))


def _export_cmd(workdir, out) -> list[str]:
  return [sys.executable, "-m", "cmd_jax.torch_import", "--export", str(workdir), str(out)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, pretrain_dir, compilation_cache_dir) -> tuple[Path, float]:
  """The pretraining exported as a reference checkpoint by the command line, and its wall time."""
  out = tmp_path_factory.mktemp("export") / "checkpoint.pth.tar"
  took, _ = _run(_export_cmd(pretrain_dir, out), _import_env(compilation_cache_dir))
  return out, took


def _import_cmd(source, out) -> list[str]:
  return [sys.executable, "-m", "cmd_jax.torch_import", str(source), "--workdir", str(out)]


def _import_env(cache_dir):
  return dict(_env(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")  # its many small programs


@pytest.fixture(scope="module")
def imported(tmp_path_factory, exported, compilation_cache_dir) -> tuple[Path, float]:
  """That file imported (uninterrupted), and the import's wall time."""
  out = tmp_path_factory.mktemp("import") / "a"
  took, _ = _run(_import_cmd(exported[0], out), _import_env(compilation_cache_dir))
  return out, took


def test_torch_import_killed_and_rerun_writes_the_same_workdir(tmp_path, exported, imported, compilation_cache_dir):
  """The pretraining exported as a reference checkpoint, then imported (``python -m
  cmd_jax.torch_import``); one kill. The import builds the workdir in a temporary sibling
  folder and renames it at the end, so a killed import leaves either no workdir or the complete
  one; a rerun onto the complete one is refused, saying so."""
  from cmd_jax.interop import common, convert  # pylint: disable=import-outside-toplevel
  rng = random.Random(SEED + 7)
  source = exported[0]

  def left():
    if not (tmp_path / "b").exists():
      temporary = [p for p in tmp_path.iterdir() if p.name.startswith(".b.importing-")]
      return "left no workdir" + (" (a temporary .b.importing-* folder beside it)" if temporary else "")
    assert (tmp_path / "b" / "config.json").is_file()
    assert checkpoint.saved_steps(tmp_path / "b") == checkpoint.saved_steps(imported[0])
    return "left the complete workdir"

  outcomes = _killed_then_finished(_import_cmd(source, tmp_path / "b"), tmp_path / "b",
                                   _import_env(compilation_cache_dir), imported[1], rng, 1, left=left,
                                   refusal=IMPORT_REFUSAL, lock=workdir_lock.sibling_lock_path(tmp_path / "b"))
  _same_import(imported[0], tmp_path / "b", outcomes)
  assert not [p for p in tmp_path.iterdir() if ".importing-" in p.name]
  with pytest.raises(common.TorchImportError, match=IMPORT_REFUSAL):  # the same import once more
    convert.import_checkpoint(source, tmp_path / "b")
  assert _restored(tmp_path / "b")[:3] == _restored(imported[0])[:3]


def test_a_killed_imports_leftover_folder_is_removed_by_the_next_import(tmp_path, exported, imported,
                                                                        compilation_cache_dir):
  """Killed the moment its temporary ``.<name>.importing-*`` folder appears: the next import
  into that target removes the folder, saying so, and writes the same workdir."""
  env = _import_env(compilation_cache_dir)
  target = tmp_path / "b"
  for attempt in range(3):
    run = _Started(_import_cmd(exported[0], target), env, tmp_path, f"import{attempt}")
    appeared = run.wait_for(lambda: any(".b.importing-" in p.name for p in tmp_path.iterdir()), "temporary folder")
    if run.proc.poll() is None:
      run.proc.kill()
    run.proc.wait()
    if appeared and not target.exists():
      break
    shutil.rmtree(target, ignore_errors=True)  # the import won the race: again
  leftover = [p for p in tmp_path.iterdir() if ".b.importing-" in p.name]
  assert leftover and not target.exists(), "no import was killed while writing its temporary folder"
  _, said = _run(_import_cmd(exported[0], target), env)
  assert f"removed {leftover[0]}, left by an import into {target} that did not finish" in said, said[-2000:]
  assert not [p for p in tmp_path.iterdir() if ".importing-" in p.name or p.name.endswith(".lock")]
  _same_import(imported[0], target, "leftover removed")


def test_export_to_a_reference_checkpoint_killed_and_rerun_writes_the_same_file(tmp_path, pretrain_dir, exported,
                                                                                compilation_cache_dir):
  """``--export``: the file is written under a hidden temporary name and renamed when complete,
  so a kill leaves no file or the complete one; the rerun writes the same bytes."""
  rng = random.Random(SEED + 9)
  reference, full = exported
  out = tmp_path / "out" / "checkpoint.pth.tar"

  def left():
    if not out.exists():
      return "left no file"
    assert out.read_bytes() == reference.read_bytes(), "a killed export left an incomplete file"
    return "left the complete file"

  outcomes = _killed_then_finished(_export_cmd(pretrain_dir, out), tmp_path / "out", _import_env(compilation_cache_dir),
                                   full, rng, 1, left=left, lock=workdir_lock.sibling_lock_path(out))
  assert out.read_bytes() == reference.read_bytes(), outcomes
  assert sorted(p.name for p in out.parent.iterdir()) == ["checkpoint.pth.tar"], outcomes


# ---------------------------------------------------------------------------------------
# A full disk

NO_SPACE = "no space left on the device (ENOSPC)"


def test_pretraining_on_a_full_disk_stops_in_one_line_and_continues_once_space_is_freed(
    tmp_path, tiny_data, pretrained_run, compilation_cache_dir):
  """Room for the first two checkpoints and not the third (``keep_checkpoints`` 2: a third is
  written before the first is deleted)."""
  reference = pretrained_run[0]
  checkpoint_size = _disk_bytes(os.path.join(reference, "checkpoints", "12"))
  env = _env(compilation_cache_dir)
  with _small_disk(tmp_path / "disk", 32) as disk:
    workdir = disk / "w"
    ballast = _fill(disk, int(2.5 * checkpoint_size) + 64 * 1024)
    cmd = _launch_cmd(CMD_PRETRAIN, {**PRETRAIN, "data.data_dir": tiny_data}, workdir)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    lines = [line for line in re.split(r"[\r\n]", done.stderr) if line.strip()]
    assert done.returncode == 1 and lines[-1].startswith(f"launch.py: {workdir}: {NO_SPACE} while writing "), \
        done.stderr[-3000:]
    assert "free space (or raise the quota) and run the same command again" in lines[-1]
    print(f"full disk: {lines[-1]}")
    kept = checkpoint.saved_steps(workdir)
    assert kept and kept[-1] < 12, kept
    assert not [d for d in os.listdir(workdir / "checkpoints") if checkpoint.TMP_MARK in d or not d.isdigit()]
    assert not (workdir / LOCK).exists()
    config = _cmd_config(tiny_data)
    like = cp.create_train_state(config, data.layout_of(config.data), 4)
    ckpt = checkpoint.Checkpointer(workdir, 2)
    try:
      for step in kept:  # every kept checkpoint is readable
        assert ckpt.restore(step, like, sharding.make_mesh(-1))[2]["step"] == step
    finally:
      ckpt.close()
    os.remove(ballast)
    _run(cmd, env)
    _assert_same_states(_final_state(reference, config, 4, 12), _final_state(workdir, config, 4, 12), lines[-1])


def test_export_to_a_full_disk_writes_nothing_and_the_rerun_writes_the_file(tmp_path, pretrain_dir, exported,
                                                                            compilation_cache_dir):
  reference = exported[0]
  env = _import_env(compilation_cache_dir)
  with _small_disk(tmp_path / "disk", 4) as disk:
    ballast = _fill(disk, reference.stat().st_size // 2)
    out = disk / "checkpoint.pth.tar"
    done = subprocess.run(_export_cmd(pretrain_dir, out), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {disk}: {NO_SPACE} while writing "), done.stderr
    print(f"full disk: {done.stderr.strip().splitlines()[-1]}")
    assert sorted(p.name for p in disk.iterdir()) == ["ballast"]  # no file, no partial one, no lock
    os.remove(ballast)
    _run(_export_cmd(pretrain_dir, out), env)
    assert out.read_bytes() == reference.read_bytes()


def test_npy_export_to_a_full_disk_keeps_the_finished_part_and_continues(tmp_path, npy_export):
  """Room for the conversion cache and the train part, not the val part: the data file is
  allocated before it is filled, so this is an error in one line (not a SIGBUS of the memory map)."""
  reference = Path(npy_export[0])
  sizes = {p.name: p.stat().st_size for p in reference.iterdir()}
  clips = sizes["train_data_joint.npy"] + sizes["val_data_joint.npy"]  # the cache holds every clip once, as these
  train = sum(size for name, size in sizes.items() if name.startswith("train_"))
  leave = int(1.02 * clips) + 256 * 1024 + train + sizes["val_data_joint.npy"] // 2
  with _small_disk(tmp_path / "disk", leave // 2 ** 20 + 16) as disk:
    out = disk / "npy"
    ballast = _fill(disk, leave)
    done = subprocess.run(_npy_export_cmd(out), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
                          check=False)
    last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    assert done.returncode == 2 and last.startswith(f"error: {out}: {NO_SPACE} while writing "), done.stderr[-3000:]
    print(f"full disk: {last}")
    assert not list(out.glob("*.partial")) and not (out / LOCK).exists()
    assert (out / "train_data_joint.npy").exists()  # the finished part is kept
    os.remove(ballast)
    _run(_npy_export_cmd(out), _env())
    _same_files(reference, out, last)
