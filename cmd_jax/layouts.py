"""Skeleton layouts as data: joint names, bone pairs, persons, and the joints preprocessing uses.

A layout is everything the rest of the project needs to know about a skeleton format:
the data converters use ``center_joint``, ``zaxis`` and ``xaxis`` for the reference's
normalisation (docs/references.md#cmd-pre-normalization), and the modalities (bone, motion)
are derived from ``bone_pairs`` (docs/references.md#cmd-modalities). Nothing else in the code
base hard-codes joint indices.

All indices are 0-based.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SkeletonLayout:
  """A skeleton format.

  Attributes:
    name: registry key, e.g. ``"ntu25"``.
    joint_names: one name per joint, in the order the data stores them.
    bone_pairs: one ``(joint, parent)`` pair per joint, in joint order; the bone of
      ``joint`` is ``x[joint] - x[parent]``. A pair ``(j, j)`` gives a zero bone (the root).
    num_persons: M, the person slots every sample has.
    center_joint: the joint of person 0 subtracted per frame when centring.
    zaxis: ``(bottom, top)``: the frame-0 vector ``top - bottom`` of person 0 is rotated to +z.
    xaxis: ``(a, b)``: the frame-0 vector ``a - b`` of person 0 is then rotated to +x.
  """

  name: str
  joint_names: tuple[str, ...]
  bone_pairs: tuple[tuple[int, int], ...]
  num_persons: int
  center_joint: int
  zaxis: tuple[int, int]
  xaxis: tuple[int, int]

  def __post_init__(self):
    v = len(self.joint_names)
    if len(self.bone_pairs) != v:
      raise ValueError(f"layout {self.name}: {len(self.bone_pairs)} bone pairs for {v} joints")
    for i, (child, parent) in enumerate(self.bone_pairs):
      if child != i or not 0 <= parent < v:
        raise ValueError(f"layout {self.name}: bone pair {i} is {(child, parent)}; expected ({i}, parent in [0, {v}))")
    for j in (self.center_joint, *self.zaxis, *self.xaxis):
      if not 0 <= j < v:
        raise ValueError(f"layout {self.name}: joint index {j} outside [0, {v})")
    if len(self._roots()) != 1:
      raise ValueError(f"layout {self.name}: {len(self._roots())} bone pairs (j, j); expected exactly one root")

  @property
  def num_joints(self) -> int:
    return len(self.joint_names)

  @property
  def bone_parents(self) -> np.ndarray:
    """int array [V]: the parent of each joint (itself for the root)."""
    return np.array([p for _, p in self.bone_pairs], dtype=np.int32)

  @property
  def root(self) -> int:
    """The bone tree's root, the joint whose bone pair is ``(j, j)`` (NTU: 20, spine shoulder;
    MSR: 2, neck). It is the centre of the ST-GCN graph's spatial partitioning and the
    joint the 50-frame (HiCLR) preprocessing centres on."""
    return self.bone_pairs[self._roots()[0]][0]

  @property
  def length_joint(self) -> int:
    """The joint whose non-zero frames of person 0 are counted as a clip's length by the
    50-frame (HiCLR) preprocessing: the bottom of the spine vector, ``zaxis[0]`` (NTU: 0,
    spine base, the joint HiCLR's code counts; MSR: 6, hip centre)."""
    return self.zaxis[0]

  @property
  def edges(self) -> tuple[tuple[int, int], ...]:
    """The skeleton's neighbour links ``(joint, parent)``: the bone pairs without the root's
    self pair (NTU: the 24 links of the ST-GCN graph, in the same order)."""
    return tuple((a, b) for a, b in self.bone_pairs if a != b)

  @property
  def mirror(self) -> tuple[int, ...]:
    """The left-right mirror of the joints: ``mirror[j]`` is the joint whose name swaps the
    ``left_`` / ``right_`` prefix of joint ``j``'s name (joints with neither prefix map to
    themselves). ``x[..., mirror, :]`` is the spatial flip of HiCLR's strong augmentation
    (NTU: ``0 1 2 3 8 9 10 11 4 5 6 7 16 17 18 19 12 13 14 15 20 23 24 21 22``, the
    reference's order). An involution; raises ``ValueError`` if a side has no counterpart."""
    index = {name: j for j, name in enumerate(self.joint_names)}
    out = []
    for name in self.joint_names:
      if name.startswith("left_"):
        other = "right_" + name[len("left_"):]
      elif name.startswith("right_"):
        other = "left_" + name[len("right_"):]
      else:
        other = name
      if other not in index:
        raise ValueError(f"layout {self.name}: joint {name!r} has no mirror joint {other!r}")
      out.append(index[other])
    return tuple(out)

  def _roots(self) -> list[int]:
    return [i for i, (a, b) in enumerate(self.bone_pairs) if a == b]


# NTU RGB+D (Kinect v2), docs/references.md#ntu-25-joints.
NTU25 = SkeletonLayout(
    name="ntu25",
    joint_names=(
        "spine_base", "spine_mid", "neck", "head",
        "left_shoulder", "left_elbow", "left_wrist", "left_hand",
        "right_shoulder", "right_elbow", "right_wrist", "right_hand",
        "left_hip", "left_knee", "left_ankle", "left_foot",
        "right_hip", "right_knee", "right_ankle", "right_foot",
        "spine_shoulder", "left_hand_tip", "left_thumb", "right_hand_tip", "right_thumb",
    ),
    # The reference's 1-based 2s-AGCN list (docs/references.md#cmd-modalities), converted to 0-based:
    # (1,2) (2,21) (3,21) (4,3) (5,21) (6,5) (7,6) (8,7) (9,21) (10,9) (11,10) (12,11)
    # (13,1) (14,13) (15,14) (16,15) (17,1) (18,17) (19,18) (20,19) (21,21) (22,23) (23,8)
    # (24,25) (25,12).
    bone_pairs=tuple((a - 1, b - 1) for a, b in (
        (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
        (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
        (20, 19), (21, 21), (22, 23), (23, 8), (24, 25), (25, 12))),
    num_persons=2,
    center_joint=1,
    zaxis=(0, 1),
    xaxis=(8, 4),
)

# MSR Action3D (Kinect v1, 20 joints, the dataset's own order). Established from the
# recordings (see tests/test_msr.py): y is up and the head (19) is the highest joint; the
# actions' acting arm (the subjects used the right arm) is the 1/8/10/12 side, which also
# has the larger x, as the right side does in NTU's camera space.
MSR20 = SkeletonLayout(
    name="msr20",
    joint_names=(
        "left_shoulder", "right_shoulder", "neck", "spine",
        "left_hip", "right_hip", "hip_center",
        "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
        "left_knee", "right_knee", "left_ankle", "right_ankle", "left_foot", "right_foot",
        "head",
    ),
    # Rooted at the neck like NTU's spine_shoulder: every joint points to its neighbour
    # towards the neck; the neck's own bone is zero.
    bone_pairs=(
        (0, 2), (1, 2), (2, 2), (3, 2), (4, 6), (5, 6), (6, 3), (7, 0), (8, 1), (9, 7),
        (10, 8), (11, 9), (12, 10), (13, 4), (14, 5), (15, 13), (16, 14), (17, 15), (18, 16),
        (19, 2)),
    num_persons=1,
    # NTU centres on spine_mid and aligns spine_base->spine_mid with z and
    # right->left shoulder with x; the MSR analogues are spine, hip_center->spine, and
    # right_shoulder - left_shoulder.
    center_joint=3,
    zaxis=(6, 3),
    xaxis=(1, 0),
)

LAYOUTS = {layout.name: layout for layout in (NTU25, MSR20)}


def get_layout(name: str) -> SkeletonLayout:
  try:
    return LAYOUTS[name]
  except KeyError:
    raise ValueError(f"unknown skeleton layout {name!r}; expected one of {sorted(LAYOUTS)}") from None
