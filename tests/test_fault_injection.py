"""Fault injection: every long-running command killed with SIGKILL at random moments, then rerun.

For each command (dataset conversion, reference-format export, pretraining through
``launch.py``, a downstream protocol through ``launch.py``) the same command runs once
uninterrupted, and once killed with ``kill -9`` at ``KILLS`` moments drawn uniformly between
20% and 100% of the uninterrupted run's wall time (a seeded ``random.Random``, so a failure can
be replayed; the first 20% is mostly the interpreter starting) and then rerun to the end. The outcome must equal the uninterrupted run's:

- conversion: every record of every built benchmark (name, label, frames, coordinates);
- export: the bytes of every exported file;
- pretraining: every leaf of the final train state (the resumed run continues from its last
  readable checkpoint with the data iterator's position, so it recomputes the same steps);
- protocol: the reported accuracies (a killed protocol leaves no complete ``results.json``,
  so the rerun recomputes it).

Each case prints when the kill came and whether the process had already finished (``pytest
-s`` shows it); the README's count of cases is ``KILLS`` x 4 commands. Subprocesses run on CPU with the module's
compilation cache, so the JAX ones compile once.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cmd_jax import checkpoint, data, sharding
from cmd_jax.trainers import pretrain as cp
from tests.conftest import REPO, build_tiny_synthetic
from tests.test_cmd_pretrain import TINY, tiny_config

KILLS = 2            # kill moments per command
SEED = 20261203      # the kill moments' random stream


@pytest.fixture(scope="module", autouse=True)
def _module_compilation_cache(compilation_cache_dir):
  return compilation_cache_dir


def _env(cache_dir: str | None = None) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  if cache_dir:
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
  return env


def _run(cmd, env) -> float:
  """Runs ``cmd`` to completion; returns its wall time."""
  start = time.monotonic()
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  return time.monotonic() - start


def _kill_at(cmd, env, delay: float) -> int | None:
  """Starts ``cmd``, sends SIGKILL after ``delay`` seconds; the exit code if it ended first."""
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    return proc.wait(timeout=delay)
  except subprocess.TimeoutExpired:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return None


def _killed_then_finished(cmd, env, full_time: float, rng: random.Random) -> list[str]:
  """Kills ``cmd`` KILLS times at uniform moments of ``full_time``, then runs it to the end."""
  outcomes = []
  for _ in range(KILLS):
    delay = rng.uniform(0.2, 1.0) * full_time  # past most of the interpreter's start-up
    ended = _kill_at(cmd, env, delay)
    outcomes.append(f"{delay:.1f}s: " + ("finished before the kill" if ended == 0 else "killed"))
  _run(cmd, env)
  print(f"{' '.join(cmd[1:4])}: full run {full_time:.1f}s; kills at {'; '.join(outcomes)}")
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
  outcomes = _killed_then_finished(cmd(tmp_path / "b"), _env(), full, rng)
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
  outcomes = _killed_then_finished(cmd(tmp_path / "b"), _env(), full, rng)
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


def test_pretraining_killed_and_rerun_ends_in_the_same_state(tmp_path, tiny_data, compilation_cache_dir):
  rng = random.Random(SEED + 2)
  overrides = {**PRETRAIN, "data.data_dir": tiny_data}
  env = _env(compilation_cache_dir)
  full = _run(_launch_cmd("configs/pretrain_cmd.py:synthetic", overrides, tmp_path / "a"), env)
  outcomes = _killed_then_finished(_launch_cmd("configs/pretrain_cmd.py:synthetic", overrides, tmp_path / "b"),
                                   env, full, rng)
  config = tiny_config(**{"data.data_dir": tiny_data, **{k: v for k, v in PRETRAIN.items() if k not in TINY}})
  like = cp.create_train_state(config, data.layout_of(config.data), 4)
  states = []
  for run in ("a", "b"):
    ckpt = checkpoint.Checkpointer(tmp_path / run, 2)
    try:
      assert ckpt.latest_step() == 12, (run, outcomes)
      states.append(jax.device_get(ckpt.restore(12, like, sharding.make_mesh(-1))[0]))
    finally:
      ckpt.close()
  for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
    np.testing.assert_array_equal(a, b, err_msg=str(outcomes))


def test_protocol_killed_and_rerun_reports_the_same_accuracies(tmp_path, tiny_data, compilation_cache_dir):
  import json  # pylint: disable=import-outside-toplevel
  rng = random.Random(SEED + 3)
  env = _env(compilation_cache_dir)
  _run(_launch_cmd("configs/pretrain_cmd.py:synthetic", {**PRETRAIN, "num_epochs": 1, "data.data_dir": tiny_data},
                   tmp_path / "pretrain"), env)
  linear = {"init_from": tmp_path / "pretrain", "data.data_dir": tiny_data, "num_epochs": 2, "eval_every_epochs": 1,
            "batch_size": 12, "eval_batch_size": 12, "optimizer.milestones": "1,", "streams": "joint,motion",
            "plots": False}
  full = _run(_launch_cmd("configs/linear.py:synthetic", linear, tmp_path / "a"), env)
  outcomes = _killed_then_finished(_launch_cmd("configs/linear.py:synthetic", linear, tmp_path / "b"), env, full, rng)
  results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("a", "b")]
  for stream in ("joint", "motion"):
    assert results[0]["streams"][stream]["final_top1"] == results[1]["streams"][stream]["final_top1"], outcomes
    assert results[0]["streams"][stream]["curve"] == results[1]["streams"][stream]["curve"], outcomes
