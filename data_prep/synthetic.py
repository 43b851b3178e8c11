"""The embedded default dataset: procedurally generated NTU-25 skeleton clips (no download).

This module owns the ``synthetic`` ``DatasetSpec``: a deterministic generator of
Kinect-like clips in the NTU RGB+D layout (25 joints, 2 person slots, camera-space
metres with x to the person's right, y up and z the depth), its sample list and its
xsub/xview splits (docs/references.md#cmd-splits-and-files for the NTU rules it imitates).

How a clip is made (``generate``):

1. the subject (``P``) fixes the body (height 1.55-1.9 m, limb, torso, shoulder and hip
   proportions) and a style: preferred speed and amplitude, rest posture, idle sway, and
   their own way of performing each class (the same in all their performances);
2. the action class (``A``) gives joint angles as smooth functions of time (shoulder
   flexion/abduction/rotation, elbow, hip flexion/abduction, knee, torso bend/twist/lean,
   head pitch, step and jump); each performance draws its speed, amplitude, height or
   depth, number of repetitions, phases, uneven pace, idle time before and after the
   action, an idle arm posture (hands on hips, arms crossed, ...), a slow turn, and
   fidgets of body parts the class does not use;
3. forward kinematics turns angles and bone lengths into joints, feet on the floor (a
   squat lowers the hips); two-person classes add a second person facing the first;
4. the camera (``C``; 0, -45 or +45 degrees yaw around the subjects, 2.5-4 m away, with
   small height, pitch and roll jitter) maps the scene rigidly into camera space;
5. Kinect-like artefacts: white noise (~5 mm, more on hand tips and thumbs), a slow
   wander of the joints hidden behind the body, a few distal joint-frames dropped to
   exactly 0, and sometimes the last frames dropped (all 0).

Single-person classes leave person slot 1 all zero. Every sample is generated from its
own ``np.random.default_rng`` streams (one from seed and subject for the body, one from
seed, subject and action for the style, one from seed, action, subject, camera and rep
for the performance), so it does not depend on generation order or process;
``Sample.source`` is the ``SyntheticSource`` holding those ids. Each (camera, repetition)
is its own performance: the cameras do not film the same take.

Sizes come from ``list_samples``'s options: ``synthetic_seed`` (default 0),
``synthetic_subjects`` (10) and ``synthetic_repetitions`` (4): 12 classes x 10 subjects x
3 cameras x 4 repetitions = 1440 clips of 40-150 frames by default. Benchmarks as in NTU:
``xsub`` trains on the odd subjects, ``xview`` on cameras 2 and 3 (camera 1 is test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from cmd_jax import action_names
from cmd_jax.layouts import NTU25
from data_prep.spec import DatasetSpec, Sample

# The class names, label by label (A001 = label 0); the motions are made by _class_motion.
CLASS_NAMES = action_names.SYNTHETIC
NUM_CLASSES = len(CLASS_NAMES)
TWO_PERSON_LABELS = frozenset((9, 10, 11))

FPS = 30.0
MIN_FRAMES, MAX_CLIP_FRAMES = 40, 150
NUM_CAMERAS = 3
CAMERA_YAW_DEG = {1: 0.0, 2: -45.0, 3: 45.0}
XVIEW_TRAIN_CAMERAS = frozenset((2, 3))

DEFAULT_SEED = 0
DEFAULT_SUBJECTS = 10
DEFAULT_REPETITIONS = 4

BENCHMARKS = ("xsub", "xview")

# Difficulty knobs, tuned with bench/synthetic_baseline.py so that a 1-NN on normalised,
# time-resampled poses is well above chance and well below 100%.
_IDLE_FRAMES = 50  # at most this many idle frames before and after the action
_WARP = 0.8  # uneven pace within the action (0: constant speed, < 1)
_TURN = 30.0  # degrees the body may slowly turn over a clip
_POSTURE_P = 0.6  # probability of an idle arm posture (hands on hips, arms crossed, ...)
_FIDGET_P = 0.5  # probability of one fidget (hand to head, small step, look around)
_STYLE_SPREAD = 0.08  # per-performance spread around the subject's own way of acting
_HIDDEN_WANDER = 0.03  # metres of slow error on joints hidden from the camera


class SyntheticSource(NamedTuple):
  """Everything that determines one sample: the base seed and the sample's name fields."""
  seed: int
  camera: int
  subject: int
  rep: int
  action: int  # 1-based, label + 1


def sample_name(camera: int, subject: int, rep: int, action: int) -> str:
  return f"S001C{camera:03d}P{subject:03d}R{rep:03d}A{action:03d}"


