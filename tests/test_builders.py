"""Builds every TFDS builder from small inputs and reads the shards back (tfds.data_source, grain).

Also: the npy export read back, the command line, and an interrupted build that must
neither look complete nor redo finished conversion work.
"""

from __future__ import annotations

import json
import os
import pickle
import types
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cmd_jax import action_names, data, input_pipeline
from cmd_jax.npy_source import NpySource
from data_prep import cli, convert, datasets
from data_prep.build import build_dataset
from data_prep.builders import load_builder_class
from data_prep.errors import DataFormatError
from data_prep.preprocess import pre_normalization
from tests.conftest import TINY_SYNTHETIC, build_tiny_synthetic, folder_digest

tfds.disable_progress_bar()


def _ntu_raw(tmp_path, ntu_dir):
  raw = tmp_path / "ntu_raw"
  raw.mkdir()
  for path in ntu_dir.glob("*.skeleton"):
    os.symlink(path, raw / path.name)
  return raw


def _expected(spec, raw_dir, options):
  """Reader output, normalised one sample at a time: name -> (skeleton, num_frames, label, train)."""
  out = {}
  for sample in spec.list_samples(raw_dir, options):
    try:
      raw = spec.load(sample)
    except DataFormatError:  # the converter skips and reports such samples
      continue
    fixed, n = datasets.to_fixed_length(raw)
    if spec.drop_all_zero and not fixed.any():
      continue
    out[sample.name] = (pre_normalization(fixed[None], spec.layout)[0], n, sample.label, sample.train)
  return out


def _build(dataset, out, raw, options, benchmark):
  builder = load_builder_class(dataset)(config=benchmark, data_dir=str(out), file_format="array_record",
                                        options=options, workers=1, progress=False)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=raw))
  return builder


def _check_read_back(dataset, out, expected, benchmarks):
  for benchmark in benchmarks:
    # The label feature carries the dataset's action names, read back from the built folder.
    names = input_pipeline.tfds_source(str(out), dataset, benchmark, "train").info.features["label"].names
    assert tuple(names) == action_names.action_names(dataset)
    source = tfds.data_source(f"{dataset}/{benchmark}", data_dir=str(out), try_gcs=False)
    for split, train in (("train", True), ("val", False)):
      names = {n for n, e in expected.items() if (benchmark in e[3]) == train}
      assert len(source[split]) == len(names), (benchmark, split)
      seen = set()
      for i in range(len(source[split])):
        record = source[split][i]
        name = record["name"].decode()
        skeleton, n, label, _ = expected[name]
        np.testing.assert_array_equal(record["skeleton"], skeleton)
        assert record["num_frames"] == n and record["label"] == label
        seen.add(name)
      assert seen == names
      # The same records through the grain pipeline, one epoch in batches.
      loader = input_pipeline.make_loader(
          input_pipeline.tfds_source(str(out), dataset, benchmark, split), global_batch_size=1, seed=0,
          num_epochs=1, keep_names=True)
      got = {}
      for batch in loader:
        got[_decode(batch["name"][0])] = batch
      assert set(got) == names
      for name, batch in got.items():
        np.testing.assert_array_equal(batch["skeleton"][0], expected[name][0])
        assert int(batch["label"][0]) == expected[name][2]
        assert int(batch["num_frames"][0]) == expected[name][1]


def _decode(name):
  return name.decode() if isinstance(name, bytes) else str(name)


def test_ntu60_and_ntu120_builders(tmp_path, ntu_dir):
  raw = _ntu_raw(tmp_path, ntu_dir)
  options = {"missing_list": "none"}
  for dataset in ("ntu60", "ntu120"):
    spec = datasets.get_spec(dataset)
    for benchmark in spec.benchmarks:
      builder = _build(dataset, tmp_path / "data", raw, options, benchmark)
      assert builder.info.metadata["layout"] == "ntu25"
      assert builder.info.metadata["skipped"] == []
    _check_read_back(dataset, tmp_path / "data", _expected(spec, raw, options), spec.benchmarks)


