"""Tests for cmd_jax.npy_source: reading the reference's .npy/.pkl format, and its errors."""

from __future__ import annotations

import pickle
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from cmd_jax import action_names, data
from cmd_jax.npy_source import NpySource
from data_prep.errors import DataFormatError


def write_reference(folder: Path, part: str, data, num_frames, names, labels) -> Path:
  """Writes the three files exactly as the reference's data_gen scripts lay them out."""
  folder.mkdir(parents=True, exist_ok=True)
  np.save(folder / f"{part}_data_joint.npy", data)
  np.save(folder / f"{part}_num_frame.npy", num_frames)
  with open(folder / f"{part}_label.pkl", "wb") as f:
    pickle.dump((names, labels), f)
  return folder


def make_arrays(n=6, v=25, m=2, t=300, seed=0):
  rng = np.random.default_rng(seed)
  data = rng.standard_normal((n, 3, t, v, m)).astype(np.float32)
  num_frames = np.array([40, 300, 412, 1, 77, 250][:n] + list(range(n - 6)), np.int64)[:n]
  names = [f"S001C001P001R001A{i:03d}.skeleton" for i in range(n)]
  labels = [(7 * i) % 60 for i in range(n)]
  return data, num_frames, names, labels


@pytest.fixture
def ntu_folder(tmp_path):
  data, num_frames, names, labels = make_arrays()
  write_reference(tmp_path / "NTU-RGB-D-60-AGCN" / "xsub", "train", data, num_frames, names, labels)
  return tmp_path / "NTU-RGB-D-60-AGCN" / "xsub", (data, num_frames, names, labels)


def test_records_equal_written_arrays(ntu_folder):
  folder, (data, num_frames, names, labels) = ntu_folder
  source = NpySource(folder, "train")
  assert len(source) == 6
  assert source.shape == (3, 300, 25, 2)
  for i in range(6):
    record = source[i]
    assert set(record) == {"skeleton", "num_frames", "label", "name"}
    assert record["skeleton"].dtype == np.float32 and record["skeleton"].shape == (3, 300, 25, 2)
    np.testing.assert_array_equal(record["skeleton"], data[i])
    assert record["num_frames"] == num_frames[i] and type(record["num_frames"]) is int
    assert record["label"] == labels[i] and type(record["label"]) is int
    assert record["name"] == names[i]
  assert source[2]["num_frames"] == 412  # original count above 300 is kept (PKU-MMD)
  np.testing.assert_array_equal(source[-1]["skeleton"], data[5])
  with pytest.raises(IndexError):
    source[6]
  with pytest.raises(IndexError):
    source[-7]
  assert source[np.int64(3)]["label"] == labels[3]


def test_skeleton_is_a_writable_copy(ntu_folder):
  folder, (data, *_) = ntu_folder
  source = NpySource(folder, "train")
  record = source[0]
  record["skeleton"][:] = 0
  np.testing.assert_array_equal(source[0]["skeleton"], data[0])


def test_pku_float_labels_and_msr_layout(tmp_path):
  data, num_frames, names, _ = make_arrays(n=3)
  pku = write_reference(tmp_path / "pku", "val", data, num_frames, [f"0291-L.txt_{i}" for i in range(3)],
                        [np.float64(50.0), np.float64(0.0), 3.0])
  source = NpySource(pku, "val")
  assert [source[i]["label"] for i in range(3)] == [50, 0, 3]
  assert all(type(source[i]["label"]) is int for i in range(3))
  msr_data = np.ones((2, 3, 300, 20, 1), np.float32)
  msr = write_reference(tmp_path / "msr", "train", msr_data, np.array([30, 40]), ["a", "b"], [1, 2])
  assert NpySource(msr, "train")[1]["skeleton"].shape == (3, 300, 20, 1)


def write_hiclr(folder: Path, part: str, data, names, labels) -> Path:
  """HiCLR's 50-frame folder layout: {part}_position.npy and {part}_label.pkl."""
  folder.mkdir(parents=True, exist_ok=True)
  np.save(folder / f"{part}_position.npy", data)
  with open(folder / f"{part}_label.pkl", "wb") as f:
    pickle.dump((names, labels), f)
  return folder


