"""NTU ``.skeleton`` reader: real files against the naive spec implementation, bad inputs, names.

Every expected value comes from an independent computation: ``tests/spec_reference.py``
(a line-by-line ``float()`` parser and a joint-by-joint ``read_xyz``), energies computed
here from their definition, hand-written files and hand-worked names.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from data_prep import ntu
from data_prep.errors import DataFormatError
from tests import spec_reference

TWO_PERSON_ACTIONS = {50, 54, 55, 56, 57, 58}


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_files() -> list[Path]:
  from tests.conftest import shared_path
  files = sorted(shared_path("ntu_skeletons").glob("*.skeleton"))
  assert len(files) == 21, "the shared folder holds 21 NTU files (see its README)"
  return files


@pytest.fixture(scope="module")
def spec_results(real_files):
  """spec_reference's (slot array, read_xyz) of every real file, computed once."""
  return {f.name: (spec_reference.read_bodies(f), spec_reference.read_xyz(f)) for f in real_files}


def energy(body: np.ndarray) -> float:
  """Sum over x, y, z of the population std over the non-empty frames x joints, from the
  definition (mean of squared deviations), not with ``np.std``."""
  valid = body[body.reshape(len(body), -1).sum(-1) != 0]
  if len(valid) == 0:
    return 0.0
  total = 0.0
  for c in range(3):
    values = valid[:, :, c].ravel()
    total += float(np.sqrt(np.mean((values - values.mean()) ** 2)))
  return total


BODY_INFO = "72057594037931101 0 1 1 1 1 0 0.02764709 0.05745083 2"
JOINT_TAIL = "277.419 191.8218 1036.233 519.1677 -0.2059419 0.05349901 0.9692109 -0.1239193 2"


class Skeleton:
  """A hand-made ``.skeleton`` text: ``frames[f]`` lists the bodies of frame f, each
  either a (25, 3) array or 25 ``"x y z"`` strings. ``line[(f, b, k)]`` is the 0-based line
  of frame f, body b: k = "info", "count" or a joint index; ``line[(f, "bodies")]`` the
  body count line of frame f."""

  def __init__(self, frames):
    lines = [str(len(frames))]
    self.line = {}
    for f, bodies in enumerate(frames):
      self.line[(f, "bodies")] = len(lines)
      lines.append(str(len(bodies)))
      for b, body in enumerate(bodies):
        self.line[(f, b, "info")] = len(lines)
        lines.append(BODY_INFO)
        self.line[(f, b, "count")] = len(lines)
        lines.append("25")
        for j in range(25):
          self.line[(f, b, j)] = len(lines)
          xyz = body[j] if isinstance(body[j], str) else " ".join(f"{c:.7g}" for c in body[j])
          lines.append(f"{xyz} {JOINT_TAIL}")
    self.lines = lines

  def write(self, path: Path, newline: str = "\n", lines=None) -> Path:
    path.write_bytes((newline.join(self.lines if lines is None else lines) + newline).encode())
    return path


def random_body(rng, scale=1.0, offset=(0.0, 0.0, 3.0)) -> np.ndarray:
  return rng.normal(0.0, scale, (25, 3)) + np.array(offset)


def small_file(rng) -> Skeleton:
  return Skeleton([[random_body(rng)], [random_body(rng), random_body(rng)], [random_body(rng)]])


# ----------------------------------------------------------------------------------------
# Real files
# ----------------------------------------------------------------------------------------

def test_every_real_file_parses_exactly_like_the_spec(real_files, spec_results):
  for path in real_files:
    num_frames = int(path.read_text().split()[0])
    bodies = ntu.read_bodies(path)
    xyz = ntu.read_xyz(path)
    spec_bodies, spec_xyz = spec_results[path.name]
    assert bodies.dtype == np.float64 and bodies.shape == (4, num_frames, 25, 3), path.name
    assert xyz.dtype == np.float64 and xyz.shape == (3, num_frames, 25, 2), path.name
    np.testing.assert_array_equal(bodies, spec_bodies, err_msg=path.name)  # same numbers, bit for bit
    np.testing.assert_array_equal(xyz, spec_xyz, err_msg=path.name)
    assert np.any(xyz[..., 0] != 0), path.name