def _msr_raw(tmp_path, msr_dir):
  # Two subjects per split, three actions, and the all-zero recording, which is dropped.
  raw = tmp_path / "msr_raw"
  raw.mkdir()
  for path in msr_dir.glob("a1[23]_s0[1-2]_e0[12]_skeleton3D.txt"):
    os.symlink(path, raw / path.name)
  os.symlink(msr_dir / "a13_s09_e02_skeleton3D.txt", raw / "a13_s09_e02_skeleton3D.txt")
  os.symlink(msr_dir / "a01_s09_e01_skeleton3D.txt", raw / "a01_s09_e01_skeleton3D.txt")
  return raw


def test_msr_builder(tmp_path, msr_dir):
  raw = _msr_raw(tmp_path, msr_dir)
  spec = datasets.get_spec("msr_action3d")
  builder = _build("msr_action3d", tmp_path / "data", raw, {}, "xsub")
  assert [s[0] for s in builder.info.metadata["skipped"]] == [
      s.name for s in spec.list_samples(raw, {}) if "a13_s09_e02" in s.name]
  expected = _expected(spec, raw, {})
  assert len(expected) == 9
  _check_read_back("msr_action3d", tmp_path / "data", expected, ("xsub",))


def test_pku_builder(tmp_path, pku_dir):
  raw = tmp_path / "pku_raw"
  (raw / "skeleton").mkdir(parents=True)
  (raw / "label").mkdir()
  for video in ("A10N08-L", "A10N08-M", "A11N08-L"):  # the one real file, under three video names
    os.symlink(pku_dir / "A10N08-L.txt", raw / "skeleton" / f"{video}.txt")
  (raw / "label" / "A10N08-L.txt").write_text("3,10,60,1\n51,100,400,2\n7,500,500,1\n")
  (raw / "label" / "A10N08-M.txt").write_text("1,0,1040,1\n")
  (raw / "label" / "A11N08-L.txt").write_text("2,700,800,1\n")
  (raw / "cross_subject_v2.txt").write_text("Training videos:\nA10N08-L, A10N08-M\nValidataion videos:\nA11N08-L\n")
  (raw / "cross_view_v2.txt").write_text("Training videos:\nA10N08-M, A11N08-L\nValidataion videos:\nA10N08-L\n")
  spec = datasets.get_spec("pku_mmd2")
  for benchmark in spec.benchmarks:
    builder = _build("pku_mmd2", tmp_path / "data", raw, {}, benchmark)
    skipped = dict(map(tuple, builder.info.metadata["skipped"]))
    assert list(skipped) == ["A10N08-L.txt_2"] and "label" in skipped["A10N08-L.txt_2"]
  expected = _expected(spec, raw, {})
  assert sorted(expected) == ["A10N08-L.txt_0", "A10N08-L.txt_1", "A10N08-M.txt_0", "A11N08-L.txt_0"]
  assert expected["A10N08-M.txt_0"][1] == 1040  # the original length, although only 300 are stored
  assert expected["A10N08-L.txt_1"][2] == 50
  _check_read_back("pku_mmd2", tmp_path / "data", expected, spec.benchmarks)


def test_synthetic_builder(tmp_path):
  spec = datasets.get_spec("synthetic")
  options = {"synthetic_subjects": 4, "synthetic_repetitions": 1}
  for benchmark in spec.benchmarks:
    _build("synthetic", tmp_path / "data", None, options, benchmark)
  _check_read_back("synthetic", tmp_path / "data", _expected(spec, None, options), spec.benchmarks)