def is_training(source: SyntheticSource, benchmark: str) -> bool:
  """xsub: odd subjects train; xview: cameras 2 and 3 train."""
  if benchmark == "xsub":
    return source.subject % 2 == 1
  if benchmark == "xview":
    return source.camera in XVIEW_TRAIN_CAMERAS
  raise ValueError(f"unknown synthetic benchmark {benchmark!r}; expected xsub or xview")


# ---------------------------------------------------------------------------------------
# Pose channels: one row of a [K, T] pose array each. Angles are in degrees in the class
# definitions and converted once; translations are in metres.

_CHANNELS = (
    "yaw", "bow", "twist", "lean", "head_pitch", "fwd", "side", "jump",
    "r_flex", "r_abd", "r_hum", "r_elbow", "l_flex", "l_abd", "l_hum", "l_elbow",
    "r_hip_flex", "r_hip_abd", "r_knee", "l_hip_flex", "l_hip_abd", "l_knee",
)
_C = {name: i for i, name in enumerate(_CHANNELS)}
_LINEAR = np.array([name in ("fwd", "side", "jump") for name in _CHANNELS])
_REST = {"r_flex": 5.0, "l_flex": 5.0, "r_abd": 10.0, "l_abd": 10.0, "r_elbow": 12.0,
         "l_elbow": 12.0, "r_hip_abd": 4.0, "l_hip_abd": 4.0, "r_knee": 4.0, "l_knee": 4.0}
# Idle sway amplitude per channel (degrees or metres), scaled by the subject's style.
_SWAY = {"yaw": 3.0, "bow": 2.0, "twist": 3.0, "lean": 2.0, "head_pitch": 4.0, "side": 0.015,
         "fwd": 0.01, "r_flex": 5.0, "l_flex": 5.0, "r_abd": 4.0, "l_abd": 4.0, "r_hum": 8.0,
         "l_hum": 8.0, "r_elbow": 8.0, "l_elbow": 8.0, "r_hip_flex": 2.0, "l_hip_flex": 2.0,
         "r_hip_abd": 1.5, "l_hip_abd": 1.5, "r_knee": 3.0, "l_knee": 3.0}

# Idle arm postures a performance may hold outside the action (offsets from the rest
# pose, for both arms); arms the class uses leave them during the action.
_IDLE_POSTURES = (
    {"flex": 25.0, "hum": 55.0, "elbow": 75.0},  # hands clasped in front
    {"abd": 30.0, "flex": -15.0, "hum": 70.0, "elbow": 100.0},  # hands on the hips
    {"flex": 40.0, "hum": 85.0, "elbow": 115.0},  # arms crossed
    {"flex": -25.0, "hum": 60.0, "elbow": 55.0},  # hands behind the back
)
# Arms (r, l) each class moves, for the actor and the other person.
_ARM_USE = {0: ("r", ""), 1: ("l", ""), 2: ("rl", ""), 3: ("rl", ""), 4: ("", ""),
            5: ("rl", ""), 6: ("rl", ""), 7: ("", ""), 8: ("rl", ""), 9: ("r", "r"),
            10: ("rl", ""), 11: ("rl", "rl")}

_HAND_TIPS = np.array([21, 22, 23, 24])
# Joints Kinect loses most often (wrists, hands, tips, thumbs, ankles, feet).
_DROPPABLE = np.array([6, 7, 10, 11, 14, 15, 18, 19, 21, 22, 23, 24])

# Bone lengths of the 1.75 m reference body (metres), close to Kinect v2's on NTU.
_BASE_BODY = {
    "spine_low": 0.265, "spine_up": 0.195, "neck": 0.065, "head": 0.12,
    "shoulder_w": 0.145, "shoulder_drop": 0.045, "upper_arm": 0.25, "forearm": 0.22,
    "hand": 0.07, "tip": 0.055, "hip_w": 0.075, "hip_drop": 0.04, "thigh": 0.37,
    "shank": 0.36, "foot": 0.11, "ankle_h": 0.08,
}


class _Subject(NamedTuple):
  body: dict
  speed: float
  amplitude: float
  rest: np.ndarray  # [K] rest pose offsets (degrees / metres)
  sway: float


