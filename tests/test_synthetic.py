"""Tests of data_prep/synthetic.py: the generated default dataset (spec, splits, realism)."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest

from cmd_jax.layouts import NTU25
from data_prep import synthetic
from data_prep.datasets import MAX_FRAMES, get_spec, to_fixed_length
from data_prep.preprocess import pre_normalization
from data_prep.synthetic import CLASS_NAMES, SPEC, SyntheticSource, generate

PARENTS = NTU25.bone_parents
DISTAL = set(synthetic._DROPPABLE.tolist())


@pytest.fixture(scope="module")
def samples():
  return synthetic.list_samples(None, {})


@pytest.fixture(scope="module")
def one_per_class():
  """A varied batch: every class, several subjects, cameras and repetitions."""
  return [(a - 1, generate(SyntheticSource(0, 1 + (s + r) % 3, s, r, a)))
          for a in range(1, len(CLASS_NAMES) + 1) for s in (1, 2, 5) for r in (1, 3)]


def _persons(x):
  """x (3, T, V, M) -> [M, T, V, 3] and the mask of non-zero joints [M, T, V]."""
  p = x.transpose(3, 1, 2, 0)
  return p, np.abs(p).sum(-1) > 0


def _bone_lengths(x, person=0):
  """Bone lengths [T, V] of one person (NaN where either end is missing)."""
  p, ok = _persons(x)
  p, ok = p[person], ok[person]
  lengths = np.linalg.norm(p - p[:, PARENTS], axis=-1)
  return np.where(ok & ok[:, PARENTS], lengths, np.nan)


# ---------------------------------------------------------------------------------------
# Spec and sample list.

def test_spec_is_registered():
  assert get_spec("synthetic") is SPEC
  assert SPEC.layout is NTU25 and not SPEC.needs_raw and not SPEC.drop_all_zero
  assert SPEC.num_classes == len(CLASS_NAMES) >= 10
  assert SPEC.benchmarks == ("xsub", "xview")
  assert synthetic.TWO_PERSON_LABELS < set(range(SPEC.num_classes))


def test_default_list(samples):
  assert 1000 <= len(samples) <= 2000
  names = [s.name for s in samples]
  assert names == sorted(names) and len(set(names)) == len(names)
  for s in samples:
    match = re.fullmatch(r"S001C(\d{3})P(\d{3})R(\d{3})A(\d{3})", s.name)
    assert match, s.name
    camera, subject, rep, action = map(int, match.groups())
    assert s.label == action - 1
    assert tuple(s.source)[1:] == (camera, subject, rep, action)
    assert s.train <= set(SPEC.benchmarks)
  assert len(pickle.dumps(samples[0])) < 400


def test_options_set_sizes():
  small = synthetic.list_samples(None, {"synthetic_subjects": 2, "synthetic_repetitions": 1,
                                        "synthetic_seed": 7})
  assert len(small) == len(CLASS_NAMES) * 2 * 3
  assert {s.source.seed for s in small} == {7}
  none_options = synthetic.list_samples(None, {"synthetic_subjects": None, "missing_list": None})
  assert len(none_options) == len(synthetic.list_samples(None, {}))
  for bad in ({"synthetic_subjects": 0}, {"synthetic_repetitions": "many"},
              {"synthetic_seed": -1}, {"synthetic_subjects": 2.5}):
    with pytest.raises(ValueError):
      synthetic.list_samples(None, bad)


def test_split_rules(samples):
  for s in samples:
    assert ("xsub" in s.train) == (s.source.subject % 2 == 1)
    assert ("xview" in s.train) == (s.source.camera in (2, 3))
  train_subjects = {s.source.subject for s in samples if "xsub" in s.train}
  test_subjects = {s.source.subject for s in samples if "xsub" not in s.train}
  assert not train_subjects & test_subjects and len(train_subjects) == len(test_subjects)


@pytest.mark.parametrize("benchmark", ["xsub", "xview"])
def test_every_class_in_both_parts(samples, benchmark):
  for part in (True, False):
    labels = {s.label for s in samples if (benchmark in s.train) == part}
    assert labels == set(range(SPEC.num_classes)), (benchmark, part)


# ---------------------------------------------------------------------------------------
# Determinism.

def test_deterministic_and_order_free():
  a, b = SyntheticSource(0, 2, 3, 1, 5), SyntheticSource(0, 1, 4, 2, 10)
  first = [generate(a), generate(b)]
  second = [generate(b), generate(a)][::-1]
  for x, y in zip(first, second):
    np.testing.assert_array_equal(x, y)
  sample = synthetic.list_samples(None, {"synthetic_subjects": 2, "synthetic_repetitions": 1})[7]
  np.testing.assert_array_equal(SPEC.load(pickle.loads(pickle.dumps(sample))), SPEC.load(sample))


def test_seed_and_ids_change_the_clip():
  base = generate(SyntheticSource(0, 1, 1, 1, 1))
  for other in (SyntheticSource(1, 1, 1, 1, 1), SyntheticSource(0, 2, 1, 1, 1),
                SyntheticSource(0, 1, 2, 1, 1), SyntheticSource(0, 1, 1, 2, 1)):
    x = generate(other)
    assert x.shape != base.shape or not np.allclose(x, base, atol=1e-3), other


def test_bad_source():
  with pytest.raises(ValueError):
    generate(SyntheticSource(0, 4, 1, 1, 1))
  with pytest.raises(ValueError):
    generate(SyntheticSource(0, 1, 1, 1, len(CLASS_NAMES) + 1))


# ---------------------------------------------------------------------------------------
# Realism.

def test_shapes_and_ranges(one_per_class):
  for label, x in one_per_class:
    assert x.dtype == np.float32 and x.ndim == 4
    assert (x.shape[0], x.shape[2], x.shape[3]) == (3, 25, 2) and 1 <= x.shape[1] <= MAX_FRAMES
    assert synthetic.MIN_FRAMES <= x.shape[1] <= synthetic.MAX_CLIP_FRAMES
    assert np.isfinite(x).all()
    p, ok = _persons(x)
    joints = p[ok]
    assert (np.abs(joints[:, 0]) < 2.5).all()
    assert (np.abs(joints[:, 1]) < 2.0).all()
    assert (joints[:, 2] > 1.0).all() and (joints[:, 2] < 6.0).all()  # depth in front
    standing = p[0, 0, 3, 1] - min(p[0, 0, 14, 1], p[0, 0, 18, 1])  # head above ankles
    assert 1.1 < standing < 1.8, (label, standing)
    assert ok[0, 0].all()  # frame 0 is fully tracked


def test_bone_lengths_fixed_per_subject_and_differ_between_subjects():
  bones = [b for b in range(25) if PARENTS[b] != b]
  per_subject = []
  for subject in range(1, 7):
    clips = [generate(SyntheticSource(0, c, subject, 2, a), artefacts=False)
             for a, c in ((1, 1), (6, 2), (12, 3))]
    lengths = np.concatenate([_bone_lengths(x)[:, bones] for x in clips])
    assert not np.isnan(lengths).any()
    # Exact kinematics: every bone keeps its length over time, classes and cameras, up to the
    # float32 rounding of coordinates up to ~6 m (<= 2e-7 each) and a float32 norm (measured
    # 4.8e-7): 2e-5 leaves ~40x and is far below the sensor noise (1e-2).
    np.testing.assert_allclose(lengths, lengths[:1].repeat(len(lengths), 0), atol=2e-5)
    per_subject.append(lengths[0])
    # With sensor noise the lengths stay constant up to the noise.
    noisy = _bone_lengths(generate(SyntheticSource(0, 1, subject, 2, 6)))[:, bones]
    assert np.nanmedian(np.nanstd(noisy, axis=0)) < 0.015
    assert np.abs(np.nanmedian(noisy, axis=0) - lengths[0]).max() < 0.03
  per_subject = np.array(per_subject)
  for i in range(len(per_subject)):
    for j in range(i):
      assert np.abs(per_subject[i] - per_subject[j]).max() > 0.01, (i + 1, j + 1)


def test_person_slots(one_per_class):
  for label, x in one_per_class:
    second = x[..., 1]
    if label in synthetic.TWO_PERSON_LABELS:
      present = np.abs(second).sum(axis=(0, 2)) > 0
      assert present.mean() > 0.8, label
      # The two persons stand apart (spine bases 0.3 m or more apart at frame 0).
      assert np.linalg.norm(x[:, 0, 0, 0] - x[:, 0, 0, 1]) > 0.3
    else:
      assert not second.any(), label


def test_dropped_joints_and_frames_are_exact_zeros(samples):
  dropped_joints = dropped_frames = 0
  for s in samples[:240]:
    x = SPEC.load(s)
    clean = generate(s.source, artefacts=False)
    assert x.shape == clean.shape
    p, ok = _persons(x)
    # A joint is either exactly zero (all three coordinates) or not zero at all.
    assert ((p == 0).any(-1) == ~ok).all()
    persons = 2 if s.label in synthetic.TWO_PERSON_LABELS else 1
    lost = ~ok[:persons]
    frame_lost = lost.all(-1)  # [M, T]
    dropped_frames += frame_lost[0].any()
    if frame_lost[0].any():  # dropped frames are a tail of the clip, for both persons
      first = np.argmax(frame_lost[0])
      assert frame_lost[:, first:].all() and not frame_lost[0, :first].any()
    joint_lost = lost & ~frame_lost[..., None]
    dropped_joints += joint_lost.any()
    m, t, v = np.nonzero(joint_lost)
    assert set(v.tolist()) <= DISTAL and (t > 0).all()
  assert dropped_joints > 10 and dropped_frames > 10


def _vertical_std(x, joint, person=0):
  p, ok = _persons(x)
  return p[person, ok[person, :, joint], joint, 1].std()


@pytest.mark.parametrize("action,moving,still", [
    (1, 10, 6),   # wave right hand: right wrist vs left wrist
    (2, 6, 10),   # wave left hand
    (5, 18, 14),  # kick forward (right leg): right vs left ankle
    (8, 3, 0),    # bow: head vs spine base
])
def test_class_moves_its_body_part(action, moving, still):
  ratios = [_vertical_std(x, moving) / _vertical_std(x, still)
            for x in (generate(SyntheticSource(0, 1 + s % 3, s, r, action))
                      for s in range(1, 9) for r in (1, 2))]
  assert np.median(ratios) > 4.0, ratios


def test_squat_and_jump_move_the_hips_waves_do_not():
  def hips(action):
    return np.median([_vertical_std(generate(SyntheticSource(0, 1, s, 1, action)), 0)
                      for s in range(1, 9)])
  assert hips(6) > 0.05 and hips(7) > 0.03
  assert hips(1) < 0.02 and hips(2) < 0.02


def test_survives_pre_normalization(one_per_class):
  batch = np.zeros((len(one_per_class), 3, MAX_FRAMES, 25, 2), np.float32)
  lengths = []
  for i, (_, x) in enumerate(one_per_class):
    batch[i], t = to_fixed_length(x)
    lengths.append(t)
  out = pre_normalization(batch, NTU25)
  assert out.dtype == np.float32 and np.isfinite(out).all()
  assert (out[:, :, :, 1, 0] == 0).all()  # person 0's spine_mid is the origin in every frame
  shoulders = out[:, :, 0, 8, 0] - out[:, :, 0, 4, 0]  # frame 0, right - left shoulder
  np.testing.assert_allclose(shoulders[:, 1:], 0, atol=1e-5)  # float32 rotations of ~1 m: a few u (measured 3.6e-7)
  assert (shoulders[:, 0] > 0.2).all()
  spine = out[:, :, 0, 1, 0] - out[:, :, 0, 0, 0]  # frame 0, spine_base -> spine_mid
  assert (spine[:, 2] > 0.8 * np.linalg.norm(spine, axis=1)).all()  # close to +z


# ---------------------------------------------------------------------------------------
# The class names say what is generated: each name's signature motion, measured on the
# artefact-free clips (camera y is up within about 20 degrees), is strongest in the class of
# that name among the classes with as many persons.

_SPINE_BASE, _SPINE_MID, _HEAD, _SPINE_SHOULDER = 0, 1, 3, 20
_ARM = {"r": (8, 9, 10, 11), "l": (4, 5, 6, 7)}  # shoulder, elbow, wrist, hand (NTU25)
_R_HAND, _L_HAND, _R_ANKLE, _L_ANKLE = 11, 7, 18, 14
TWO_PERSON_NAMES = {"handshake", "push other person", "hug other person"}


def _body(x, person=0):
  return x.transpose(3, 1, 2, 0)[person]  # [T, V, 3]


def _degrees(a, b):
  cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
  return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _elbow(p, side):
  """Interior elbow angle [T] (180: straight arm)."""
  shoulder, elbow, wrist, _ = _ARM[side]
  return _degrees(p[:, shoulder] - p[:, elbow], p[:, wrist] - p[:, elbow])


def _elevation(p, side):
  """Angle [T] of the shoulder -> wrist line from straight down (90: horizontal)."""
  shoulder, _, wrist, _ = _ARM[side]
  return _degrees(p[:, wrist] - p[:, shoulder], np.array([0.0, -1.0, 0.0]))


def _swings(v, amp):
  """How often ``v`` falls by more than ``amp`` from a peak and then rises by more than ``amp``."""
  count, low, high, falling = 0, v[0], v[0], False
  for a in v:
    if falling:
      low = min(low, a)
      if a > low + amp:
        falling, high, count = False, a, count + 1
    else:
      high = max(high, a)
      if a < high - amp:
        falling, low = True, a
  return count


def _rises(v, low, high):
  """How often ``v`` goes from below ``low`` to above ``high``."""
  count, below = 0, False
  for a in v:
    if a < low:
      below = True
    elif a > high and below:
      count, below = count + 1, False
  return count


def _wave(x, side):
  p = _body(x)
  own, other = (_R_HAND, _L_HAND) if side == "r" else (_L_HAND, _R_HAND)
  return p[:, own, 1].std() - p[:, other, 1].std()  # metres of up-down motion, this hand minus the other


def _raise_both_arms(x):
  p = _body(x)
  straight = np.minimum(_elbow(p, "r"), _elbow(p, "l")) > 130
  raised = np.minimum(_elevation(p, "r"), _elevation(p, "l")) > 60
  return np.sum(straight & raised)  # frames with both arms straight and raised


def _punch(x):
  p = _body(x)
  return sum(_rises(_elbow(p, side), 100, 140) for side in "rl")  # bent-to-straight elbow strikes


def _kick_right(x):
  p = _body(x)
  return np.max(p[:, _R_ANKLE, 1] - p[:, _L_ANKLE, 1])  # right ankle above the left


def _squat(x):
  p = _body(x)
  hips = p[:, _SPINE_BASE, 1] - np.minimum(p[:, _R_ANKLE, 1], p[:, _L_ANKLE, 1])
  return 1.0 - hips.min() / np.median(hips)  # how far the hips come down towards the feet


def _jump(x):
  p = _body(x)
  feet = np.minimum(p[:, _R_ANKLE, 1], p[:, _L_ANKLE, 1])
  return feet.max() - np.median(feet)  # both feet off the floor


def _bow(x):
  p = _body(x)
  return np.max(_degrees(p[:, _SPINE_SHOULDER] - p[:, _SPINE_BASE], np.array([0.0, 1.0, 0.0])))  # torso tilt


def _clap(x):
  """Swings of the hands' half distance along the shoulder line, less the swings of their
  midpoint along it: both hands meeting and parting, not one hand moving sideways."""
  p = _body(x)
  axis = p[:, _ARM["r"][0]] - p[:, _ARM["l"][0]]
  axis[:, 1] = 0.0
  axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
  right = ((p[:, _R_HAND] - p[:, _SPINE_SHOULDER]) * axis).sum(-1)
  left = ((p[:, _L_HAND] - p[:, _SPINE_SHOULDER]) * axis).sum(-1)
  return _swings((right - left) / 2, 0.04) - _swings((right + left) / 2, 0.04)


def _handshake(x):
  a, b = _body(x, 0), _body(x, 1)
  left, right = (np.linalg.norm(a[:, hand] - b[:, hand], axis=-1) for hand in (_L_HAND, _R_HAND))
  return np.max(left - right)  # the right hands meet, the left hands stay apart


def _pushed_back(x):
  a, b = _body(x, 0), _body(x, 1)
  towards = a[:, _SPINE_BASE] - b[:, _SPINE_BASE]
  towards[:, 1] = 0.0
  towards /= np.linalg.norm(towards, axis=-1, keepdims=True)
  spine = b[:, _SPINE_SHOULDER] - b[:, _SPINE_BASE]
  return -np.min((spine * towards).sum(-1) / np.linalg.norm(spine, axis=-1))  # the other leans away


def _hug(x):
  a, b = _body(x, 0), _body(x, 1)
  reach = (np.linalg.norm(a[:, _R_HAND] - b[:, _SPINE_MID], axis=-1)
           + np.linalg.norm(a[:, _L_HAND] - b[:, _SPINE_MID], axis=-1)) / 2
  return -reach.min()  # both hands at the other's back


SIGNATURES = {
    "wave right hand": lambda x: _wave(x, "r"),
    "wave left hand": lambda x: _wave(x, "l"),
    "raise both arms": _raise_both_arms,
    "punch forward": _punch,
    "kick forward (right leg)": _kick_right,
    "squat": _squat,
    "jump": _jump,
    "bow": _bow,
    "clap hands": _clap,
    "handshake": _handshake,
    "push other person": _pushed_back,
    "hug other person": _hug,
}


def signature_means(seed: int, subjects: int = 12):
  """``{name: {label: mean signature over clips}}`` over the labels with the name's number
  of persons, and the set of labels whose clips have two persons."""
  clips = [[generate(SyntheticSource(seed, 1 + s % 3, s, 1, label + 1), artefacts=False)
            for s in range(1, subjects + 1)] for label in range(len(CLASS_NAMES))]
  two = {label for label, group in enumerate(clips) if all(x[..., 1].any() for x in group)}
  means = {}
  for name, feature in SIGNATURES.items():
    labels = [label for label in range(len(CLASS_NAMES)) if (label in two) == (name in TWO_PERSON_NAMES)]
    means[name] = {label: float(np.mean([feature(x) for x in clips[label]])) for label in labels}
  return means, two


def test_names_describe_the_generated_motions():
  assert set(SIGNATURES) == set(CLASS_NAMES)
  means, two = signature_means(seed=0)
  assert {CLASS_NAMES[label] for label in two} == TWO_PERSON_NAMES
  assert two == set(synthetic.TWO_PERSON_LABELS)
  for name, by_label in means.items():
    assert max(by_label, key=by_label.get) == CLASS_NAMES.index(name), (name, by_label)