def test_real_files_keep_the_two_most_energetic_bodies_in_order(real_files, spec_results):
  for path in real_files:
    bodies, _ = spec_results[path.name]
    xyz = ntu.read_xyz(path)
    energies = [energy(b) for b in bodies]
    # the implementation's energies are the spec's get_nonzero_std, bit for bit
    np.testing.assert_array_equal(ntu.body_energies(bodies), spec_reference.energies(bodies), err_msg=path.name)
    np.testing.assert_allclose(ntu.body_energies(bodies), energies, rtol=1e-12, atol=1e-15)
    persons = [xyz[..., p].transpose(1, 2, 0) for p in range(2)]  # (T, 25, 3)
    e0, e1 = energy(persons[0]), energy(persons[1])
    assert e0 == pytest.approx(max(energies), rel=1e-12), path.name
    assert e0 >= e1, path.name
    assert e1 == pytest.approx(sorted(energies)[-2], rel=1e-12, abs=1e-12), path.name
    # each person is one of the slots, unchanged
    for person in persons:
      assert any(np.array_equal(person, b) for b in bodies), path.name


def test_two_person_actions_keep_both_persons(real_files):
  seen = set()
  for path in real_files:
    action = ntu.parse_name(path.name).action
    if action in TWO_PERSON_ACTIONS:
      seen.add(action)
      xyz = ntu.read_xyz(path)
      person1_frames = np.any(xyz[..., 1] != 0, axis=(0, 2))
      assert person1_frames.mean() > 0.5, path.name
  assert seen == TWO_PERSON_ACTIONS


def test_structure_check_and_line_walk_agree(real_files, spec_results, monkeypatch, tmp_path):
  """Well-formed files take the vectorised structure check; the line-by-line walk (used
  to name the bad line of a malformed file) reads them identically."""
  rng = np.random.default_rng(5)
  made = Skeleton([[random_body(rng)] * n for n in (0, 2, 5, 1, 0)]).write(tmp_path / "made.skeleton")
  paths = real_files[:4] + [made]
  with monkeypatch.context() as patch:
    patch.setattr(ntu, "_walk", lambda *args: pytest.fail("well-formed file left the vectorised path"))
    fast = [ntu.read_bodies(p) for p in paths]
  with monkeypatch.context() as patch:
    patch.setattr(ntu, "_structure", lambda *args: None)
    walked = [ntu.read_bodies(p) for p in paths]
  for path, a, b in zip(paths, fast, walked):
    np.testing.assert_array_equal(a, b, err_msg=path.name)
    np.testing.assert_array_equal(a, spec_reference.read_bodies(path), err_msg=path.name)


def test_crlf_lf_and_cr_line_ends_give_identical_arrays(real_files, tmp_path):
  crlf = [f for f in real_files if b"\r\n" in f.read_bytes()[:100]]
  lf = [f for f in real_files if b"\r\n" not in f.read_bytes()[:100]]
  assert crlf and lf, "the shared folder has files with both line ends"
  for source in (crlf[0], lf[0]):
    expected = ntu.read_xyz(source)
    text = source.read_bytes().replace(b"\r\n", b"\n")
    for name, content in (("lf", text), ("crlf", text.replace(b"\n", b"\r\n")),
                          ("cr", text.replace(b"\n", b"\r"))):
      path = tmp_path / f"{name}_{source.name}"
      path.write_bytes(content)
      np.testing.assert_array_equal(ntu.read_xyz(path), expected, err_msg=f"{name} {source.name}")


# ----------------------------------------------------------------------------------------
# Hand-made files: body counts, number formats
# ----------------------------------------------------------------------------------------

