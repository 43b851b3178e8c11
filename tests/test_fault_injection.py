"""Fault injection: every long-running command killed with SIGKILL at random moments, then rerun.

For each command (dataset conversion, reference-format export, pretraining through
``launch.py``, each downstream protocol through ``launch.py``: linear, kNN, semi-supervised and
transfer fine-tuning; the import of a PyTorch reference checkpoint, ``python -m
cmd_jax.torch_import``) the same command runs once uninterrupted, and once killed with ``kill
-9`` at moments drawn uniformly between 20% and 100% of the uninterrupted run's wall time (a
seeded ``random.Random``, so a failure can be replayed; the first 20% is mostly the
interpreter starting) and then rerun to the end: ``KILLS`` moments for conversion, export,
pretraining and the linear protocol, one for kNN, semi, transfer and the import (each of
these is three launches of a Python process that restores a checkpoint: one kill each keeps
the module's time down). A first run that ends before its kill moment is discarded and the
moment drawn again over its own wall time, so every case kills at least once. The outcome
must equal the uninterrupted run's:

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
  so (an accepted end of the rerun).

Each case prints when the kills came and what the killed run left (``pytest -s`` shows it);
the count of cases in docs/runs.md#kills-damaged-files-and-mixed-runs is ``KILLS`` x 4
commands + 4 (one kill each). Subprocesses run on CPU with the module's compilation cache, so
the JAX ones compile once.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from cmd_jax import checkpoint, data, sharding
from cmd_jax.trainers import pretrain as cp
from tests.conftest import REPO, build_tiny_synthetic
from tests.test_cmd_pretrain import TINY, tiny_config

KILLS = 2            # kill moments of conversion, export, pretraining and the linear protocol
SEED = 20261203      # the kill moments' random stream


@pytest.fixture(scope="module", autouse=True)
def _module_compilation_cache(compilation_cache_dir):
  return compilation_cache_dir


def _env(cache_dir: str | None = None) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  if cache_dir:
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
  return env


def _run(cmd, env, refusal: str | None = None) -> float:
  """Runs ``cmd`` to completion; returns its wall time. ``refusal``: an error line that is also
  an accepted end (a rerun refusing to redo finished work, saying so)."""
  start = time.monotonic()
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  refused = refusal is not None and done.returncode == 1 and refusal in done.stderr
  assert done.returncode == 0 or refused, done.stderr[-3000:]
  return time.monotonic() - start


def _kill_at(cmd, env, delay: float) -> tuple[int | None, float, str]:
  """Starts ``cmd``, sends SIGKILL after ``delay`` seconds; ``(exit code if it ended first, else
  None; its wall time; the end of its stderr)``."""
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
    return code, took, err.read()[-3000:]


def _killed_then_finished(cmd, out, env, full_time: float, rng: random.Random, kills: int = KILLS, *,
                          left=None, refusal: str | None = None) -> list[str]:
  """Kills ``cmd`` (writing ``out``) ``kills`` times at uniform moments of ``full_time``, then
  runs it to the end.

  A first run that ends before its kill moment (the uninterrupted run filled the compilation
  cache, so the later runs are shorter) is discarded with ``out``, and the moment is drawn
  again over that run's own wall time (three discards at most): the first kill always lands
  inside a run. A later run may end first (a rerun after a kill is shorter): that is
  reported. Every run after a kill is a rerun: it must not fail (``refusal``: an accepted
  one-line refusal). ``left()``: a note on what a killed run left (it may assert on it)."""
  outcomes, first, killed, discarded = [], full_time, 0, 0
  while len(outcomes) < kills:
    delay = rng.uniform(0.2, 1.0) * full_time  # past most of the interpreter's start-up
    code, took, err = _kill_at(cmd, env, delay)
    assert code in (None, 0) or (refusal is not None and code == 1 and refusal in err), err
    if code is None:
      killed += 1
      outcomes.append(f"{delay:.1f}s: killed" + (f", {left()}" if left else ""))
    elif killed:
      outcomes.append(f"{delay:.1f}s: the rerun {'finished' if code == 0 else 'refused'} first ({took:.1f}s)")
    else:
      print(f"{' '.join(cmd[1:4])}: a run ended before its kill at {delay:.1f}s ({took:.1f}s): discarded")
      discarded += 1
      assert discarded <= 3, "every run ended before its kill moment"
      shutil.rmtree(out)
      full_time = took
  _run(cmd, env, refusal)
  print(f"{' '.join(cmd[1:4])}: full run {first:.1f}s; kills at {'; '.join(outcomes)}")
  return outcomes


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
  full = _run(cmd(tmp_path / "a"), _env())
  outcomes = _killed_then_finished(cmd(tmp_path / "b"), tmp_path / "b", _env(), full, rng)
  for benchmark in ("xsub", "xview"):
    a, b = _records(tmp_path / "a", f"synthetic/{benchmark}"), _records(tmp_path / "b", f"synthetic/{benchmark}")
    assert sorted(a) == sorted(b), (benchmark, outcomes)
    for name, (label, frames, skeleton) in a.items():
      assert (label, frames) == b[name][:2], name
      np.testing.assert_array_equal(skeleton, b[name][2], err_msg=f"{name} {outcomes}")


def test_export_killed_and_rerun_writes_the_same_files(tmp_path):
  rng = random.Random(SEED + 1)

  def cmd(out):
    return [sys.executable, "-m", "data_prep", "export-npy", "synthetic", "--benchmark", "xsub", "--out", str(out),
            *SYNTHETIC, "--workers", "1", "--quiet"]
  full = _run(cmd(tmp_path / "a"), _env())
  outcomes = _killed_then_finished(cmd(tmp_path / "b"), tmp_path / "b", _env(), full, rng)
  files = sorted(p.name for p in (tmp_path / "a").iterdir())
  assert files == sorted(p.name for p in (tmp_path / "b").iterdir()), outcomes
  for name in files:
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), (name, outcomes)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
  return build_tiny_synthetic(tmp_path_factory.mktemp("data"))


def _launch_cmd(config: str, overrides: dict, workdir) -> list[str]:
  return [sys.executable, "launch.py", "--config", config, *[f"--config.{k}={v}" for k, v in overrides.items()],
          f"--workdir={workdir}"]


PRETRAIN = {**TINY, "num_epochs": 3, "checkpoint_every_steps": 1, "log_every_steps": 1, "keep_checkpoints": 2}


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, tiny_data, compilation_cache_dir) -> tuple[str, float]:
  """The uninterrupted pretraining (``PRETRAIN``: 12 steps) and its wall time: the pretraining
  case's reference, and the workdir that every protocol case and the import case start from."""
  out = tmp_path_factory.mktemp("pretrain")
  full = _run(_launch_cmd("configs/pretrain_cmd.py:synthetic", {**PRETRAIN, "data.data_dir": tiny_data}, out),
              _env(compilation_cache_dir))
  return str(out), full


