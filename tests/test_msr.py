"""MSR Action3D reader and the MSR20 joint order, established from the real recordings.

The joint-order tests state the evidence for ``cmd_jax.layouts.MSR20`` as numbers over all
566 non-empty sequences: which joint is where (heights, sides, depth), which pairs of
joints keep a fixed distance (bones), and which arm the arm-wave actions move.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmd_jax.layouts import MSR20
from data_prep import datasets, msr
from data_prep.errors import DataFormatError
from data_prep.preprocess import pre_normalization

NUM_FILES = 567
ALL_ZERO = "a13_s09_e02"
J = {name: i for i, name in enumerate(MSR20.joint_names)}
LEFT_RIGHT = [(J[f"left_{part}"], J[f"right_{part}"])
              for part in ("shoulder", "hip", "elbow", "wrist", "hand", "knee", "ankle", "foot")]


@pytest.fixture(scope="module")
def recordings() -> dict[str, np.ndarray]:
  """Every sequence as (T, 20, 3), keyed by sample name (all-zero one included)."""
  from tests.conftest import shared_path
  raw = shared_path("msr_action3d")
  return {s.name: msr.load(s)[..., 0].transpose(1, 2, 0) for s in msr.list_samples(raw, {})}


@pytest.fixture(scope="module")
def frames(recordings) -> np.ndarray:
  """All frames of the non-empty sequences, (F, 20, 3)."""
  return np.concatenate([x for x in recordings.values() if x.any()])


def write(path: Path, text: str) -> Path:
  path.write_text(text)
  return path


# ---------------------------------------------------------------------------------------
# Reader, names, split

def test_read_skeleton_real_file(msr_dir):
  path = msr_dir / "a01_s01_e01_skeleton3D.txt"
  data = msr.read_skeleton(path)
  table = np.loadtxt(path)
  assert data.shape == (3, len(table) // 20, 20, 1) and data.dtype == np.float64
  c, t, v = np.meshgrid(np.arange(3), np.arange(len(table) // 20), np.arange(20), indexing="ij")
  np.testing.assert_array_equal(data[..., 0], table[20 * t + v, c])  # x y z of line 20 t + v


def test_all_files_load_and_one_is_all_zero(recordings, msr_dir):
  assert len(recordings) == NUM_FILES
  for name, x in recordings.items():
    assert x.shape[0] > 0 and x.shape[1:] == (20, 3), name
  assert [name for name, x in recordings.items() if not x.any()] == [ALL_ZERO]
  zero = msr.read_skeleton(msr_dir / f"{ALL_ZERO}_skeleton3D.txt")
  assert zero.shape == (3, 38, 20, 1) and not zero.any()


def test_list_samples(msr_dir):
  samples = msr.list_samples(msr_dir, {})  # MANIFEST.tsv is ignored
  assert len(samples) == NUM_FILES
  assert [s.name for s in samples] == sorted(s.name for s in samples)
  assert samples[0].name == "a01_s01_e01" and samples[0].label == 0
  assert samples[-1].name == "a20_s10_e03" and samples[-1].label == 19
  for s in samples:
    fields = msr.parse_name(s.name)
    assert s.label == fields.action - 1 == int(s.name[1:3]) - 1
    assert s.train == (frozenset({"xsub"}) if int(s.name[5:7]) % 2 else frozenset())
  assert sum("xsub" in s.train for s in samples) == 292  # subjects 1, 3, 5, 7, 9
  assert {s.label for s in samples} == set(range(20))


def test_spec():
  spec = datasets.get_spec("msr_action3d")
  assert spec is msr.SPEC
  assert spec.layout is MSR20 and spec.num_classes == 20 and spec.benchmarks == ("xsub",)
  assert spec.drop_all_zero is True  # a13_s09_e02 is skipped and reported by the converter


def test_parse_name():
  assert msr.parse_name("a05_s10_e03_skeleton3D.txt") == msr.MsrName(5, 10, 3)
  assert msr.parse_name("a05_s10_e03") == msr.MsrName(5, 10, 3)
  for bad in ("a5_s10_e03", "a05_s10_e03_skeleton.txt", "MANIFEST.tsv", "a21_s01_e01"):
    with pytest.raises(ValueError):
      msr.parse_name(bad)


def test_listing_ignores_other_files_and_rejects_missing_dirs(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    msr.list_samples(tmp_path / "nowhere", {})
  write(tmp_path / "MANIFEST.tsv", "file\n")
  write(tmp_path / "a01_s01_e01_skeleton.txt", "1 2 3 4\n")  # screen coordinates: not used
  with pytest.raises(FileNotFoundError, match="no aAA_sSS_eEE_skeleton3D.txt files"):
    msr.list_samples(tmp_path, {})
  write(tmp_path / "a02_s02_e01_skeleton3D.txt", "1 2 3 1\n" * 20)
  (sample,) = msr.list_samples(tmp_path, {})
  assert sample.name == "a02_s02_e01" and sample.label == 1 and sample.train == frozenset()
  assert msr.load(sample).shape == (3, 1, 20, 1)
  write(tmp_path / "a21_s01_e01_skeleton3D.txt", "1 2 3 1\n" * 20)
  with pytest.raises(DataFormatError, match=r"a21_s01_e01_skeleton3D.txt: action 21 in the file name; expected 1..20"):
    msr.list_samples(tmp_path, {})


@pytest.mark.parametrize("bad_line, line, message", [
    (None, 41, "41 joint lines is not a multiple of 20"),
    ("0.1 0.2 0.3", 23, "joint line has 3 values; expected 4"),
    ("0.1 0.2 0.3 1 5", 23, "joint line has 5 values; expected 4"),
    ("0.1 y 0.3 1", 23, "field 2 is 'y'; expected a number"),
    ("0.1 0.2 NaN 1", 23, "field 3 is 'NaN'; expected a finite number"),
])
def test_read_skeleton_bad_file(tmp_path, bad_line, line, message):
  lines = ["-0.1 0.2 2.5 1.0"] * 41
  if bad_line is not None:
    lines = lines[:40]
    lines[22] = bad_line
  path = write(tmp_path / "a01_s01_e01_skeleton3D.txt", "\n".join(lines) + "\n")
  with pytest.raises(DataFormatError) as err:
    msr.read_skeleton(path)
  assert err.value.path == str(path) and err.value.line == line
  assert message in str(err.value)


# ---------------------------------------------------------------------------------------
# The joint order (cmd_jax.layouts.MSR20), from the geometry of the recordings

def test_heights_y_is_up(frames):
  """Mean y (m): head (19) .54 > neck (2) .33 > spine (3) .16 > hip centre (6) -.04 > knees -.55 > ankles -.93."""
  y = frames[..., 1].mean(0)
  assert int(np.argmax(y)) == J["head"]
  chain = [y[J["head"]], y[J["neck"]], y[J["spine"]], y[J["hip_center"]],
           y[[J["left_knee"], J["right_knee"]]].max(), y[[J["left_ankle"], J["right_ankle"]]].max()]
  assert all(a > b + 0.02 for a, b in zip(chain, chain[1:])), chain
  # Shoulders are level with each other and below the neck; hips level with the hip centre.
  assert abs(y[J["left_shoulder"]] - y[J["right_shoulder"]]) < 0.02 < y[J["neck"]] - y[J["right_shoulder"]]
  assert abs(y[J["left_hip"]] - y[J["hip_center"]]) < 0.02 and abs(y[J["right_hip"]] - y[J["hip_center"]]) < 0.02
  # The feet are the lowest joints and point at the camera (smaller z than the ankles):
  # the subjects face the camera.
  z = frames[..., 2].mean(0)
  for ankle, foot in ((J["left_ankle"], J["left_foot"]), (J["right_ankle"], J["right_foot"])):
    assert y[foot] < y[ankle] and z[foot] < z[ankle] - 0.1


def test_left_right_pairs(frames, recordings):
  """Even index = left, odd = right: the pairs straddle the spine, the odd one at larger x."""
  x = frames[..., 0]
  spine_x = x[:, J["spine"]].mean()
  for left, right in LEFT_RIGHT:
    assert x[:, right].mean() > x[:, left].mean() + 0.1, (left, right)
    assert abs((x[:, left].mean() + x[:, right].mean()) / 2 - spine_x) < 0.02, (left, right)
    assert (x[:, right] > x[:, left]).mean() > 0.85, (left, right)  # per frame, turns included
  # Per sequence, the right shoulder is on the larger-x side in nearly every recording.
  side = [np.mean(x[:, J["right_shoulder"], 0] - x[:, J["left_shoulder"], 0]) > 0
          for x in recordings.values() if x.any()]
  assert np.mean(side) > 0.97


def bone_lengths(x: np.ndarray, pairs) -> np.ndarray:
  child, parent = np.array(pairs).T
  return np.linalg.norm(x[:, child] - x[:, parent], axis=-1)  # (T, B)


def test_bones_connect_rigid_neighbours(recordings):
  """The layout's bones keep their length through every sequence (the tracker's rigid limbs)."""
  bones = [(c, p) for c, p in MSR20.bone_pairs if c != p]
  assert len(bones) == 19 and sum(c == p for c, p in MSR20.bone_pairs) == 1
  cvs = []
  for x in recordings.values():
    if x.any():
      lengths = bone_lengths(x, bones)
      cvs.append(lengths.std(0) / lengths.mean(0))
  median_cv = np.median(np.array(cvs), axis=0)
  assert median_cv.max() < 0.08 and np.median(median_cv) < 0.02, dict(zip(bones, median_cv.round(3)))
  # Distances that are not bones vary far more (median CV 0.18-0.39): hand to neck, to the
  # other hand, to the hip, to the head. (Leg distances are not a contrast: the subjects
  # mostly stand with straight legs, so the leg chain rests on the heights test.)
  others = [(J["right_hand"], J["neck"]), (J["right_hand"], J["left_hand"]),
            (J["right_hand"], J["right_hip"]), (J["head"], J["right_hand"])]
  cvs = []
  for x in recordings.values():
    if x.any():
      lengths = bone_lengths(x, others)
      cvs.append(lengths.std(0) / lengths.mean(0))
  assert np.median(np.array(cvs), axis=0).min() > 2 * median_cv.max()


def test_mirrored_bones_have_equal_length(frames):
  """Left and right bones are equally long (to 1%): the pairs are mirror images."""
  parents = MSR20.bone_parents
  lengths = np.median(bone_lengths(frames, list(enumerate(parents))), axis=0)
  for left, right in LEFT_RIGHT:
    assert abs(lengths[left] - lengths[right]) < 0.01 * lengths[right], (left, right, lengths[left], lengths[right])


@pytest.mark.parametrize("action", ["a01", "a02"])
def test_waving_arm_is_the_right_arm(recordings, action):
  """High/horizontal arm wave (done with the right arm by protocol) move joints 8, 10, 12 most."""
  waves = [x for name, x in recordings.items() if name.startswith(action)]
  top3 = [set(np.argsort(-x.std(0).sum(-1))[:3].tolist()) for x in waves]
  right_arm = {J["right_elbow"], J["right_wrist"], J["right_hand"]}
  assert np.mean([t == right_arm for t in top3]) > 0.9
  motion = np.mean([x.std(0).sum(-1) for x in waves], axis=0)
  assert motion[J["right_hand"]] > 5 * motion[J["left_hand"]]


def test_pre_normalization_on_a_real_sample(recordings):
  x = recordings["a03_s01_e01"]  # (T, 20, 3)
  raw = x.transpose(2, 0, 1)[..., None]
  buffer, num_frames = datasets.to_fixed_length(raw)
  assert num_frames == len(x)
  out = pre_normalization(buffer[None], MSR20)[0, ..., 0]  # (3, 300, 20)
  assert out.shape == (3, 300, 20) and out.dtype == np.float32
  np.testing.assert_array_equal(out[:, :, MSR20.center_joint], 0)  # centred per frame, padding included
  bottom, top = MSR20.zaxis
  spine = out[:, 0, top] - out[:, 0, bottom]
  assert spine[2] / np.linalg.norm(spine) > 0.97  # along z (rotation 2 perturbs it slightly)
  a, b = MSR20.xaxis
  shoulders = out[:, 0, a] - out[:, 0, b]
  # float32 rotated coordinates (~1 m, a few u = 6e-8 each) over a 0.36 m vector: measured 2.5e-7.
  np.testing.assert_allclose(shoulders / np.linalg.norm(shoulders), [1, 0, 0], atol=1e-5)
  # The head is up (+z) and the right side at +x, in every frame.
  assert (out[2, :, J["head"]] > 0).all()
  assert (out[0, :, J["right_shoulder"]] > out[0, :, J["left_shoulder"]]).all()
  # Loop padding: frame t = frame t mod num_frames.
  np.testing.assert_array_equal(out[:, num_frames:2 * num_frames], out[:, :num_frames])