def test_frames_with_zero_to_five_bodies(tmp_path):
  rng = np.random.default_rng(0)
  # Slot k holds bodies of spread scales[k] in every frame that has a k-th body; the 5th
  # body (slot 4, the widest) is dropped, so slots 1 (3.0) and 2 (2.0) are kept, in this order.
  scales = [1.0, 3.0, 2.0, 0.5, 10.0]
  frames = [[random_body(rng, s) for s in scales[:n]] for n in (3, 0, 5, 4, 1, 5)]
  path = Skeleton(frames).write(tmp_path / "bodies.skeleton")
  bodies = ntu.read_bodies(path)
  np.testing.assert_array_equal(bodies, spec_reference.read_bodies(path))
  assert bodies.shape == (4, 6, 25, 3)
  assert not bodies[:, 1].any()  # the frame without bodies
  for f, frame in enumerate(frames):
    for slot in range(4):
      expected = frame[slot] if slot < len(frame) else np.zeros((25, 3))
      np.testing.assert_allclose(bodies[slot, f], expected, rtol=1e-6, atol=1e-7)
  energies = [energy(b) for b in bodies]
  assert np.argsort(energies)[::-1][:2].tolist() == [1, 2]
  xyz = ntu.read_xyz(path)
  np.testing.assert_array_equal(xyz, spec_reference.read_xyz(path))
  np.testing.assert_array_equal(xyz[..., 0], bodies[1].transpose(2, 0, 1))
  np.testing.assert_array_equal(xyz[..., 1], bodies[2].transpose(2, 0, 1))


def test_file_without_any_body(tmp_path):
  path = Skeleton([[], []]).write(tmp_path / "empty.skeleton")
  xyz = ntu.read_xyz(path)
  assert xyz.shape == (3, 2, 25, 2) and not xyz.any()
  np.testing.assert_array_equal(xyz, spec_reference.read_xyz(path))
  path = Skeleton([]).write(tmp_path / "no_frames.skeleton")
  assert ntu.read_xyz(path).shape == (3, 0, 25, 2)


def test_number_formats_convert_exactly_like_float(tmp_path):
  rng = np.random.default_rng(1)
  tokens = ["0", "-0", "+0.5", "-.25", "5.", "+7", "00012.5", "-0.0000001", "1E5", "-9.276937E-05",
            "2.5e+3", "123456789012345", "-12345678901234.5", "1234567890123456", "0.1234567890123456789",
            "9007199254740993", "1e-300", "-3.4028235e38"]
  tokens += [f"{v:.7g}" for v in rng.normal(0, 2, 600)]
  tokens += [repr(float(v)) for v in rng.normal(0, 1, 300)]  # up to 17 significant digits
  tokens += [f"{v:.{p}f}" for v, p in zip(rng.normal(0, 1e3, 300), rng.integers(0, 12, 300))]
  tokens += [str(int(v)) for v in rng.integers(-10**9, 10**9, 30)]
  tokens += ["0"] * (-len(tokens) % 75)
  bodies = [[" ".join(tokens[i + 3 * j:i + 3 * j + 3]) for j in range(25)] for i in range(0, len(tokens), 75)]
  path = Skeleton([[b] for b in bodies]).write(tmp_path / "numbers.skeleton")
  got = ntu.read_bodies(path)[0].ravel()
  expected = np.array([float(t) for t in tokens])
  np.testing.assert_array_equal(got, expected)
  assert np.array_equal(np.signbit(got), np.signbit(expected))  # -0 stays -0, as float("-0")
  np.testing.assert_array_equal(ntu.read_bodies(path), spec_reference.read_bodies(path))


def test_whitespace_variants(tmp_path):
  rng = np.random.default_rng(2)
  skeleton = small_file(rng)
  expected = ntu.read_xyz(skeleton.write(tmp_path / "plain.skeleton"))
  lines = [" \t" + line.replace(" ", "  \t ") + "  " for line in skeleton.lines] + ["", "  ", ""]
  path = skeleton.write(tmp_path / "spaces.skeleton", "\r\n", lines)
  np.testing.assert_array_equal(ntu.read_xyz(path), expected)
  np.testing.assert_array_equal(ntu.read_xyz(path), spec_reference.read_xyz(path))
  path.write_bytes(path.read_bytes().rstrip())  # no final line end
  np.testing.assert_array_equal(ntu.read_xyz(path), expected)


# ----------------------------------------------------------------------------------------
# Bad inputs: a DataFormatError naming the file and the 1-based line
# ----------------------------------------------------------------------------------------