def _subject(seed: int, subject: int) -> _Subject:
  """The body proportions and movement style of one subject, from ``[seed, subject]``."""
  rng = np.random.default_rng([seed, 1, subject])
  scale = rng.uniform(0.88, 1.10)
  ratios = {
      "arm": rng.uniform(0.9, 1.1), "leg": rng.uniform(0.92, 1.08),
      "torso": rng.uniform(0.92, 1.08), "shoulder": rng.uniform(0.85, 1.18),
      "hip": rng.uniform(0.85, 1.2), "head": rng.uniform(0.9, 1.1),
  }
  group = {"spine_low": "torso", "spine_up": "torso", "neck": "head", "head": "head",
           "shoulder_w": "shoulder", "shoulder_drop": "shoulder", "upper_arm": "arm",
           "forearm": "arm", "hand": "arm", "tip": "arm", "hip_w": "hip", "hip_drop": "hip",
           "thigh": "leg", "shank": "leg", "foot": "leg", "ankle_h": "leg"}
  body = {k: v * scale * ratios[group[k]] for k, v in _BASE_BODY.items()}
  rest = np.zeros(len(_CHANNELS))
  for name, value in _REST.items():
    rest[_C[name]] = value
  posture = rng.uniform(-1.0, 1.0, 6)
  rest[[_C["r_abd"], _C["l_abd"]]] += 5.0 * posture[0]
  rest[[_C["r_elbow"], _C["l_elbow"]]] += 10.0 * posture[1]
  rest[_C["bow"]] += 4.0 + 5.0 * posture[2]
  rest[_C["head_pitch"]] += 6.0 * posture[3]
  rest[[_C["r_hip_abd"], _C["l_hip_abd"]]] += 3.0 * posture[4]
  rest[[_C["r_hum"], _C["l_hum"]]] += 10.0 * posture[5]
  return _Subject(body, rng.uniform(0.85, 1.18), rng.uniform(0.85, 1.15), rest,
                  rng.uniform(0.6, 1.5))


# ---------------------------------------------------------------------------------------
# Time profiles on the action's normalised time u in [0, 1] (0 before, 1 after the action).

def _smoothstep(x):
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3.0 - 2.0 * x)


def _hold(u, ramp):
  """0 -> 1 over the first ``ramp`` of the action, 1 -> 0 over the last."""
  return _smoothstep(u / ramp) * _smoothstep((1.0 - u) / ramp)


def _bumps(u, n):
  """n smooth 0 -> 1 -> 0 repetitions."""
  return 0.5 - 0.5 * np.cos(2.0 * np.pi * n * u)


def _pulses(u, n, sharp):
  """n fast strikes (raised cosine to the power ``sharp``)."""
  return _bumps(u, n) ** sharp


def _osc(u, n, phase):
  return np.sin(2.0 * np.pi * n * u + phase)


def _sway(rng, t, k):
  """Smooth random idle motion [K, T] in [-1, 1]: two sinusoids of random frequency each."""
  freq = rng.uniform(0.1, 0.7, (k, 2))
  phase = rng.uniform(0, 2 * np.pi, (k, 2))
  weight = rng.uniform(0.3, 1.0, (k, 2))
  waves = np.sin(2 * np.pi * freq[..., None] * t + phase[..., None])
  return (weight[..., None] * waves).sum(1) / weight.sum(1, keepdims=True)


class _StyledRng:
  """Draws a subject's personal way of performing a class, varied per performance.

  Each draw is the quantile ``style + jitter`` of the requested range: ``style`` comes
  from the (subject, class) stream and is the same in every performance of that subject,
  ``jitter`` (normal, ``spread``) from the performance stream.
  """

  def __init__(self, style: np.random.Generator, performance: np.random.Generator, spread: float):
    self._style, self._performance, self._spread = style, performance, spread

  def _quantile(self):
    q = self._style.random() + self._performance.normal(0.0, self._spread)
    return float(np.abs((q + 1.0) % 2.0 - 1.0))  # reflect into [0, 1]

  def uniform(self, low, high):
    return low + (high - low) * self._quantile()

  def random(self):
    return self._quantile()

  def integers(self, low, high):
    return low + min(int(self._quantile() * (high - low)), high - low - 1)

  def choice(self, options):
    return options[self.integers(0, len(options))]


