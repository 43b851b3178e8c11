"""SkeletonCLR's linear evaluation of a pretraining workdir.

  python launch.py --config configs/linear_skeletonclr.py:<name> --config.init_from=<pretraining workdir(s)> --workdir <dir>

The torchlight family's linear evaluation (CrosSCLR's release, processor/linear_evaluation.py,
the processor HiCLR's and AimCLR's releases share; ``configs/linear_hiclr.py`` describes it):
the frozen query encoder in eval mode, a new ``Linear(256, classes)`` with ``weights_init``
(``N(0, 0.02)``), SGD lr 3.0, momentum 0.9, no weight decay, batch 128, 100 epochs, lr x0.1
after epoch 80, no augmentation, ``N // 128`` full batches an epoch (``drop_last``), evaluated
every 5 epochs and after the last, on the checkpoint of the pretraining's last epoch (300:
the latest, ``init_step = -1``). SkeletonCLR has no released linear-evaluation config: these
are the CrosSCLR release's values, which its description prescribes for SkeletonCLR.

Three streams: SkeletonCLR pretrains one stream per run, so give the three workdirs,
``--config.init_from=W_joint,W_motion,W_bone --config.streams=joint,motion,bone``; the
result adds this project's softmax-mean fusion (the reference defines no three-stream
SkeletonCLR evaluation).

Names and the numbers to compare with (joint stream, top-1 %, CrosSCLR's README for NTU-60):
ntu60_xsub 68.3, ntu60_xview 76.4, ntu120_xsub 56.8, ntu120_xset 55.9; ``<name>_dsta`` for
the transformer (no published number); ``synthetic`` and ``msr_action3d`` CPU-sized (30
epochs, lr x0.1 after 24, batch 64).
"""

from __future__ import annotations

import ml_collections

from configs.linear_hiclr import torchlight_linear
from configs.pretrain_hiclr import split_name
from configs.pretrain_skeletonclr import REFERENCE_LINEAR


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  base, dsta, _, _ = split_name(name, "configs/linear_skeletonclr.py")
  c = torchlight_linear(name, "skeletonclr", "configs/linear_skeletonclr.py")
  if base in REFERENCE_LINEAR and not dsta:
    c.reference_top1 = REFERENCE_LINEAR[base]
    c.reference_note = "CrosSCLR's README, linear evaluation, SkeletonCLR joint stream (NTU-120: secondary source)"
  c.lock()
  return c