def expect_error(path: Path, line: int, message: str):
  with pytest.raises(DataFormatError) as info:
    ntu.read_xyz(path)
  err = info.value
  assert err.path == str(path)
  assert err.line == line, str(err)
  assert str(err).startswith(f"{path}:{line}: "), str(err)
  assert re.search(message, err.message), str(err)
  return err


def replace_field(line: str, field: int, token: str) -> str:
  values = line.split()
  values[field - 1] = token
  return " ".join(values)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("case", [
    "letters_x", "letters_depth", "nan_y", "inf_z", "two_points_z", "overflow_x", "sign_inside_y",
    "eleven_values", "thirteen_values", "empty_joint_line", "nine_info_values", "joint_count_24",
    "body_count_letters", "body_count_fraction", "negative_body_count", "frame_count_fraction",
    "trailing_garbage", "trailing_frame"])
def test_bad_field_or_line_reports_its_line(tmp_path, case, newline):
  rng = np.random.default_rng(3)
  skeleton = small_file(rng)
  lines = list(skeleton.lines)
  joint = skeleton.line[(1, 1, 7)]  # frame 1, second body, joint 7
  edits = {  # case: (0-based line, new text or None, message pattern)
      "letters_x": (joint, replace_field(lines[joint], 1, "abc"), r"field 1 is 'abc'; expected a number"),
      "letters_depth": (joint, replace_field(lines[joint], 4, "27x.4"), r"field 4 is '27x.4'; expected a number"),
      "nan_y": (joint, replace_field(lines[joint], 2, "nan"), r"field 2 is 'nan'; expected a finite number"),
      "inf_z": (joint, replace_field(lines[joint], 3, "-inf"), r"field 3 is '-inf'; expected a finite number"),
      "two_points_z": (joint, replace_field(lines[joint], 3, "1.2.3"), r"field 3 is '1.2.3'"),
      "overflow_x": (joint, replace_field(lines[joint], 1, "1e999"), r"field 1 is '1e999'; expected a finite"),
      "sign_inside_y": (joint, replace_field(lines[joint], 2, "0.5-3"), r"field 2 is '0.5-3'"),
      "eleven_values": (joint, " ".join(lines[joint].split()[:11]), r"11 values; expected 12"),
      "thirteen_values": (joint, lines[joint] + " 0", r"13 values; expected 12"),
      "empty_joint_line": (joint, "", r"0 values; expected 12"),
      "nine_info_values": (skeleton.line[(1, 1, "info")], "1 2 3 4 5 6 7 8 9", r"9 values; expected 10"),
      "joint_count_24": (skeleton.line[(1, 1, "count")], "24", r"joint count is 24; expected 25"),
      "body_count_letters": (skeleton.line[(1, "bodies")], "two", r"field 1 is 'two'; expected a number"),
      "body_count_fraction": (skeleton.line[(1, "bodies")], "2.0", r"body count of frame 1 \(one integer\)"),
      "negative_body_count": (skeleton.line[(1, "bodies")], "-1", r"body count is -1"),
      "frame_count_fraction": (0, "3 1", r"frame count \(one integer\), got '3 1'"),
      "trailing_garbage": (len(lines), "1 2 3", r"unexpected content after the 3 frames"),
      "trailing_frame": (len(lines), "1", r"unexpected content after the 3 frames"),
  }
  index, text, message = edits[case]
  if index == len(lines):
    lines.append(text)
  else:
    lines[index] = text
  path = skeleton.write(tmp_path / f"{case}.skeleton", newline, lines)
  expect_error(path, index + 1, message)


@pytest.mark.parametrize("keep", ["mid_joints", "after_info", "after_body_count", "after_frame_count"])
def test_truncated_file(tmp_path, keep):
  rng = np.random.default_rng(4)
  skeleton = small_file(rng)
  cut = {"mid_joints": skeleton.line[(2, 0, 10)], "after_info": skeleton.line[(2, 0, "info")] + 1,
         "after_body_count": skeleton.line[(2, "bodies")] + 1, "after_frame_count": 1}[keep]
  lines = skeleton.lines[:cut]
  path = skeleton.write(tmp_path / "truncated.skeleton", "\n", lines)
  err = expect_error(path, len(lines) + 1, r"truncated file")
  assert "frame 2" in err.message or keep == "after_frame_count"
  # trailing blank lines do not hide the truncation
  path = skeleton.write(tmp_path / "truncated_blank.skeleton", "\n", lines + ["", ""])
  expect_error(path, len(lines) + 1, r"truncated file")