def test_class_names_round_trip_and_builds_without_names(tmp_path):
  """The names are stored beside the shards (label.labels.txt) and read back as
  info.features["label"].names; features.json keeps only the count, as builds made before the
  names were stored have it. Such a build (the names file removed) still loads, counts as
  built, and cmd_jax.data.class_names gives it the dataset's names."""
  out = tmp_path / "data"
  build_tiny_synthetic(out)
  folder = input_pipeline.find_version_dir(out, "synthetic", "xsub")
  config = types.SimpleNamespace(dataset="synthetic")
  source = input_pipeline.tfds_source(out, "synthetic", "xsub", "val")
  assert tuple(source.info.features["label"].names) == action_names.SYNTHETIC
  assert data.class_names(config, source) == list(action_names.SYNTHETIC)
  assert (folder / "label.labels.txt").read_text().split("\n")[:2] == ["wave right hand", "wave left hand"]
  features = json.loads((folder / "features.json").read_text())
  assert features["featuresDict"]["features"]["label"]["classLabel"] == {"numClasses": "12"}
  first = source[0]

  (folder / "label.labels.txt").unlink()
  old = input_pipeline.tfds_source(out, "synthetic", "xsub", "val")
  assert list(old.info.features["label"].names) == [str(i) for i in range(12)]
  assert old.info.features["label"].num_classes == 12
  np.testing.assert_array_equal(old[0]["skeleton"], first["skeleton"])
  assert old[0]["label"] == first["label"]
  assert data.class_names(config, old) == list(action_names.SYNTHETIC)
  summary = build_dataset("synthetic", out, options=TINY_SYNTHETIC, benchmarks=["xsub"], progress=False, log=None)
  assert summary.already_built == ["xsub"]
  assert not (folder / "label.labels.txt").exists()


def test_empty_split_is_an_immediate_error(tmp_path, ntu_dir):
  raw = tmp_path / "raw"
  raw.mkdir()
  os.symlink(ntu_dir / "S001C001P001R001A001.skeleton", raw / "S001C001P001R001A001.skeleton")
  with pytest.raises(ValueError, match="the val split is empty"):
    _build("ntu60", tmp_path / "data", raw, {"missing_list": "none"}, "xsub")  # subject 1 trains in xsub


def test_interrupted_build_does_not_look_complete(tmp_path, ntu_dir, monkeypatch):
  raw = _ntu_raw(tmp_path, ntu_dir)
  options = {"missing_list": "none"}
  real = convert.Cache.iter_split

  def dying(self, benchmark, train):
    for i, record in enumerate(real(self, benchmark, train)):
      if i == 3:
        raise KeyboardInterrupt
      yield record

  monkeypatch.setattr(convert.Cache, "iter_split", dying)
  with pytest.raises(KeyboardInterrupt):
    _build("ntu60", tmp_path / "data", raw, options, "xsub")
  assert not (tmp_path / "data" / "ntu60" / "xsub" / "1.0.0").exists()
  with pytest.raises(Exception):
    tfds.data_source("ntu60/xsub", data_dir=str(tmp_path / "data"), try_gcs=False)
  chunks = sorted((tmp_path / "data" / ".cache" / "ntu60" / "standard").glob("chunk_*.npz"))
  assert chunks  # the standard variant's cache: <data_dir>/.cache/<dataset>/<variant>/
  stamps = [c.stat().st_mtime_ns for c in chunks]

  monkeypatch.setattr(convert.Cache, "iter_split", real)
  assert cli.main(["build", "ntu60", "--raw", str(raw), "--out", str(tmp_path / "data"), "--missing-list",
                   "none", "--workers", "1", "--quiet", "--keep-cache"]) == 0
  assert [c.stat().st_mtime_ns for c in chunks] == stamps  # the conversion was not redone
  assert not list((tmp_path / "data" / "ntu60" / "xsub").glob("incomplete.*"))
  _check_read_back("ntu60", tmp_path / "data", _expected(datasets.NTU60, raw, options), ("xsub", "xview"))


