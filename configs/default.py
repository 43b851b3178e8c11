"""The default pipeline, what ``python launch.py`` with no arguments runs.

  python launch.py [--workdir workdirs/default_synthetic] [--config.pretrain.num_epochs=...] ...
  python launch.py --config configs/default.py:msr_action3d   # the same on MSR Action3D (build it first)
  python launch.py --config configs/default.py:hiclr          # HiCLR: one pretraining per stream, its linear settings
  python launch.py --config configs/default.py:hiclr_msr_action3d
  python launch.py --config configs/default.py:skeletonclr    # SkeletonCLR: one pretraining per stream
  python launch.py --config configs/default.py:crossclr       # CrosSCLR: three streams in one run, its joint probe
  python launch.py --config configs/default.py:aimclr         # AimCLR: one pretraining per stream, its fixed-weight ensemble
  (each also as <method>_msr_action3d)

On the embedded synthetic set (built on first use): CMD pretraining
(configs/pretrain_cmd.py:synthetic), then kNN retrieval and linear evaluation
(configs/knn.py:synthetic, configs/linear.py:synthetic) of the joint, motion and bone
encoders and their three-stream fusion, each also at random initialisation for comparison,
and one table. About 10 minutes on a 2-core CPU. The other methods' entries use each
method's CPU-sized pretraining (configs/pretrain_<method>.py) and its reference's linear
settings (configs/linear_<method>.py: CrosSCLR's mean-logit probe, AimCLR's and HiCLR's
logit ensembles); kNN is 1-NN for every method (configs/knn.py). Sub-configs are overridden by path, e.g.
``--config.linear.num_epochs=10``; their ``init_from`` is set to the pretraining workdir.
"""

from __future__ import annotations

import ml_collections

from configs import (knn, linear, linear_aimclr, linear_crossclr, linear_hiclr, linear_skeletonclr, pretrain_aimclr,
                     pretrain_cmd, pretrain_crossclr, pretrain_hiclr, pretrain_skeletonclr)

# method: (pretraining config module, linear config module, streams pretrained one per run)
METHODS = {
    "cmd": (pretrain_cmd, linear, False),                      # the three streams in one run
    "hiclr": (pretrain_hiclr, linear_hiclr, True),
    "skeletonclr": (pretrain_skeletonclr, linear_skeletonclr, True),
    "crossclr": (pretrain_crossclr, linear_crossclr, False),   # the three streams in one run
    "aimclr": (pretrain_aimclr, linear_aimclr, True),
}
NAMES = ("synthetic", "msr_action3d") + tuple(
    f"{method}{suffix}" for method in METHODS if method != "cmd" for suffix in ("", "_msr_action3d"))


def split(name: str) -> tuple[str, str]:
  """``(method, dataset)`` of a default name: ``synthetic`` / ``msr_action3d`` are CMD's."""
  if name in ("synthetic", "msr_action3d"):
    return "cmd", name
  method, _, dataset = name.partition("_")
  return method, dataset or "synthetic"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  if name not in NAMES:
    raise ValueError(f"configs/default.py: unknown config {name!r}; expected one of {', '.join(NAMES)}")
  method, dataset = split(name)
  pretrain_module, linear_module, one_stream_per_run = METHODS[method]
  c = ml_collections.ConfigDict()
  c.name = f"default_{name}"
  c.trainer = "pipeline"
  c.pretrain = pretrain_module.get_config(dataset)
  # "joint,motion,bone": one pretraining per stream (pretrain_<stream>/); "": one run for all three
  c.pretrain_streams = "joint,motion,bone" if one_stream_per_run else ""
  c.linear = linear_module.get_config(dataset)   # expects the method and encoder c.pretrain trains
  c.knn = knn.get_config(dataset)                # 1-NN for every method, so the table compares like with like
  for sub in (c.knn, c.linear):
    with sub.unlocked():
      sub.streams = "joint,motion,bone"
  c.random_init_baselines = True     # also evaluate the encoders at random initialisation
  c.lock()
  return c