def _class_motion(label, u, rng, amp, poses):
  """Adds the class's kinematic pattern to ``poses`` (person 0, optional person 1) in place.

  Every pattern has a wide range of execution (height, depth, number of repetitions,
  tempo, symmetry), so that classes sharing a body part overlap at their extremes.
  Returns (number of persons, per person the weight of the left ankle in the floor
  anchor (0.5: both feet), the persons' distance in metres before they move).
  """
  p = poses[0]

  def add(person, name, value):
    person[_C[name]] += value

  a = amp
  if label in (0, 1):  # wave one hand, from chest height to overhead
    s = "r" if label == 0 else "l"
    h = _hold(u, 0.2)
    height = rng.uniform(45, 125) * a
    osc = _osc(u, rng.integers(2, 7), rng.uniform(0, 6.3))
    add(p, f"{s}_abd", h * (height + rng.uniform(0, 10) * osc))
    add(p, f"{s}_flex", h * rng.uniform(0, 50))
    add(p, f"{s}_hum", -h * rng.uniform(70, 100))
    add(p, f"{s}_elbow", h * (180 - height - rng.uniform(-10, 40) + rng.uniform(15, 35) * osc))
    add(p, "lean", h * rng.uniform(0, 8) * (1 if label == 1 else -1))
  elif label == 2:  # raise both arms sideways or forwards, possibly one after the other
    n = rng.integers(1, 3)
    lag = rng.uniform(0, 0.15) * rng.choice((-1, 1))
    sideways = rng.random()  # 1: in the frontal plane, 0: in front
    for s, shift in (("r", 0.0), ("l", lag)):
      b = _smoothstep(_bumps(np.clip(u - shift, 0, 1), n) * rng.uniform(1.0, 1.5))
      height = rng.uniform(80, 165) * a
      add(p, f"{s}_abd", b * height * sideways)
      add(p, f"{s}_flex", b * (height * (1 - sideways) + rng.uniform(0, 30)))
      add(p, f"{s}_elbow", b * rng.uniform(-5, 40))
    add(p, "head_pitch", -_hold(u, 0.3) * rng.uniform(0, 15))
  elif label == 3:  # punch forward: right fist, or both fists in turn, from a guard
    guard = _hold(u, 0.15)
    n = rng.integers(1, 5)
    alternate = rng.random() < 0.4
    for s in "rl":
      add(p, f"{s}_flex", guard * rng.uniform(25, 55))
      add(p, f"{s}_elbow", guard * rng.uniform(90, 125))
      add(p, f"{s}_hum", guard * rng.uniform(15, 40))
    for s, lead in (("r", 0.0), ("l", 0.5 / n)):
      if s == "l" and not alternate:
        break
      strike = _pulses(np.clip(u - lead, 0, 1), n, 3.0) * guard
      add(p, f"{s}_flex", strike * rng.uniform(30, 65) * a)
      add(p, f"{s}_elbow", -strike * rng.uniform(80, 110) * a)
      add(p, "twist", strike * rng.uniform(5, 20) * (1 if s == "r" else -1))
  elif label == 4:  # kick forward with the right leg, from a knee lift to a high kick
    k = _pulses(u, rng.integers(1, 4), rng.uniform(1.0, 2.5))
    add(p, "r_hip_flex", k * rng.uniform(35, 90) * a)
    add(p, "r_knee", 4.0 * k * (1 - k) * rng.uniform(30, 90) + k * rng.uniform(0, 30))
    add(p, "bow", -k * rng.uniform(-5, 15))
    for s in "rl":
      add(p, f"{s}_abd", _hold(u, 0.2) * rng.uniform(0, 30))
    return 1, (0.95,), 0.0
  elif label == 5:  # squat or knee bend, arms forward or not
    b = _bumps(u, rng.integers(1, 4)) * a
    depth = rng.uniform(0.35, 1.0)
    arms = rng.uniform(20, 90) if rng.random() < 0.6 else 0.0
    for s in "rl":
      add(p, f"{s}_hip_flex", b * depth * 95)
      add(p, f"{s}_knee", b * depth * 115)
      add(p, f"{s}_flex", b * arms)
    add(p, "bow", b * depth * rng.uniform(5, 30))
  elif label == 6:  # jump: crouch, take off (with an arm swing or not), land
    n = rng.integers(1, 5)
    c = (u * n) % 1.0
    active = (u > 0) & (u < 1)
    crouch = (np.exp(-((c - 0.22) / 0.1) ** 2) + 0.7 * np.exp(-((c - 0.88) / 0.08) ** 2)) * active
    air = np.where((c > 0.38) & (c < 0.75), np.sin(np.pi * (c - 0.38) / 0.37), 0.0) * active
    swing = rng.uniform(30, 120) if rng.random() < 0.7 else 0.0
    depth = rng.uniform(0.5, 1.0) * a
    for s in "rl":
      add(p, f"{s}_hip_flex", crouch * depth * 55)
      add(p, f"{s}_knee", crouch * depth * 75 + air * 10)
      add(p, f"{s}_flex", (air - 0.3 * crouch) * swing)
    add(p, "bow", crouch * depth * rng.uniform(10, 25))
    add(p, "jump", air * rng.uniform(0.06, 0.3) * a)
  elif label == 7:  # bow: bend the torso forward, arms hanging
    b = _smoothstep(_bumps(u, rng.integers(1, 3)) * rng.uniform(1.0, 1.5)) * a
    angle = rng.uniform(25, 80)
    add(p, "bow", b * angle)
    add(p, "head_pitch", b * rng.uniform(0, 20))
    knees = rng.uniform(0, 20)
    for s in "rl":
      add(p, f"{s}_flex", b * angle * rng.uniform(0.6, 1.0))
      add(p, f"{s}_hip_flex", b * knees)
      add(p, f"{s}_knee", b * knees * 1.5)
  elif label == 8:  # clap, from chest height to above the head
    h = _hold(u, 0.2)
    clap = 0.5 + 0.5 * _osc(u, rng.integers(3, 9), rng.uniform(0, 6.3))
    height = rng.uniform(35, 110)
    for s in "rl":
      add(p, f"{s}_flex", h * height)
      add(p, f"{s}_abd", -h * rng.uniform(0, 15))
      add(p, f"{s}_elbow", h * rng.uniform(50, 90))
      add(p, f"{s}_hum", h * (rng.uniform(25, 45) + clap * rng.uniform(25, 45) * a))
  else:  # two-person classes: the actor (0) and the other person (1)
    q = poses[1]
    separation = rng.uniform(1.3, 1.7)
    h = _hold(u, 0.25)
    if label == 9:  # handshake: both step in and shake right hands
      shake = _osc(u, rng.integers(2, 6), rng.uniform(0, 6.3)) * _hold(u, 0.4)
      for person in (p, q):
        add(person, "fwd", h * rng.uniform(0.15, 0.35))
        add(person, "r_flex", h * rng.uniform(35, 70) + shake * rng.uniform(5, 12) * a)
        add(person, "r_elbow", h * rng.uniform(25, 50))
        add(person, "r_hum", h * rng.uniform(5, 25))
    elif label == 10:  # push: the actor steps in and pushes with one or both hands
      t_push = rng.uniform(0.4, 0.6)
      ready = _smoothstep((u - 0.05) / (t_push - 0.05))
      extend = _smoothstep((u - t_push) / 0.12) * (1 - _smoothstep((u - 0.85) / 0.15))
      add(p, "fwd", ready * rng.uniform(0.15, 0.45))
      for s in ("rl" if rng.random() < 0.65 else "r"):
        add(p, f"{s}_flex", ready * (1 - _smoothstep((u - 0.85) / 0.15)) * rng.uniform(50, 90))
        add(p, f"{s}_elbow", (ready - extend) * rng.uniform(80, 110) * a
            + extend * rng.uniform(5, 20))
        add(p, f"{s}_hum", ready * rng.uniform(10, 30) * (1 - extend))
      add(p, "bow", extend * rng.uniform(5, 20))
      back = _smoothstep((u - t_push) / 0.25)
      add(q, "fwd", -back * rng.uniform(0.2, 0.45) * a)
      add(q, "bow", -np.exp(-((u - t_push - 0.1) / 0.1) ** 2) * rng.uniform(10, 25))
      for s in "rl":
        add(q, f"{s}_abd", np.exp(-((u - t_push - 0.12) / 0.12) ** 2) * rng.uniform(10, 40))
    else:  # hug: both step in and wrap their arms (or one arm) around each other
      for person in (p, q):
        add(person, "fwd", h * rng.uniform(0.25, 0.5))
        add(person, "bow", h * rng.uniform(5, 15))
        for s in ("rl" if rng.random() < 0.7 else "r"):
          add(person, f"{s}_flex", h * rng.uniform(50, 90) * a)
          add(person, f"{s}_abd", h * rng.uniform(15, 40))
          add(person, f"{s}_hum", h * rng.uniform(50, 80))
          add(person, f"{s}_elbow", h * rng.uniform(50, 80))
    return 2, (0.5, 0.5), separation
  return 1, (0.5,), 0.0


