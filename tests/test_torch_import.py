"""Tests for cmd_jax.interop (CMD's format, the command; docs/references.md#cmd-pretraining-settings): reference checkpoints <-> workdirs.

The reference-format state_dicts are built here WITHOUT the converter: a small torch module
tree named as the reference's ``MoCo``/``BIGRU`` (BatchNorm1d ``input_norm``, ``encoder.gru``
= ``nn.GRU(bidirectional=True)``, ``fc`` = ``Sequential(Linear, ReLU, Linear)`` or a
``Linear``, the three queues ``(D, K)`` and their int64 pointers), with every tensor
randomised, at tiny sizes (hidden 8, 2 layers, 150 input features, queue 16, embed 8).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from cmd_jax import api, pretrained
from cmd_jax.errors import ConfigError
from cmd_jax.interop import cli, convert
from cmd_jax.interop.common import TorchImportError

H, LAYERS, F, K, D, CLASSES = 8, 2, 150, 16, 8, 5
SUFFIX = {"joint": "", "motion": "_motion", "bone": "_bone"}


class EncoderRNN(nn.Module):
  def __init__(self):
    super().__init__()
    self.gru = nn.GRU(F, H, num_layers=LAYERS, bidirectional=True, batch_first=True)


class BIGRU(nn.Module):
  def __init__(self, num_class, mlp):
    super().__init__()
    self.input_norm = nn.BatchNorm1d(F)
    self.encoder = EncoderRNN()
    self.fc = nn.Linear(2 * H, num_class)
    if mlp:
      self.fc = nn.Sequential(nn.Linear(2 * H, 2 * H), nn.ReLU(), self.fc)


class MoCo(nn.Module):
  def __init__(self, pretrain=True):
    super().__init__()
    for m in SUFFIX.values():
      setattr(self, f"encoder_q{m}", BIGRU(D if pretrain else CLASSES, mlp=pretrain))
      if pretrain:
        setattr(self, f"encoder_k{m}", BIGRU(D, mlp=True))
    if pretrain:
      for m in SUFFIX.values():
        self.register_buffer(f"queue{m}", nn.functional.normalize(torch.randn(D, K), dim=0))
        self.register_buffer(f"queue_ptr{m}", torch.zeros(1, dtype=torch.long))


def reference_state_dict(pretrain=True, seed=0):
  torch.manual_seed(seed)
  model = MoCo(pretrain)
  sd = model.state_dict()
  for i, (key, value) in enumerate(sd.items()):
    if key.endswith("num_batches_tracked"):
      sd[key] = torch.tensor(100 + i, dtype=torch.int64)
    elif key.startswith("queue_ptr"):
      sd[key] = torch.tensor([4], dtype=torch.int64)
    elif key.endswith("running_var"):
      sd[key] = torch.rand_like(value) + 0.5
    else:
      sd[key] = torch.randn_like(value)
  return sd


def save(path, sd, epoch=7):
  torch.save({"epoch": epoch, "state_dict": sd, "optimizer": {}}, path)
  return path


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  root = tmp_path_factory.mktemp("torch_import")
  sd = reference_state_dict()
  ckpt = save(root / "checkpoint_0007.pth.tar", sd)
  workdir = root / "w"
  meta = convert.import_checkpoint(ckpt, workdir)
  return sd, workdir, meta, root


def restore_state(workdir):
  from cmd_jax import checkpoint, data, sharding
  from cmd_jax.trainers import pretrain as cmd_pretrain
  import jax
  config = pretrained.read_pretrain_config(workdir)
  like = jax.eval_shape(lambda: cmd_pretrain.create_train_state(config, data.layout_of(config.data), 1))
  ckpt = checkpoint.Checkpointer(workdir)
  try:
    step = ckpt.latest_step()
    state, _, meta = ckpt.restore(step, like, sharding.make_mesh())
  finally:
    ckpt.close()
  return config, step, jax.tree.map(np.asarray, state), meta


def test_every_array_lands_where_the_spec_says(imported):
  sd, workdir, meta, _ = imported
  config, step, state, stored_meta = restore_state(workdir)
  assert step == 7 and int(state.step) == 7 and meta["kind"] == "pretrain" and stored_meta["torch_epoch"] == 7
  assert (config.model.hidden_size, config.model.num_layers, config.model.embed_dim) == (H, LAYERS, D)
  assert config.model.mlp and config.moco.queue_size == K and config.data.dataset == "ntu60"
  t = lambda key: sd[key].numpy()  # noqa: E731
  for m, s in SUFFIX.items():
    for part, params, stats in (("q", state.params, state.batch_stats), ("k", state.key_params, state.key_batch_stats)):
      p = f"encoder_{part}{s}"
      for k in range(LAYERS):
        for rev in ("", "_reverse"):
          for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            np.testing.assert_array_equal(params[m]["gru"][f"{w}_l{k}{rev}"], t(f"{p}.encoder.gru.{w}_l{k}{rev}"))
      np.testing.assert_array_equal(params[m]["input_norm"]["scale"], t(f"{p}.input_norm.weight"))
      np.testing.assert_array_equal(params[m]["input_norm"]["bias"], t(f"{p}.input_norm.bias"))
      np.testing.assert_array_equal(stats[m]["input_norm"]["mean"], t(f"{p}.input_norm.running_mean"))
      np.testing.assert_array_equal(stats[m]["input_norm"]["var"], t(f"{p}.input_norm.running_var"))
      for i in ("0", "2"):
        np.testing.assert_array_equal(params[m][f"fc_{i}"]["weight"], t(f"{p}.fc.{i}.weight"))
        np.testing.assert_array_equal(params[m][f"fc_{i}"]["bias"], t(f"{p}.fc.{i}.bias"))
      assert stored_meta["num_batches_tracked"][p] == int(sd[f"{p}.input_norm.num_batches_tracked"])
    np.testing.assert_array_equal(state.queues[m], t(f"queue{s}").T)
  assert int(state.queue_ptr) == 4


def test_round_trip_is_bit_identical(imported, tmp_path):
  sd, workdir, _, _ = imported
  out = convert.export_checkpoint(workdir, tmp_path / "out.pth.tar")
  loaded = torch.load(tmp_path / "out.pth.tar", weights_only=True)
  assert loaded["epoch"] == 7 and loaded["optimizer"] is None and out["epoch"] == 7
  back = loaded["state_dict"]
  assert set(back) == set(sd)
  for key, value in sd.items():
    assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
    assert torch.equal(back[key], value), key
  # ... and the exported state_dict loads strictly into the reference-named torch model.
  MoCo().load_state_dict(back, strict=True)


def test_cli_import_and_export_with_module_prefix(tmp_path):
  sd = reference_state_dict(seed=1)
  ckpt = save(tmp_path / "ddp.pth.tar", {f"module.{k}": v for k, v in sd.items()}, epoch=3)
  assert cli.main([str(ckpt), "--workdir", str(tmp_path / "w")]) == 0
  assert cli.main(["--export", str(tmp_path / "w"), str(tmp_path / "out.pth.tar")]) == 0
  back = torch.load(tmp_path / "out.pth.tar", weights_only=True)["state_dict"]
  assert set(back) == set(sd) and all(torch.equal(back[k], v) for k, v in sd.items())


def test_imported_workdir_feeds_init_from_and_load_encoder(imported):
  sd, workdir, _, _ = imported
  pre = pretrained.load_pretrained(workdir)
  assert pre.modalities == ("joint", "motion", "bone") and pre.step == 7
  np.testing.assert_array_equal(pre.params["bone"]["gru"]["weight_hh_l1"],
                                sd["encoder_q_bone.encoder.gru.weight_hh_l1"].numpy())
  assert "fc_0" not in pre.params["joint"]
  encoder = api.load_encoder(workdir, "motion")
  x = np.random.default_rng(0).normal(size=(3, 3, 12, 25, 2)).astype(np.float32)
  feats = encoder.features(x, crop=None, preprocess=False)
  assert feats.shape == (3, 2 * H) and np.all(np.isfinite(feats))


def test_downstream_only_checkpoint(tmp_path):
  sd = reference_state_dict(pretrain=False, seed=2)
  assert not any(k.startswith(("encoder_k", "queue")) for k in sd)
  ckpt = save(tmp_path / "linear.pth.tar", sd, epoch=80)
  meta = convert.import_checkpoint(ckpt, tmp_path / "w")
  assert meta["kind"] == "downstream" and "copies" in meta["key_encoders"] and "fresh" in meta["queues"]
  config, _, state, _ = restore_state(tmp_path / "w")
  assert not config.model.mlp and config.model.embed_dim == CLASSES
  np.testing.assert_array_equal(state.key_params["joint"]["gru"]["weight_ih_l0"],
                                sd["encoder_q.encoder.gru.weight_ih_l0"].numpy())
  np.testing.assert_array_equal(state.params["bone"]["fc"]["weight"], sd["encoder_q_bone.fc.weight"].numpy())
  feats = api.load_encoder(tmp_path / "w").features(
      np.ones((2, 3, 10, 25, 2), np.float32), crop=None, preprocess=False)
  assert feats.shape == (2, 2 * H)
  back = convert.export_checkpoint(tmp_path / "w", tmp_path / "back.pth.tar")["state_dict"]
  assert set(back) == set(sd) and all(torch.equal(back[k], v) for k, v in sd.items())


def _bad_inputs(tmp_path):
  sd = reference_state_dict(seed=3)
  not_torch = tmp_path / "not_torch.pth.tar"
  not_torch.write_text("this is not a checkpoint\n")
  good = save(tmp_path / "good.pth.tar", sd)
  truncated = tmp_path / "truncated.pth.tar"
  truncated.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
  no_bone = {k: v for k, v in sd.items() if "_bone" not in k}
  wider = dict(sd)
  wider["encoder_q_motion.encoder.gru.weight_hh_l0"] = torch.zeros(3 * 16, 16)
  agcn = {k: v for k, v in sd.items() if not k.startswith("encoder_q.")}
  agcn.update({"encoder_q.fc.weight": torch.zeros(128, 256), "encoder_q.fc.bias": torch.zeros(128),
               "encoder_q.data_bn.weight": torch.zeros(150), "encoder_q.data_bn.running_mean": torch.zeros(150),
               "encoder_q.st_gcn_networks.0.gcn.conv.weight": torch.zeros(64, 3, 1, 1)})
  nan = dict(sd)
  nan["encoder_q_bone.encoder.gru.weight_hh_l0"] = sd["encoder_q_bone.encoder.gru.weight_hh_l0"].clone()
  nan["encoder_q_bone.encoder.gru.weight_hh_l0"][0, 0] = float("nan")
  return [
      (save(tmp_path / "nan.pth.tar", nan), {}, ["holds non-finite values", "bone/gru/weight_hh_l0 (1 of",
                                                 "nothing was written"]),
      (not_torch, {}, ["not a readable torch checkpoint"]),
      (truncated, {}, ["not a readable torch checkpoint"]),
      (save(tmp_path / "no_bone.pth.tar", no_bone), {}, ["missing keys", "encoder_k_bone.* (the whole encoder",
                                                         "queue_bone"]),
      (save(tmp_path / "wider.pth.tar", wider), {}, ["shape mismatch", "encoder_q_motion.encoder.gru.weight_hh_l0",
                                                     "(48, 16)", "(24, 8)"]),
      (good, {"hidden_size": 16}, ["shape mismatch", "hidden size 16", "checkpoint's first encoder has hidden size 8",
                                      "checkpoint (24,), expected (48,)"]),
      (save(tmp_path / "agcn.pth.tar", agcn), {}, ["unexpected keys", "encoder_q.data_bn.weight",
                                                   "encoder_q.st_gcn_networks.0.gcn.conv.weight", "missing keys",
                                                   "encoder_q.* (the whole encoder"]),
  ]


def test_bad_inputs_give_clear_errors_and_write_nothing(tmp_path):
  for i, (path, kwargs, needles) in enumerate(_bad_inputs(tmp_path)):
    target = tmp_path / f"target{i}"
    with pytest.raises(TorchImportError) as err:
      convert.import_checkpoint(path, target, **kwargs)
    for needle in needles:
      assert needle in str(err.value), (path.name, needle, str(err.value))
    assert not target.exists()
  assert not [p for p in os.listdir(tmp_path) if "importing" in p]


def test_cli_reports_an_error_and_an_existing_workdir_is_refused(tmp_path, capsys):
  bad = tmp_path / "x.pth.tar"
  bad.write_bytes(b"\x00\x01garbage")
  assert cli.main([str(bad), "--workdir", str(tmp_path / "w")]) == 1
  assert "not a readable torch checkpoint" in capsys.readouterr().err and not (tmp_path / "w").exists()
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "keep.txt").write_text("x")
  with pytest.raises(TorchImportError, match="not empty"):
    convert.import_checkpoint(save(tmp_path / "ok.pth.tar", reference_state_dict()), tmp_path / "full")
  assert os.listdir(tmp_path / "full") == ["keep.txt"]


def test_stream_is_refused_for_a_checkpoint_that_names_its_streams(tmp_path):
  """CMD's keys name its three streams: --stream (meant for one-stream formats) is refused."""
  path = save(tmp_path / "ntu60_xsub_motion.pth.tar", reference_state_dict())
  with pytest.raises(TorchImportError, match="--stream is for one-stream checkpoints; a CMD checkpoint"):
    convert.import_checkpoint(path, tmp_path / "w", stream="motion")
  assert not (tmp_path / "w").exists()