def test_empty_file(tmp_path):
  path = tmp_path / "empty.skeleton"
  path.write_bytes(b"")
  expect_error(path, 1, r"frame count was expected")


# ----------------------------------------------------------------------------------------
# Names, splits, missing lists
# ----------------------------------------------------------------------------------------

NTU60_XSUB_TRAIN = [1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38]
NTU120_XSUB_TRAIN = NTU60_XSUB_TRAIN + [45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80,
                                        81, 82, 83, 84, 85, 86, 89, 91, 92, 93, 94, 95, 97, 98, 100, 103]


def name(setup=1, camera=1, subject=1, replication=1, action=1) -> str:
  return f"S{setup:03d}C{camera:03d}P{subject:03d}R{replication:03d}A{action:03d}.skeleton"


def test_parse_name_fields_and_label():
  fields = ntu.parse_name("S017C003P020R002A058.skeleton")
  assert (fields.setup, fields.camera, fields.subject, fields.replication, fields.action) == (17, 3, 20, 2, 58)
  assert fields.label == 57
  assert ntu.parse_name("/some/dir/S001C002P003R004A005").label == 4
  assert ntu.parse_name(name(action=120)).label == 119
  for bad in ("S1C002P003R004A005.skeleton", "S001C002P003R004A005.txt", "A005S001C002P003R004.skeleton",
              "S001C002P003R004A0055.skeleton", ""):
    with pytest.raises(ValueError):
      ntu.parse_name(bad)


def test_xsub_split_is_the_subject_list():
  for subject in range(1, 107):
    expected = subject in NTU120_XSUB_TRAIN
    assert ntu.is_training(ntu.parse_name(name(subject=subject)), "xsub") == expected, subject
  # NTU-60 (subjects 1-40) uses the entries <= 40, the NTU-60 list
  assert [s for s in range(1, 41) if ntu.is_training(ntu.parse_name(name(subject=s)), "xsub")] == NTU60_XSUB_TRAIN


def test_xview_and_xset_splits():
  assert [c for c in (1, 2, 3) if ntu.is_training(ntu.parse_name(name(camera=c)), "xview")] == [2, 3]
  assert [s for s in range(1, 33) if ntu.is_training(ntu.parse_name(name(setup=s)), "xset")] == list(range(2, 33, 2))
  # a sample's split in one benchmark does not depend on the other fields
  sample = ntu.parse_name("S002C001P003R001A003.skeleton")
  assert (ntu.is_training(sample, "xsub"), ntu.is_training(sample, "xview"), ntu.is_training(sample, "xset")) \
      == (False, False, True)
  with pytest.raises(ValueError, match="unknown NTU benchmark"):
    ntu.is_training(sample, "xsetup")


def test_real_missing_lists(ntu_missing_dir):
  ntu60 = ntu.read_missing_list(ntu_missing_dir / "NTU_RGBD_samples_with_missing_skeletons.txt")
  ntu120 = ntu.read_missing_list(ntu_missing_dir / "NTU_RGBD120_samples_with_missing_skeletons.txt")
  assert len(ntu60) == 302 and len(ntu120) == 535
  assert ntu60 <= ntu120
  assert "S001C002P005R002A008" in ntu60
  extra = ntu120 - ntu60
  assert len(extra) == 233 and all(18 <= ntu.parse_name(n).setup <= 32 for n in extra)
  assert all(ntu.parse_name(n).setup <= 17 for n in ntu60)


def test_missing_list_without_names(tmp_path):
  path = tmp_path / "list.txt"
  path.write_text("no names here\n\n")
  with pytest.raises(DataFormatError, match="no sample names"):
    ntu.read_missing_list(path)