def _fidget(rng, u, pose, label):
  """Occasionally adds a movement outside the class pattern to ``pose`` (the actor's): a
  hand the class does not use to the head or face, a small step, a look around."""
  if rng.random() > _FIDGET_P:
    return
  center, width = rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.25)
  g = np.exp(-((u - center) / width) ** 2)
  kind = rng.integers(3)
  free = "".join(side for side in "rl" if side not in _ARM_USE[label][0])
  if kind == 0 and free:  # hand to the head or face
    s = free[rng.integers(len(free))]
    pose[_C[f"{s}_flex"]] += g * rng.uniform(40, 120)
    pose[_C[f"{s}_elbow"]] += g * rng.uniform(60, 130)
    pose[_C[f"{s}_hum"]] += g * rng.uniform(0, 40)
  elif kind == 1 and label not in (4, 5, 6):  # a small step to the side or forward
    s = "rl"[rng.integers(2)]
    lift = _bumps(np.clip((u - center) / (2 * width) + 0.5, 0, 1), 1)
    pose[_C[f"{s}_hip_flex"]] += lift * rng.uniform(10, 30)
    pose[_C[f"{s}_knee"]] += lift * rng.uniform(15, 45)
    pose[_C["side"]] += _smoothstep((u - center) / width + 0.5) * rng.uniform(-0.15, 0.15)
  else:  # look around
    pose[_C["yaw"]] += g * rng.uniform(-30, 30)
    pose[_C["head_pitch"]] += g * rng.uniform(-20, 20)


