"""Sharded and multi-process training give the single-device, single-process result.

What a pod or a cluster changes, and how each part is checked here on one CPU machine:

- **devices**: the batch is sharded over a 1-D ``data`` mesh and the state replicated
  (``cmd_jax.sharding``). ``test_sharded_step_equals_one_device`` steps the same state on
  the same batches with 1 and with 8 (fake, ``--xla_force_host_platform_device_count=8``)
  CPU devices, and checks that the BatchNorm statistics are those of the *global* batch
  (what the reference gets from one GPU / SyncBatchNorm), not of a device's shard.
- **processes**: on a TPU pod slice or a GPU cluster every host runs the same
  ``launch.py`` command as one JAX process; ``jax.distributed`` joins them, the mesh spans
  every device of every process, each process loads only its rows of each global batch
  (``input_pipeline.global_batches``) and ``jax.make_array_from_process_local_data``
  assembles the global array. ``test_two_processes_equal_one_process`` runs exactly that
  with two processes on this machine (coordinator on 127.0.0.1, gloo collectives on CPU):
  training, the online kNN monitor and the orbax checkpoint all run multi-process.
  ``test_sigterm_to_one_process_stops_both_at_the_same_step`` sends SIGTERM to one of the
  two processes during start-up: JAX's preemption sync point stops both after the same
  step, with one checkpoint, and the rerun ends in the uninterrupted run's state.
- **data**: ``test_global_batches_do_not_depend_on_process_count`` checks on the host
  that any process count reads the same global batches, each process reading only its
  rows, and that a data-iterator state saved with one process count resumes with another.

JAX is started in subprocesses (the pytest process already has its one CPU device).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from cmd_jax import input_pipeline as ip
from tests import distributed_worker

REPO = Path(__file__).resolve().parents[1]

# Float32 state compared to a 1-device / 1-process run: the batch sums (gradients, BN
# statistics) are ordered differently, so a leaf differs by a few u (6e-8) of its own scale,
# entries near 0 included. Each leaf is compared within a fraction of its largest |entry|:
# parameters, BN statistics and queues 1e-5 (measured <= 9.6e-7 after two steps); SGD momentum
# buffers, which hold summed gradients (~10x the scale of the parameters' updates), 1e-4
# (measured <= 2.4e-6). Far below what a missing all-reduce or a per-shard BN gives (>= 1e-3).
STATE_TOL = 1e-5     # parameters, BN statistics, queues
OPT_TOL = 1e-4
LOSS_TOL = dict(rtol=1e-5, atol=1e-5)      # losses and KL terms (values 0.1 .. 50): ~170 u

TINY_OVERRIDES = ["--config.model.hidden_size=8", "--config.model.num_layers=1", "--config.model.embed_dim=8",
                  "--config.batch_size=16", "--config.moco.queue_size=64", "--config.cmd.topk=16",
                  "--config.augment.frames=8", "--config.augment.min_length=8", "--config.num_epochs=2",
                  "--config.evaluator.every_epochs=1", "--config.evaluator.batch_size=16",
                  "--config.log_every_steps=1"]


# ---------------------------------------------------------------------------------------
# Subprocess helpers


def _env(num_devices: int = 1) -> dict[str, str]:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", "")).strip()
  if num_devices > 1:
    flags = f"{flags} --xla_force_host_platform_device_count={num_devices}".strip()
  if flags:
    env["XLA_FLAGS"] = flags
  else:
    env.pop("XLA_FLAGS", None)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
  return env


def free_port() -> int:
  """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
  text = path.read_text(errors="replace") if path.exists() else "(no log)"
  return text[-chars:]


def run_processes(cmds: list[list[str]], log_dir: Path, *, num_devices: int = 1, timeout: float = 240.0) -> None:
  """Runs the commands concurrently; fails with their logs if one fails or the time runs out.

  Every process gets its own session, and whatever is still running at the end (a peer
  left waiting in a collective, a timeout) is killed with its children.
  """
  log_dir.mkdir(parents=True, exist_ok=True)
  procs, logs = [], []
  try:
    for i, cmd in enumerate(cmds):
      logs.append(log_dir / f"process{i}.log")
      with open(logs[-1], "w", encoding="utf-8") as log:
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(num_devices), stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
      if any(p.returncode not in (None, 0) for p in procs):
        break  # one failed: its peers would wait for it in a collective
      if time.monotonic() > deadline:
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
  failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
  if failed:
    report = "\n".join(f"--- process {i} (exit {rc}, {'killed' if rc == -signal.SIGKILL else 'failed'}) "
                       f"{logs[i]}:\n{_tail(logs[i])}" for i, rc in failed)
    pytest.fail(f"{len(failed)} of {len(procs)} processes did not finish cleanly within {timeout:.0f}s:\n{report}")