def test_cli_export_npy_reads_back(tmp_path, ntu_dir):
  raw = _ntu_raw(tmp_path, ntu_dir)
  out = tmp_path / "npy"
  assert cli.main(["export-npy", "ntu120", "--benchmark", "xset", "--raw", str(raw), "--out", str(out),
                   "--missing-list", "none", "--quiet"]) == 0
  assert sorted(p.name for p in out.iterdir()) == sorted(["export.json"] + [
      f"{part}_{suffix}" for part in ("train", "val") for suffix in ("data_joint.npy", "num_frame.npy", "label.pkl")])
  assert json.loads((out / "export.json").read_text()) == {"dataset": "ntu120", "benchmark": "xset", "format": "cmd",
                                                          "variant": "standard"}
  expected = _expected(datasets.NTU120, raw, {"missing_list": "none"})
  for part, train in (("train", True), ("val", False)):
    data = np.load(out / f"{part}_data_joint.npy")
    frames = np.load(out / f"{part}_num_frame.npy")
    with open(out / f"{part}_label.pkl", "rb") as f:
      names, labels = pickle.load(f)
    assert data.dtype == np.float32 and data.shape == (len(names), 3, 300, 25, 2)
    assert frames.dtype == np.int64
    assert names == sorted(n for n, e in expected.items() if ("xset" in e[3]) == train)
    assert all(type(label) is int for label in labels)
    source = NpySource(out, part)
    for i, name in enumerate(names):
      np.testing.assert_array_equal(data[i], expected[name][0])
      assert frames[i] == expected[name][1] and labels[i] == expected[name][2]
      record = source[i]
      np.testing.assert_array_equal(record["skeleton"], expected[name][0])
      assert _decode(record["name"]) == name and int(record["label"]) == labels[i]
  # A rerun finds both parts complete and rewrites nothing.
  stamp = (out / "val_data_joint.npy").stat().st_mtime_ns
  assert cli.main(["export-npy", "ntu120", "--benchmark", "xset", "--raw", str(raw), "--out", str(out),
                   "--missing-list", "none", "--quiet"]) == 0
  assert (out / "val_data_joint.npy").stat().st_mtime_ns == stamp


def test_cli_export_npy_refuses_a_folder_of_another_export(tmp_path, ntu_dir, capsys):
  """An xsub export then an xview export into the same folder: refused in one line naming both,
  nothing written (folder hash unchanged); also for a folder without export.json (the sample
  names of its complete parts are compared)."""
  raw = _ntu_raw(tmp_path, ntu_dir)
  out = tmp_path / "npy"
  args = ["--raw", str(raw), "--out", str(out), "--missing-list", "none", "--quiet"]
  assert cli.main(["export-npy", "ntu60", "--benchmark", "xsub", *args]) == 0
  for without_provenance in (False, True):
    if without_provenance:
      (out / "export.json").unlink()
    before = folder_digest(out)
    capsys.readouterr()
    assert cli.main(["export-npy", "ntu60", "--benchmark", "xview", *args]) == 2
    err = capsys.readouterr().err.strip()
    expected = ("holds another export: its train part has" if without_provenance
                else "holds another export (benchmark 'xsub'; asked: ntu60 xview cmd)")
    assert expected in err and "nothing was written" in err and len(err.splitlines()) == 1, err
    assert folder_digest(out) == before