# ---------------------------------------------------------------------------------------
# Forward kinematics. Body frame: x = the person's right, y = up, z = backwards (the
# person faces -z, i.e. faces a camera looking along +z, as in NTU's camera space).

def _rx(a):
  c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
  return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _ry(a):
  c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
  return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rz(a):
  c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
  return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _at(rot, vec):
  """rot [T, 3, 3] applied to a constant vector [3]: [T, 3]."""
  return rot @ np.asarray(vec, np.float64)


def _forward_kinematics(pose, body, support):
  """Joints [T, 25, 3] of one person in its body frame, feet on the floor (y = 0).

  ``pose`` is [K, T] in radians / metres; ``support`` is the weight of the left ankle in
  the floor anchor whose horizontal position is held at its frame-0 place.
  """
  ch = {name: pose[i] for i, name in enumerate(_CHANNELS)}
  t = pose.shape[1]
  b = body
  j = np.zeros((t, 25, 3))
  r_pelvis = _ry(ch["yaw"])
  r_lower = r_pelvis @ _ry(0.4 * ch["twist"]) @ _rx(-0.35 * ch["bow"]) @ _rz(0.4 * ch["lean"])
  r_upper = r_pelvis @ _ry(ch["twist"]) @ _rx(-ch["bow"]) @ _rz(ch["lean"])
  j[:, 1] = _at(r_lower, (0, b["spine_low"], 0))
  j[:, 20] = j[:, 1] + _at(r_upper, (0, b["spine_up"], 0))
  j[:, 2] = j[:, 20] + _at(r_upper, (0, b["neck"], 0))
  j[:, 3] = j[:, 2] + _at(r_upper @ _rx(-ch["head_pitch"]), (0, b["head"], -0.01))
  for side, s, (sh, el, wr, ha, tip, th) in ((1.0, "r", (8, 9, 10, 11, 23, 24)),
                                              (-1.0, "l", (4, 5, 6, 7, 21, 22))):
    j[:, sh] = j[:, 20] + _at(r_upper, (side * b["shoulder_w"], -b["shoulder_drop"], 0))
    r_arm = r_upper @ _rx(ch[f"{s}_flex"]) @ _rz(side * ch[f"{s}_abd"])
    j[:, el] = j[:, sh] + _at(r_arm, (0, -b["upper_arm"], 0))
    r_fore = r_arm @ _ry(side * ch[f"{s}_hum"]) @ _rx(ch[f"{s}_elbow"])
    j[:, wr] = j[:, el] + _at(r_fore, (0, -b["forearm"], 0))
    j[:, ha] = j[:, wr] + _at(r_fore, (0, -b["hand"], 0))
    j[:, tip] = j[:, wr] + _at(r_fore, (-side * 0.01, -b["hand"] - b["tip"], -0.01))
    j[:, th] = j[:, wr] + _at(r_fore, (-side * 0.03, -0.75 * b["hand"], -0.03))
  for side, s, (hip, knee, ankle, foot) in ((1.0, "r", (16, 17, 18, 19)),
                                            (-1.0, "l", (12, 13, 14, 15))):
    j[:, hip] = _at(r_pelvis, (side * b["hip_w"], -b["hip_drop"], 0))
    r_thigh = r_pelvis @ _rx(ch[f"{s}_hip_flex"]) @ _rz(side * ch[f"{s}_hip_abd"])
    j[:, knee] = j[:, hip] + _at(r_thigh, (0, -b["thigh"], 0))
    r_shank = r_thigh @ _rx(-ch[f"{s}_knee"])
    j[:, ankle] = j[:, knee] + _at(r_shank, (0, -b["shank"], 0))
    r_foot = r_pelvis @ _rx(0.4 * (ch[f"{s}_hip_flex"] - ch[f"{s}_knee"]))
    j[:, foot] = j[:, ankle] + _at(r_foot, (0, -0.03, -b["foot"]))
  # Floor contact: the lower ankle sits at ankle height; the support anchor stays put.
  lift = b["ankle_h"] - np.minimum(j[:, 14, 1], j[:, 18, 1]) + ch["jump"]
  anchor = support * j[:, 14] + (1.0 - support) * j[:, 18]
  shift = anchor[:1] - anchor
  shift[:, 1] = lift
  step = np.stack([ch["side"], np.zeros(t), -ch["fwd"]], -1)  # in the facing direction
  shift += (r_pelvis @ step[..., None])[..., 0]
  return j + shift[:, None, :]


# ---------------------------------------------------------------------------------------
# Camera and sensor.

