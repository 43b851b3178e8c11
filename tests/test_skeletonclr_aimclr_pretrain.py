"""SkeletonCLR and AimCLR pretraining through the generic loop, on a tiny synthetic set of 50-frame clips.

- impossible setups are one-line errors before anything is compiled; the configs' names;
- a run writes its metrics (the loss terms, AimCLR's mining switch, the kNN monitor) and
  checkpoints, compiling its step once (also across the mining switch); killed and rerun
  (across ``mining_epoch`` for AimCLR) it ends in the same state as an uninterrupted run
  (every leaf bit-identical);
- 8 fake devices give the same steps as 1 (subprocess ``tests.single_stream_worker``).

The runs use CMD's GRU, small (tests/test_hiclr_pretrain.py's reason: the loop's properties do
not depend on the encoder, and the GRU compiles several times faster on a CPU); the step
against PyTorch with ST-GCN is tests/test_skeletonclr.py's and tests/test_aimclr.py's.
"""

from __future__ import annotations

import json
import re
import sys

import jax
import numpy as np
import pytest

from cmd_jax import checkpoint, data, pretrained
from cmd_jax.trainers import pretrain
from configs import pretrain_aimclr, pretrain_skeletonclr
from tests.distributed_worker import STEPS
from tests.test_distributed import run_processes
from tests.test_hiclr_pretrain import assert_close_to_scale, frame50_data, recording_compilations  # noqa: F401  pylint: disable=unused-import
from tests.test_pretrained import set_fields

CONFIGS = {"skeletonclr": pretrain_skeletonclr, "aimclr": pretrain_aimclr}
METHODS = tuple(CONFIGS)


def tiny_config(method: str, data_dir: str = "data", **overrides):
  """36 training clips, batch 12 (3 steps per epoch), 3 epochs, AimCLR mining from epoch 1;
  CMD's GRU with hidden 8, one layer."""
  c = CONFIGS[method].get_config("synthetic")
  c.model.name, c.model.init = "gru", "default"
  c.model.hidden_size, c.model.num_layers, c.model.embed_dim = 8, 1, 8
  c.data.data_dir = data_dir
  c.batch_size = 12
  c.moco.queue_size = 24
  c.num_epochs = 3
  if method == "aimclr":
    c.aimclr.mining_epoch = 1
  c.evaluator.every_epochs = 1
  c.evaluator.batch_size = 12
  c.log_every_steps = 1
  c.checkpoint_every_steps = 100
  return set_fields(c, overrides)


@pytest.mark.parametrize("method,overrides,message", [
    ("skeletonclr", {"stream": "joint,motion"}, "SkeletonCLR pretrains one stream per run"),
    ("aimclr", {"stream": "joint,bone"}, "AimCLR pretrains one stream per run"),
    ("skeletonclr", {"data.variant": "standard"}, "SkeletonCLR trains on the 50-frame clips: expected 'frame50'"),
    ("aimclr", {"data.variant": "standard"}, "AimCLR trains on the 50-frame clips"),
    ("skeletonclr", {"moco.queue_size": 30}, "queue size 30 is not a multiple of the global batch 12"),
    ("aimclr", {"moco.momentum": 1.5}, r"config.moco.momentum=1.5 must be in \[0, 1\]"),
    ("skeletonclr", {"augment.temporal_padding_ratio": 0}, "temporal_padding_ratio=0 must be positive"),
    ("aimclr", {"aimclr.aug_method": "1236"}, "unknown option.s. 6; expected digits from 1 .flip."),
    ("aimclr", {"aimclr.eadm": "random"}, "config.aimclr.eadm='random'; expected 'threshold'"),
    ("aimclr", {"aimclr.eadm_threshold": 0.0}, r"config.aimclr.eadm_threshold=0.0 must be in \(0, 1\]"),
    ("aimclr", {"aimclr.topk": 30}, "topk 30 is larger than the queue size 24"),
    ("aimclr", {"aimclr.noise_rng": "philox"}, "config.aimclr.noise_rng='philox'"),
    ("aimclr", {"model.name": "resnet"}, "config.model.name='resnet'"),
])
def test_impossible_setups_are_one_line_errors(method, overrides, message):
  with pytest.raises(ValueError, match=message) as err:
    pretrain.validate_config(tiny_config(method, **overrides), num_train=36, num_devices=1, process_count=1)
  assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["synthetic", "msr_action3d", "ntu60_xsub", "ntu120_xset", "pku_mmd2_xsub",
                                  "ntu60_xview_dsta"])
def test_config_names(method, name):
  c = CONFIGS[method].get_config(name)
  assert c.method == method and c.data.variant == "frame50" and c.optimizer.nesterov is False
  assert c.model.name == ("dsta" if name.endswith("_dsta") else "gru" if name in ("synthetic", "msr_action3d")
                          else "stgcn")
  pretrain.validate_config(c, num_train=None, num_devices=1, process_count=1)
  if name in ("synthetic", "msr_action3d"):
    assert c.deviations and c.model.init == "default" and c.moco.momentum == 0.99
  else:  # the release's values
    assert (c.batch_size, c.moco.queue_size, c.moco.momentum, c.num_epochs, c.model.init) == (
        128, 32768, 0.999, 300, "normal_0.02")
    assert c.notes
  if method == "aimclr" and name not in ("synthetic", "msr_action3d"):
    assert (c.aimclr.mining_epoch, c.aimclr.eadm, c.aimclr.eadm_threshold, c.aimclr.aug_method) == (
        150, "threshold", 0.7, "12345")
  with pytest.raises(ValueError, match="unknown config 'ntu61'"):
    CONFIGS[method].get_config("ntu61")