def test_cli_build_reports_changed_inputs_unknown_options_and_ignored_files(tmp_path, ntu_dir, capsys):
  """A rebuild after a raw file is added (or the missing list changes) refuses in one line with
  the command that rebuilds, leaving the built config as it was; an unknown --option key is an
  error naming the keys the dataset reads; files in --raw that are not samples are named."""
  raw = _ntu_raw(tmp_path, ntu_dir)
  moved = sorted(raw.iterdir())[-1]
  os.rename(moved, tmp_path / moved.name)  # held back, added later
  (raw / "README.txt").write_text("not a skeleton file\n")
  out = tmp_path / "data"
  args = ["build", "ntu60", "--raw", str(raw), "--out", str(out), "--workers", "1", "--quiet"]
  assert cli.main([*args, "--missing-list", "none"]) == 0
  printed = capsys.readouterr().out
  assert f"note: 1 file(s) in {raw} are not ntu60 samples and are ignored (e.g. README.txt)" in printed, printed
  record = json.loads((out / "ntu60" / "xsub" / "inputs.json").read_text())
  assert record["samples"] == len(list(raw.glob("*.skeleton")))
  before = folder_digest(out / "ntu60")
  assert cli.main([*args, "--missing-list", "none"]) == 0  # unchanged inputs: already built
  assert "already built" in capsys.readouterr().out

  os.rename(tmp_path / moved.name, raw / moved.name)  # a raw file added
  assert cli.main([*args, "--missing-list", "none"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "was built from other inputs (samples: " in err, err
  assert f"rm -rf {out / 'ntu60' / 'xsub'} and run this build command again" in err, err
  missing = tmp_path / "missing.txt"
  missing.write_text(moved.name.replace(".skeleton", "") + "\n")
  assert cli.main([*args, "--missing-list", str(missing)]) == 0  # the list removes the added file again
  assert folder_digest(out / "ntu60") == before

  assert cli.main([*args, "--option", "missing_lst=none"]) == 2
  assert "unknown option(s) missing_lst; this dataset reads: missing_list" in capsys.readouterr().err


def test_builder_configs_per_variant():
  assert [c.name for c in load_builder_class("ntu60").BUILDER_CONFIGS] == [
      "xsub", "xview", "xsub_frame50", "xview_frame50"]
  assert [c.name for c in load_builder_class("msr_action3d").BUILDER_CONFIGS] == ["xsub", "xsub_frame50"]


def test_cli_build_frame50_variant_only(tmp_path, msr_dir):
  raw = _msr_raw(tmp_path, msr_dir)
  out = tmp_path / "data"
  assert cli.main(["build", "msr_action3d", "--raw", str(raw), "--out", str(out), "--variant", "frame50",
                   "--workers", "1", "--quiet"]) == 0
  assert sorted(p.name for p in (out / "msr_action3d").iterdir() if not p.name.startswith(".")) == ["xsub_frame50"]
  assert not (out / ".cache").exists()
  builder = load_builder_class("msr_action3d")(config="xsub_frame50", data_dir=str(out))
  assert builder.info.metadata["variant"] == "frame50" and builder.info.metadata["layout"] == "msr20"
  assert [s[0] for s in builder.info.metadata["skipped"]] == ["a13_s09_e02"]
  source = tfds.data_source("msr_action3d/xsub_frame50", data_dir=str(out), try_gcs=False)
  assert len(source["train"]) + len(source["val"]) == 9
  record = source["train"][0]
  assert record["skeleton"].shape == (3, 50, 20, 1) and record["num_frames"] == 50


def test_cli_errors(tmp_path, capsys):
  with pytest.raises(SystemExit):
    cli.main(["build", "ntu61", "--raw", str(tmp_path)])
  with pytest.raises(SystemExit, match="no such directory"):
    cli.main(["build", "ntu60", "--raw", str(tmp_path / "nowhere")])
  with pytest.raises(SystemExit, match="needs --raw"):
    cli.main(["export-npy", "ntu60", "--benchmark", "xsub", "--out", str(tmp_path)])
  with pytest.raises(SystemExit, match="has no benchmark 'xset'"):
    cli.main(["export-npy", "ntu60", "--benchmark", "xset", "--raw", str(tmp_path), "--out", str(tmp_path)])
  (tmp_path / "empty").mkdir()
  assert cli.main(["build", "ntu60", "--raw", str(tmp_path / "empty"), "--out", str(tmp_path / "d"),
                   "--missing-list", "none"]) == 2
  assert "no SsssCcccPpppRrrrAaaa.skeleton files" in capsys.readouterr().err
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["--help"])
  assert exit_info.value.code == 0
  assert "export-npy" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------
# data_prep.float_lists: the build's float32 features, the same bytes as TFDS's own writer
# ----------------------------------------------------------------------------------------

def _tensor_info(shape, dtype):
  return tfds.features.Tensor(shape=shape, dtype=dtype).get_tensor_info()


def test_fast_float_lists_serialize_features_as_tfds_does():
  """Inside ``fast_float_lists`` every feature serializes to exactly TFDS's bytes: float32
  clips with zero padding, NaN (with a payload), +-inf, -0.0, subnormals, the largest float32,
  a non-contiguous view (C order), an int64 list and a string; a wrong shape still fails as
  TFDS fails; outside the block TFDS's own function is back."""
  from tensorflow_datasets.core import example_serializer  # pylint: disable=import-outside-toplevel
  from data_prep import float_lists  # pylint: disable=import-outside-toplevel

  tfds_own = example_serializer._item_to_tf_feature  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  clip = rng.standard_normal((3, 300, 25, 2)).astype(np.float32)
  clip[:, 120:] = 0
  special = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -1.2e-38, 3.4028235e38, 1 / 3],
                     np.float32)
  special = np.concatenate([special, np.array([0x7FC01234], np.uint32).view(np.float32)])  # a NaN payload
  view = rng.standard_normal((4, 6)).astype(np.float32).T  # Fortran-ordered view
  cases = [(clip, _tensor_info(clip.shape, np.float32)), (special, _tensor_info(special.shape, np.float32)),
           (view, _tensor_info(view.shape, np.float32)), (7, _tensor_info((), np.int64)),
           (np.arange(5, dtype=np.int64), _tensor_info((5,), np.int64)), (b"S001C001P001R001A001",
                                                                       _tensor_info((), np.object_))]
  want = [tfds_own(item, info).SerializeToString() for item, info in cases]
  with float_lists.fast_float_lists() as swapped:
    assert swapped  # the pinned TFDS has the function this swaps
    fast = example_serializer._item_to_tf_feature  # pylint: disable=protected-access
    assert fast is not tfds_own
    assert [fast(item, info).SerializeToString() for item, info in cases] == want
    with pytest.raises(ValueError, match="Shapes"):
      fast(clip[:, :299], _tensor_info(clip.shape, np.float32))
    with float_lists.fast_float_lists() as nested:  # nested: still swapped, restored by the outer block
      assert nested and example_serializer._item_to_tf_feature is fast  # pylint: disable=protected-access
    assert example_serializer._item_to_tf_feature is fast  # pylint: disable=protected-access
  assert example_serializer._item_to_tf_feature is tfds_own  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="Shapes"):
    tfds_own(clip[:, :299], _tensor_info(clip.shape, np.float32))