def _camera(rng, camera):
  """Rotation [3, 3] (rows: camera axes in scene coordinates) and position [3]."""
  yaw = np.deg2rad(CAMERA_YAW_DEG[camera] + rng.uniform(-5, 5))
  distance = rng.uniform(2.5, 4.0)
  position = np.array([distance * np.sin(yaw), rng.uniform(0.5, 0.9), -distance * np.cos(yaw)])
  target = np.array([rng.uniform(-0.15, 0.15), rng.uniform(0.7, 1.1), rng.uniform(-0.15, 0.15)])
  forward = target - position
  forward /= np.linalg.norm(forward)
  right = np.cross([0.0, 1.0, 0.0], forward)
  right /= np.linalg.norm(right)
  up = np.cross(forward, right)
  pitch, roll = np.deg2rad(rng.uniform(-4, 4)), np.deg2rad(rng.uniform(-2, 2))  # mount tilt
  c, s = np.cos(pitch), np.sin(pitch)
  forward, up = c * forward + s * up, c * up - s * forward
  c, s = np.cos(roll), np.sin(roll)
  right, up = c * right + s * up, c * up - s * right
  return np.stack([right, up, forward]), position


def _partner(subject: int, rep: int) -> int:
  """The body of the other person in two-person classes: a subject outside 1..999."""
  return 1000 + 1000 * subject + rep


def generate(source: SyntheticSource, artefacts: bool = True) -> np.ndarray:
  """One sample: float32 (3, T, 25, 2) camera-space coordinates, zeros where absent.

  ``artefacts=False`` leaves out the sensor noise and tracking losses (and draws nothing
  for them): the exact kinematic clip, for tests.
  """
  seed, camera, subject_id, rep, action = source
  label = action - 1
  if not 0 <= label < NUM_CLASSES:
    raise ValueError(f"synthetic action {action} outside [1, {NUM_CLASSES}]")
  if camera not in CAMERA_YAW_DEG:
    raise ValueError(f"synthetic camera {camera} outside [1, {NUM_CAMERAS}]")
  subject = _subject(seed, subject_id)
  rng = np.random.default_rng([seed, 2, action, subject_id, camera, rep])

  # Timing: idle, action, idle; speed from the subject's style and the performance.
  speed = subject.speed * rng.uniform(0.8, 1.25)
  active = int(round(rng.uniform(1.2, 3.0) * FPS / speed))
  before, after = rng.integers(0, _IDLE_FRAMES, 2)
  t = int(np.clip(before + active + after, MIN_FRAMES, MAX_CLIP_FRAMES))
  idle = max(t - active, 4)
  active = t - idle
  before = int(round(idle * before / max(before + after, 1)))
  frames = np.arange(t)
  u = np.clip((frames - before) / active, 0.0, 1.0)
  warp = rng.uniform(-_WARP, _WARP)  # uneven pace; monotonic for |warp| < 1
  u = u + warp * np.sin(2.0 * np.pi * u) / (2.0 * np.pi)
  time = frames / FPS

  k = len(_CHANNELS)
  sway = np.array([_SWAY.get(name, 0.0) for name in _CHANNELS]) * subject.sway
  poses = [subject.rest[:, None] + sway[:, None] * _sway(rng, time, k) for _ in range(2)]
  amp = subject.amplitude * rng.uniform(0.8, 1.2)
  styled = _StyledRng(np.random.default_rng([seed, 3, subject_id, action]), rng, _STYLE_SPREAD)
  persons, support, separation = _class_motion(label, u, styled, amp, poses)
  busy = _hold(u, 0.15)
  for m, pose in enumerate(poses):
    pose[_C["yaw"]] += rng.uniform(-_TURN, _TURN) * _smoothstep(frames / t)  # slow turn
    if rng.random() < _POSTURE_P:
      posture = _IDLE_POSTURES[rng.integers(len(_IDLE_POSTURES))]
      for side in "rl":
        free = 1.0 - busy if side in _ARM_USE[label][m] else 1.0
        for joint, value in posture.items():
          pose[_C[f"{side}_{joint}"]] += free * value
  _fidget(rng, u, poses[0], label)

  # Scene: person 0 faces the camera-1 direction (with jitter), or faces person 1.
  facing = np.deg2rad(rng.uniform(-25, 25))
  scene = np.zeros((2, t, 25, 3))
  for m in range(persons):
    pose = poses[m].copy()
    pose[~_LINEAR] = np.deg2rad(pose[~_LINEAR])
    body = subject.body if m == 0 else _subject(seed, _partner(subject_id, rep)).body
    joints = _forward_kinematics(pose, body, support[m])
    if persons == 1:
      yaw, place = facing, np.array([rng.uniform(-0.2, 0.2), 0.0, rng.uniform(-0.2, 0.2)])
    else:  # face each other across the x axis, rotated by ``facing``
      half = (-0.5 if m == 0 else 0.5) * separation
      yaw = facing + (-np.pi / 2 if m == 0 else np.pi / 2)
      place = half * np.array([np.cos(facing), 0.0, -np.sin(facing)])
    scene[m] = joints @ _ry(np.array(yaw)).T + place

  rotation, position = _camera(rng, camera)
  cam = (scene - position) @ rotation.T  # [M, T, V, 3]
  if artefacts:
    _add_artefacts(rng, cam, persons, time)
  cam[persons:] = 0.0
  return np.ascontiguousarray(cam.transpose(3, 1, 2, 0), dtype=np.float32)


