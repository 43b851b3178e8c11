"""SkeletonCLR, AimCLR and CrosSCLR checkpoint import/export (``cmd_jax.interop.skeletonclr``,
``cmd_jax.interop.crossclr`` through ``cmd_jax.interop.convert``).

The checkpoints are the ``state_dict``\\ s of the PyTorch models of the references written from
their description (``tests/torch_skeletonclr.py``, ``tests/torch_aimclr.py``,
``tests/torch_crossclr.py``) with the ST-GCN of ``tests/torch_stgcn.py`` in the references'
``edge_importance.<i>`` naming, small (4 base channels, feature 16, embedding 8, queue 32),
random weights and BatchNorm statistics, saved as torchlight's ``save_model`` does (bare).

Checked: import -> export gives back every tensor bit for bit and loads strictly into the
PyTorch models; the imported workdir's features (``cmd_jax.api``, every stream) equal the
PyTorch encoders' eval-mode pooled features; the heads land where the method's state holds
them; which method and stream (from the run's ``config.yaml``, the file name, ``--method``,
``--stream``) and one-line errors naming the file and the candidates when nothing says it;
CrosSCLR's shared-head copies and queue pointers checked; continued pretraining.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from cmd_jax import api, checkpoint, data, pretrained, sharding  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.layouts import NTU25  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.methods import create_train_state  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.models import graph  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.interop import cli, convert, crossclr, torchlight  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.interop.common import TorchImportError  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.interop.formats import FORMATS  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.interop.skeletonclr import SKELETONCLR  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.trainers import pretrain  # noqa: E402  pylint: disable=wrong-import-position
from tests.test_hiclr_pretrain import frame50_data  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
from tests.test_skeletonclr_aimclr_pretrain import tiny_config  # noqa: E402  pylint: disable=wrong-import-position
from tests.test_torch_hiclr import TorchHiCLR, randomise, stgcn_encoder  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_aimclr import TorchAimCLRStep, TorchEADM  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_crossclr import TorchCrosSCLRStep, bone_of, motion_of  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_skeletonclr import TorchSkeletonCLRStep  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_stgcn import TorchSTGCN  # noqa: E402  pylint: disable=wrong-import-position

H, HIDDEN_DIM, D, K = 4, 16, 8, 32
STREAMS = ("joint", "motion", "bone")
TO_STREAM = {"joint": lambda x: x, "motion": motion_of, "bone": bone_of}  # the reference's conversions


def list_stgcn(mlp: bool = True) -> TorchSTGCN:
  """The references' ST-GCN (edge importances an ``nn.ParameterList``), small."""
  return TorchSTGCN(graph.layout_graph(NTU25), hidden_channels=H, hidden_dim=HIDDEN_DIM, num_class=D, mlp=mlp,
                    edge_importance_list=True)


def skeletonclr_model() -> TorchSkeletonCLRStep:
  return TorchSkeletonCLRStep(list_stgcn, D, K, 0.999, 0.07)


