"""Tests of cmd_jax/action_names.py (the datasets' class names), cmd_jax.data.class_names, and
cmd_jax/per_class.py (per-class accuracy and its table), against the published class lists
and hand-worked cases."""

from __future__ import annotations

import types

import pytest

from cmd_jax import action_names, data, per_class
from data_prep import datasets


EXPECTED_COUNTS = {"ntu60": 60, "ntu120": 120, "pku_mmd2": 51, "msr_action3d": 20, "synthetic": 12}


@pytest.mark.parametrize("dataset", sorted(EXPECTED_COUNTS))
def test_counts_unique_and_clean(dataset):
  names = action_names.action_names(dataset)
  assert isinstance(names, tuple) and len(names) == EXPECTED_COUNTS[dataset]
  assert len(set(names)) == len(names)  # TFDS's ClassLabel refuses duplicates
  for name in names:
    # one printable ASCII line without edge spaces: TFDS stores the names one per line
    assert name and name == name.strip() and name.isascii() and name.isprintable(), repr(name)
  assert not action_names.is_index_names(names)


def test_every_dataset_has_names_and_counts_agree():
  """The converters' class counts are the name counts; every dataset the training side knows
  (its layouts) has names."""
  assert set(action_names.ACTION_NAMES) == set(datasets.DATASET_NAMES) == set(data.DATASET_LAYOUTS)
  for dataset in datasets.DATASET_NAMES:
    spec = datasets.get_spec(dataset)
    assert spec.class_names == action_names.action_names(dataset)
    assert spec.num_classes == action_names.num_classes(dataset) == EXPECTED_COUNTS[dataset]


def test_downstream_class_counts_agree():
  from cmd_jax.protocols import common  # pylint: disable=import-outside-toplevel
  assert common.DATASET_CLASSES == EXPECTED_COUNTS


@pytest.mark.parametrize("dataset,number,name", [
    # NTU RGB+D / NTU RGB+D 120: A1..A120 (label = number - 1)
    ("ntu120", 1, "drink water"),
    ("ntu120", 2, "eat meal/snack"),
    ("ntu120", 9, "standing up (from sitting position)"),
    ("ntu120", 25, "reach into pocket"),
    ("ntu120", 43, "falling"),
    ("ntu120", 50, "punching/slapping other person"),
    ("ntu120", 58, "handshaking"),
    ("ntu120", 60, "walking apart from each other"),
    ("ntu120", 61, "put on headphone"),
    ("ntu120", 80, "squat down"),
    ("ntu120", 100, "butt kicks (kick backward)"),
    ("ntu120", 109, "grab other person's stuff"),
    ("ntu120", 120, "finger-guessing game (playing rock-paper-scissors)"),
    ("ntu60", 1, "drink water"),
    ("ntu60", 60, "walking apart from each other"),
    # PKU-MMD: classes 1..51 of its action list (alphabetical)
    ("pku_mmd2", 1, "bow"),
    ("pku_mmd2", 8, "drink water"),
    ("pku_mmd2", 14, "handshaking"),
    ("pku_mmd2", 29, "put something inside pocket"),
    ("pku_mmd2", 38, "take out something from pocket"),
    ("pku_mmd2", 51, "writing"),
    # MSR Action3D: a01..a20
    ("msr_action3d", 1, "high arm wave"),
    ("msr_action3d", 2, "horizontal arm wave"),
    ("msr_action3d", 12, "side-boxing"),
    ("msr_action3d", 13, "bend"),
    ("msr_action3d", 20, "pick up & throw"),
])
def test_published_names(dataset, number, name):
  assert action_names.action_names(dataset)[number - 1] == name


def test_list_structure():
  assert action_names.NTU60 == action_names.NTU120[:60]  # NTU RGB+D 120 extends NTU RGB+D's list
  assert list(action_names.PKU_MMD2) == sorted(action_names.PKU_MMD2)  # PKU-MMD's list is alphabetical
  # Most PKU-MMD names are NTU's; the pocket class is split in two there and "standing up" is shorter.
  only_pku = set(action_names.PKU_MMD2) - set(action_names.NTU60)
  assert only_pku == {"bow", "put something inside pocket", "take out something from pocket", "standing up"}


def test_unknown_dataset():
  with pytest.raises(ValueError, match="no action names for dataset 'kinetics'; expected one of ntu60"):
    action_names.action_names("kinetics")


def test_index_names_and_defaults():
  assert action_names.is_index_names(["0", "1", "2"]) and action_names.is_index_names([])
  assert not action_names.is_index_names(["0", "2"]) and not action_names.is_index_names(["wave"])
  msr = action_names.MSR_ACTION3D
  assert action_names.names_or_default(["a", "b"], "msr_action3d") == ("a", "b")  # stored names win
  assert action_names.names_or_default([str(i) for i in range(20)], "msr_action3d") == msr
  assert action_names.names_or_default(None, "msr_action3d") == msr
  assert action_names.names_or_default([], "msr_action3d") == msr
  assert action_names.names_or_default(None, "kinetics") is None
  assert action_names.names_or_default(["0", "1"], None) is None