def _flat(tree) -> dict[str, np.ndarray]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))
  return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(x) for p, x in leaves}


def assert_states_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, float]:
  """Every leaf equal (integers) or close (floats: within the kind's tolerance times the leaf's
  largest |entry|, relatively for larger entries); returns max |diff| per kind."""
  assert sorted(got) == sorted(want)
  worst = {"state": 0.0, "opt_state": 0.0}
  for name in sorted(want):
    a, b = got[name], want[name]
    assert a.shape == b.shape and a.dtype == b.dtype, name
    if a.dtype.kind != "f":
      np.testing.assert_array_equal(a, b, err_msg=name)
      continue
    kind = "opt_state" if name.startswith("opt_state") else "state"
    tol = OPT_TOL if kind == "opt_state" else STATE_TOL
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    np.testing.assert_allclose(a, b, err_msg=name, rtol=tol, atol=tol * scale)
    if a.size:
      worst[kind] = max(worst[kind], float(np.max(np.abs(a - b))))
  return worst


# ---------------------------------------------------------------------------------------
# 1. One step sharded over 8 devices == the same step on 1 device


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("sharded") / "result.npz"
  run_processes([[sys.executable, "-m", "tests.distributed_worker", "sharded_step", str(out)]],
                out.parent / "logs", num_devices=8, timeout=300)
  with np.load(out) as f:
    return {k: f[k] for k in f.files}


