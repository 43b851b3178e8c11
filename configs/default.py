"""The default pipeline, what ``python launch.py`` with no arguments runs.

  python launch.py [--workdir workdirs/default_synthetic] [--config.pretrain.num_epochs=...] ...
  python launch.py --config configs/default.py:msr_action3d   # the same on MSR Action3D (build it first)

On the embedded synthetic set (built on first use): CMD pretraining
(configs/pretrain_cmd.py:synthetic), then kNN retrieval and linear evaluation
(configs/knn.py:synthetic, configs/linear.py:synthetic) of the joint, motion and bone
encoders and their three-stream fusion, each also at random initialisation for comparison,
and one table. About 10 minutes on a 2-core CPU. Sub-configs are overridden by path, e.g.
``--config.linear.num_epochs=10``; their ``init_from`` is set to the pretraining workdir.
"""

from __future__ import annotations

import ml_collections

from configs import knn, linear, pretrain_cmd


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  c = ml_collections.ConfigDict()
  c.name = f"default_{name}"
  c.trainer = "pipeline"
  c.pretrain = pretrain_cmd.get_config(name)
  c.knn = knn.get_config(name)
  c.linear = linear.get_config(name)
  for sub in (c.knn, c.linear):
    with sub.unlocked():
      sub.streams = "joint,motion,bone"
  c.random_init_baselines = True     # also evaluate the encoders at random initialisation
  c.lock()
  return c