def test_hiclr_format_records(tmp_path):
  data, _, names, labels = make_arrays(n=4, t=50)
  folder = write_hiclr(tmp_path / "NTU60_frame50" / "xsub", "val", data, names, labels)
  source = NpySource(folder, "val")
  assert source.format == "hiclr" and source.shape == (3, 50, 25, 2) and len(source) == 4
  for i in range(4):
    record = source[i]
    np.testing.assert_array_equal(record["skeleton"], data[i])
    assert record["num_frames"] == 50 and type(record["num_frames"]) is int  # no frame counts in the format
    assert (record["name"], record["label"]) == (names[i], labels[i])
  assert "format='hiclr'" in repr(source)
  clone = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(clone[3]["skeleton"], data[3])
  assert NpySource(folder, "val", fmt="hiclr").format == "hiclr"
  with pytest.raises(DataFormatError, match=r"expected T = 300"):
    NpySource(folder, "val", max_frames=300)
  with pytest.raises(FileNotFoundError, match=r"missing val_data_joint\.npy, val_num_frame\.npy for part 'val'"):
    NpySource(folder, "val", fmt="cmd")
  with pytest.raises(ValueError, match="fmt='aimclr'"):
    NpySource(folder, "val", fmt="aimclr")
  (folder / "val_label.pkl").unlink()
  message = r"missing val_label\.pkl .*\{part\}_position\.npy and \{part\}_label\.pkl in HiCLR's format"
  with pytest.raises(FileNotFoundError, match=message + r" \(present: val_position\.npy\)"):
    NpySource(folder, "val")


def test_cmd_format_is_preferred_and_its_repr_unchanged(ntu_folder):
  folder, (data, *_) = ntu_folder
  np.save(folder / "train_position.npy", np.zeros((6, 3, 50, 25, 2), np.float32))
  source = NpySource(folder, "train")
  assert source.format == "cmd" and "format" not in repr(source)
  np.testing.assert_array_equal(source[1]["skeleton"], data[1])


def test_bytes_names_are_decoded(tmp_path):
  data, num_frames, _, labels = make_arrays(n=2)
  folder = write_reference(tmp_path, "train", data[:2], num_frames[:2], [b"x.skeleton", b"y.skeleton"], labels[:2])
  assert NpySource(folder, "train")[1]["name"] == "y.skeleton"


def test_pickle_reopens_memory_map_instead_of_copying(ntu_folder):
  folder, (data, *_) = ntu_folder
  source = NpySource(folder, "train")
  blob = pickle.dumps(source)
  assert len(blob) < data[0].nbytes  # the joints are not in the pickle
  clone = pickle.loads(blob)
  np.testing.assert_array_equal(clone[4]["skeleton"], data[4])
  assert repr(clone) == repr(source)


def test_repr_is_independent_of_location(ntu_folder, tmp_path):
  folder, _ = ntu_folder
  moved = tmp_path / "elsewhere" / "NTU-RGB-D-60-AGCN" / "xsub"
  shutil.copytree(folder, moved)
  assert repr(NpySource(folder, "train")) == repr(NpySource(moved, "train"))
  assert "NTU-RGB-D-60-AGCN/xsub" in repr(NpySource(moved, "train"))
  assert "part='train'" in repr(NpySource(moved, "train"))


# --------------------------------------------------------------------------------------
# Errors


def test_missing_folder_and_files(tmp_path, ntu_folder):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    NpySource(tmp_path / "nope", "train")
  folder, _ = ntu_folder
  with pytest.raises(FileNotFoundError, match=r"missing val_data_joint\.npy, val_num_frame\.npy, val_label\.pkl"):
    NpySource(folder, "val")
  (folder / "train_num_frame.npy").unlink()
  with pytest.raises(FileNotFoundError, match=r"missing train_num_frame\.npy.*present: train_data_joint\.npy, "
                                              r"train_label\.pkl"):
    NpySource(folder, "train")


def _rewrite(folder, **overrides):
  data, num_frames, names, labels = make_arrays()
  values = dict(data=data, num_frames=num_frames, names=names, labels=labels)
  values.update(overrides)
  write_reference(folder, "train", values["data"], values["num_frames"], values["names"], values["labels"])


