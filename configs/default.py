"""The default pipeline, what ``python launch.py`` with no arguments runs.

  python launch.py [--workdir workdirs/default_synthetic] [--config.pretrain.num_epochs=...] ...
  python launch.py --config configs/default.py:msr_action3d   # the same on MSR Action3D (build it first)
  python launch.py --config configs/default.py:hiclr          # HiCLR: one pretraining per stream, its linear settings
  python launch.py --config configs/default.py:hiclr_msr_action3d

On the embedded synthetic set (built on first use): CMD pretraining
(configs/pretrain_cmd.py:synthetic), then kNN retrieval and linear evaluation
(configs/knn.py:synthetic, configs/linear.py:synthetic) of the joint, motion and bone
encoders and their three-stream fusion, each also at random initialisation for comparison,
and one table. About 10 minutes on a 2-core CPU. Sub-configs are overridden by path, e.g.
``--config.linear.num_epochs=10``; their ``init_from`` is set to the pretraining workdir.
"""

from __future__ import annotations

import ml_collections

from configs import knn, linear, linear_hiclr, pretrain_cmd, pretrain_hiclr


NAMES = ("synthetic", "msr_action3d", "hiclr", "hiclr_msr_action3d")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  if name not in NAMES:
    raise ValueError(f"configs/default.py: unknown config {name!r}; expected one of {', '.join(NAMES)}")
  hiclr = name.startswith("hiclr")
  dataset = name[len("hiclr_"):] if name.startswith("hiclr_") else ("synthetic" if hiclr else name)
  c = ml_collections.ConfigDict()
  c.name = f"default_{name}"
  c.trainer = "pipeline"
  if hiclr:
    c.pretrain = pretrain_hiclr.get_config(dataset)
    c.pretrain_streams = "joint,motion,bone"   # HiCLR pretrains one stream per run
    c.linear = linear_hiclr.get_config(dataset)        # expects the encoder c.pretrain trains
  else:
    c.pretrain = pretrain_cmd.get_config(dataset)
    c.pretrain_streams = ""                    # CMD pretrains the three streams in one run
    c.linear = linear.get_config(dataset)
  c.knn = knn.get_config(dataset)
  for sub in (c.knn, c.linear):
    with sub.unlocked():
      sub.streams = "joint,motion,bone"
  c.random_init_baselines = True     # also evaluate the encoders at random initialisation
  c.lock()
  return c
