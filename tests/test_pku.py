"""PKU-MMD II reader: the real skeleton file, hand-written labels and splits, bad inputs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from cmd_jax.layouts import NTU25
from data_prep import datasets, pku
from data_prep.errors import DataFormatError

REAL = "A10N08-L.txt"
REAL_FRAMES = 1040

# Official label format: action_id,start_frame,end_frame,confidence.
LABELS_L = "12,0,100,1\n41,100,250,2\n51,900,1040,1\n1,500,560,3\n"
LABELS_M = "3,10,20,1\r\n7,30,30,1\r\n\r\n"  # CRLF, a zero-length row, a trailing blank line
# Official split format: a header line, the training videos, a header line, the val videos.
XSUB = "Training videos: \nA10N08-M, A01N01-L\nValidataion videos: \nA10N08-L\n"
XVIEW = "Training videos:\nA10N08-L ,A01N01-M,\nValidation videos:\nA10N08-M\n"


def reference_layout(path: Path) -> np.ndarray:
  """Independent computation: data[c, t, v, m] = row t, value 75 m + 3 v + c."""
  table = np.loadtxt(path)
  c, t, v, m = np.meshgrid(np.arange(3), np.arange(len(table)), np.arange(25), np.arange(2), indexing="ij")
  return table[t, 75 * m + 3 * v + c]


def write(path: Path, text: str) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, newline="")
  return path


@pytest.fixture
def raw(tmp_path, pku_dir) -> Path:
  """A raw directory with two videos (both the real skeleton file, linked in tmp_path)."""
  root = tmp_path / "raw"
  (root / "skeleton").mkdir(parents=True)
  for video in ("A10N08-L", "A10N08-M"):
    os.symlink(pku_dir / REAL, root / "skeleton" / f"{video}.txt")
  write(root / "label" / "A10N08-L.txt", LABELS_L)
  write(root / "label" / "A10N08-M.txt", LABELS_M)
  write(root / "cross_subject_v2.txt", XSUB)
  write(root / "cross_view_v2.txt", XVIEW)
  return root


# ---------------------------------------------------------------------------------------
# Skeleton files

def test_read_skeleton_real_file(pku_dir):
  data = pku.read_skeleton(pku_dir / REAL)
  assert data.shape == (3, REAL_FRAMES, 25, 2)
  assert data.dtype == np.float64
  np.testing.assert_array_equal(data, reference_layout(pku_dir / REAL))
  # Body order as in the file (no energy sorting): the second body is absent in 312 frames.
  table = np.loadtxt(pku_dir / REAL)
  np.testing.assert_array_equal(data[..., 0].transpose(1, 2, 0).reshape(REAL_FRAMES, 75), table[:, :75])
  assert int((np.abs(data[..., 1]).sum(axis=(0, 2)) == 0).sum()) == 312
  assert int((np.abs(data[..., 0]).sum(axis=(0, 2)) == 0).sum()) == 0


def frame_lines(num_frames: int, seed: int = 0) -> list[str]:
  values = np.random.default_rng(seed).uniform(-2, 2, (num_frames, 150)).round(6)
  return [" ".join(f"{x:.6f}" for x in row) for row in values]


def test_read_skeleton_crlf_and_trailing_blank_lines(tmp_path):
  lines = frame_lines(3)
  path = write(tmp_path / "v.txt", "\r\n".join(lines) + "\r\n\r\n  \r\n")
  data = pku.read_skeleton(path)
  assert data.shape == (3, 3, 25, 2)
  np.testing.assert_array_equal(data, reference_layout(path))


@pytest.mark.parametrize("line2, message", [
    ("drop_last", "frame line has 149 values; expected 150"),
    ("extra", "frame line has 151 values; expected 150"),
    ("blank", "frame line has 0 values; expected 150"),
    ("abc", "field 7 is 'abc'; expected a number"),
    ("1.2.3", "field 7 is '1.2.3'; expected a number"),
    ("nan", "field 7 is 'nan'; expected a finite number"),
    ("-inf", "field 7 is '-inf'; expected a finite number"),
    ("1e999", "field 7 is '1e999'; expected a finite number"),
])
def test_read_skeleton_malformed_line(tmp_path, line2, message):
  lines = frame_lines(3)
  fields = lines[1].split()
  if line2 == "drop_last":
    fields = fields[:-1]
  elif line2 == "extra":
    fields = fields + ["0.5"]
  elif line2 == "blank":
    fields = []
  else:
    fields[6] = line2
  lines[1] = " ".join(fields)
  path = write(tmp_path / "bad.txt", "\n".join(lines) + "\n")
  with pytest.raises(DataFormatError) as err:
    pku.read_skeleton(path)
  assert err.value.path == str(path)
  assert err.value.line == 2
  assert message in str(err.value)


@pytest.mark.parametrize("text", ["", "\n\n", "  \r\n"])
def test_read_skeleton_empty_file(tmp_path, text):
  path = write(tmp_path / "empty.txt", text)
  with pytest.raises(DataFormatError, match="empty file"):
    pku.read_skeleton(path)


# ---------------------------------------------------------------------------------------
# Label and split files

def test_read_labels_integer_rows(tmp_path):
  path = write(tmp_path / "l.txt", LABELS_L)
  rows = pku.read_labels(path, REAL_FRAMES)
  assert rows.dtype == np.int64  # deliberate: the reference keeps float64
  np.testing.assert_array_equal(rows, [[11, 0, 100], [40, 100, 250], [50, 900, 1040], [0, 500, 560]])


@pytest.mark.parametrize("row, message", [
    ("0,10,20,1", "class is 0; expected an integer in 1..51"),
    ("52,10,20,1", "class is 52; expected an integer in 1..51"),
    ("3.5,10,20,1", "class is '3.5'; expected an integer in 1..51"),
    ("walk,10,20,1", "class is 'walk'; expected an integer in 1..51"),
    ("3,-1,20,1", "instance [-1, 20) is outside the sequence"),
    ("3,30,20,1", "instance [30, 20) is outside the sequence"),
    ("3,10,1041,1", "expected 0 <= start <= end <= 1040"),
    ("3,ten,20,1", "start/end are 'ten'/'20'; expected integer frame indices"),
    ("3,10,20,1,7", "row has 5 comma-separated fields"),
])
def test_read_labels_bad_row(tmp_path, row, message):
  path = write(tmp_path / "l.txt", f"1,0,5,1\n\n{row}\n")
  with pytest.raises(DataFormatError) as err:
    pku.read_labels(path, REAL_FRAMES)
  assert err.value.path == str(path)
  assert err.value.line == 3  # 1-based line in the file, blank lines counted
  assert message in str(err.value)


def test_read_split_tolerates_whitespace(tmp_path):
  assert pku.read_split(write(tmp_path / "s.txt", XSUB)) == {"A10N08-M", "A01N01-L"}
  assert pku.read_split(write(tmp_path / "v.txt", XVIEW)) == {"A10N08-L", "A01N01-M"}
  crlf = write(tmp_path / "c.txt", "Training videos:\r\nA01N01-L,  A01N02-L\t, A01N03-L\r\nx\r\n")
  assert pku.read_split(crlf) == {"A01N01-L", "A01N02-L", "A01N03-L"}


@pytest.mark.parametrize("text", ["Training videos:\n", "Training videos:\n \n"])
def test_read_split_without_training_line(tmp_path, text):
  with pytest.raises(DataFormatError, match="training videos"):
    pku.read_split(write(tmp_path / "s.txt", text))


# ---------------------------------------------------------------------------------------
# The dataset spec

def test_spec():
  spec = datasets.get_spec("pku_mmd2")
  assert spec is pku.SPEC
  assert spec.layout is NTU25 and spec.num_classes == 51
  assert spec.benchmarks == ("xsub", "xview")
  assert spec.drop_all_zero is False  # CMD keeps all-zero instances (MAMP drops them)


def test_list_samples(raw):
  samples = pku.list_samples(raw, {})
  names = [s.name for s in samples]
  assert names == ["A10N08-L.txt_0", "A10N08-L.txt_1", "A10N08-L.txt_2", "A10N08-L.txt_3",
                   "A10N08-M.txt_0", "A10N08-M.txt_1"]
  assert [s.label for s in samples] == [11, 40, 50, 0, 2, 6]
  assert all(type(s.label) is int for s in samples)
  assert {s.train for s in samples[:4]} == {frozenset({"xview"})}
  assert {s.train for s in samples[4:]} == {frozenset({"xsub"})}
  assert pickle.loads(pickle.dumps(samples)) == samples


def test_load_cuts_end_exclusive(raw, pku_dir):
  seq = reference_layout(pku_dir / REAL)
  samples = {s.name: s for s in pku.list_samples(raw, {})}
  for name, (start, end) in {"A10N08-L.txt_0": (0, 100), "A10N08-L.txt_1": (100, 250),
                             "A10N08-L.txt_2": (900, 1040), "A10N08-L.txt_3": (500, 560),
                             "A10N08-M.txt_0": (10, 20)}.items():
    data = pku.SPEC.load(samples[name])
    assert data.shape == (3, end - start, 25, 2)
    np.testing.assert_array_equal(data, seq[:, start:end])
    data[:] = 0  # a caller's writes do not reach the per-process cache
  np.testing.assert_array_equal(pku.load(samples["A10N08-L.txt_0"]), seq[:, :100])


def test_zero_length_instance_is_reported(raw):
  sample = {s.name: s for s in pku.list_samples(raw, {})}["A10N08-M.txt_1"]
  assert sample.label == 6
  with pytest.raises(DataFormatError) as err:
    pku.load(sample)
  assert err.value.path == str(raw / "label" / "A10N08-M.txt")
  assert err.value.line == 2
  assert "zero-length instance" in str(err.value)


def test_row_past_the_skeleton_fails_at_load(raw):
  write(raw / "label" / "A10N08-L.txt", "5,1000,1041,1\n")
  (sample,) = [s for s in pku.list_samples(raw, {}) if s.name.startswith("A10N08-L")]
  with pytest.raises(DataFormatError) as err:
    pku.load(sample)
  assert err.value.path == str(raw / "label" / "A10N08-L.txt") and err.value.line == 1
  assert "end <= 1040" in str(err.value)
  assert pickle.loads(pickle.dumps(err.value)).line == 1  # crosses worker processes


def test_bad_label_row_fails_listing(raw):
  write(raw / "label" / "A10N08-M.txt", "3,10,20,1\n52,10,20,1\n")
  with pytest.raises(DataFormatError, match=r"A10N08-M.txt:2: class is 52"):
    pku.list_samples(raw, {})


def test_all_zero_instance_is_kept(raw):
  zeros = write(raw / "skeleton" / "A02N01-L.txt", ("0 " * 150 + "\n") * 5)
  write(raw / "label" / "A02N01-L.txt", "4,1,5,1\n")
  (sample,) = [s for s in pku.list_samples(raw, {}) if s.name.startswith("A02N01-L")]
  data = pku.load(sample)
  assert data.shape == (3, 4, 25, 2) and not data.any()
  assert sample.train == frozenset() and zeros.exists()


def test_official_folder_names_and_options(raw, tmp_path):
  expected = [s.name for s in pku.list_samples(raw, {})]
  (raw / "skeleton").rename(raw / "Skeleton_v2")
  (raw / "label").rename(raw / "Label_PKUMMD_v2")
  (raw / "Split").mkdir()
  for name in ("cross_subject_v2.txt", "cross_view_v2.txt"):
    (raw / name).rename(raw / "Split" / name)
  assert [s.name for s in pku.list_samples(raw, {})] == expected
  moved = tmp_path / "elsewhere"
  (raw / "Label_PKUMMD_v2").rename(moved)
  options = {"label_dir": str(moved), "skeleton_dir": str(raw / "Skeleton_v2"), "split_dir": str(raw / "Split")}
  samples = pku.list_samples(tmp_path / "raw", options)
  assert [s.name for s in samples] == expected
  assert samples[0].source.label_file == str(moved / "A10N08-L.txt")


def test_missing_inputs(raw, tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    pku.list_samples(tmp_path / "nowhere", {})
  (raw / "cross_view_v2.txt").unlink()
  with pytest.raises(FileNotFoundError, match="cross_view_v2.txt"):
    pku.list_samples(raw, {})
  write(raw / "cross_view_v2.txt", XVIEW)
  write(raw / "label" / "A03N01-R.txt", "1,0,5,1\n")
  with pytest.raises(FileNotFoundError, match="A03N01-R.txt"):
    pku.list_samples(raw, {})
  with pytest.raises(FileNotFoundError, match="label directory"):
    pku.list_samples(raw, {"label_dir": str(tmp_path / "none")})
