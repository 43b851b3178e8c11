"""Tests of data_prep.convert (parallel, resumable conversion) and the NTU listing in data_prep.datasets."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from cmd_jax.layouts import NTU25
from data_prep import convert, datasets, ntu
from data_prep.preprocess import pre_normalization

MISSING60 = "NTU_RGBD_samples_with_missing_skeletons.txt"


def _raw_dir(tmp_path, ntu_dir, names=None, bad=None):
  """A raw folder with (links to) some real NTU files, and optionally bad files written here."""
  raw = tmp_path / "raw"
  raw.mkdir()
  for path in sorted(ntu_dir.glob("*.skeleton")):
    if names is None or path.name in names:
      os.symlink(path, raw / path.name)
  for name, text in (bad or {}).items():
    (raw / name).write_text(text)
  return raw


def _expected(path):
  """The reader + normalisation applied to one file on its own (the converter batches)."""
  fixed, num_frames = datasets.to_fixed_length(ntu.read_xyz(path))
  return pre_normalization(fixed[None], NTU25)[0], num_frames


def test_prepare_matches_reader_per_sample(tmp_path, ntu_dir, monkeypatch):
  monkeypatch.setattr(convert, "CHUNK_SIZE", 8)  # several chunks, converted by 2 processes
  raw = _raw_dir(tmp_path, ntu_dir)
  cache = convert.prepare(datasets.NTU60, raw, tmp_path / "cache", {"missing_list": "none"}, workers=2,
                          progress=False)
  assert len(cache.chunk_paths) == 3
  records = {r["name"]: r for part in (True, False) for r in cache.iter_split("xsub", part)}
  files = sorted(p.name for p in ntu_dir.glob("*.skeleton"))
  assert sorted(records) == files
  for name in files:
    skeleton, num_frames = _expected(ntu_dir / name)
    np.testing.assert_array_equal(records[name]["skeleton"], skeleton)
    assert records[name]["num_frames"] == num_frames
    assert records[name]["label"] == int(name[17:20]) - 1
  summary = cache.summary()
  assert (summary.listed, summary.converted, summary.skipped) == (21, 21, [])


def test_splits_follow_the_reference_rules(tmp_path, ntu_dir):
  raw = _raw_dir(tmp_path, ntu_dir)
  samples = datasets.NTU120.list_samples(raw, {"missing_list": "none"})
  for s in samples:
    f = ntu.parse_name(s.name)
    assert ("xsub" in s.train) == (f.subject in (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38))
    assert ("xset" in s.train) == (f.setup % 2 == 0)
  xview = {s.name: "xview" in s.train for s in datasets.NTU60.list_samples(raw, {"missing_list": "none"})}
  assert xview["S001C001P001R001A001.skeleton"] is False
  assert xview["S004C002P003R001A017.skeleton"] is True
  assert xview["S001C003P008R002A058.skeleton"] is True


def test_ntu60_keeps_setups_up_to_17_and_skips_missing(tmp_path, ntu_dir, ntu_missing_dir):
  # A file named as a listed missing sample must be skipped, with the list found beside the raw files.
  raw = _raw_dir(tmp_path, ntu_dir, names={"S001C001P001R001A001.skeleton"})
  shutil.copy(ntu_dir / "S001C001P001R001A002.skeleton", raw / "S001C002P005R002A008.skeleton")
  shutil.copy(ntu_dir / "S001C001P001R001A002.skeleton", raw / "S018C001P001R001A061.skeleton")
  (raw / "notes.txt").write_text("not a sample")
  with pytest.raises(FileNotFoundError, match="missing-skeleton list"):
    datasets.NTU60.list_samples(raw, {})
  shutil.copy(ntu_missing_dir / MISSING60, raw / MISSING60)
  names = [s.name for s in datasets.NTU60.list_samples(raw, {})]
  assert names == ["S001C001P001R001A001.skeleton"]
  names = [s.name for s in datasets.NTU60.list_samples(raw, {"missing_list": "none"})]
  assert names == ["S001C001P001R001A001.skeleton", "S001C002P005R002A008.skeleton"]
  names = [s.name for s in datasets.NTU120.list_samples(raw, {"missing_list": "none"})]
  assert "S018C001P001R001A061.skeleton" in names


def test_bad_file_is_skipped_and_reported(tmp_path, ntu_dir):
  good = {"S001C001P001R001A001.skeleton", "S001C001P001R001A050.skeleton"}
  text = (ntu_dir / "S001C001P001R001A002.skeleton").read_text()
  truncated = "\n".join(text.splitlines()[:100])
  raw = _raw_dir(tmp_path, ntu_dir, names=good, bad={"S001C002P001R001A002.skeleton": truncated})
  cache = convert.prepare(datasets.NTU60, raw, tmp_path / "cache", {"missing_list": "none"}, workers=1,
                          progress=False)
  summary = cache.summary()
  assert summary.converted == 2
  assert len(summary.skipped) == 1
  name, reason = summary.skipped[0]
  assert name == "S001C002P001R001A002.skeleton"
  assert "S001C002P001R001A002.skeleton:101" in reason and "truncated" in reason
  assert any("skipped S001C002P001R001A002.skeleton" in line for line in summary.lines())
  assert {r["name"] for r in cache.iter_split("xview", True)} == set()  # the bad one was the only C002
  assert {r["name"] for r in cache.iter_split("xview", False)} == good


def test_interrupted_conversion_resumes_without_redoing_chunks(tmp_path, ntu_dir, monkeypatch):
  monkeypatch.setattr(convert, "CHUNK_SIZE", 5)
  raw = _raw_dir(tmp_path, ntu_dir)
  options = {"missing_list": "none"}
  real = convert._convert_chunk
  calls = []

  def failing(job):
    if len(calls) == 2:
      raise KeyboardInterrupt  # killed in the middle of the third chunk
    calls.append(job[2])
    return real(job)

  monkeypatch.setattr(convert, "_convert_chunk", failing)
  with pytest.raises(KeyboardInterrupt):
    convert.prepare(datasets.NTU60, raw, tmp_path / "cache", options, workers=1, progress=False)
  assert len(list((tmp_path / "cache").glob("chunk_*.npz"))) == 2
  first = list(calls)

  monkeypatch.setattr(convert, "_convert_chunk", lambda job: (calls.append(job[2]), real(job))[1])
  cache = convert.prepare(datasets.NTU60, raw, tmp_path / "cache", options, workers=1, progress=False)
  redone = calls[2:]
  assert len(redone) == 3 and not set(redone) & set(first)  # 21 samples = 5 chunks; 2 were done
  fresh = convert.prepare(datasets.NTU60, raw, tmp_path / "fresh", options, workers=1, progress=False)
  for a, b in zip(cache.iter_chunks(), fresh.iter_chunks()):
    np.testing.assert_array_equal(a["skeleton"], b["skeleton"])
    np.testing.assert_array_equal(a["name"], b["name"])


def test_cache_from_other_inputs_is_discarded(tmp_path, ntu_dir):
  raw = _raw_dir(tmp_path, ntu_dir, names={"S001C001P001R001A001.skeleton", "S001C002P001R001A002.skeleton"})
  cache_dir = tmp_path / "cache"
  convert.prepare(datasets.NTU60, raw, cache_dir, {"missing_list": "none"}, workers=1, progress=False)
  os.symlink(ntu_dir / "S001C001P001R001A050.skeleton", raw / "S001C001P001R001A050.skeleton")
  cache = convert.prepare(datasets.NTU60, raw, cache_dir, {"missing_list": "none"}, workers=1, progress=False)
  assert cache.summary().converted == 2  # the listing changed: reconverted, not stale


def test_variants_have_their_own_cache_and_fingerprint(tmp_path, ntu_dir, capsys):
  raw = _raw_dir(tmp_path, ntu_dir, names={"S001C001P001R001A001.skeleton", "S001C001P001R001A002.skeleton"})
  assert convert.cache_folder(tmp_path / ".cache", "ntu60", "frame50") == tmp_path / ".cache" / "ntu60" / "frame50"
  cache_dir = tmp_path / "cache"
  standard = convert.prepare(datasets.NTU60, raw, cache_dir, {"missing_list": "none"}, workers=1, progress=False)
  assert standard.frames == 300 and next(standard.iter_chunks())["skeleton"].shape[2] == 300
  # The same folder asked for the other variant: its fingerprint differs, so it is converted again.
  frame50 = convert.prepare(datasets.NTU60, raw, cache_dir, {"missing_list": "none"}, workers=1, progress=False,
                            variant="frame50")
  assert "made from other inputs" in capsys.readouterr().out
  chunk = next(frame50.iter_chunks())
  assert chunk["skeleton"].shape == (2, 3, 50, 25, 2) and chunk["num_frames"].tolist() == [50, 50]
  with pytest.raises(ValueError, match="unknown conversion variant 'frame25'; expected one of standard, frame50"):
    convert.prepare(datasets.NTU60, raw, cache_dir, {"missing_list": "none"}, progress=False, variant="frame25")


def test_variant_readers(tmp_path, ntu_dir):
  path = ntu_dir / "S001C001P001R001A050.skeleton"  # a two-person file
  sample = datasets.Sample(path.name, 49, frozenset(), str(path))
  np.testing.assert_array_equal(datasets.load(datasets.NTU60, sample), ntu.read_xyz(path))
  slots = ntu.read_bodies(path)
  np.testing.assert_array_equal(datasets.load(datasets.NTU60, sample, "frame50"), slots[:2].transpose(3, 1, 2, 0))
  assert datasets.config_name("xview", "frame50") == "xview_frame50"
  assert datasets.parse_config_name("xview_frame50") == ("xview", "frame50")
  assert datasets.parse_config_name("xview") == ("xview", "standard")


def test_missing_raw_directory_is_an_immediate_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    convert.prepare(datasets.NTU60, tmp_path / "nowhere", tmp_path / "cache", {}, progress=False)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no SsssCcccPpppRrrrAaaa.skeleton files"):
    convert.prepare(datasets.NTU60, tmp_path / "empty", tmp_path / "cache", {"missing_list": "none"},
                    progress=False)


def test_unknown_dataset_and_benchmark():
  with pytest.raises(ValueError, match="unknown dataset 'ntu61'"):
    datasets.get_spec("ntu61")
  with pytest.raises(ValueError, match="ntu60 has no benchmark 'xset'"):
    datasets.check_benchmark(datasets.NTU60, "xset")


def test_to_fixed_length_pads_with_zeros_and_truncates():
  x = np.arange(3 * 5 * 2 * 1, dtype=np.float64).reshape(3, 5, 2, 1) + 1
  fixed, n = datasets.to_fixed_length(x, max_frames=7)
  assert n == 5 and fixed.dtype == np.float32 and fixed.shape == (3, 7, 2, 1)
  np.testing.assert_array_equal(fixed[:, :5], x)
  assert not fixed[:, 5:].any()
  fixed, n = datasets.to_fixed_length(x, max_frames=3)
  assert n == 5
  np.testing.assert_array_equal(fixed, x[:, :3])