def crossclr_model() -> TorchCrosSCLRStep:
  return TorchCrosSCLRStep(lambda: list_stgcn(mlp=False), HIDDEN_DIM, D, K, 0.999, 0.07)


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """``tests.test_torch_hiclr.randomise`` (every weight, BN statistic, batch count), with the
  edge importances around 1 as trained ones are and every queue pointer at 8."""
  randomise(model, seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if ".edge_importance." in name:
        p.add_(1.0)
    for name, b in model.named_buffers():
      if name.startswith("queue_ptr"):
        b.fill_(8)
  return model


def write_run_config(folder, **args) -> None:
  """A ``config.yaml`` as torchlight's ``IO.save_arg`` writes it into the run's work_dir."""
  folder.mkdir(parents=True, exist_ok=True)
  with open(folder / "config.yaml", "w", encoding="utf-8") as f:
    f.write("# command line: main.py pretrain_aimclr --config config/ntu60/pretext/pretext_aimclr_xview.yaml\n\n")
    yaml.dump({"base_lr": 0.1, "work_dir": str(folder), **args}, f, default_flow_style=False, indent=4)


def assert_state_dicts_identical(got, want) -> None:
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


def restored_state(workdir):
  config = pretrained.read_pretrain_config(workdir)
  like = jax.eval_shape(lambda: create_train_state(config, data.layout_of(config.data), 1))
  ckpt = checkpoint.Checkpointer(workdir)
  try:
    state, _, _ = ckpt.restore(ckpt.latest_step(), like, sharding.make_mesh())
  finally:
    ckpt.close()
  return jax.tree.map(np.asarray, state)


def torch_features(encoder: torch.nn.Module, x: np.ndarray, stream: str) -> np.ndarray:
  encoder.eval()
  with torch.no_grad():
    return encoder(TO_STREAM[stream](torch.from_numpy(x)))[0].numpy()


def clips(seed: int, n: int = 4) -> np.ndarray:
  x = np.random.default_rng(seed).normal(size=(n, 3, 50, 25, 2)).astype(np.float32)
  x[n // 2:, :, :, :, 1] = 0.0  # absent second persons, as in NTU
  return x


@pytest.fixture(scope="module")
def aimclr_import(tmp_path_factory):
  """An AimCLR run's ``epoch20_model.pt`` beside its ``config.yaml`` (``model:
  net.aimclr.AimCLR``, ``stream: motion``): the keys are SkeletonCLR's too, the config says
  which method and stream."""
  tmp = tmp_path_factory.mktemp("aimclr")
  torch.manual_seed(0)
  model = randomised(skeletonclr_model(), 1)
  run = tmp / "work_dir"
  write_run_config(run, model="net.aimclr.AimCLR", stream="motion")
  path = str(run / "epoch20_model.pt")
  torch.save(model.state_dict(), path)
  workdir = str(tmp / "workdir")
  meta = convert.import_checkpoint(path, workdir)
  return model, path, workdir, meta


@pytest.fixture(scope="module")
def crossclr_import(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("crossclr")
  torch.manual_seed(2)
  model = randomised(crossclr_model(), 3)
  path = str(tmp / "epoch300_model.pt")
  torch.save(model.state_dict(), path)
  workdir = str(tmp / "workdir")
  meta = convert.import_checkpoint(path, workdir)
  return model, path, workdir, meta


# ---------------------------------------------------------------------------------------
# SkeletonCLR / AimCLR


def test_aimclr_checkpoint_round_trips_and_loads_strictly(aimclr_import, tmp_path):
  model, path, workdir, meta = aimclr_import
  assert (meta["method"], meta["kind"], meta["step"]) == ("aimclr", "pretrain", 20)
  assert meta["stream"] == "motion" and meta["stream_from"] == str(Path(path).parent / "config.yaml")
  config = pretrained.read_pretrain_config(workdir)
  assert (config.method, config.stream, config.model.name, config.model.stgcn.hidden_channels,
          config.model.stgcn.hidden_dim, config.model.embed_dim, config.moco.queue_size) == (
              "aimclr", "motion", "stgcn", H, HIDDEN_DIM, D, K)
  assert convert.export_checkpoint(workdir, tmp_path / "out.pt")["epoch"] == 20
  exported = torch.load(tmp_path / "out.pt", weights_only=True)
  assert "encoder_q.edge_importance.9" in exported and "encoder_q.edge_importance10" not in exported
  assert_state_dicts_identical(exported, model.state_dict())
  skeletonclr_model().load_state_dict(exported, strict=True)
  TorchAimCLRStep(list_stgcn, D, K, 0.999, 0.07, drop=TorchEADM()).load_state_dict(exported, strict=True)


def test_imported_aimclr_gives_the_reference_features(aimclr_import):
  """``load_encoder(W, "motion")`` (joint clips in, motion computed inside) == the torch
  encoder_q on the reference's motion of the clips, eval mode, pooled feature. Tolerance as
  tests/test_torch_hiclr.py's: a float32 forward of ~10 layers whose sums have at most
  9 x 3 x 16 = 432 terms, ~1e-6 relative per layer on each side; 1e-5 of the feature's scale
  leaves 10x headroom."""
  model, _, workdir, _ = aimclr_import
  x = clips(4)
  got = api.load_encoder(workdir, modality="motion").features(x, crop=None, preprocess=False)
  want = torch_features(model.encoder_q, x, "motion")
  assert np.max(np.abs(got - want)) <= 1e-5 * float(np.max(np.abs(want)))


def test_method_and_stream_from_flags_or_a_one_line_error(aimclr_import, tmp_path, capsys):
  model, _, _, _ = aimclr_import
  sd = model.state_dict()
  bare = tmp_path / "bare"
  bare.mkdir()
  torch.save(sd, bare / "epoch20_model.pt")
  other = tmp_path / "other"
  write_run_config(other, model="net.st_gcn.Model", stream="joint")
  torch.save(sd, other / "epoch20_model.pt")
  cases = [  # (file, import arguments, what the error says)
      (bare / "epoch20_model.pt", {}, [f"{bare / 'epoch20_model.pt'}: the keys fit the checkpoints of skeletonclr "
                                       "and aimclr; give --method skeletonclr|aimclr"]),
      (other / "epoch20_model.pt", {}, ["says model class 'model'", "give --method skeletonclr|aimclr"]),
      (bare / "epoch20_model.pt", {"method": "skeletonclr"}, [
          "epoch20_model.pt: a SKELETONCLR checkpoint holds one stream and does not say which",
          "give --stream joint|motion|bone"]),
      (other / "epoch20_model.pt", {"method": "aimclr", "stream": "bone"}, ["--stream bone, but", "says joint"]),
  ]
  for i, (source, kwargs, needles) in enumerate(cases):
    target = tmp_path / f"target{i}"
    with pytest.raises(TorchImportError) as err:
      convert.import_checkpoint(source, target, **kwargs)
    assert "\n" not in str(err.value), str(err.value)
    for needle in needles:
      assert needle in str(err.value), (i, needle, str(err.value))
    assert not target.exists()
  assert cli.main([str(bare / "epoch20_model.pt"), "--workdir", str(tmp_path / "w")]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "--method skeletonclr|aimclr" in err and not (tmp_path / "w").exists()


def test_formats_detected_from_the_keys(aimclr_import, crossclr_import):
  """Which formats' ``detect`` accept which reference's keys."""
  def fits(state_dict):
    return [name for name, fmt in FORMATS.items() if fmt.detect(state_dict)]

  skeletonclr_sd = aimclr_import[0].state_dict()
  hiclr_sd = TorchHiCLR(stgcn_encoder).state_dict()
  assert fits(skeletonclr_sd) == ["skeletonclr", "aimclr"]
  assert fits(hiclr_sd) == ["hiclr"]  # mask_param, numbered edge importances
  assert fits({k: v for k, v in hiclr_sd.items() if k.startswith("encoder_q.")}) == ["hiclr"]  # HiCLR linear
  assert fits({k: v for k, v in skeletonclr_sd.items() if k.startswith("encoder_q.")}) == ["skeletonclr", "aimclr"]
  assert fits(crossclr_import[0].state_dict()) == ["crossclr"]
  # CMD's keys (GRU encoders per stream, own heads) stay CMD's alone.
  assert fits({"encoder_q.encoder.gru.weight_hh_l0": 0, "encoder_q_motion.encoder.gru.weight_hh_l0": 0,
               "encoder_q_motion.fc.0.weight": 0, "queue_motion": 0}) == ["cmd"]


# ---------------------------------------------------------------------------------------
# CrosSCLR


def test_crossclr_checkpoint_round_trips_and_loads_strictly(crossclr_import, tmp_path):
  model, _, workdir, meta = crossclr_import
  assert (meta["method"], meta["step"], meta["streams"]) == ("crossclr", 300, list(STREAMS)) and "stream" not in meta
  config = pretrained.read_pretrain_config(workdir)
  assert (config.method, config.modalities, config.model.stgcn.hidden_channels, config.model.embed_dim,
          config.moco.queue_size) == ("crossclr", "joint,motion,bone", H, D, K)
  convert.export_checkpoint(workdir, tmp_path / "out.pt")
  exported = torch.load(tmp_path / "out.pt", weights_only=True)
  assert_state_dicts_identical(exported, model.state_dict())
  crossclr_model().load_state_dict(exported, strict=True)


def test_crossclr_heads_land_in_the_state_and_features_match(crossclr_import):
  """H (the joint encoder's ``fc.0``/``fc.2``) in ``params["joint"]``, P (motion's/bone's
  ``fc.0``) in ``params[s]``, every stream's encoder and queue at its own place, the pointer
  once; the bone stream's features (its encoder and the reference's bone conversion) as the
  aimclr test's (same tolerance)."""
  model, _, workdir, _ = crossclr_import
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  state = restored_state(workdir)
  for side, params in (("q", state.params), ("k", state.key_params)):
    for i in ("0", "2"):
      np.testing.assert_array_equal(params["joint"][f"fc_{i}"]["weight"], sd[f"encoder_{side}.fc.{i}.weight"])
    for s in ("motion", "bone"):
      assert set(params[s]) - {"fc_0"} == set(params["joint"]) - {"fc_0", "fc_2"}
      np.testing.assert_array_equal(params[s]["fc_0"]["weight"], sd[f"encoder_{side}_{s}.fc.0.weight"])
  for s in STREAMS:
    suffix = "" if s == "joint" else f"_{s}"
    np.testing.assert_array_equal(state.params[s]["st_gcn_networks_0"]["gcn"]["conv"]["weight"],
                                  sd[f"encoder_q{suffix}.st_gcn_networks.0.gcn.conv.weight"])
    np.testing.assert_array_equal(state.key_batch_stats[s]["data_bn"]["mean"],
                                  sd[f"encoder_k{suffix}.data_bn.running_mean"])
    np.testing.assert_array_equal(state.queues[s], sd["queue" + ("" if s == "joint" else f"_{s}")].T)
  assert int(state.queue_ptr) == 8
  x = clips(5, n=2)
  got = api.load_encoder(workdir, modality="bone").features(x, crop=None, preprocess=False)
  want = torch_features(model.encoder("q", "bone"), x, "bone")
  assert np.max(np.abs(got - want)) <= 1e-5 * float(np.max(np.abs(want)))


def test_crossclr_bad_checkpoints_are_one_line_errors(crossclr_import, tmp_path):
  model, _, _, _ = crossclr_import
  sd = model.state_dict()
  config = crossclr.resolve_config(sd)
  like = jax.eval_shape(lambda: create_train_state(config, data.layout_of(config.data), 1))
  found = {k: v.numpy() for k, v in torchlight.with_numbered_edge_importance(sd).items()}
  crossclr.check_state_dict(found, config, like)  # the reference's own: fine
  copy = dict(found, **{"encoder_k_bone.fc.2.2.weight": found["encoder_k.fc.2.weight"] + 1e-3})
  with pytest.raises(TorchImportError, match=r"encoder_k_bone.fc.2.2.weight differs from encoder_k.fc.2.weight "
                                             r"\(max \|diff\| 0.001\); expected the same tensor"):
    crossclr.check_state_dict(copy, config, like)
  pointers = dict(found, queue_ptr_bone=np.array([16]))
  with pytest.raises(TorchImportError, match="the queue pointers differ .queue_ptr = 8, queue_ptr_motion = 8, "
                                             "queue_ptr_bone = 16."):
    crossclr.check_state_dict(pointers, config, like)
  linear = {k: v for k, v in sd.items() if k.startswith("encoder_q") and ".fc." not in k}
  cases = [({"stream": "motion"}, sd, "--stream is for one-stream checkpoints; a CROSSCLR checkpoint"),
           ({}, linear, "query encoders only (a CrosSCLR linear-evaluation checkpoint)")]
  for i, (kwargs, state_dict, needle) in enumerate(cases):
    torch.save(state_dict, tmp_path / f"bad{i}.pt")
    with pytest.raises(TorchImportError, match=needle.replace("(", r"\(").replace(")", r"\)")) as err:
      convert.import_checkpoint(tmp_path / f"bad{i}.pt", tmp_path / f"w{i}", method="crossclr", **kwargs)
    assert "\n" not in str(err.value) and not (tmp_path / f"w{i}").exists()


# ---------------------------------------------------------------------------------------
# Continued pretraining


def test_pretraining_continues_from_an_imported_skeletonclr_checkpoint(frame50_data, tmp_path):  # noqa: F811
  """A SkeletonCLR checkpoint (CMD's GRU, tiny: the loop does not depend on the encoder, and
  the GRU compiles fast) written in the reference's layout, named after its stream, imported
  at epoch 2 of 3 under the run's config: the run does the remaining epoch (steps 7-9) from
  the imported weights."""
  config = tiny_config("skeletonclr", frame50_data, **{"evaluator.name": ""})
  fresh = create_train_state(config, data.layout_of(config.data), 3)
  sd = SKELETONCLR.state_to_state_dict(fresh, config)
  gen = torch.Generator().manual_seed(7)
  sd = {k: (v + 0.1 * torch.randn(v.shape, generator=gen) if v.dtype == torch.float32 and k != "queue" else v)
        for k, v in sd.items()}
  sd["queue_ptr"] = torch.tensor([12])  # a multiple of the batch, as the reference's always is
  torch.save(sd, tmp_path / "ntu60_xsub_joint.pt")
  workdir = tmp_path / "w"
  meta = convert.import_checkpoint(tmp_path / "ntu60_xsub_joint.pt", workdir, config, method="skeletonclr", epoch=2)
  assert (meta["stream"], meta["stream_from"], meta["step"]) == ("joint", "the file name", 2)
  result = pretrain.train_and_evaluate(config, workdir)
  assert result.step == 9
  # After 3 EMA steps (momentum 0.999 in the tiny config) the key encoder is still the imported one.
  key = np.asarray(jax.device_get(result.state.key_params["gru"]["weight_ih_l0"])).ravel()
  imported = sd["encoder_k.encoder.gru.weight_ih_l0"].numpy().ravel()
  assert np.corrcoef(key, imported)[0, 1] > 0.99
