"""HiCLR's 50-frame conversion ("frame50"): data_prep.frame50, the first-two-bodies NTU reader,
the PKU-MMD II cutting, the converter's frame50 variant, the TFDS configs, the hiclr npy
export and cmd_jax.data's variant selection.

Independent computations: ``tests/spec_reference_frame50.py`` (the spec as loops over
persons, frames, joints and channels, OpenCV's INTER_LINEAR formula scalar by scalar),
float64 evaluations of the formulas written here, hand-worked values, and outputs of
OpenCV itself recorded for fixed inputs.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from cmd_jax import data as data_lib
from cmd_jax import input_pipeline
from cmd_jax.layouts import MSR20, NTU25
from cmd_jax.npy_source import NpySource
from data_prep import cli, convert, datasets, ntu
from data_prep.frame50 import FRAMES, clip_lengths, frame50_normalization, resize_linear
from tests import spec_reference
from tests import spec_reference_frame50 as spec
from tests.conftest import TINY_SYNTHETIC
from tests.test_ntu import Skeleton

# Tolerance of the vectorised function against the loop implementation. The output is
# float32 and the values are coordinates of magnitude ~1 m, whose float32 rounding is
# ~6e-8; both implementations follow the same float32/float64 steps, so they agree to
# the last bit on the real files (measured max abs diff 0.0). The rest of the 1e-5 is
# headroom for platforms whose libm or BLAS rounds a float32 arccos/cos or a float64
# product differently (an ulp of the angle moves a point ~1e-7 m).
ATOL = 1e-5
# The float32 angle chain against its float64 formulas (``_expected_rotation``): the ratio
# v_x / (|v| + 1e-4) carries <= ~5 float32 roundings (u = 6e-8), which arccos amplifies by
# 1 / sin(angle), and the angles here go down to 1.3 degrees (shoulders along x: the 1e-4);
# arccos, cos and sin add a few ulps (their SIMD and libm builds differ in the last one). A
# point of size <= 2.4 then moves by <= 2.4 x (5 u / 0.022 + 8 u) = 3.3e-5 (measured 1.1e-6).
# Still far below what leaving out the 1e-4 changes (>= 7e-4 here), a sign or a wrong vector.
ROT_ATOL = 4e-5


# ----------------------------------------------------------------------------------------
# Real NTU files: reader and normalisation against the loops
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ntu_files() -> list[Path]:
  from tests.conftest import shared_path
  files = sorted(shared_path("ntu_skeletons").glob("*.skeleton"))
  assert len(files) == 21, "the shared folder holds 21 NTU files (see its README)"
  return files


@pytest.fixture(scope="module")
def ntu_loop(ntu_files):
  """name -> (loop reader output, its 300-frame float32 buffer, loop frame50 output)."""
  out = {}
  for path in ntu_files:
    raw = spec.read_xyz_file_order(path)
    buffer = spec_reference.to_buffer([raw])[0]
    out[path.name] = (raw, buffer, spec.frame50(buffer))
  return out


def test_real_files_match_the_loop(ntu_files, ntu_loop):
  for path in ntu_files:
    np.testing.assert_array_equal(ntu.read_xyz(path, selection="file_order"), ntu_loop[path.name][0],
                                  err_msg=path.name)  # the same numbers, bit for bit
  buffers = np.stack([ntu_loop[p.name][1] for p in ntu_files])
  got = frame50_normalization(buffers, NTU25)
  assert got.dtype == np.float32 and got.shape == (21, 3, FRAMES, 25, 2)
  expected = np.stack([ntu_loop[p.name][2] for p in ntu_files])
  assert np.abs(got - expected).max() <= ATOL
  np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
  lengths = [spec.clip_length(b) for b in buffers]
  assert clip_lengths(buffers, NTU25).tolist() == lengths
  assert min(lengths) < FRAMES < max(lengths)  # the files exercise both up- and downsampling
  # A batch gives each sample what it gets alone (no coupling between samples).
  for i in (0, 7, 20):
    np.testing.assert_array_equal(frame50_normalization(buffers[i:i + 1], NTU25)[0], got[i])


def test_converter_frame50_matches_the_loop(tmp_path, ntu_dir, ntu_loop, monkeypatch):
  monkeypatch.setattr(convert, "CHUNK_SIZE", 8)
  raw = tmp_path / "raw"
  raw.mkdir()
  for path in ntu_dir.glob("*.skeleton"):
    os.symlink(path, raw / path.name)
  cache = convert.prepare(datasets.NTU60, raw, tmp_path / "cache", {"missing_list": "none"}, workers=2,
                          progress=False, variant="frame50")
  assert cache.variant == "frame50" and cache.frames == 50
  records = {r["name"]: r for train in (True, False) for r in cache.iter_split("xsub", train)}
  assert sorted(records) == sorted(ntu_loop)
  for name, record in records.items():
    np.testing.assert_allclose(record["skeleton"], ntu_loop[name][2], rtol=0, atol=ATOL, err_msg=name)
    assert record["num_frames"] == 50  # the stored clip's valid frames
    assert record["label"] == int(name[17:20]) - 1
  assert cache.summary().skipped == []


def test_export_hiclr_format(tmp_path, ntu_dir, ntu_missing_dir, ntu_loop):
  raw = tmp_path / "raw"
  raw.mkdir()
  for path in ntu_dir.glob("*.skeleton"):
    os.symlink(path, raw / path.name)
  out = tmp_path / "NTU60_frame50" / "xsub"
  missing = ntu_missing_dir / "NTU_RGBD_samples_with_missing_skeletons.txt"
  assert cli.main(["export-npy", "ntu60", "--benchmark", "xsub", "--format", "hiclr", "--raw", str(raw),
                   "--missing-list", str(missing), "--out", str(out), "--workers", "1", "--quiet"]) == 0
  assert sorted(p.name for p in out.iterdir()) == [
      "export.json", "train_label.pkl", "train_position.npy", "val_label.pkl", "val_position.npy"]
  xsub_train = {1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38}
  for part, train in (("train", True), ("val", False)):
    data = np.load(out / f"{part}_position.npy")
    with open(out / f"{part}_label.pkl", "rb") as f:
      names, labels = pickle.load(f)
    expected_names = sorted(n for n in ntu_loop if (int(n[9:12]) in xsub_train) == train)
    assert names == expected_names
    assert labels == [int(n[17:20]) - 1 for n in names] and all(type(label) is int for label in labels)
    assert data.dtype == np.float32 and data.shape == (len(names), 3, 50, 25, 2)
    source = NpySource(out, part)
    assert source.format == "hiclr" and len(source) == len(names) and source.shape == (3, 50, 25, 2)
    for i, name in enumerate(names):
      np.testing.assert_allclose(data[i], ntu_loop[name][2], rtol=0, atol=ATOL, err_msg=name)
      record = source[i]
      np.testing.assert_array_equal(record["skeleton"], data[i])
      assert (record["name"], record["label"], record["num_frames"]) == (name, labels[i], 50)
  # The cmd format does not go into the same folder (both use {part}_label.pkl).
  assert cli.main(["export-npy", "ntu60", "--benchmark", "xsub", "--raw", str(raw), "--missing-list", "none",
                   "--out", str(out), "--quiet"]) == 2
  assert not (out / "train_data_joint.npy").exists()


# ----------------------------------------------------------------------------------------
# The resize: OpenCV's INTER_LINEAR
# ----------------------------------------------------------------------------------------

def _column(values, total=None):
  """A batch of one [1, T, 1] float32 with ``values`` first, zeros up to ``total``."""
  x = np.zeros((1, total or len(values), 1), np.float32)
  x[0, :len(values), 0] = values
  return x


def test_resize_hand_worked_short_clip():
  # Length 3 (of an axis of 5: the zeros after it must not be used) -> 50. Output frame d
  # samples position (d + 0.5) * 3/50 - 0.5: d = 0 -> -0.47, below the first frame
  # (both taps clamp to frame 0); d = 25 -> 1.03: 0.97 * 20 + 0.03 * 40 = 20.6;
  # d = 49 -> 2.47: past the last frame (both taps clamp to frame 2).
  out = resize_linear(_column([10, 20, 40], total=5), 50, lengths=[3])[0, :, 0]
  assert out.dtype == np.float32 and out.shape == (50,)
  assert out[0] == 10 and out[49] == 40
  np.testing.assert_allclose(out[25], 20.6, rtol=0, atol=2e-6)  # the float32 fraction 0.02999997
  # d = 8 -> 0.01: 0.99 * 10 + 0.01 * 20 = 10.1; d = 41 -> 1.99: 0.01 * 20 + 0.99 * 40 = 39.8
  np.testing.assert_allclose(out[[8, 41]], [10.1, 39.8], rtol=0, atol=5e-6)
  # A ramp resamples to its (clamped) positions.
  positions = np.clip((np.arange(50) + 0.5) * 3 / 50 - 0.5, 0, 2)
  np.testing.assert_allclose(resize_linear(_column([0, 1, 2]), 50)[0, :, 0], positions, rtol=0, atol=1e-6)


def test_resize_hand_worked_long_clip():
  # Length 80 -> 50: position (d + 0.5) * 1.6 - 0.5, plain linear sampling (no averaging):
  # d = 0 -> 0.3, d = 1 -> 1.9, d = 49 -> 78.7; a ramp t -> t gives the position itself.
  ramp = resize_linear(_column(np.arange(80)), 50)[0, :, 0]
  np.testing.assert_allclose(ramp[[0, 1, 49]], [0.3, 1.9, 78.7], rtol=0, atol=1e-5)
  np.testing.assert_allclose(ramp, (np.arange(50) + 0.5) * 1.6 - 0.5, rtol=0, atol=2e-5)  # float32 positions
  # Only frames 0 and 1 contribute to frame 0: 0.7 * a + 0.3 * b.
  values = np.zeros(80)
  values[:2] = (3.0, -7.0)
  np.testing.assert_allclose(resize_linear(_column(values), 50)[0, 0, 0], 0.7 * 3 - 0.3 * 7, rtol=0, atol=1e-6)
  # 50 -> 50 is a copy, bit for bit.
  x = np.random.default_rng(0).standard_normal((2, 50, 3)).astype(np.float32)
  np.testing.assert_array_equal(resize_linear(x, 50), x)


# cv2.resize(column, (2, 50), interpolation=cv2.INTER_LINEAR) of float32 columns, recorded from
# opencv-python 4.14.0 with cv2.ipp.setUseIPP(False) (OpenCV's own implementation), as
# little-endian float32 hex. Inputs: length 7 [0.3, -1.25, 2.5, 0.125, 4, -0.75, 1]; length
# 80 float32(sin(0.37 t) + 0.01 t); length 1 [0.7].
OPENCV_INPUTS = {
    7: np.array([0.3, -1.25, 2.5, 0.125, 4.0, -0.75, 1.0], np.float32),
    80: (np.sin(0.37 * np.arange(80)) + 0.01 * np.arange(80)).astype(np.float32),
    1: np.array([0.7], np.float32),
}
OPENCV_OUTPUTS = {
    7: "9a99993e9a99993e9a99993e9a99993e60bac93d20b0f2bda7c6abbea4700dbff4fd44bf448b7cbf4b0c9abf656656bf0000a0be"
       "9499593ecbcc3c3f9999a13fcbcce43f00001440ec5112407a14fa3f2185cf3fc3f5a43fc9cc743f16ae1f3fb31e953e3fe1ca3e"
       "ee51703f9699bd3f1f850140723d2440c2f5464016ae6940c9cc7040703d464016ae1b40793de23fb31e8d3f0000e03e98f568be"
       "568f32bf10aee7bee87a54be4099193de0a3903e3e0a073f8cc2453f0000803f0000803f0000803f0000803f",
    80: "0f52e43d2f7a293f0a157b3f06ed7e3fab3c2c3f0be81c3ec80ccbbe7c5344bf789e5abfe4d916bffa47abbdcac6023fd8e77b3f"
        "fd149a3fbfe5883fe46d283f2c7ed03d5853cabe84492dbfaa321dbf3e7e7cbe71fca13ec660623f791fa43f819bad3f1ae38d3f"
        "e6e51e3fa00f833d4642bfbe98c804bfb3a0abbe1ab8ff3d602c373f9bf29e3f8e21c23f56c7bb3fce7f8e3f9c51123f6410193d"
        "2ae696be1a5ba2be632c92bc8f45053f39e78d3f6876c63ff292da3faca0c43fd9848a3fa2eb053f62b14a3d",
    1: "3333333f3333333f3333333f3333333f3333333f3333333f3333333f3333333f3333333f3333333f3333333f3233333f3333333f"
       "3333333f3433333f3333333f3333333f3333333f3333333f3333333f3333333f3433333f3333333f3333333f3333333f3433333f"
       "3433333f3333333f3433333f3333333f3333333f3333333f3433333f3333333f3333333f3433333f3333333f3333333f3333333f"
       "3333333f3333333f3233333f3333333f3333333f3333333f3433333f3333333f3333333f3233333f3333333f",
}


@pytest.mark.parametrize("length", sorted(OPENCV_INPUTS))
def test_resize_matches_recorded_opencv_output(length):
  expected = np.frombuffer(bytes.fromhex(OPENCV_OUTPUTS[length]), "<f4")
  image = np.repeat(OPENCV_INPUTS[length][:, None, None], 2, axis=1)  # [T, 2 columns, 1 channel]
  np.testing.assert_array_equal(resize_linear(image[None], 50)[0, :, 0, 0], expected)
  np.testing.assert_array_equal(spec.resize_image(image, 2, 50)[:, 0, 0], expected)
  if length == 1:  # a single frame is repeated, up to the rounding of p * (1 - w) + p * w
    np.testing.assert_allclose(expected, np.float32(0.7), rtol=0, atol=1.2e-7)


def test_resize_matches_the_loop_for_every_length():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((300, 300, 2)).astype(np.float32)  # item n: its first n + 1 frames
  got = resize_linear(x, 50, lengths=np.arange(1, 301), axis=1)
  for n in range(300):
    for c in range(2):
      expected = spec.resize_rows([x[n, t, c] for t in range(n + 1)], 50)
      np.testing.assert_array_equal(got[n, :, c], np.array(expected, np.float32), err_msg=f"length {n + 1}")


def test_the_loop_2d_formula_hand_worked():
  # Width 2 -> 4: positions -0.25, 0.25, 0.75, 1.25; the columns clamp with the fraction
  # set to 0 at the borders: [a, 0.75 a + 0.25 b, 0.25 a + 0.75 b, b].
  image = np.array([[[0.0], [4.0]]], np.float32)  # [H=1, W=2, C=1]
  np.testing.assert_array_equal(spec.resize_image(image, 4, 1)[0, :, 0], [0, 1, 3, 4])
  # An unchanged width is an exact copy along the joints: resizing [T, V, C] to (V, 50)
  # only resamples time, as resize_linear does along one axis.
  clip = np.random.default_rng(2).standard_normal((9, 5, 3)).astype(np.float32)
  np.testing.assert_array_equal(spec.resize_image(clip, 5, 50), resize_linear(clip[None], 50)[0])


def test_resize_errors():
  with pytest.raises(ValueError, match="item 1 has length 0"):
    resize_linear(np.zeros((2, 4, 1)), 50, lengths=[2, 0])
  with pytest.raises(ValueError, match="has length 5; expected 1..4"):
    resize_linear(np.zeros((1, 4, 1)), 50, lengths=[5])
  with pytest.raises(ValueError, match="axis other than 0"):
    resize_linear(np.zeros((3, 4)), 50, axis=0)


# ----------------------------------------------------------------------------------------
# Centring and rotation, hand-made skeletons
# ----------------------------------------------------------------------------------------

def _shoulders(angles_deg, length=0.4, frames=50, persons=2, seed=0):
  """A (3, frames, 25, M) float32 sample: random joints, every frame's right-minus-left
  shoulder vector (joints 8 - 4) of ``length`` at ``angles_deg[m][t]`` from +x towards +z."""
  rng = np.random.default_rng(seed)
  x = np.zeros((3, frames, 25, persons), np.float32)
  for m, angles in enumerate(angles_deg):
    x[..., m] = rng.normal(0, 0.3, (3, frames, 25)) + np.array([0.1, 0.2, 3.0])[:, None, None]
    a = np.radians(np.asarray(angles, np.float64))
    x[:, :, 8, m] = x[:, :, 4, m] + length * np.stack([np.cos(a), np.zeros_like(a), np.sin(a)])
  return x


def _expected_rotation(sample, root=20, xaxis=(8, 4)):
  """The formulas in float64 on a 50-frame sample (no resampling): centre, angle, rotate."""
  x = sample.astype(np.float64)
  x = x - x[:, :, root:root + 1, :]
  out = np.zeros_like(x)
  for m in range(x.shape[-1]):
    v = x[:, :, xaxis[0], m] - x[:, :, xaxis[1], m]
    degrees = np.degrees(np.arccos(v[0] / (np.hypot(v[0], v[2]) + 1e-4)))
    if v[2].sum() >= 0:
      degrees = -degrees
    a = np.radians(degrees)
    c, s = np.cos(a)[:, None], np.sin(a)[:, None]
    out[0, :, :, m] = c * x[0, :, :, m] - s * x[2, :, :, m]
    out[1, :, :, m] = x[1, :, :, m]
    out[2, :, :, m] = s * x[0, :, :, m] + c * x[2, :, :, m]
  return out


def test_rotation_aligns_each_persons_shoulders_with_x():
  # Person 0 at +30 degrees (v_z > 0: the angles are negated), person 1 at -60 (v_z < 0:
  # kept): both end up along +x, each by its own vector, up to the 1e-4 in the divisor
  # (arccos(cos(30) * 0.4 / 0.4001) is 0.025 degrees more than 30).
  sample = _shoulders([[30] * 50, [-60] * 50])
  got = frame50_normalization(sample[None], NTU25)[0]
  np.testing.assert_allclose(got, _expected_rotation(sample), rtol=0, atol=ROT_ATOL)
  v = got[:, :, 8] - got[:, :, 4]  # [3, 50, M]
  np.testing.assert_allclose(v[0], 0.4, rtol=0, atol=1e-6)
  assert np.abs(v[1]).max() == 0 and np.abs(v[2]).max() < 3e-4
  # Hand-worked for person 0: a = -arccos(cos 30 * 0.4 / 0.4001); v' = R(a) v.
  a = -math.acos(math.cos(math.radians(30)) * 0.4 / 0.4001)
  vx, vz = 0.4 * math.cos(math.radians(30)), 0.4 * math.sin(math.radians(30))
  np.testing.assert_allclose(v[[0, 2], 0, 0], [math.cos(a) * vx - math.sin(a) * vz,
                                               math.sin(a) * vx + math.cos(a) * vz], rtol=0, atol=1e-6)


def test_rotation_sign_is_global():
  # 49 frames at +10 degrees and one at -30: the sum of v_z is positive, so every angle is
  # negated, also the -30 frame's, which is turned to about -60 degrees instead of to +x.
  angles = [10] * 49 + [-30]
  sample = _shoulders([angles, [0] * 50])
  got = frame50_normalization(sample[None], NTU25)[0]
  np.testing.assert_allclose(got, _expected_rotation(sample), rtol=0, atol=ROT_ATOL)
  v = got[:, 49, 8, 0] - got[:, 49, 4, 0]
  assert abs(math.degrees(math.atan2(v[2], v[0])) + 60) < 0.1
  v = got[:, 0, 8, 0] - got[:, 0, 4, 0]
  assert abs(math.degrees(math.atan2(v[2], v[0]))) < 0.1
  # Mostly negative z: nothing is negated, and the +z frame turns away instead.
  sample = _shoulders([[-10] * 49 + [30], [0] * 50])
  got = frame50_normalization(sample[None], NTU25)[0]
  v = got[:, 49, 8, 0] - got[:, 49, 4, 0]
  assert abs(math.degrees(math.atan2(v[2], v[0])) - 60) < 0.1


def test_centring_is_per_person_and_unmasked():
  sample = _shoulders([[20] * 50, [-20] * 50])
  sample[:, 10, 7, 0] = 0  # a dropped joint: not masked, it becomes minus the root
  sample[:, 5:9, :, 1] = 0  # person 1 absent in 4 frames: they stay zero
  got = frame50_normalization(sample[None], NTU25)[0]
  np.testing.assert_allclose(got, _expected_rotation(sample), rtol=0, atol=ROT_ATOL)
  assert np.all(got[:, 5:9, :, 1] == 0)
  assert np.all(got[:, :, 20] == 0)  # each person's own root is its origin
  assert np.abs(got[:, 10, 7, 0]).min() > 0.01  # the dropped joint is now minus the root
  np.testing.assert_allclose(got, spec.frame50(sample), rtol=0, atol=ATOL)


def test_absent_second_person_stays_zero():
  sample = _shoulders([[15] * 50])
  sample = np.concatenate([sample, np.zeros_like(sample)], axis=-1)
  got = frame50_normalization(sample[None], NTU25)[0]
  assert not got[..., 1].any()
  np.testing.assert_allclose(got, spec.frame50(sample), rtol=0, atol=ATOL)


# ----------------------------------------------------------------------------------------
# The length: frames counted, 0 and 1
# ----------------------------------------------------------------------------------------

def test_length_counts_frames_of_person_0s_length_joint():
  sample = _shoulders([[15] * 8, [5] * 8], frames=8)
  sample = np.concatenate([sample, np.zeros((3, 4, 25, 2), np.float32)], axis=1)  # 12 frames, 8 recorded
  sample[:, 2:4, :, 0] = 0  # person 0 missing in frames 2 and 3: counted out
  sample[:, 6, 0, 0] = 0  # only its spine base missing in frame 6: counted out too
  sample[:, 9, 0, 1] = 1.0  # person 1 in a later frame: not counted
  assert clip_lengths(sample[None], NTU25).tolist() == [5] == [spec.clip_length(sample)]
  got = frame50_normalization(sample[None], NTU25)[0]
  # The FIRST 5 frames are resized (two of them empty for person 0), both persons alike.
  np.testing.assert_allclose(got, spec.frame50(sample), rtol=0, atol=ATOL)
  # Output frame 0 samples position 0.5 * 5/50 - 0.5 < 0: input frame 0 alone.
  alone = frame50_normalization(np.repeat(sample[None, :, :1], 5, axis=2), NTU25)[0]
  np.testing.assert_allclose(got[:, 0], alone[:, 0], rtol=0, atol=1e-6)
  assert MSR20.length_joint == 6 and NTU25.length_joint == 0


def test_length_one_repeats_the_frame():
  sample = np.zeros((3, 300, 25, 2), np.float32)
  sample[:, :1] = _shoulders([[25], [-35]], frames=1)
  got = frame50_normalization(sample[None], NTU25)[0]
  assert clip_lengths(sample[None], NTU25).tolist() == [1]
  np.testing.assert_allclose(got, spec.frame50(sample), rtol=0, atol=ATOL)
  # Every output frame is that frame (p * (1 - w) + p * w rounds to p or a neighbour).
  np.testing.assert_allclose(got, np.repeat(got[:, :1], 50, axis=1), rtol=0, atol=1e-6)
  np.testing.assert_allclose(got[:, :1], _expected_rotation(sample[:, :1]), rtol=0, atol=ROT_ATOL)


def test_length_zero_is_an_error(tmp_path):
  sample = _shoulders([[15] * 50, [5] * 50])
  sample[:, :, 0, 0] = 0  # person 0's spine base never recorded
  batch = np.stack([_shoulders([[15] * 50, [5] * 50]), sample, np.zeros_like(sample)])
  with pytest.raises(ValueError, match=r"samples \[1, 2\] have length 0: person 0's joint 0 \(spine_base\)"):
    frame50_normalization(batch, NTU25)
  assert frame50_normalization(np.zeros((0, 3, 300, 25, 2)), NTU25).shape == (0, 3, 50, 25, 2)
  with pytest.raises(ValueError, match="layout ntu25 has 25 joints, data has 20"):
    frame50_normalization(np.zeros((1, 3, 300, 20, 1)), NTU25)


def test_converter_skips_and_reports_length_zero(tmp_path):
  rng = np.random.default_rng(3)
  good = [rng.normal(0, 0.3, (25, 3)) + [0, 0, 3] for _ in range(4)]
  no_spine_base = [np.vstack([np.zeros((1, 3)), rng.normal(0, 0.3, (24, 3)) + [0, 0, 3]]) for _ in range(4)]
  raw = tmp_path / "raw"
  raw.mkdir()
  Skeleton([[b] for b in good]).write(raw / "S001C001P001R001A001.skeleton")
  Skeleton([[b] for b in no_spine_base]).write(raw / "S001C001P002R001A001.skeleton")
  Skeleton([[b] for b in good]).write(raw / "S001C001P003R001A001.skeleton")
  cache = convert.prepare(datasets.NTU60, raw, tmp_path / "cache", {"missing_list": "none"}, workers=1,
                          progress=False, variant="frame50")
  summary = cache.summary()
  assert summary.converted == 2 and [s[0] for s in summary.skipped] == ["S001C001P002R001A001.skeleton"]
  assert "length 0" in summary.skipped[0][1] and "spine_base" in summary.skipped[0][1]
  assert summary.lines()[0] == "ntu60 (frame50): 2 of 3 samples converted, 1 skipped"
  # The standard variant keeps it (CMD's normalisation has an answer for it).
  standard = convert.prepare(datasets.NTU60, raw, tmp_path / "standard", {"missing_list": "none"}, workers=1,
                             progress=False)
  assert standard.summary().converted == 3


# ----------------------------------------------------------------------------------------
# Readers: NTU bodies in file order, PKU-MMD II as HiCLR cuts it
# ----------------------------------------------------------------------------------------

def test_first_two_bodies_in_file_order_vs_energy(tmp_path):
  # Three bodies per frame; the third moves most, the second least. HiCLR keeps the first
  # two listed; CMD keeps the two of highest energy, highest first.
  rng = np.random.default_rng(4)
  frames = [[rng.normal(0, s, (25, 3)) + [0, 0, 3] for s in (0.3, 0.05, 1.0)] for _ in range(5)]
  frames[2] = frames[2][:1]  # a frame listing one body: the other slots are zero there
  path = Skeleton(frames).write(tmp_path / "S001C001P001R001A050.skeleton")
  file_order = ntu.read_xyz(path, selection="file_order")
  np.testing.assert_array_equal(file_order, spec.read_xyz_file_order(path))
  for m in (0, 1):
    for t in (0, 1, 3, 4):
      np.testing.assert_allclose(file_order[:, t, :, m].T, frames[t][m], rtol=0, atol=5e-6)  # "%.7g" text
  assert not file_order[:, 2, :, 1].any()
  energy = ntu.read_xyz(path)
  np.testing.assert_array_equal(energy, spec_reference.read_xyz(path))
  np.testing.assert_allclose(energy[:, 0, :, 0].T, frames[0][2], rtol=0, atol=5e-6)  # body 3 first
  np.testing.assert_allclose(energy[:, 0, :, 1].T, frames[0][0], rtol=0, atol=5e-6)  # then body 1
  with pytest.raises(ValueError, match="body selection 'tracked'"):
    ntu.read_xyz(path, selection="tracked")


def _hiclr_pku_clip(table: np.ndarray, start: int, end: int) -> np.ndarray:
  """HiCLR's PKU cutting from the text table [T, 150], as its scripts describe it: the
  1-based rows start..end; body 2 written only where the sum of its 75 values is not 0;
  read back as (3, T, 25, 2) and, past 300 frames, the centre 300 kept."""
  rows = table[start - 1:end]
  clip = np.zeros((3, len(rows), 25, 2))
  for t, row in enumerate(rows):
    for m in range(2 if np.sum(row[75:150]) != 0 else 1):
      for j in range(25):
        clip[:, t, j, m] = row[75 * m + 3 * j:75 * m + 3 * j + 3]
  if clip.shape[1] > 300:
    first = (clip.shape[1] - 300) // 2
    clip = clip[:, first:first + 300]
  return clip


def _pku_raw(tmp_path, pku_dir, labels):
  raw = tmp_path / "pku_raw"
  (raw / "skeleton").mkdir(parents=True)
  (raw / "label").mkdir()
  os.symlink(pku_dir / "A10N08-L.txt", raw / "skeleton" / "A10N08-L.txt")
  (raw / "label" / "A10N08-L.txt").write_text(labels)
  (raw / "cross_subject_v2.txt").write_text("Training videos:\nA10N08-L\nValidataion videos:\nA11N08-L\n")
  (raw / "cross_view_v2.txt").write_text("Training videos:\nA11N08-L\nValidataion videos:\nA10N08-L\n")
  return raw


def test_pku_hiclr_cutting(tmp_path, pku_dir):
  raw = _pku_raw(tmp_path, pku_dir, "3,10,60,1\n5,100,451,1\n7,0,20,1\n9,1040,1040,1\n2,1000,1041,1\n")
  table = np.loadtxt(pku_dir / "A10N08-L.txt")
  spec_pku = datasets.get_spec("pku_mmd2")
  samples = {s.name: s for s in spec_pku.list_samples(raw, {})}
  for name, (start, end) in {"A10N08-L.txt_0": (10, 60), "A10N08-L.txt_1": (100, 451),
                             "A10N08-L.txt_3": (1040, 1040)}.items():
    clip = datasets.load(spec_pku, samples[name], "frame50")
    expected = _hiclr_pku_clip(table, start, end)
    assert clip.shape == expected.shape == (3, min(end - start + 1, 300), 25, 2)
    np.testing.assert_array_equal(clip, expected)
  np.testing.assert_array_equal(  # CMD's standard cutting is [start, end)
      datasets.load(spec_pku, samples["A10N08-L.txt_0"], "standard"), spec_pku.load(samples["A10N08-L.txt_0"]))
  cache = convert.prepare(spec_pku, raw, tmp_path / "cache", {}, workers=1, progress=False, variant="frame50")
  skipped = dict(cache.summary().skipped)
  assert sorted(skipped) == ["A10N08-L.txt_2", "A10N08-L.txt_4"]
  assert "start must be >= 1" in skipped["A10N08-L.txt_2"] and "A10N08-L.txt:3" in skipped["A10N08-L.txt_2"]
  assert "outside the sequence" in skipped["A10N08-L.txt_4"]
  records = {r["name"]: r for r in cache.iter_split("xsub", True)}
  assert sorted(records) == ["A10N08-L.txt_0", "A10N08-L.txt_1", "A10N08-L.txt_3"]
  for name, (start, end) in {"A10N08-L.txt_0": (10, 60), "A10N08-L.txt_1": (100, 451)}.items():
    buffer = spec_reference.to_buffer([_hiclr_pku_clip(table, start, end)])[0]
    np.testing.assert_allclose(records[name]["skeleton"], spec.frame50(buffer), rtol=0, atol=ATOL)
    assert records[name]["num_frames"] == 50


def test_pku_second_body_dropped_where_its_sum_is_zero(tmp_path):
  rng = np.random.default_rng(5)
  table = rng.normal(0, 1, (6, 150)).round(4)
  table[2, 75:] = 0
  table[2, 75], table[2, 80] = 1.5, -1.5  # non-zero values summing to exactly 0: HiCLR drops the body
  raw = tmp_path / "raw"
  (raw / "skeleton").mkdir(parents=True)
  (raw / "label").mkdir()
  np.savetxt(raw / "skeleton" / "A01N01-L.txt", table, fmt="%.4f")
  (raw / "label" / "A01N01-L.txt").write_text("4,1,6,1\n")
  (raw / "cross_subject_v2.txt").write_text("Training videos:\nA01N01-L\n")
  (raw / "cross_view_v2.txt").write_text("Training videos:\nA01N01-L\n")
  spec_pku = datasets.get_spec("pku_mmd2")
  sample = spec_pku.list_samples(raw, {})[0]
  clip = datasets.load(spec_pku, sample, "frame50")
  np.testing.assert_array_equal(clip, _hiclr_pku_clip(table, 1, 6))
  assert not clip[:, 2, :, 1].any() and clip[:, 3, :, 1].any()


# ----------------------------------------------------------------------------------------
# MSR Action3D: one person, its own joints
# ----------------------------------------------------------------------------------------

def test_msr_frame50(tmp_path, msr_dir):
  raw = tmp_path / "msr_raw"
  raw.mkdir()
  names = ["a01_s01_e01", "a05_s02_e02", "a13_s09_e02", "a20_s10_e03"]  # a13_s09_e02 is all zero
  for name in names:
    os.symlink(msr_dir / f"{name}_skeleton3D.txt", raw / f"{name}_skeleton3D.txt")
  spec_msr = datasets.get_spec("msr_action3d")
  cache = convert.prepare(spec_msr, raw, tmp_path / "cache", {}, workers=1, progress=False, variant="frame50")
  summary = cache.summary()
  assert [s[0] for s in summary.skipped] == ["a13_s09_e02"] and "all coordinates are zero" in summary.skipped[0][1]
  records = {r["name"]: r for train in (True, False) for r in cache.iter_split("xsub", train)}
  assert sorted(records) == ["a01_s01_e01", "a05_s02_e02", "a20_s10_e03"]
  for name, record in records.items():
    assert record["skeleton"].shape == (3, 50, 20, 1) and record["num_frames"] == 50
    raw_clip = spec_msr.load(next(s for s in spec_msr.list_samples(raw, {}) if s.name == name))
    buffer = np.zeros((3, 300, 20, 1), np.float32)
    buffer[:, :min(raw_clip.shape[1], 300)] = raw_clip[:, :300]
    expected = spec.frame50(buffer, root=MSR20.root, xaxis=MSR20.xaxis, length_joint=6)
    np.testing.assert_allclose(record["skeleton"], expected, rtol=0, atol=ATOL, err_msg=name)
  assert (MSR20.root, MSR20.xaxis) == (2, (1, 0))


# ----------------------------------------------------------------------------------------
# TFDS configs, built from Python, and cmd_jax.data's variant selection
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_both(tmp_path_factory):
  """The tiny synthetic set built in both variants (4 configs)."""
  import data_prep
  out = tmp_path_factory.mktemp("data")
  summary = data_prep.build_dataset("synthetic", out, options=TINY_SYNTHETIC, variant="all", workers=1,
                                    progress=False, log=None)
  return out, summary


def test_synthetic_frame50_config_reads_back(tiny_both):
  out, summary = tiny_both
  assert summary.configs == {"xsub": {"train": 36, "val": 36}, "xview": {"train": 48, "val": 24},
                             "xsub_frame50": {"train": 36, "val": 36}, "xview_frame50": {"train": 48, "val": 24}}
  assert sorted(summary.conversions) == ["frame50", "standard"] and summary.skipped == []
  assert not (out / ".cache").exists()  # both caches removed after the build
  spec_syn = datasets.get_spec("synthetic")
  samples = {s.name: s for s in spec_syn.list_samples(None, TINY_SYNTHETIC)}
  source = input_pipeline.tfds_source(out, "synthetic", "xsub_frame50", "train")
  assert len(source) == 36
  for i in range(len(source)):
    record = source[i]
    name = record["name"].decode() if isinstance(record["name"], bytes) else str(record["name"])
    raw = spec_syn.load(samples[name])
    assert record["skeleton"].shape == (3, 50, 25, 2) and record["skeleton"].dtype == np.float32
    assert int(record["num_frames"]) == 50 and int(record["label"]) == samples[name].label
    buffer = spec_reference.to_buffer([raw[:, :300]])[0]
    np.testing.assert_allclose(record["skeleton"], spec.frame50(buffer), rtol=0, atol=ATOL, err_msg=name)
  # The standard config is CMD's conversion, unchanged.
  standard = input_pipeline.tfds_source(out, "synthetic", "xsub", "val")
  for i in (0, 17, 35):
    record = standard[i]
    name = record["name"].decode() if isinstance(record["name"], bytes) else str(record["name"])
    raw = spec_syn.load(samples[name])
    assert record["skeleton"].shape == (3, 300, 25, 2) and int(record["num_frames"]) == raw.shape[1]
    np.testing.assert_array_equal(record["skeleton"],
                                  spec_reference.pre_normalization(spec_reference.to_buffer([raw]))[0])


def test_rebuild_finds_both_variants_built(tiny_both):
  import data_prep
  out, _ = tiny_both
  lines = []
  again = data_prep.build_dataset("synthetic", out, options=TINY_SYNTHETIC, variant="frame50", workers=1,
                                  progress=False, log=lines.append)
  assert again.already_built == ["xsub_frame50", "xview_frame50"] and again.conversions == {}
  assert lines[0].startswith("synthetic/xsub_frame50: already built in")


def _data_config(data_dir, **fields):
  c = ml_collections.ConfigDict({"source": "tfds", "data_dir": str(data_dir), "dataset": "synthetic",
                                 "benchmark": "xsub", "npy_folder": "", "prepare_synthetic": True})
  c.update(fields)
  return c


def test_data_config_variant_selects_the_tfds_config(tiny_both, monkeypatch):
  out, _ = tiny_both
  old = _data_config(out)  # an old config.json: no variant field
  assert data_lib.tfds_config_name(old) == "xsub" and data_lib.variant_of(old) == "standard"
  assert data_lib.open_split(old, "train")[0]["skeleton"].shape == (3, 300, 25, 2)
  new = _data_config(out, variant="frame50")
  data_lib.validate(new)
  assert data_lib.tfds_config_name(new) == "xsub_frame50"
  assert data_lib.open_split(new, "val")[0]["skeleton"].shape == (3, 50, 25, 2)
  assert data_lib.variant_of(_data_config(out, variant="")) == "standard"
  resolved = data_lib.with_variant(_data_config(out, variant=""), "frame50")
  assert resolved.variant == "frame50" and data_lib.with_variant(new, "standard").variant == "frame50"
  with pytest.raises(ValueError, match=r"^config\.data\.variant='frame100'; expected one of standard, frame50"):
    data_lib.validate(_data_config(out, variant="frame100"))
  # ensure_prepared: nothing to do when the variant's config exists; else builds that variant.
  calls = []
  monkeypatch.setattr("data_prep.build_dataset", lambda *a, **k: calls.append((a, k)))
  data_lib.ensure_prepared(new)
  assert calls == []
  data_lib.ensure_prepared(_data_config(out / "elsewhere", variant="frame50"))
  assert calls[0][0] == ("synthetic", str(out / "elsewhere")) and calls[0][1]["variant"] == "frame50"


def test_npy_folder_variant_must_match_its_format(tmp_path):
  folder = tmp_path / "hiclr"
  folder.mkdir()
  np.save(folder / "train_position.npy", np.zeros((2, 3, 50, 25, 2), np.float32))
  with open(folder / "train_label.pkl", "wb") as f:
    pickle.dump((["a", "b"], [0, 1]), f)
  config = _data_config(tmp_path, source="npy", npy_folder=str(folder), variant="frame50")
  assert data_lib.open_split(config, "train")[1]["num_frames"] == 50
  config.variant = "standard"
  with pytest.raises(ValueError, match=r"holds the hiclr format \(frame50 clips\); expected config.data.variant"):
    data_lib.open_split(config, "train")


def test_cli_variant_and_format_errors(tmp_path):
  with pytest.raises(SystemExit, match=r"^error: --variant 'frame60': expected one of standard, frame50, all$"):
    cli.main(["build", "synthetic", "--variant", "frame60", "--out", str(tmp_path)])
  with pytest.raises(SystemExit, match=r"^error: --format 'aimclr': expected one of cmd, hiclr$"):
    cli.main(["export-npy", "synthetic", "--benchmark", "xsub", "--format", "aimclr", "--out", str(tmp_path)])
  assert not any(tmp_path.iterdir())  # nothing written
