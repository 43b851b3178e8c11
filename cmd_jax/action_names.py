"""The action class names of every dataset: one tuple per dataset, index = 0-based label.

This module owns the names a person reads in plots and tables instead of class indices.
Each tuple is the dataset's published class list in its published order, so that
``NAMES[label]`` is the class of ``label`` (the converters' labels are the published
1-based class number minus 1):

- ``NTU120``: NTU RGB+D 120 (Liu et al., TPAMI 2019), classes A1..A120 as listed on the
  dataset's page (the authors' NTURGB-D repository README, "Action Classes");
  ``NTU60`` is its first 60 (NTU RGB+D, Shahroudy et al., CVPR 2016: A1..A60). The text
  is as published, including its quirks (A67 "hush (quite)"); the typographic apostrophes
  of A109 and A117 are written as ASCII ``'``. The CVPR 2016 README's earlier wording of
  A25 ("put something inside pocket / take out something from pocket") and A119 ("support
  somebody with one's hand (someone is sick, help him to walk)") was later shortened to the
  names used here.
- ``PKU_MMD2``: PKU-MMD (Liu et al., 2017), the 51 classes of its action list
  (``Actions.xlsx`` of the release; labels 1..51 in the label files), which PKU-MMD II
  labels use as well. The list is alphabetical; most names are NTU's.
- ``MSR_ACTION3D``: MSR Action3D (Li, Zhang and Liu, CVPR Workshops 2010), actions
  a01..a20 of the file names ``aAA_sSS_eEE``.
- ``SYNTHETIC``: the twelve motions the embedded generator (``data_prep/synthetic.py``)
  makes, label by label (tests/test_synthetic.py ties each name to the motion generated).

``action_names(dataset)`` looks a tuple up by the CLI dataset name; ``names_or_default``
chooses between names stored with the data (TFDS ``ClassLabel`` metadata, a results file)
and these; ``is_index_names`` recognises the placeholder names ``"0", "1", ...`` that
TFDS gives a ``ClassLabel`` built with a class count only.
"""

from __future__ import annotations

from typing import Sequence

NTU120 = (
    "drink water",                                         # A1
    "eat meal/snack",
    "brushing teeth",
    "brushing hair",
    "drop",                                                # A5
    "pickup",
    "throw",
    "sitting down",
    "standing up (from sitting position)",
    "clapping",                                            # A10
    "reading",
    "writing",
    "tear up paper",
    "wear jacket",
    "take off jacket",                                     # A15
    "wear a shoe",
    "take off a shoe",
    "wear on glasses",
    "take off glasses",
    "put on a hat/cap",                                    # A20
    "take off a hat/cap",
    "cheer up",
    "hand waving",
    "kicking something",
    "reach into pocket",                                   # A25
    "hopping (one foot jumping)",
    "jump up",
    "make a phone call/answer phone",
    "playing with phone/tablet",
    "typing on a keyboard",                                # A30
    "pointing to something with finger",
    "taking a selfie",
    "check time (from watch)",
    "rub two hands together",
    "nod head/bow",                                        # A35
    "shake head",
    "wipe face",
    "salute",
    "put the palms together",
    "cross hands in front (say stop)",                     # A40
    "sneeze/cough",
    "staggering",
    "falling",
    "touch head (headache)",
    "touch chest (stomachache/heart pain)",                # A45
    "touch back (backache)",
    "touch neck (neckache)",
    "nausea or vomiting condition",
    "use a fan (with hand or paper)/feeling warm",
    "punching/slapping other person",                      # A50
    "kicking other person",
    "pushing other person",
    "pat on back of other person",
    "point finger at the other person",
    "hugging other person",                                # A55
    "giving something to other person",
    "touch other person's pocket",
    "handshaking",
    "walking towards each other",
    "walking apart from each other",                       # A60
    "put on headphone",
    "take off headphone",
    "shoot at the basket",
    "bounce ball",
    "tennis bat swing",                                    # A65
    "juggling table tennis balls",
    "hush (quite)",
    "flick hair",
    "thumb up",
    "thumb down",                                          # A70
    "make ok sign",
    "make victory sign",
    "staple book",
    "counting money",
    "cutting nails",                                       # A75
    "cutting paper (using scissors)",
    "snapping fingers",
    "open bottle",
    "sniff (smell)",
    "squat down",                                          # A80
    "toss a coin",
    "fold paper",
    "ball up paper",
    "play magic cube",
    "apply cream on face",                                 # A85
    "apply cream on hand back",
    "put on bag",
    "take off bag",
    "put something into a bag",
    "take something out of a bag",                         # A90
    "open a box",
    "move heavy objects",
    "shake fist",
    "throw up cap/hat",
    "hands up (both hands)",                               # A95
    "cross arms",
    "arm circles",
    "arm swings",
    "running on the spot",
    "butt kicks (kick backward)",                          # A100
    "cross toe touch",
    "side kick",
    "yawn",
    "stretch oneself",
    "blow nose",                                           # A105
    "hit other person with something",
    "wield knife towards other person",
    "knock over other person (hit with body)",
    "grab other person's stuff",
    "shoot at other person with a gun",                    # A110
    "step on foot",
    "high-five",
    "cheers and drink",
    "carry something with other person",
    "take a photo of other person",                        # A115
    "follow other person",
    "whisper in other person's ear",
    "exchange things with other person",
    "support somebody with hand",
    "finger-guessing game (playing rock-paper-scissors)",  # A120
)

