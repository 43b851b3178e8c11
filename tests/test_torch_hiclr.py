"""HiCLR checkpoint import/export (``cmd_jax.interop.hiclr`` through ``cmd_jax.interop.convert``).

The checkpoints are built here as the HiCLR reference holds its state: a module with
``encoder_q`` and ``encoder_k`` (ST-GCN or DSTA-Net with the MLP head ``fc.0``/``fc.2``), the
buffers ``queue`` ``(D, K)`` and ``queue_ptr`` ``[1]`` and the parameter ``mask_param``
``[1]`` (``TorchHiCLR``, written from the description of the reference's ``HiCLR`` module),
with the encoders of ``tests/torch_stgcn.py`` and ``tests/torch_dsta.py`` (PyTorch models of
the reference encoders, carrying the reference's module names), random weights and BatchNorm
statistics, saved as ``torchlight``'s ``save_model`` does (a bare ``state_dict``).

Checked: import -> export gives back every tensor bit for bit (and loads strictly into the
PyTorch model); the imported workdir's ``cmd_jax.api`` features equal the PyTorch encoder's
eval-mode pooled feature (the reference's ``return_feat``); linear-evaluation checkpoints;
bad input is an error listing what is wrong, with nothing written; continued pretraining.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from cmd_jax import api, pretrained  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.layouts import NTU25  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.models import dsta, graph  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.interop import cli, convert, hiclr, torchlight  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.interop.common import TorchImportError  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_dsta import DSTANet  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_stgcn import TorchSTGCN  # noqa: E402  pylint: disable=wrong-import-position

H, HIDDEN_DIM, D, K, PTR = 4, 16, 8, 32, 8


class TorchHiCLR(torch.nn.Module):
  """The reference's ``HiCLR`` state: ``encoder_q``/``encoder_k``, ``queue``, ``queue_ptr``,
  ``mask_param`` (pretraining) or ``encoder_q`` alone (linear evaluation)."""

  def __init__(self, make_encoder, pretrain: bool = True):
    super().__init__()
    self.encoder_q = make_encoder()
    if pretrain:
      self.register_parameter("mask_param", torch.nn.Parameter(torch.zeros(1)))
      self.encoder_k = make_encoder()
      self.register_buffer("queue", torch.nn.functional.normalize(torch.randn(D, K), dim=0))
      self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))


def randomise(model: torch.nn.Module, seed: int) -> None:
  """Random values everywhere (weights, BN statistics, mask_param, pointer, batch counts),
  so that no tensor is left at a default that a converter could produce by accident."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(0.2 * torch.randn(p.shape, generator=gen) + (1.0 if name.endswith("edge_importance1") else 0.0))
    for name, b in model.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(0.1 * torch.randn(b.shape, generator=gen))
      elif name.endswith("running_var"):
        b.copy_(0.5 + torch.rand(b.shape, generator=gen))
      elif name.endswith("num_batches_tracked"):
        b.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
      elif name == "queue_ptr":
        b.fill_(PTR)


def stgcn_encoder(num_class=D, mlp=True):
  return TorchSTGCN(graph.layout_graph(NTU25), hidden_channels=H, hidden_dim=HIDDEN_DIM, num_class=num_class,
                    dropout=0.5, mlp=mlp)


def dsta_encoder():
  return DSTANet(dsta.RELEASE_BLOCKS, num_outputs=D, mlp=True)


def save(model: torch.nn.Module, path) -> str:
  torch.save(model.state_dict(), path)
  return str(path)