@pytest.fixture(scope="module")
def pretrain_dir(pretrained_run) -> str:
  return pretrained_run[0]


def test_pretraining_killed_and_rerun_ends_in_the_same_state(tmp_path, tiny_data, pretrained_run,
                                                             compilation_cache_dir):
  rng = random.Random(SEED + 2)
  overrides = {**PRETRAIN, "data.data_dir": tiny_data}
  env = _env(compilation_cache_dir)
  reference, full = pretrained_run
  outcomes = _killed_then_finished(_launch_cmd("configs/pretrain_cmd.py:synthetic", overrides, tmp_path / "b"),
                                   tmp_path / "b", env, full, rng)
  config = tiny_config(**{"data.data_dir": tiny_data, **{k: v for k, v in PRETRAIN.items() if k not in TINY}})
  like = cp.create_train_state(config, data.layout_of(config.data), 4)
  states = []
  for run in (reference, tmp_path / "b"):
    ckpt = checkpoint.Checkpointer(run, 2)
    try:
      assert ckpt.latest_step() == 12, (run, outcomes)
      states.append(jax.device_get(ckpt.restore(12, like, sharding.make_mesh(-1))[0]))
    finally:
      ckpt.close()
  for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
    np.testing.assert_array_equal(a, b, err_msg=str(outcomes))


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