def test_pretraining_continues_from_an_imported_checkpoint(tmp_path):
  """Scope (b): an imported reference checkpoint (7 completed epochs) is continued in JAX by
  train_and_evaluate: it starts at step 7 * steps_per_epoch with the imported weights and
  queues, and runs exactly the remaining epoch."""
  import jax
  from cmd_jax import metrics as metrics_lib
  from cmd_jax.trainers import pretrain as cmd_pretrain
  from configs import pretrain_cmd
  from tests.conftest import build_tiny_synthetic

  config = pretrain_cmd.get_config("synthetic")
  with config.unlocked():
    config.data.data_dir = build_tiny_synthetic(tmp_path / "data")
    config.model.hidden_size, config.model.num_layers, config.model.embed_dim = H, LAYERS, D
    config.moco.queue_size, config.cmd.topk, config.batch_size = K, 8, 8
    config.augment.frames = config.augment.min_length = 8
    config.evaluator.name = ""
    config.num_epochs = 8  # 7 completed in PyTorch + 1 here
  sd = reference_state_dict(seed=3)
  # A pointer that is not a multiple of the batch (the enqueue writes whole batches): refused.
  convert.import_checkpoint(save(tmp_path / "ptr4.pth.tar", sd, epoch=7), tmp_path / "w4", config)
  with pytest.raises(ConfigError, match="the queue pointer 4 is not a multiple of config.batch_size=8"):
    cmd_pretrain.train_and_evaluate(config, tmp_path / "w4")
  for key in [k for k in sd if k.startswith("queue_ptr")]:  # the reference's pointers are multiples of its batch
    sd[key] = torch.tensor([8])
  workdir = tmp_path / "w"
  convert.import_checkpoint(save(tmp_path / "checkpoint_0007.pth.tar", sd, epoch=7), workdir, config)
  steps_per_epoch = 36 // 8  # the tiny synthetic xsub training split
  result = cmd_pretrain.train_and_evaluate(config, workdir)
  assert int(result.state.step) == 8 * steps_per_epoch
  logged = [r["step"] for r in metrics_lib.read_metrics(workdir, "train")]
  assert logged and min(logged) > 7 * steps_per_epoch and max(logged) == 8 * steps_per_epoch
  # The run started from the imported weights: after 4 EMA steps (momentum 0.99) the key
  # encoder is still 96% the imported one, and far from a fresh initialisation.
  key = np.asarray(jax.device_get(result.state.key_params["joint"]["gru"]["weight_ih_l0"])).ravel()
  imported = sd["encoder_k.encoder.gru.weight_ih_l0"].numpy().ravel()
  assert np.corrcoef(key, imported)[0, 1] > 0.99