NTU60 = NTU120[:60]

PKU_MMD2 = (
    "bow",                                                 # 1
    "brushing hair",
    "brushing teeth",
    "check time (from watch)",
    "cheer up",                                            # 5
    "clapping",
    "cross hands in front (say stop)",
    "drink water",
    "drop",
    "eat meal/snack",                                      # 10
    "falling",
    "giving something to other person",
    "hand waving",
    "handshaking",
    "hopping (one foot jumping)",                          # 15
    "hugging other person",
    "jump up",
    "kicking other person",
    "kicking something",
    "make a phone call/answer phone",                      # 20
    "pat on back of other person",
    "pickup",
    "playing with phone/tablet",
    "point finger at the other person",
    "pointing to something with finger",                   # 25
    "punching/slapping other person",
    "pushing other person",
    "put on a hat/cap",
    "put something inside pocket",
    "reading",                                             # 30
    "rub two hands together",
    "salute",
    "sitting down",
    "standing up",
    "take off a hat/cap",                                  # 35
    "take off glasses",
    "take off jacket",
    "take out something from pocket",
    "taking a selfie",
    "tear up paper",                                       # 40
    "throw",
    "touch back (backache)",
    "touch chest (stomachache/heart pain)",
    "touch head (headache)",
    "touch neck (neckache)",                               # 45
    "typing on a keyboard",
    "use a fan (with hand or paper)/feeling warm",
    "wear jacket",
    "wear on glasses",
    "wipe face",                                           # 50
    "writing",
)

MSR_ACTION3D = (
    "high arm wave",                                       # a01
    "horizontal arm wave",
    "hammer",
    "hand catch",
    "forward punch",                                       # a05
    "high throw",
    "draw x",
    "draw tick",
    "draw circle",
    "hand clap",                                           # a10
    "two hand wave",
    "side-boxing",
    "bend",
    "forward kick",
    "side kick",                                           # a15
    "jogging",
    "tennis swing",
    "tennis serve",
    "golf swing",
    "pick up & throw",                                     # a20
)

SYNTHETIC = (
    "wave right hand",           # A001
    "wave left hand",            # A002
    "raise both arms",           # A003
    "punch forward",             # A004
    "kick forward (right leg)",  # A005
    "squat",                     # A006
    "jump",                      # A007
    "bow",                       # A008
    "clap hands",                # A009
    "handshake",                 # A010, two persons
    "push other person",         # A011, two persons
    "hug other person",          # A012, two persons
)

ACTION_NAMES = {
    "ntu60": NTU60,
    "ntu120": NTU120,
    "pku_mmd2": PKU_MMD2,
    "msr_action3d": MSR_ACTION3D,
    "synthetic": SYNTHETIC,
}


def action_names(dataset: str) -> tuple[str, ...]:
  """The class names of ``dataset`` (a CLI dataset name), index = 0-based label."""
  if dataset not in ACTION_NAMES:
    raise ValueError(f"no action names for dataset {dataset!r}; expected one of {', '.join(ACTION_NAMES)}")
  return ACTION_NAMES[dataset]


def num_classes(dataset: str) -> int:
  """The class count of ``dataset``: the length of its name list."""
  return len(action_names(dataset))


def is_index_names(names: Sequence[str]) -> bool:
  """Whether ``names`` are the placeholders ``"0", "1", ..., "K-1"`` (no names at all)."""
  return all(str(name) == str(i) for i, name in enumerate(names))


def names_or_default(stored: Sequence[str] | None, dataset: str | None) -> tuple[str, ...] | None:
  """The names to show: ``stored`` (with the data or a results file) unless absent, empty or
  index placeholders; else the names of ``dataset`` when known; else None."""
  if stored is not None and len(stored) and not is_index_names(stored):
    return tuple(str(name) for name in stored)
  return ACTION_NAMES.get(str(dataset)) if dataset else None


__all__ = ["NTU60", "NTU120", "PKU_MMD2", "MSR_ACTION3D", "SYNTHETIC", "ACTION_NAMES", "action_names",
           "num_classes", "is_index_names", "names_or_default"]