def _protocol_left(workdir):
  """What a killed protocol run left in ``workdir``, in words."""

  def note():
    if not os.path.isdir(workdir):
      return "left no workdir"
    names = os.listdir(workdir)
    parts = [f"{len(_metric_records(workdir))} metric records"]
    if any(n.startswith("predictions_") for n in names):
      parts.append("predictions")
    if "results.json" in names:
      complete = "inputs" in json.loads((workdir / "results.json").read_text())
      parts.append("the complete results.json" if complete else "results.json without inputs")
    return "left " + ", ".join(parts)
  return note


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_protocol_killed_and_rerun_reports_the_same_accuracies(protocol, tmp_path, tiny_data, pretrain_dir,
                                                              compilation_cache_dir):
  rng = random.Random(SEED + 3 + list(PROTOCOLS).index(protocol))  # linear: SEED + 3, as before
  env = _env(compilation_cache_dir)
  config, overrides, kills = PROTOCOLS[protocol]
  overrides = {"init_from": pretrain_dir, "data.data_dir": tiny_data, "eval_batch_size": 12,
               "streams": "joint,motion", "plots": False, **overrides}
  full = _run(_launch_cmd(config, overrides, tmp_path / "a"), env)
  outcomes = _killed_then_finished(_launch_cmd(config, overrides, tmp_path / "b"), tmp_path / "b", env, full, rng,
                                   kills, left=_protocol_left(tmp_path / "b"))
  results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("a", "b")]
  assert results[0]["protocol"] == protocol and results[0]["fusion_name"] == "fusion"
  for name in ("joint", "motion"):
    assert results[0]["streams"][name] == results[1]["streams"][name], (name, outcomes)
  assert results[0] == results[1], outcomes  # every entry: fusion, counts, inputs
  assert _metric_records(tmp_path / "a") == _metric_records(tmp_path / "b"), outcomes
  for name in ("joint", "motion", "fusion"):
    file = f"predictions_{name}.npz"
    with np.load(tmp_path / "a" / file) as a, np.load(tmp_path / "b" / file) as b:
      for key in ("labels", "predictions", "probabilities"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} {key} {outcomes}")


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


def test_torch_import_killed_and_rerun_writes_the_same_workdir(tmp_path, pretrain_dir, compilation_cache_dir):
  """The pretraining exported as a reference checkpoint, then imported (``python -m
  cmd_jax.torch_import``); one kill. The import builds the workdir in a temporary sibling
  folder and renames it at the end, so a killed import leaves either no workdir or the complete
  one; a rerun onto the complete one is refused, saying so."""
  from cmd_jax.interop import common, convert  # pylint: disable=import-outside-toplevel
  rng = random.Random(SEED + 7)
  source = tmp_path / "checkpoint.pth.tar"
  convert.export_checkpoint(pretrain_dir, source)

  def cmd(out):
    return [sys.executable, "-m", "cmd_jax.torch_import", str(source), "--workdir", str(out)]

  def left():
    if not (tmp_path / "b").exists():
      temporary = [p for p in tmp_path.iterdir() if p.name.startswith(".b.importing-")]
      return "left no workdir" + (" (a temporary .b.importing-* folder beside it)" if temporary else "")
    assert (tmp_path / "b" / "config.json").is_file()
    assert checkpoint.saved_steps(tmp_path / "b") == checkpoint.saved_steps(tmp_path / "a")
    return "left the complete workdir"

  env = dict(_env(compilation_cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")  # its many small programs
  full = _run(cmd(tmp_path / "a"), env)
  outcomes = _killed_then_finished(cmd(tmp_path / "b"), tmp_path / "b", env, full, rng, 1, left=left,
                                   refusal=IMPORT_REFUSAL)
  a, b = _restored(tmp_path / "a"), _restored(tmp_path / "b")
  assert a[:3] == b[:3], outcomes
  assert len(a[3]) == len(b[3]), outcomes
  for x, y in zip(a[3], b[3]):
    np.testing.assert_array_equal(x, y, err_msg=str(outcomes))
  with pytest.raises(common.TorchImportError, match=IMPORT_REFUSAL):  # the same import once more
    convert.import_checkpoint(source, tmp_path / "b")
  assert _restored(tmp_path / "b")[:3] == b[:3]
