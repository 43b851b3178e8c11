"""HiCLR pretraining through the generic loop, on a tiny synthetic set of 50-frame clips.

- impossible HiCLR setups are one-line errors before anything is compiled;
- a run writes its metrics (the loss terms, the mining switch, the kNN monitor) and
  checkpoints; killed and rerun across ``mining_epoch`` it ends in the same state as an
  uninterrupted run (every leaf bit-identical);
- 8 fake devices give the same steps as 1 (subprocess: the device count is fixed at start);
- a HiCLR checkpoint imported from PyTorch continues pretraining after its epoch, and the
  protocols take it (and several one-stream workdirs) as ``init_from``; a config with
  another method's or encoder's settings refuses it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import re
import sys

import jax
import numpy as np
import pytest

from cmd_jax import checkpoint, data, pretrained
from cmd_jax.errors import ConfigError
from cmd_jax.trainers import get_trainer, pretrain
from configs import knn as knn_config, linear as linear_config, linear_hiclr, pretrain_hiclr
from tests import distributed_worker
from tests.test_distributed import run_processes
from tests.test_pretrained import set_fields


@pytest.fixture(scope="module")
def frame50_data(tiny_frame50) -> str:
  return tiny_frame50


def tiny_config(data_dir: str, encoder: str = "stgcn", **overrides):
  """36 training clips, batch 12 (3 steps per epoch), mining from epoch 1; ST-GCN h4/d16 with
  HiCLR's init (the release's encoder, what imported checkpoints hold), or ``encoder="gru"``
  (hidden 8, one layer: the loop's properties do not depend on the encoder, and the GRU
  compiles several times faster on a CPU)."""
  c = pretrain_hiclr.get_config("synthetic")
  c.model.name, c.model.init = encoder, ("normal_0.02" if encoder == "stgcn" else "default")
  c.model.hidden_size, c.model.num_layers = 8, 1
  c.data.data_dir = data_dir
  c.batch_size = 12
  c.moco.queue_size = 24
  c.num_epochs = 3
  c.hiclr.mining_epoch = 1
  c.model.stgcn.hidden_channels, c.model.stgcn.hidden_dim, c.model.embed_dim = 4, 16, 8
  c.evaluator.every_epochs = 1
  c.evaluator.batch_size = 12
  c.log_every_steps = 1
  c.checkpoint_every_steps = 100
  return set_fields(c, overrides)


@pytest.mark.parametrize("overrides,message", [
    ({"stream": "joint,motion"}, "HiCLR pretrains one stream per run"),
    ({"stream": "depth"}, "config.stream='depth'"),
    ({"data.variant": "standard"}, "HiCLR trains on the 50-frame clips: expected 'frame50'"),
    ({"hiclr.aug_method": "127"}, "unknown option.s. 7"),
    ({"hiclr.mask_ratio": 1.0}, "config.hiclr.mask_ratio=1.0 must be in"),
    ({"moco.queue_size": 30}, "queue size 30 is not a multiple of the global batch 12"),
    ({"moco.temperature": 0.0}, "config.moco.temperature=0.0 must be positive"),
    ({"model.name": "resnet"}, "config.model.name='resnet'"),
    ({"model.stgcn.hidden_channels": 0}, "config.model.stgcn.hidden_channels"),
])
def test_impossible_setups_are_one_line_errors(overrides, message):
  with pytest.raises(ValueError, match=message) as err:
    pretrain.validate_config(tiny_config("data", **overrides), num_train=36, num_devices=1, process_count=1)
  assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["synthetic", "msr_action3d", "ntu60_xsub", "synthetic_dsta", "ntu60_xsub_dsta"])
def test_protocol_configs_expect_the_encoder_their_pretraining_trains(name):
  # linear_hiclr.py:<name> must accept what pretrain_hiclr.py:<name> writes (the CPU-sized
  # configs train CMD's GRU, the <name>_dsta ones DSTA-Net, the others ST-GCN)
  from configs import finetune_hiclr, semi_hiclr  # pylint: disable=import-outside-toplevel
  trained = pretrain_hiclr.get_config(name).model.name
  assert trained == ("dsta" if name.endswith("_dsta") else "gru" if "xsub" not in name else "stgcn")
  for protocol in (linear_hiclr, finetune_hiclr, semi_hiclr):
    assert protocol.get_config(name).expected_encoder == trained


@contextlib.contextmanager
def recording_compilations():
  """Records the programs JAX compiles inside the block: ``jax.log_compiles`` logs one line
  "Compiling <name> with global shapes and types (...)" per compilation (also when the
  persistent cache then supplies the executable); the list holds those lines."""
  lines: list[str] = []

  class Handler(logging.Handler):
    def emit(self, record):
      message = record.getMessage()
      if message.startswith("Compiling "):
        lines.append(message.split(". Argument mapping")[0])

  logger, handler = logging.getLogger("jax"), Handler(level=logging.DEBUG)
  level = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.DEBUG)
  try:
    with jax.log_compiles(True):
      yield lines
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="module")
def uninterrupted(frame50_data, tmp_path_factory):
  """3 epochs, mining from epoch 1, the kNN monitor after every epoch; with the compilations counted."""
  workdir = tmp_path_factory.mktemp("hiclr_a")
  with recording_compilations() as compiled:
    result = pretrain.train_and_evaluate(tiny_config(frame50_data, encoder="gru"), workdir)
  return workdir, result, compiled


def test_a_run_logs_the_loss_terms_mining_and_knn(uninterrupted):
  workdir, result, _ = uninterrupted
  assert result.step == 9
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in rows if r["split"] == "train"]
  assert {"loss", "loss_info", "loss_h1", "loss_h2", "acc1", "mask_param", "lr", "mining"} <= set(train[0])
  # steps 1-3 are epoch 0 (no mining), steps 4-9 epochs 1 and 2 (mining): a 0-based epoch >= 1
  assert [r["mining"] for r in train] == [0.0] * 3 + [1.0] * 6
  for r in train:
    assert r["loss"] == pytest.approx(r["loss_info"] + 0.5 * (r["loss_h1"] + r["loss_h2"]), rel=1e-5)
  evals = [r for r in rows if r["split"] == "eval"]
  assert [r["epoch"] for r in evals] == [0, 1, 2, 3] and all(0 <= r["knn_top1"] <= 1 for r in evals)
  config = pretrained.read_pretrain_config(workdir)
  assert (config.method, config.model.name, config.data.variant) == ("hiclr", "gru", "frame50")


def test_compilations_do_not_grow_with_epochs_evaluations_or_mining(uninterrupted):
  """9 steps over 3 epochs, mining switched on after the first, the kNN monitor before training
  and after every epoch (4 evaluations): the monitor's programs are compiled for its first
  evaluation (unless an earlier test of the session compiled the same module-level functions
  for the same shapes), the train step once at the first step, and nothing after that (no
  compilation per epoch, per evaluation or when mining starts)."""
  _, _, compiled = uninterrupted
  names = [re.match(r"Compiling (\S+)", line).group(1) for line in compiled]
  assert names.count("jit(train_step)") == 1, compiled
  assert names[-1] == "jit(train_step)", compiled[names.index("jit(train_step)"):]


def test_kill_and_resume_across_mining_ends_in_the_same_state(frame50_data, uninterrupted, tmp_path):
  workdir_a, _, _ = uninterrupted
  config = tiny_config(frame50_data, encoder="gru")
  first = pretrain.train_and_evaluate(config, tmp_path, stop_after_step=2)  # killed in epoch 0
  assert first.step == 2
  second = pretrain.train_and_evaluate(config, tmp_path)  # resumes; mining starts at step 4
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
def hiclr_sharded_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("hiclr_sharded") / "result.npz"
  run_processes([[sys.executable, "-m", "tests.distributed_worker", "hiclr_sharded_step", str(out)]],
                out.parent / "logs", num_devices=8, timeout=400)
  with np.load(out) as f:
    return {k: f[k] for k in f.files}


# The worker runs this comparison in float64 (its docstring says why: ReLU units at the
# rounding boundary). The encoder's BatchNorm statistics and weight gradients are sums over
# the 16 clips x 50 frames of a step (the GRU: per input channel, and through the recurrence),
# ordered differently on 8 devices: ~log2(n) u = 2e-15 relative to the terms' magnitude (not
# to a cancelling result),
# which the SGD steps (lr 0.1, gradients of L2-normalised features up to ~1e2) amplify to
# ~1e-12. Every leaf is compared relative to its own scale (its largest entry, at least 1):
# 1e-9 leaves ~1000x; a missing or doubled step, a wrong mask or BN batch would differ by
# more than 1e-3.
def assert_close_to_scale(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
  assert sorted(got) == sorted(want)
  for name in sorted(want):
    a, b = got[name], want[name]
    assert a.shape == b.shape and a.dtype == b.dtype, name
    if a.dtype.kind != "f":
      np.testing.assert_array_equal(a, b, err_msg=name)
    elif a.size:
      tol = 1e-9 * max(1.0, float(np.max(np.abs(b))))
      assert float(np.max(np.abs(a - b))) <= tol, (name, float(np.max(np.abs(a - b))), tol)


def test_eight_devices_give_the_same_steps_as_one(hiclr_sharded_run):
  """Float64 (the worker's docstring): losses and every state leaf within 1e-9 of their scale."""
  r = hiclr_sharded_run
  names = sorted(k[len("mesh1/metrics/"):] for k in r if k.startswith("mesh1/metrics/"))
  assert {"loss", "loss_info", "loss_h1", "loss_h2", "mining"} <= set(names)
  assert r["mesh1/metrics/mining"].tolist() == [0.0, 1.0, 1.0]
  for name in names:
    np.testing.assert_allclose(r[f"mesh8/metrics/{name}"], r[f"mesh1/metrics/{name}"], err_msg=name, rtol=1e-9,
                               atol=1e-12)
  state1 = {k[len("mesh1/state/"):]: v for k, v in r.items() if k.startswith("mesh1/state/")}
  state8 = {k[len("mesh8/state/"):]: v for k, v in r.items() if k.startswith("mesh8/state/")}
  assert int(state8["step"]) == distributed_worker.STEPS
  assert_close_to_scale(state8, state1)


# ---------------------------------------------------------------------------------------
# Imported checkpoints and the protocols


@pytest.fixture(scope="module")
def imported(frame50_data, tmp_path_factory):
  """HiCLR checkpoints as the reference saves them (one per stream), imported under the tiny config."""
  torch = pytest.importorskip("torch")
  from cmd_jax.interop import convert  # pylint: disable=import-outside-toplevel
  from tests.test_torch_hiclr import TorchHiCLR, randomise, stgcn_encoder  # pylint: disable=import-outside-toplevel

  tmp = tmp_path_factory.mktemp("hiclr_imported")
  workdirs = {}
  for i, stream in enumerate(("joint", "motion")):
    config = tiny_config(frame50_data, stream=stream)
    torch.manual_seed(i)
    model = TorchHiCLR(lambda: stgcn_encoder())
    randomise(model, 10 + i)
    state_dict = model.state_dict()
    state_dict["queue"] = torch.nn.functional.normalize(torch.randn(8, 24), dim=0)  # the config's queue size
    state_dict["queue_ptr"] = torch.tensor([12])  # a multiple of the batch, as the reference's always is
    torch.save(state_dict, tmp / f"{stream}.pt")
    workdirs[stream] = str(tmp / stream)
    convert.import_checkpoint(tmp / f"{stream}.pt", workdirs[stream], config, epoch=2)
  return workdirs


def test_pretraining_continues_from_an_imported_checkpoint(imported, frame50_data):
  config = tiny_config(frame50_data)
  result = pretrain.train_and_evaluate(config, imported["joint"])  # 3 epochs of 3 steps: epoch 2 is left
  assert result.step == 9
  rows = [json.loads(line) for line in open(f"{imported['joint']}/metrics.jsonl", encoding="utf-8")]
  assert [r["step"] for r in rows if r["split"] == "train"] == [7, 8, 9]
  assert all(r["mining"] == 1.0 for r in rows if r["split"] == "train")


def test_protocols_take_imported_and_merged_workdirs(imported, frame50_data, tmp_path):
  both = f"{imported['joint']},{imported['motion']}"
  c = knn_config.get_config("synthetic")
  with c.unlocked():
    c.init_from, c.streams, c.data.data_dir, c.eval_batch_size, c.plots = both, "joint,motion", frame50_data, 12, False
  results = get_trainer(c.trainer)(c, tmp_path / "knn")
  assert set(results["streams"]) == {"joint", "motion"} and "fusion" in results
  assert results["data_variant"] == "frame50" and results["pretrain_method"] == "hiclr"

  c = linear_hiclr.get_config("synthetic")
  with c.unlocked():
    c.init_from, c.streams, c.data.data_dir, c.plots = both, "joint,motion", frame50_data, False
    c.num_epochs, c.eval_every_epochs, c.batch_size, c.eval_batch_size = 2, 1, 12, 12
    c.expected_encoder = "stgcn"
    c.fusion_weights = "joint=0.6,motion=0.4;joint=0.5,motion=0.5"
  results = get_trainer(c.trainer)(c, tmp_path / "linear")
  weighted = results["weighted_logit_fusion"]
  assert len(weighted["sets"]) == 2 and weighted["best_of_sets_top1"] == max(s["top1"] for s in weighted["sets"])

  pre = pretrained.load_pretrained_streams(both)
  assert set(pre.params) == {"joint", "motion"} and pre.workdirs == [imported["joint"], imported["motion"]]
  with pytest.raises(ConfigError, match="joint is pretrained in more than one"):
    pretrained.load_pretrained_streams(f"{imported['joint']},{imported['joint']}")


def test_protocol_settings_of_another_method_or_encoder_refuse_the_workdir(imported, frame50_data, tmp_path):
  c = linear_config.get_config("synthetic")
  with c.unlocked():
    c.init_from, c.streams, c.data.data_dir = imported["motion"], "motion", frame50_data
  with pytest.raises(ConfigError, match=r"is a 'hiclr' pretraining \(method\).*settings for 'cmd'.*"
                                        r"--config.expected_method="):
    get_trainer(c.trainer)(c, tmp_path / "cmd_linear")
  c = linear_hiclr.get_config("synthetic_dsta")
  with c.unlocked():
    c.init_from, c.streams, c.data.data_dir = imported["motion"], "motion", frame50_data
  with pytest.raises(ConfigError, match=r"is a 'stgcn' pretraining \(encoder\).*settings for 'dsta'"):
    get_trainer(c.trainer)(c, tmp_path / "dsta_linear")
  assert not (tmp_path / "cmd_linear" / "results.json").exists()
