"""1-NN retrieval (docs/references.md#cmd-knn-retrieval) of a pretraining workdir.

  python launch.py --config configs/knn.py:<name> --config.init_from=<pretraining workdir> --workdir <dir>

The frozen query encoder's 2H last-step features (BatchNorm in inference mode, no head) of
the 95% centre crop of every training clip (the bank) and every test clip (the queries) are
L2-normalised; each query takes the label of its most cosine-similar bank feature
(``cmd_jax.evaluators.knn``). No training, so a single number per stream (``final_top1``).
``--config.streams=joint,motion,bone`` adds the motion and bone encoders and their fusion
(1-NN by the mean of the three cosine similarities); ``--config.random_init=True`` evaluates
the same encoder at its random initialisation.

Names, hardware, and the number to compare with (paper, kNN k=1, joint stream, top-1 %;
from memory, UNVERIFIED, docs/references.md#cmd-numbers):

  synthetic      CPU, seconds
  msr_action3d   CPU, seconds
  ntu60_xsub     GPU; ~70.6 (unverified)
  ntu60_xview    GPU; ~85.4 (unverified)
  ntu120_xsub    GPU; ~58.3 (unverified)
  ntu120_xset    GPU; ~60.9 (unverified)
  pku_mmd2_xsub  GPU; no reference number (the reference's retrieval options have no PKU entry)
"""

from __future__ import annotations

import ml_collections

from configs import linear

REFERENCE_KNN = {"ntu60_xsub": 70.6, "ntu60_xview": 85.4, "ntu120_xsub": 58.3, "ntu120_xset": 60.9}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  linear.check_name(name, linear.DATASETS, "configs/knn.py")
  c = linear.base_config(name, "knn", *linear.DATASETS[name])
  c.knn_k = 1                        # 1: the nearest neighbour; k > 1: SimSiam's weighted kNN (AimCLR's: 200)
  c.knn_temperature = 0.1            # the weighted kNN's votes exp(similarity / temperature)
  if name in REFERENCE_KNN:
    c.reference_top1 = REFERENCE_KNN[name]
    c.reference_note = "paper, kNN (k=1), joint stream: from memory, unverified (docs/references.md#cmd-numbers)"
  if name in linear.CPU_SIZED:
    c.eval_batch_size = 128
  c.lock()
  return c