def test_sharded_step_equals_one_device(sharded_run):
  r = sharded_run
  # The device batch really is split over the 8 devices, 2 rows each (1 shard on the 1-device mesh).
  assert int(r["mesh1/batch_shards"]) == 1
  assert int(r["mesh8/batch_shards"]) == 8 and int(r["mesh8/batch_shard_devices"]) == 8
  assert r["mesh8/batch_shard_rows"].tolist() == [distributed_worker.BATCH // 8] * 8

  # Every metric of every step, then every leaf of the state after the last step.
  metric_names = sorted(k[len("mesh1/metrics/"):] for k in r if k.startswith("mesh1/metrics/"))
  assert "loss" in metric_names and "loss_cmd" in metric_names
  for name in metric_names:
    np.testing.assert_allclose(r[f"mesh8/metrics/{name}"], r[f"mesh1/metrics/{name}"], err_msg=name, **LOSS_TOL)
  assert np.all(np.diff(r["mesh1/metrics/loss"]) != 0)  # distinct steps, not one step repeated
  state1 = {k[len("mesh1/state/"):]: v for k, v in r.items() if k.startswith("mesh1/state/")}
  state8 = {k[len("mesh8/state/"):]: v for k, v in r.items() if k.startswith("mesh8/state/")}
  assert int(state8["step"]) == distributed_worker.STEPS
  assert_states_close(state8, state1)


def _joint_input_stats(view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """numpy BatchNorm1d statistics of the joint stream: ``[N, C, T, V, M] -> [N*T, V*C*M]``."""
  n, c, t, v, m = view.shape
  x = np.transpose(view.astype(np.float64), (0, 2, 3, 1, 4)).reshape(n * t, v * c * m)
  return x.mean(axis=0), x.var(axis=0, ddof=1)


@pytest.mark.parametrize("side", ["q", "k"])
def test_sharded_batch_norm_uses_global_batch_statistics(sharded_run, side):
  """The running statistics after step 1 (from mean 0, var 1, PyTorch momentum 0.1) are
  those of all 16 clips, on both meshes, and differ from one device's 2-clip shard."""
  view = sharded_run[f"input_{side}"]
  mean, var = _joint_input_stats(view)
  for mesh in ("mesh1", "mesh8"):
    np.testing.assert_allclose(sharded_run[f"{mesh}/bn_after_1/{side}_mean"], 0.1 * mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sharded_run[f"{mesh}/bn_after_1/{side}_var"], 0.9 + 0.1 * var, rtol=1e-4, atol=1e-6)
  shard_mean, shard_var = _joint_input_stats(view[:distributed_worker.BATCH // 8])
  got = sharded_run[f"mesh8/bn_after_1/{side}_mean"]
  assert np.max(np.abs(got - 0.1 * shard_mean)) > 100 * np.max(np.abs(got - 0.1 * mean)) + 1e-3
  got_var = sharded_run[f"mesh8/bn_after_1/{side}_var"]
  assert np.max(np.abs(got_var - (0.9 + 0.1 * shard_var))) > 1e-3


# ---------------------------------------------------------------------------------------
# 2. Two processes (as on a pod / cluster) == one process


@pytest.fixture(scope="module")
def synthetic_data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("tfds")
  run_processes([[sys.executable, "-m", "data_prep", "build", "synthetic", "--out", str(out),
                  "--option", "synthetic_subjects=2", "--option", "synthetic_repetitions=1", "--quiet"]],
                out.parent / "build_logs", timeout=120)
  return out


def _launch(workdir: Path, data_dir: Path, *extra: str) -> list[str]:
  return [sys.executable, "launch.py", "--config", "configs/pretrain_cmd.py:synthetic", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", *TINY_OVERRIDES, *extra]


def _restore(workdir: Path):
  """(flat state, data state, meta) of the workdir's latest checkpoint, on this process's one device."""
  from cmd_jax import checkpoint, data, sharding  # pylint: disable=import-outside-toplevel
  from cmd_jax.trainers import pretrain as cmd_pretrain  # pylint: disable=import-outside-toplevel

  config = distributed_worker.tiny_config()
  like = cmd_pretrain.create_train_state(config, data.layout_of(config.data), steps_per_epoch=2)
  ckpt = checkpoint.Checkpointer(workdir)
  try:
    step = ckpt.latest_step()
    assert step is not None, f"no checkpoint in {workdir}"
    state, data_state, meta = ckpt.restore(step, like, sharding.make_mesh(1))
  finally:
    ckpt.close()
  return step, _flat(state), data_state, meta


def _two_processes(workdir: Path, data_dir: Path) -> list[list[str]]:
  port = free_port()
  return [_launch(workdir, data_dir, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                  f"--process_id={i}") for i in range(2)]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, synthetic_data_dir) -> Path:
  """``launch.py`` as two processes, uninterrupted (4 steps)."""
  two = tmp_path_factory.mktemp("two_processes") / "run"
  run_processes(_two_processes(two, synthetic_data_dir), two.parent / "logs_two", timeout=240)
  return two


def test_two_processes_equal_one_process(tmp_path, synthetic_data_dir, two_process_run):
  """``launch.py`` as one process, then as two processes, gives the same run.

  How this maps to a real pod or cluster: each of the two subprocesses here stands for one
  host. On a TPU pod every host runs the same command with ``--distributed``
  (``jax.distributed.initialize()`` finds the coordinator and the process ids itself); on
  a GPU cluster under SLURM ``srun ... python launch.py ... --distributed`` does the same,
  and elsewhere each node is started with ``--coordinator_address=<node 0>:<port>
  --num_processes=<nodes> --process_id=<rank>``, exactly the flags used here. The
  coordinator is 127.0.0.1 and the cross-process collectives use gloo over TCP instead of
  ICI/NCCL; the program (one ``data`` mesh over all processes' devices, each process
  loading its half of every global batch, metrics from process 0, one orbax checkpoint
  written by all processes into the shared workdir) is the same.

  Checked: the train and eval records of ``metrics.jsonl`` (losses, KL terms, accuracies,
  lr, kNN top-1 after every epoch), the final checkpoint's every leaf, its data-iterator
  state and metadata; and that the second run really had a 2-device, 2-process mesh.
  """
  one, two = tmp_path / "one_process", two_process_run
  run_processes([_launch(one, synthetic_data_dir)], tmp_path / "logs_one", timeout=200)

  # The two-process run was one 2-device mesh over both processes (orbax records the sharding).
  step, state_one, data_one, meta_one = _restore(one)
  sharding_info = json.loads((two / "checkpoints" / str(step) / "state" / "_sharding").read_text())
  mesh_of_leaf = json.loads(next(iter(sharding_info.values())))
  assert mesh_of_leaf["shape"] == [2] and len(mesh_of_leaf["device_mesh"]["mesh"]) == 2
  assert (two / "checkpoints" / str(step) / "state" / "array_metadatas" / "process_1").exists()

  def records(workdir):
    with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
      return [json.loads(line) for line in f if line.strip()]

  rec_one, rec_two = records(one), records(two)
  assert [(r["step"], r["split"]) for r in rec_two] == [(r["step"], r["split"]) for r in rec_one]
  assert [r["step"] for r in rec_one if r["split"] == "train"] == [1, 2, 3, 4]
  assert sum(r["split"] == "eval" for r in rec_one) >= 2  # kNN ran (multi-process) after every epoch
  for a, b in zip(rec_two, rec_one):
    assert sorted(a) == sorted(b)
    for name in sorted(set(b) - {"step", "split", "steps_per_s"}):
      if name == "knn_top1":  # 36 queries; a near-tie could flip one neighbour on other hardware
        assert abs(a[name] - b[name]) <= 1 / 36 + 1e-9, (a["step"], name)
      else:
        np.testing.assert_allclose(a[name], b[name], err_msg=f"step {b['step']} {name}", **LOSS_TOL)

  step_two, state_two, data_two, meta_two = _restore(two)
  assert step_two == step == 4
  assert data_two == data_one and meta_two == meta_one
  assert_states_close(state_two, state_one)


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path, synthetic_data_dir, two_process_run):
  """SIGTERM to process 1 alone, once process 0 has printed its encoders (before either has
  compiled its step): JAX's preemption service catches it in process 1 and the sync point is
  step 1 (every process's counter is at the workdir's newest step, 0, when the notice is
  handled). Both processes finish step 1, write its checkpoint together (each its part) and
  exit with 143; process 0 says so in one line. The same two commands again continue from
  step 1 and end in the uninterrupted two-process run's state, every leaf bit for bit (the
  same reductions in the same order)."""
  workdir = tmp_path / "stopped"
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  procs = []
  try:
    for cmd, log in zip(_two_processes(workdir, synthetic_data_dir), logs):
      with open(log, "w", encoding="utf-8") as f:
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=dict(_env(), PYTHONUNBUFFERED="1"), stdout=f,
                                      stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + 240
    while "parameters" not in logs[0].read_text(errors="replace"):
      assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, _tail(logs[0])
      time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=240) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
  said = [[line for line in re.split(r"[\r\n]", log.read_text(errors="replace")) if line.startswith("launch.py:")]
          for log in logs]
  assert codes == [143, 143], (codes, _tail(logs[0]), _tail(logs[1]))
  assert len(said[0]) == 1 and said[1] == [], said
  assert said[0][0] == (f"launch.py: {workdir}: stopped by the preemption sync point of all processes (a process got "
                        f"SIGTERM or SIGINT) after step 1 of 4; {workdir}/checkpoints/1 holds it (train state and data "
                        "position): run the same command again to continue from there"), said[0]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1"]
  assert sorted(os.listdir(workdir / "checkpoints" / "1" / "state" / "array_metadatas")) == ["process_0", "process_1"]
  assert not (workdir / ".cmd_jax.lock").exists()
  run_processes(_two_processes(workdir, synthetic_data_dir), tmp_path / "logs_rerun", timeout=240)
  step, state, data_state, _ = _restore(workdir)
  step_ref, state_ref, data_ref, _ = _restore(two_process_run)
  assert step == step_ref == 4 and data_state == data_ref
  for name in sorted(state_ref):
    np.testing.assert_array_equal(state[name], state_ref[name], err_msg=name)


# ---------------------------------------------------------------------------------------
# 3. Host side: global batches, launcher flags


class _RecordingSource:
  """``n`` tiny records (record i: skeleton filled with i, num_frames 1000 + i); logs reads."""

  def __init__(self, n: int):
    self.n = n
    self.reads: list[int] = []

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i):
    i = int(i)
    self.reads.append(i)
    return {"skeleton": np.full((3, 4, 2, 1), i, np.float32), "num_frames": 1000 + i, "label": i % 7,
            "name": f"r{i}"}

  def __repr__(self) -> str:
    return f"_RecordingSource(n={self.n})"


def _local_batches(n, process_index, process_count, **kwargs):
  source = _RecordingSource(n)
  out = list(ip.global_batches(source, process_index=process_index, process_count=process_count, **kwargs))
  return out, source.reads


@pytest.mark.parametrize("process_count", [2, 4])
def test_global_batches_do_not_depend_on_process_count(process_count):
  n, b = 37, 8
  kwargs = dict(global_batch_size=b, seed=5, num_epochs=3, read_threads=2)
  single, single_reads = _local_batches(n, 0, 1, **kwargs)
  parts = [_local_batches(n, p, process_count, **kwargs) for p in range(process_count)]
  assert len(single) == 3 * n // b
  for k, batch in enumerate(single):
    for key in ("skeleton", "num_frames", "label", "valid"):
      local = [parts[p][0][k][key] for p in range(process_count)]
      assert all(len(x) == b // process_count for x in local)
      np.testing.assert_array_equal(np.concatenate(local), batch[key], err_msg=f"batch {k} {key}")
  # The stream: each epoch is a permutation of all records, a different one every epoch.
  stream = np.concatenate([x["num_frames"] for x in single]) - 1000
  epochs = [stream[e * n:(e + 1) * n] for e in range(2)]
  assert all(sorted(e.tolist()) == list(range(n)) for e in epochs)
  assert epochs[0].tolist() != epochs[1].tolist()
  # Each process reads exactly its own rows, all processes together what one process reads.
  for p, (batches, reads) in enumerate(parts):
    assert reads and sorted(reads) == sorted((np.concatenate([x["num_frames"] for x in batches]) - 1000).tolist())
    assert sorted(reads) == sorted((np.concatenate([x["num_frames"][p * (b // process_count):(p + 1) * (
        b // process_count)] for x in single]) - 1000).tolist())
  assert sorted(sum((reads for _, reads in parts), [])) == sorted(single_reads)


def test_global_batches_padded_last_batch_and_resume_with_other_process_count():
  n, b = 19, 8  # the last global batch: 3 records + 5 padding
  # Evaluation: one pass, the last batch padded and marked invalid; same on 1 and 2 processes.
  kwargs = dict(global_batch_size=b, seed=0, shuffle=False, num_epochs=1, drop_remainder=False)
  single, _ = _local_batches(n, 0, 1, **kwargs)
  halves = [_local_batches(n, p, 2, **kwargs)[0] for p in range(2)]
  assert len(single) == 3 and int(sum(x["valid"].sum() for x in single)) == n
  for k, batch in enumerate(single):
    for key in ("num_frames", "valid"):
      np.testing.assert_array_equal(np.concatenate([halves[0][k][key], halves[1][k][key]]), batch[key])
  assert halves[1][-1]["valid"].sum() == 0  # process 1 holds only padding in the last batch: still a full batch

  # A data state saved by a 1-process run resumes a 2-process run at the same global batch.
  kwargs = dict(global_batch_size=b, seed=3, num_epochs=None, read_threads=1)
  it = iter(ip.global_batches(_RecordingSource(n), process_index=0, process_count=1, **kwargs))
  for _ in range(4):
    next(it)
  saved = it.get_state()
  expected = [next(it)["num_frames"] for _ in range(3)]
  for p in range(2):
    resumed = iter(ip.global_batches(_RecordingSource(n), process_index=p, process_count=2, **kwargs))
    resumed.set_state(saved)
    assert resumed.get_state() == saved
    for want in expected:
      np.testing.assert_array_equal(next(resumed)["num_frames"], want[p * b // 2:(p + 1) * b // 2])


def test_global_batches_rejects_indivisible_batch():
  with pytest.raises(ValueError, match="multiple of the 3 JAX processes"):
    ip.global_batches(_RecordingSource(20), global_batch_size=8, seed=0, process_index=0, process_count=3)


def test_launch_coordinator_needs_process_flags(tmp_path):
  proc = subprocess.run([sys.executable, "launch.py", f"--workdir={tmp_path}", "--coordinator_address=127.0.0.1:1"],
                        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0
  assert "--coordinator_address needs --num_processes and --process_id" in proc.stderr