@pytest.fixture(scope="module")
def uninterrupted(frame50_data, tmp_path_factory):  # noqa: F811  pylint: disable=redefined-outer-name
  """Each method: 3 epochs, the kNN monitor after every epoch, with the compilations counted."""
  runs = {}
  for method in METHODS:
    workdir = tmp_path_factory.mktemp(f"{method}_a")
    with recording_compilations() as compiled:
      result = pretrain.train_and_evaluate(tiny_config(method, frame50_data), workdir)
    runs[method] = (workdir, result, compiled)
  return runs


@pytest.mark.parametrize("method", METHODS)
def test_a_run_logs_its_loss_terms_and_knn_and_compiles_once(uninterrupted, method):
  workdir, result, compiled = uninterrupted[method]
  assert result.step == 9
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in rows if r["split"] == "train"]
  if method == "aimclr":
    assert {"loss", "loss_info", "loss_e", "loss_ed", "acc1", "lr", "mining"} <= set(train[0])
    # steps 1-3 are epoch 0 (no mining), steps 4-9 epochs 1 and 2 (mining): a 0-based epoch >= 1
    assert [r["mining"] for r in train] == [0.0] * 3 + [1.0] * 6
    for r in train:
      assert r["loss"] == pytest.approx(r["loss_info"] + 0.5 * (r["loss_e"] + r["loss_ed"]), rel=1e-5)
      assert r["loss_e"] != r["loss_ed"]  # EADM drops elements of the GRU's map
  else:
    assert {"loss", "acc1", "lr"} <= set(train[0])
  evals = [r for r in rows if r["split"] == "eval"]
  assert [r["epoch"] for r in evals] == [0, 1, 2, 3] and all(0 <= r["knn_top1"] <= 1 for r in evals)
  config = pretrained.read_pretrain_config(workdir)
  assert (config.method, config.model.name, config.data.variant) == (method, "gru", "frame50")
  names = [re.match(r"Compiling (\S+)", line).group(1) for line in compiled]
  assert names.count("jit(train_step)") == 1, compiled  # not per epoch, evaluation or at the mining switch
  encoder = pretrained.load_pretrained(workdir)
  assert encoder.method == method and set(encoder.params) == {"joint"}


@pytest.mark.parametrize("method", METHODS)
def test_kill_and_resume_ends_in_the_same_state(frame50_data, uninterrupted, tmp_path, method):  # noqa: F811  pylint: disable=redefined-outer-name
  """Killed after step 2 (epoch 0; AimCLR mines from step 4), rerun: every leaf bit-identical."""
  workdir_a, _, _ = uninterrupted[method]
  config = tiny_config(method, frame50_data)
  assert pretrain.train_and_evaluate(config, tmp_path, stop_after_step=2).step == 2
  assert pretrain.train_and_evaluate(config, tmp_path).step == 9
  like = pretrain.create_train_state(config, data.layout_of(config.data), 3)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  restored = {}
  for name, directory in (("a", workdir_a), ("b", tmp_path)):
    ckpt = checkpoint.Checkpointer(directory, keep=3)
    try:
      restored[name] = jax.device_get(ckpt.restore(9, like, mesh)[0])
    finally:
      ckpt.close()
  for x, y in zip(jax.tree.leaves(restored["a"]), jax.tree.leaves(restored["b"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
  out = tmp_path_factory.mktemp("single_stream_sharded") / "result.npz"
  run_processes([[sys.executable, "-m", "tests.single_stream_worker", str(out)]], out.parent / "logs",
                num_devices=8, timeout=500)
  with np.load(out) as f:
    return {k: f[k] for k in f.files}


@pytest.mark.parametrize("method", METHODS)
def test_eight_devices_give_the_same_steps_as_one(sharded_runs, method):
  """Float64 (the worker's docstring): metrics and every state leaf within
  tests/test_hiclr_pretrain.py's bound (1e-9 of each leaf's scale, derived there)."""
  r = {k[len(method) + 1:]: v for k, v in sharded_runs.items() if k.startswith(f"{method}/")}
  names = sorted(k[len("mesh1/metrics/"):] for k in r if k.startswith("mesh1/metrics/"))
  assert "loss" in names
  if method == "aimclr":
    assert r["mesh1/metrics/mining"].tolist() == [0.0, 1.0, 1.0]
    assert np.all(r["mesh1/metrics/loss_e"] != r["mesh1/metrics/loss_ed"])  # EADM active
  for name in names:
    np.testing.assert_allclose(r[f"mesh8/metrics/{name}"], r[f"mesh1/metrics/{name}"], err_msg=name, rtol=1e-9,
                               atol=1e-12)
  state1 = {k[len("mesh1/state/"):]: v for k, v in r.items() if k.startswith("mesh1/state/")}
  state8 = {k[len("mesh8/state/"):]: v for k, v in r.items() if k.startswith("mesh8/state/")}
  assert int(state8["step"]) == STEPS and set(state1) == set(state8)
  assert_close_to_scale(state8, state1)

