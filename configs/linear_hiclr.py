"""HiCLR's linear evaluation of a pretraining workdir (the release's linear-evaluation configs).

  python launch.py --config configs/linear_hiclr.py:<name> --config.init_from=<pretraining workdir(s)> --workdir <dir>

The pretrained query encoder frozen and in eval mode (BatchNorm running statistics, no
dropout), a new ``Linear(256, classes)`` initialised as HiCLR's ``weights_init`` does
(``N(0, 0.02)``, bias 0), SGD lr 3.0, momentum 0.9, no weight decay, batch 128, 100 epochs,
lr x0.1 after epoch 80 (the transformer: after 30 and 80), no augmentation (the stored
50-frame clips), each epoch ``N // 128`` full batches (the reference's train loader drops the
last partial batch: ``drop_last``), evaluated every 5 epochs and after the last. ``final_top1`` is the last
epoch's accuracy; ``best_of_evals_top1`` is the reference's number (the best evaluation on
the test set).

Three streams: HiCLR pretrains one stream per run, so give the three workdirs,
``--config.init_from=W_joint,W_motion,W_bone --config.streams=joint,motion,bone``; the
result adds this project's softmax-mean fusion and HiCLR's ensemble, the weighted sum of
the streams' raw logits (each at its best evaluation) with weights (joint, bone, motion) =
(0.5, 0.5, 0.5) or (0.6, 0.6, 0.4), the better of the two ON THE TEST SET (labelled so).

Names and the numbers to compare with (top-1 %): ntu60_xsub 80.4 three-stream (the
released joint checkpoint: 77.30), ntu60_xview 85.5, ntu120_xsub 70.0, ntu120_xset 70.4
(three-stream), pku_mmd2_xsub 53.8 (200 epochs, lr step at 160); ``<name>_dsta`` for the
transformer (78.8 / 83.1 / 67.3 / 69.9); ``synthetic`` and ``msr_action3d`` CPU-sized.
"""

from __future__ import annotations

import ml_collections

from configs import linear
from configs.pretrain_hiclr import CPU_SIZED, encoder_name, REFERENCE_LINEAR, REFERENCE_LINEAR_DSTA, split_name

RELEASED_JOINT = {"ntu60_xsub": 77.30}
HICLR_FUSION_WEIGHTS = "joint=0.5,bone=0.5,motion=0.5;joint=0.6,bone=0.6,motion=0.4"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  base, dsta, dataset, benchmark = split_name(name, "configs/linear_hiclr.py")
  c = linear.base_config(name, "linear", dataset, benchmark)
  c.expected_method = "hiclr"
  c.expected_encoder = encoder_name(name, "configs/linear_hiclr.py")  # the encoder pretrain_hiclr.py:<name> trains
  c.name = f"linear_hiclr_{name}"
  linear.add_training(c, lr=3.0, num_epochs=100, milestones=(30, 80) if dsta else (80,))
  c.batch_size = 128
  c.drop_last = True                 # processor/processor.py's train loader: drop_last=True
  c.eval_batch_size = 128
  c.head_init = "normal_0.02"
  c.augment.train_view = "none"
  c.fusion_weights = HICLR_FUSION_WEIGHTS
  reference = (REFERENCE_LINEAR_DSTA if dsta else REFERENCE_LINEAR).get(base)
  if reference:
    c.reference_top1 = reference
    c.reference_note = ("paper, linear evaluation, " + ("transformer" if dsta else "three-stream ST-GCN")
                        + (f"; the released joint checkpoint: {RELEASED_JOINT[base]}" if base in RELEASED_JOINT
                           and not dsta else ""))
  if dataset == "pku_mmd2":
    c.num_epochs = 200
    c.optimizer.milestones = (160,)
  if base in CPU_SIZED:
    c.num_epochs = 30
    c.optimizer.milestones = (24,)
    c.batch_size = 64
    c.deviations = ("CPU-sized schedule: 30 epochs, lr x0.1 after 24, batch 64 (reference: 100, after 80, 128)",)
  c.lock()
  return c