@pytest.fixture(scope="module")
def stgcn_import(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("hiclr_stgcn")
  torch.manual_seed(0)
  model = TorchHiCLR(stgcn_encoder)
  randomise(model, 1)
  path = save(model, tmp / "epoch300_model.pt")
  workdir = tmp / "workdir"
  meta = convert.import_checkpoint(path, workdir, stream="joint")
  return model, path, str(workdir), meta


def assert_state_dicts_identical(got, want) -> None:
  """Every tensor bit-identical, except DSTA-Net's sinusoidal positional encodings
  (``*.pes.pe``): a constant of the architecture, rebuilt on export from the formula computed
  in float64 and rounded, where PyTorch evaluates it in float32. Its argument
  ``joint * exp(-2i ln(10000) / C)`` reaches 24 and carries two float32 roundings (the exp and
  the product, 6e-8 relative each): up to 24 * 1.2e-7 = 2.9e-6 off, and sin has slope <= 1,
  so the two agree within 3e-6 (measured 4.8e-7)."""
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    assert got[key].dtype == value.dtype, key
    if key.endswith(".pes.pe"):
      assert float(torch.max(torch.abs(got[key] - value))) <= 3e-6, key
    else:
      assert torch.equal(got[key], value), key


def test_stgcn_checkpoint_round_trips_bit_identically(stgcn_import, tmp_path):
  model, _, workdir, meta = stgcn_import
  assert meta["method"] == "hiclr" and meta["kind"] == "pretrain"
  assert meta["torch_epoch"] == 300 and meta["step"] == 300  # from the torchlight file name
  config = pretrained.read_pretrain_config(workdir)
  assert (config.method, config.model.name, config.model.stgcn.hidden_channels, config.model.stgcn.hidden_dim,
          config.model.embed_dim, config.moco.queue_size) == ("hiclr", "stgcn", H, HIDDEN_DIM, D, K)
  out = tmp_path / "exported.pt"
  convert.export_checkpoint(workdir, out)
  exported = torch.load(out, weights_only=True)
  assert_state_dicts_identical(exported, model.state_dict())
  fresh = TorchHiCLR(stgcn_encoder)
  fresh.load_state_dict(exported, strict=True)


def test_imported_stgcn_gives_the_reference_features(stgcn_import):
  """``load_encoder(W).features(x, crop=None, preprocess=False)`` == the torch encoder_q in
  eval mode, pooled feature. Tolerance: a float32 forward of ~10 layers whose sums have at
  most 9 x 3 x 16 = 432 terms; both sides round differently (summation order, conv
  algorithms), ~1e-6 relative per layer; 1e-5 of the feature's scale leaves 10x headroom."""
  model, _, workdir, _ = stgcn_import
  x = np.random.default_rng(2).normal(size=(6, 3, 50, 25, 2)).astype(np.float32)
  x[3:, :, :, :, 1] = 0.0  # absent second persons, as in NTU
  encoder = api.load_encoder(workdir, modality="joint")
  assert encoder.feature_dim == HIDDEN_DIM and encoder.frames == 50
  got = encoder.features(x, crop=None, preprocess=False)
  model.eval()
  with torch.no_grad():
    want = model.encoder_q(torch.from_numpy(x))[0].numpy()
  scale = float(np.max(np.abs(want)))
  assert np.max(np.abs(got - want)) <= 1e-5 * scale
  # "center" is the protocols' view of a 50-frame pretraining: the clip as it is.
  np.testing.assert_array_equal(encoder.features(x, preprocess=False), got)


def test_dsta_checkpoint_round_trips_and_gives_the_reference_features(tmp_path):
  torch.manual_seed(3)
  model = TorchHiCLR(dsta_encoder)
  randomise(model, 4)
  path = save(model, tmp_path / "dsta.pt")
  workdir = tmp_path / "workdir"
  meta = convert.import_checkpoint(path, workdir, stream="joint", epoch=12)
  assert meta["torch_epoch"] == 12
  config = pretrained.read_pretrain_config(workdir)
  assert config.model.name == "dsta"
  convert.export_checkpoint(workdir, tmp_path / "out.pt")
  assert_state_dicts_identical(torch.load(tmp_path / "out.pt", weights_only=True), model.state_dict())
  x = np.random.default_rng(5).normal(size=(2, 3, 50, 25, 2)).astype(np.float32)
  got = api.load_encoder(workdir, modality="joint").features(x, crop=None, preprocess=False)
  model.eval()
  with torch.no_grad():
    want = model.encoder_q(torch.from_numpy(x), features_only=True).numpy()
  # As for ST-GCN, 8 blocks of sums over up to 3 x 256 terms: 1e-5 of the scale.
  assert np.max(np.abs(got - want)) <= 1e-5 * float(np.max(np.abs(want)))


def test_linear_evaluation_checkpoint(tmp_path):
  torch.manual_seed(6)
  model = TorchHiCLR(lambda: stgcn_encoder(num_class=60, mlp=False), pretrain=False)
  randomise(model, 7)
  path = save(model, tmp_path / "linear.pt")
  workdir = tmp_path / "workdir"
  meta = convert.import_checkpoint(path, workdir, stream="joint")
  assert (meta["method"], meta["kind"]) == ("hiclr", "linear")
  config = pretrained.read_pretrain_config(workdir)
  assert (config.model.mlp, config.model.embed_dim) == (False, 60)
  convert.export_checkpoint(workdir, tmp_path / "out.pt")
  exported = torch.load(tmp_path / "out.pt", weights_only=True)
  assert_state_dicts_identical(exported, model.state_dict())  # encoder_q only, the classifier kept
  x = np.random.default_rng(8).normal(size=(3, 3, 50, 25, 2)).astype(np.float32)
  got = api.load_encoder(workdir).features(x, crop=None, preprocess=False)
  model.eval()
  with torch.no_grad():
    want = model.encoder_q(torch.from_numpy(x))[0].numpy()
  assert np.max(np.abs(got - want)) <= 1e-5 * float(np.max(np.abs(want)))


def test_parameter_list_edge_importance_naming(stgcn_import):
  """SkeletonCLR/CrosSCLR/AimCLR name ST-GCN's edge importances ``edge_importance.0..9`` (an
  ``nn.ParameterList``) where HiCLR has ``edge_importance1..10``: a HiCLR state_dict in the
  list naming converts to the same state, and exports in HiCLR's own naming; the list
  naming is written when asked for (the other formats' export)."""
  model, _, _, _ = stgcn_import
  numbered = model.state_dict()
  as_list = {}
  for key, value in numbered.items():
    prefix, sep, number = key.rpartition(".edge_importance")
    as_list[f"{prefix}.edge_importance.{int(number) - 1}" if sep and number.isdigit() else key] = value
  assert "encoder_q.edge_importance.9" in as_list and "encoder_k.edge_importance.0" in as_list
  config = hiclr.resolve_config(as_list, stream="joint")
  state, meta = hiclr.state_dict_to_state(as_list, config)
  assert_state_dicts_identical(hiclr.state_to_state_dict(state, config, meta), numbered)

  out = {}
  torchlight.write_encoder(out, config, "encoder_q", state.params["encoder"], state.batch_stats, {}, 0,
                           torchlight.PARAMETER_LIST)
  assert sorted(k for k in out if "edge_importance" in k) == sorted(f"encoder_q.edge_importance.{i}" for i in range(10))
  for i in range(10):
    assert torch.equal(out[f"encoder_q.edge_importance.{i}"], numbered[f"encoder_q.edge_importance{i + 1}"])
  both = dict(numbered, **{"encoder_q.edge_importance.0": numbered["encoder_q.edge_importance1"]})
  with pytest.raises(TorchImportError, match="both namings"):
    torchlight.with_numbered_edge_importance(both)


def test_bad_checkpoints_are_clear_errors_and_write_nothing(stgcn_import, tmp_path):
  model, path, _, _ = stgcn_import
  sd = model.state_dict()
  missing = {k: v for k, v in sd.items() if k != "encoder_k.st_gcn_networks.3.tcn.2.weight"}
  shorter = dict(sd, **{"encoder_q.st_gcn_networks.3.tcn.2.weight": torch.zeros(H, H, 7, 1)})
  other_graph = dict(sd, **{"encoder_q.A": sd["encoder_q.A"] * 2})
  cases = [
      (missing, {"stream": "joint"}, ["missing keys", "encoder_k.st_gcn_networks.3.tcn.2.weight"]),
      (shorter, {"stream": "joint"}, ["shape mismatch", "encoder_q.st_gcn_networks.3.tcn.2.weight",
                                      "checkpoint (4, 4, 7, 1)", "expected (4, 4, 9, 1)"]),
      (other_graph, {"stream": "joint"}, ["encoder_q.A", "constant differs"]),
      (sd, {"config": "configs/pretrain_cmd.py:ntu60_xsub", "method": "hiclr", "stream": "joint"},
       ["expected a HiCLR pretraining config"]),
      (sd, {"hidden_size": 16}, ["CMD's GRU sizes"]),
  ]
  for i, (state_dict, kwargs, needles) in enumerate(cases):
    source = tmp_path / f"bad{i}.pt"
    torch.save(state_dict, source)
    target = tmp_path / f"target{i}"
    with pytest.raises(TorchImportError) as err:
      convert.import_checkpoint(source, target, **kwargs)
    for needle in needles:
      assert needle in str(err.value), (i, needle, str(err.value))
    assert not target.exists()
  assert not [p for p in os.listdir(tmp_path) if "importing" in p]
  # A CMD checkpoint is not taken for a HiCLR one, and the reverse.
  assert hiclr.detect(sd)
  assert not hiclr.detect({"encoder_q_motion.encoder.gru.weight_hh_l0": 0, "queue_motion": 0})


def test_cli_imports_and_exports(stgcn_import, tmp_path, capsys):
  model, path, _, _ = stgcn_import
  assert cli.main([path, "--workdir", str(tmp_path / "w"), "--method", "hiclr", "--stream", "joint"]) == 0
  assert "HICLR pretrain checkpoint, epoch 300" in capsys.readouterr().out
  assert cli.main(["--export", str(tmp_path / "w"), str(tmp_path / "back.pt")]) == 0
  assert_state_dicts_identical(torch.load(tmp_path / "back.pt", weights_only=True), model.state_dict())
  assert cli.main([path, "--workdir", str(tmp_path / "w")]) == 1  # not empty: refused
  err = capsys.readouterr().err
  assert "already holds a complete import" in err and "--config.init_from=" in err


# ---------------------------------------------------------------------------------------
# The stream of a one-stream checkpoint


def write_run_config(folder, **args) -> None:
  """A ``config.yaml`` as torchlight's ``IO.save_arg`` writes it into a run's work_dir: a
  comment line with the command, then every processor argument (``yaml.dump``, indent 4)."""
  folder.mkdir(parents=True, exist_ok=True)
  arguments = {"base_lr": 0.1, "model_args": {"base_encoder": "net.st_gcn.Model", "feature_dim": 128},
               "mining_epoch": 150, "work_dir": str(folder), **args}
  with open(folder / "config.yaml", "w", encoding="utf-8") as f:
    f.write("# command line: main.py pretrain_hiclr --config config/release/pretext_hiclr_xsub.yaml\n\n")
    yaml.dump(arguments, f, default_flow_style=False, indent=4)


def test_stream_from_the_file_name_or_the_run_config(tmp_path):
  stream_of = convert.checkpoint_stream
  assert stream_of(str(tmp_path / "ntu60_xsub_motion.pt"), None, "hiclr") == ("motion", "the file name")
  assert stream_of(str(tmp_path / "pkup1cs-Bone.pth.tar"), None, "hiclr") == ("bone", "the file name")
  assert stream_of(str(tmp_path / "joint.pt"), None, "hiclr") == ("joint", "the file name")
  assert stream_of(str(tmp_path / "bones.pt"), "joint", "hiclr") == ("joint", "--stream")  # "bones" is no token
  run = tmp_path / "work_dir" / "NTU60" / "xsub" / "motion"  # the folder names say nothing: only the config is read
  write_run_config(run, stream="bone")
  config_yaml = str(run / "config.yaml")
  assert stream_of(str(run / "epoch300_model.pt"), None, "hiclr") == ("bone", config_yaml)
  assert stream_of(str(run / "epoch300_model.pt"), "bone", "hiclr") == ("bone", "--stream")
  assert stream_of(str(run / "xsub_bone.pt"), None, "hiclr") == ("bone", "the file name")  # both say bone
  nested = tmp_path / "nested"  # a stream anywhere but at the top level is not the processor's --stream
  write_run_config(nested, model_args={"stream": "motion"}, train_feeder_args={"stream": "motion"})
  assert stream_of(str(nested / "epoch300_model.pt"), "joint", "hiclr") == ("joint", "--stream")


def test_a_missing_or_contradicted_stream_is_a_one_line_error(stgcn_import, tmp_path, capsys):
  model, _, _, _ = stgcn_import
  cases = [  # (file name, the run config's stream or None, import arguments, what the error says)
      ("epoch300_model.pt", None, {}, ["epoch300_model.pt: a HICLR checkpoint holds one stream and does not say "
                                       "which", "give --stream joint|motion|bone"]),
      ("xsub_joint_motion.pt", None, {}, ["its name names joint and motion", "give --stream"]),
      ("ntu60_xsub_motion.pt", None, {"stream": "joint"}, ["--stream joint, but the file name says motion"]),
      ("epoch300_model.pt", "bone", {"stream": "joint"}, ["--stream joint, but", "config.yaml says bone"]),
      ("xsub_motion.pt", "bone", {}, ["the file name says motion but", "config.yaml says bone", "give --stream"]),
      ("epoch300_model.pt", "rgb", {}, ["config.yaml: stream: 'rgb'; expected one of joint, motion, bone"]),
  ]
  for i, (name, configured, kwargs, needles) in enumerate(cases):
    folder = tmp_path / f"case{i}"
    folder.mkdir()
    if configured is not None:
      write_run_config(folder, stream=configured)
    source = save(model, folder / name)
    target = tmp_path / f"target{i}"
    with pytest.raises(TorchImportError) as err:
      convert.import_checkpoint(source, target, **kwargs)
    assert "\n" not in str(err.value), str(err.value)
    for needle in needles:
      assert needle in str(err.value), (i, needle, str(err.value))
    assert not target.exists()
  assert cli.main([str(tmp_path / "case0" / "epoch300_model.pt"), "--workdir", str(tmp_path / "w")]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "--stream" in err and not (tmp_path / "w").exists()


def test_an_imported_motion_checkpoint_gives_the_protocols_the_motion_stream(stgcn_import, tmp_path):
  """A released one-stream file named after its stream (AimCLR's ``ntu60_xsub_motion.pt``):
  the workdir records the stream, and the protocols' loader gives the motion encoder."""
  model, _, _, _ = stgcn_import
  path = save(model, tmp_path / "ntu60_xsub_motion.pt")
  workdir = tmp_path / "workdir"
  meta = convert.import_checkpoint(path, workdir)
  assert (meta["stream"], meta["stream_from"]) == ("motion", "the file name")
  config = pretrained.read_pretrain_config(workdir)
  assert (config.stream, config.torch_import.stream, config.torch_import.stream_from) == (
      "motion", "motion", "the file name")
  loaded = pretrained.load_pretrained(workdir)
  assert loaded.modalities == ("motion",)
  want = model.state_dict()["encoder_q.st_gcn_networks.0.gcn.conv.weight"].numpy()
  np.testing.assert_array_equal(np.asarray(loaded.params["motion"]["st_gcn_networks_0"]["gcn"]["conv"]["weight"]),
                                want)