def _examples(folder):
  """Every example of every shard under ``folder``, in shard order, deterministically serialized
  (protobuf writes an Example's feature map in a per-process order, so the raw bytes of two
  builds differ even with TFDS alone)."""
  from array_record.python.array_record_module import ArrayRecordReader  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=import-outside-toplevel

  out = {}
  for path in sorted(folder.rglob("*.array_record-*")):
    reader = ArrayRecordReader(str(path))
    try:
      records = reader.read_all()
    finally:
      reader.close()
    examples = []
    for record in records:
      example = tf_example_pb2.Example()
      example.ParseFromString(record)
      examples.append(example.SerializeToString(deterministic=True))
    out[str(path.relative_to(folder))] = examples
  return out


def test_build_writes_the_examples_tfds_writes(tmp_path, tiny_synthetic, monkeypatch):
  """``build_dataset`` (which writes through ``fast_float_lists``) and the same build written by
  TFDS's own serializer hold the same examples in the same order, shard by shard."""
  import contextlib  # pylint: disable=import-outside-toplevel
  from data_prep import float_lists  # pylint: disable=import-outside-toplevel

  monkeypatch.setattr(float_lists, "fast_float_lists", lambda: contextlib.nullcontext(False))
  slow = build_tiny_synthetic(tmp_path / "tfds_own")
  fast, own = _examples(Path(tiny_synthetic) / "synthetic"), _examples(Path(slow) / "synthetic")
  assert sorted(fast) == sorted(own) and len(fast) == 4, sorted(fast)  # xsub, xview x train, val
  for shard, examples in own.items():
    assert len(examples) > 0 and fast[shard] == examples, shard