@pytest.mark.parametrize("overrides, file_name, message", [
    (dict(data=np.zeros((6, 3, 300, 25), np.float32)), "train_data_joint.npy",
     r"shape \(6, 3, 300, 25\); expected \(N, 3, T, V, M\)"),
    (dict(data=np.zeros((6, 2, 300, 25, 2), np.float32)), "train_data_joint.npy",
     r"expected \(N, 3, T, V, M\)"),
    (dict(data=np.zeros((6, 3, 300, 25, 2), np.float64)), "train_data_joint.npy", "dtype float64; expected float32"),
    (dict(data=np.zeros((6, 3, 64, 25, 2), np.float32)), "train_data_joint.npy", "expected T = 300"),
    (dict(num_frames=np.arange(5)), "train_num_frame.npy",
     "holds 5 frame counts but train_data_joint.npy holds 6"),
    (dict(num_frames=np.zeros((6, 1), np.int64)), "train_num_frame.npy", "expected a 1-D integer array"),
    (dict(num_frames=np.full(6, 3.0)), "train_num_frame.npy", "dtype float64; expected a 1-D integer array"),
    (dict(num_frames=np.array([1, 2, -3, 4, 5, 6])), "train_num_frame.npy", "entry 2 is -3"),
    (dict(names=["a"] * 5, labels=[0] * 5), "train_label.pkl", "holds 5 samples but the data array holds 6"),
    (dict(labels=[0] * 5), "train_label.pkl", "6 names but 5 labels"),
    (dict(labels=[0, 1, 2.5, 3, 4, 5]), "train_label.pkl", "label 2 is 2.5; expected an integer"),
    (dict(labels=[0, 1, 2, 3, -1, 5]), "train_label.pkl", "label 4 is -1; expected a 0-based"),
    (dict(labels=[0, 1, "walk", 3, 4, 5]), "train_label.pkl", "label 2 is 'walk'"),
    (dict(labels=[True] * 6), "train_label.pkl", "label 0 is True"),
    (dict(names=[0, 1, 2, 3, 4, 5]), "train_label.pkl", "name 0 is a int"),
])
def test_format_errors_name_file_and_expectation(tmp_path, overrides, file_name, message):
  _rewrite(tmp_path, **overrides)
  with pytest.raises(DataFormatError, match=message) as err:
    NpySource(tmp_path, "train")
  assert err.value.path.endswith(file_name)
  assert str(err.value).startswith(str(tmp_path / file_name))


def test_label_pickle_not_a_pair(tmp_path):
  _rewrite(tmp_path)
  with open(tmp_path / "train_label.pkl", "wb") as f:
    pickle.dump({"names": [], "labels": []}, f)
  with pytest.raises(DataFormatError, match=r"train_label\.pkl: holds a dict; expected the pair"):
    NpySource(tmp_path, "train")
  with open(tmp_path / "train_label.pkl", "wb") as f:
    pickle.dump(([], [], []), f)
  with pytest.raises(DataFormatError, match="holds a tuple of length 3"):
    NpySource(tmp_path, "train")
  (tmp_path / "train_label.pkl").write_bytes(b"not a pickle")
  with pytest.raises(DataFormatError, match="cannot unpickle"):
    NpySource(tmp_path, "train")


def test_unreadable_npy(tmp_path):
  _rewrite(tmp_path)
  (tmp_path / "train_data_joint.npy").write_bytes(b"garbage")
  with pytest.raises(DataFormatError, match=r"train_data_joint\.npy: cannot be read as a \.npy array"):
    NpySource(tmp_path, "train")


def test_any_frame_count_when_max_frames_is_none(tmp_path):
  _rewrite(tmp_path, data=np.ones((6, 3, 64, 25, 2), np.float32))
  assert NpySource(tmp_path, "train", max_frames=None)[0]["skeleton"].shape == (3, 64, 25, 2)


def test_class_names_come_from_the_dataset_name(ntu_folder):
  """An npy folder holds no names: cmd_jax.data.class_names takes the config's dataset's."""
  folder, _ = ntu_folder
  source = NpySource(folder, "train")
  config = types.SimpleNamespace(dataset="ntu60", source="npy", npy_folder=str(folder))
  names = data.class_names(config, source, num_classes=60)
  assert names == list(action_names.NTU60) and names[0] == "drink water"
