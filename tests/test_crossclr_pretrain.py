"""CrosSCLR pretraining through the generic loop, on a tiny synthetic set of 50-frame clips.

- impossible CrosSCLR setups are one-line errors before anything is compiled;
- a run writes its metrics (the per-stream loss terms, the phase, the kNN monitor) and
  checkpoints, and compiles its step once across epochs, evaluations and the phase switch;
  killed in the single-view epoch and rerun across ``cross_epoch`` it ends in the same state
  as an uninterrupted run (every leaf bit-identical);
- 8 fake devices give the same steps as 1 (subprocess: the device count is fixed at start);
- the protocols' loader takes the three streams' query encoders from the one workdir, heads
  (the shared one and the private layers) dropped.

The loop's properties do not depend on the encoder: CMD's GRU, small, compiles several times
faster than ST-GCN on a CPU (the ST-GCN step is checked against PyTorch in
tests/test_crossclr_parity.py).
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
from configs import pretrain_crossclr
from tests.test_distributed import run_processes
from tests.test_hiclr_pretrain import assert_close_to_scale, frame50_data, recording_compilations  # noqa: F401  pylint: disable=unused-import
from tests.test_pretrained import set_fields
from tests import distributed_worker

STREAMS = ("joint", "motion", "bone")


def tiny_config(data_dir: str, **overrides):
  """36 training clips, batch 12 (3 steps per epoch), cross-view training from epoch 1; the
  GRU with hidden size 8, one layer (module docstring)."""
  c = pretrain_crossclr.get_config("synthetic")
  c.model.name, c.model.init = "gru", "default"
  c.model.hidden_size, c.model.num_layers, c.model.embed_dim = 8, 1, 8
  c.data.data_dir = data_dir
  c.batch_size = 12
  c.moco.queue_size = 24
  c.num_epochs = 3
  c.crossclr.cross_epoch = 1
  c.evaluator.every_epochs = 1
  c.evaluator.batch_size = 12
  c.log_every_steps = 1
  c.checkpoint_every_steps = 100
  return set_fields(c, overrides)


@pytest.mark.parametrize("overrides,message", [
    ({"modalities": "joint"}, "CrosSCLR trains 'joint,motion,bone' .3s-CrosSCLR. or 'joint,motion'"),
    ({"modalities": "motion,bone"}, "config.modalities='motion,bone': CrosSCLR trains"),
    ({"modalities": "joint,depth"}, "config.modalities='joint,depth'"),
    ({"data.variant": "standard"}, "CrosSCLR trains on the 50-frame clips: expected 'frame50'"),
    ({"moco.queue_size": 30}, "queue size 30 is not a multiple of the global batch 12"),
    ({"crossclr.topk": 0}, "topk must be positive"),
    ({"crossclr.topk": 48}, "topk 48 is larger than the queue size 24"),
    ({"crossclr.cross_epoch": -1}, "config.crossclr.cross_epoch=-1"),
    ({"model.mlp": False}, "config.model.mlp=False: CrosSCLR's projection head is the MLP"),
    ({"moco.momentum": 1.5}, "config.moco.momentum=1.5 must be in"),
    ({"model.name": "resnet"}, "config.model.name='resnet'"),
])
def test_impossible_setups_are_one_line_errors(overrides, message):
  with pytest.raises(ValueError, match=message) as err:
    pretrain.validate_config(tiny_config("data", **overrides), num_train=36, num_devices=1, process_count=1)
  assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["synthetic", "msr_action3d", "ntu60_xview", "ntu60_xsub", "ntu120_xsub",
                                  "ntu120_xset", "pku_mmd2_xsub", "ntu60_xview_dsta"])
def test_configs_are_valid_and_carry_the_release_settings(name):
  c = pretrain_crossclr.get_config(name)
  pretrain.validate_config(c, num_train=None, num_devices=1, process_count=1)
  assert (c.method, c.modalities, c.data.variant, c.crossclr.topk, c.crossclr.context) == (
      "crossclr", "joint,motion,bone", "frame50", 1, True)
  assert c.crossclr.update_all_keys is False and c.optimizer.nesterov is False
  if name in pretrain_crossclr.CPU_SIZED:
    assert c.deviations
  else:
    assert (c.batch_size, c.moco.queue_size, c.moco.momentum, c.moco.temperature, c.num_epochs,
            tuple(c.optimizer.milestones), c.optimizer.lr, c.crossclr.cross_epoch) == (
                128, 32768, 0.999, 0.07, 300, (250,), 0.1, 150)
    assert c.model.name == ("dsta" if name.endswith("_dsta") else "stgcn") and c.model.init == "normal_0.02"


@pytest.fixture(scope="module")
def uninterrupted(frame50_data, tmp_path_factory):  # noqa: F811
  """3 epochs, cross-view training from epoch 1, the kNN monitor after every epoch; with the
  compilations counted."""
  workdir = tmp_path_factory.mktemp("crossclr_a")
  with recording_compilations() as compiled:
    result = pretrain.train_and_evaluate(tiny_config(frame50_data), workdir)
  return workdir, result, compiled


def test_a_run_logs_the_loss_terms_the_phase_and_knn(uninterrupted):
  workdir, result, _ = uninterrupted
  assert result.step == 9
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in rows if r["split"] == "train"]
  assert {"loss", "cross", "lr", *(f"loss_{s}" for s in STREAMS), *(f"acc1_{s}" for s in STREAMS)} <= set(train[0])
  # steps 1-3 are epoch 0 (single-view), steps 4-9 epochs 1 and 2 (cross-view): a 0-based epoch >= 1
  assert [r["cross"] for r in train] == [0.0] * 3 + [1.0] * 6
  for r in train:
    assert r["loss"] == pytest.approx(sum(r[f"loss_{s}"] for s in STREAMS), rel=1e-5)
  evals = [r for r in rows if r["split"] == "eval"]
  assert [r["epoch"] for r in evals] == [0, 1, 2, 3] and all(0 <= r["knn_top1"] <= 1 for r in evals)
  config = pretrained.read_pretrain_config(workdir)
  assert (config.method, config.model.name, config.modalities) == ("crossclr", "gru", "joint,motion,bone")


def test_compilations_do_not_grow_with_epochs_evaluations_or_the_phase_switch(uninterrupted):
  _, _, compiled = uninterrupted
  names = [re.match(r"Compiling (\S+)", line).group(1) for line in compiled]
  assert names.count("jit(train_step)") == 1, compiled
  assert names[-1] == "jit(train_step)", compiled[names.index("jit(train_step)"):]


def test_the_loader_takes_the_three_query_encoders_without_heads(uninterrupted):
  workdir, result, _ = uninterrupted
  pre = pretrained.load_pretrained(workdir)
  assert pre.modalities == STREAMS and pre.method == "crossclr" and pre.frames == 50 and pre.eval_crop is None
  for s in STREAMS:
    assert not {"fc", "fc_0", "fc_2"} & set(pre.params[s])
    got, want = jax.tree.leaves(pre.params[s]), jax.tree.leaves(
        {k: v for k, v in result.state.params[s].items() if k not in ("fc_0", "fc_2")})
    assert len(got) == len(want) and all(np.array_equal(a, np.asarray(b)) for a, b in zip(got, want))


def test_kill_and_resume_across_the_phase_switch_ends_in_the_same_state(frame50_data, uninterrupted, tmp_path):  # noqa: F811
  workdir_a, _, _ = uninterrupted
  config = tiny_config(frame50_data)
  first = pretrain.train_and_evaluate(config, tmp_path, stop_after_step=2)  # killed in epoch 0
  assert first.step == 2
  second = pretrain.train_and_evaluate(config, tmp_path)  # resumes; cross-view training starts at step 4
  assert second.step == 9
  layout = data.layout_of(config.data)
  like = pretrain.create_train_state(config, layout, 3)
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
def crossclr_sharded_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("crossclr_sharded") / "result.npz"
  run_processes([[sys.executable, "-m", "tests.distributed_worker", "crossclr_sharded_step", str(out)]],
                out.parent / "logs", num_devices=8, timeout=400)
  with np.load(out) as f:
    return {k: f[k] for k in f.files}


def test_eight_devices_give_the_same_steps_as_one(crossclr_sharded_run):
  """Float64 (the worker's docstring): losses and every state leaf within 1e-9 of their scale
  (tests/test_hiclr_pretrain.py's bound: sums over the batch ordered differently, amplified
  by the SGD steps)."""
  r = crossclr_sharded_run
  names = sorted(k[len("mesh1/metrics/"):] for k in r if k.startswith("mesh1/metrics/"))
  assert {"loss", "cross", *(f"loss_{s}" for s in STREAMS)} <= set(names)
  assert r["mesh1/metrics/cross"].tolist() == [0.0, 1.0, 1.0]
  for name in names:
    np.testing.assert_allclose(r[f"mesh8/metrics/{name}"], r[f"mesh1/metrics/{name}"], err_msg=name, rtol=1e-9,
                               atol=1e-12)
  state1 = {k[len("mesh1/state/"):]: v for k, v in r.items() if k.startswith("mesh1/state/")}
  state8 = {k[len("mesh8/state/"):]: v for k, v in r.items() if k.startswith("mesh8/state/")}
  assert int(state8["step"]) == distributed_worker.STEPS
  assert_close_to_scale(state8, state1)