def _add_artefacts(rng, cam, persons, time):
  """Kinect-like errors on cam [M, T, V, 3], in place."""
  t = cam.shape[1]

  # Sensor noise: white (~5 mm, more on the hand tips and thumbs) plus a slow wander of
  # the joints hidden behind the body from the camera (Kinect infers those).
  sigma = rng.uniform(0.003, 0.007) * np.where(np.isin(np.arange(25), _HAND_TIPS), 2.5, 1.0)
  cam += rng.normal(0, 1, cam.shape) * sigma[:, None]
  depth = cam[..., 2] - cam[:, :, :1, 2]
  hidden = np.clip((depth - 0.04) / 0.1, 0.0, 1.0)  # [M, T, V]
  freq = rng.uniform(0.2, 1.5, (2, 25, 3, 1))
  wander = np.sin(2 * np.pi * freq * time + rng.uniform(0, 2 * np.pi, (2, 25, 3, 1)))
  cam += _HIDDEN_WANDER * hidden[..., None] * wander.transpose(0, 3, 1, 2)

  # Tracking loss: a few distal joint-frames are exactly zero; sometimes the last frames.
  if rng.random() < 0.4:
    n = rng.integers(1, 12)
    cam[rng.integers(0, persons, n), rng.integers(1, t, n), rng.choice(_DROPPABLE, n)] = 0.0
  if rng.random() < 0.2:
    cam[:, t - rng.integers(1, 9):] = 0.0


# ---------------------------------------------------------------------------------------
# Dataset spec.

def _int_option(options: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
  value = options.get(key)
  if value is None:
    return default
  try:
    number = int(value)
  except (TypeError, ValueError):
    raise ValueError(f"{key}={value!r}: expected an integer") from None
  if number != value and str(number) != str(value).strip():
    raise ValueError(f"{key}={value!r}: expected an integer")
  if not low <= number <= high:
    raise ValueError(f"{key}={number}: expected an integer in [{low}, {high}]")
  return number


def list_samples(raw_dir: Path | None, options: Mapping[str, Any]) -> list[Sample]:
  """All samples of the generated dataset (``raw_dir`` is ignored), sorted by name."""
  del raw_dir
  options = options or {}
  seed = _int_option(options, "synthetic_seed", DEFAULT_SEED, 0, 2**63 - 1)
  subjects = _int_option(options, "synthetic_subjects", DEFAULT_SUBJECTS, 2, 999)
  repetitions = _int_option(options, "synthetic_repetitions", DEFAULT_REPETITIONS, 1, 999)
  samples = []
  for camera in range(1, NUM_CAMERAS + 1):
    for subject in range(1, subjects + 1):
      for rep in range(1, repetitions + 1):
        for action in range(1, NUM_CLASSES + 1):
          source = SyntheticSource(seed, camera, subject, rep, action)
          train = frozenset(b for b in BENCHMARKS if is_training(source, b))
          samples.append(Sample(sample_name(camera, subject, rep, action), action - 1, train,
                                source))
  samples.sort(key=lambda sample: sample.name)
  return samples


def load(sample: Sample) -> np.ndarray:
  return generate(SyntheticSource(*sample.source))


SPEC = DatasetSpec(
    name="synthetic", layout=NTU25, class_names=CLASS_NAMES, benchmarks=BENCHMARKS,
    list_samples=list_samples, load=load, needs_raw=False, drop_all_zero=False,
    option_keys=("synthetic_seed", "synthetic_subjects", "synthetic_repetitions"),
    description=(f"generated NTU-25 clips, {NUM_CLASSES} actions x subjects x 3 cameras x "
                 "repetitions, generated (no download; --option synthetic_seed=N, "
                 "synthetic_subjects=N, synthetic_repetitions=N)"))

__all__ = ["SPEC", "CLASS_NAMES", "NUM_CLASSES", "TWO_PERSON_LABELS", "SyntheticSource",
           "generate", "list_samples", "load", "sample_name", "is_training"]