class _Label:
  def __init__(self, names):
    self.names = names


def _tfds_like(names):
  """A source with TFDS-style metadata: ``info.features["label"].names``."""
  return types.SimpleNamespace(info=types.SimpleNamespace(features={"label": _Label(names)}))


def test_data_class_names():
  config = types.SimpleNamespace(dataset="msr_action3d")
  msr = list(action_names.MSR_ACTION3D)
  # names stored with the data, a source built before names were stored, a source without metadata
  stored = [f"action {i}" for i in range(20)]
  assert data.class_names(config, _tfds_like(stored)) == stored
  assert data.class_names(config, _tfds_like([str(i) for i in range(20)])) == msr
  assert data.class_names(config, object()) == msr
  assert data.class_names(config) == msr
  assert data.class_names(config, num_classes=20) == msr
  # a class count the names do not describe: indices
  assert data.class_names(config, num_classes=21) == [str(i) for i in range(21)]
  unknown = types.SimpleNamespace(dataset="kinetics")
  assert data.class_names(unknown) is None
  assert data.class_names(unknown, num_classes=3) == ["0", "1", "2"]
  assert data.class_names(unknown, _tfds_like(["run", "walk"])) == ["run", "walk"]


# ---------------------------------------------------------------------------------------
# Per-class accuracy.

def test_per_class_accuracy_hand_worked():
  labels = [0, 0, 1, 1, 1, 2]
  predictions = [0, 1, 1, 1, 2, 0]
  # class 0: 2 samples, 1 right; class 1: 3 samples, 2 right; class 2: 1 sample, wrong;
  # class 3: no sample (predicted never)
  assert per_class.per_class_accuracy(labels, predictions, 4) == [
      {"class": 0, "count": 2, "correct": 1, "accuracy": 0.5},
      {"class": 1, "count": 3, "correct": 2, "accuracy": 2 / 3},
      {"class": 2, "count": 1, "correct": 0, "accuracy": 0.0},
      {"class": 3, "count": 0, "correct": 0, "accuracy": None},
  ]
  # a wrong prediction of a class does not count for that class
  assert per_class.per_class_accuracy([1, 1], [0, 0], 2) == [
      {"class": 0, "count": 0, "correct": 0, "accuracy": None},
      {"class": 1, "count": 2, "correct": 0, "accuracy": 0.0}]
  assert per_class.per_class_accuracy([], [], 1) == [{"class": 0, "count": 0, "correct": 0, "accuracy": None}]


@pytest.mark.parametrize("labels,predictions,num_classes,match", [
    ([0, 1, 3], [0, 1, 1], 3, r"labels span \[0, 3\]; expected classes in \[0, 3\)"),
    ([0, 1, 2], [0, -1, 1], 3, r"predictions span \[-1, 1\]"),
    ([0, 1, 2], [0, 1], 3, r"predictions has shape \(2,\); expected \[3\]"),
    ([0.5, 1], [0, 1], 3, "expected integer class indices"),
    ([0], [0], 0, "num_classes=0"),
])
def test_per_class_accuracy_bad_input(labels, predictions, num_classes, match):
  with pytest.raises(ValueError, match=match):
    per_class.per_class_accuracy(labels, predictions, num_classes)


def test_per_class_table_hand_worked():
  rows = per_class.per_class_accuracy([0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 2, 0], 4)
  table = per_class.per_class_table(rows, ["wave", "kick", "a long name cut here", "clap"], title="joint",
                                    name_width=10)
  # mean over the 3 classes with samples: (50 + 66.67 + 0) / 3 = 38.89%; overall 3/6 = 50%
  assert table.split("\n") == [
      "joint",
      "class  name        correct / count  accuracy",
      "    0  wave              1 /     2    50.00%",
      "    1  kick              2 /     3    66.67%",
      "    2  a long ...        0 /     1     0.00%",
      "    3  clap              0 /     0         -",
      "mean over 3 classes with samples: 38.89%; overall top-1 50.00% (3/6)",
  ]
  unnamed = per_class.per_class_table(rows[:2]).split("\n")
  assert unnamed[0] == "class  correct / count  accuracy"
  assert unnamed[1] == "    0        1 /     2    50.00%"
  assert unnamed[-1] == "mean over 2 classes with samples: 58.33%; overall top-1 60.00% (3/5)"
  assert per_class.per_class_table(per_class.per_class_accuracy([], [], 2)).endswith("no test samples")
  with pytest.raises(ValueError, match="class_names has 1 names; expected at least 4"):
    per_class.per_class_table(rows, ["wave"])
