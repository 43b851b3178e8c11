"""AimCLR's linear evaluation of a pretraining workdir (the release's config/*/linear_eval/*.yaml).

  python launch.py --config configs/linear_aimclr.py:<name> --config.init_from=<pretraining workdir(s)> --workdir <dir>

The torchlight family's linear evaluation, identical to HiCLR's (``configs/linear_hiclr.py``
describes it): the frozen query encoder in eval mode, a new ``Linear(256, classes)`` with
``weights_init`` (``N(0, 0.02)``), SGD lr 3.0, momentum 0.9, no weight decay, batch 128, 100
epochs, lr x0.1 after epoch 80, no augmentation, ``N // 128`` full batches an epoch
(``drop_last``), evaluated every 5 epochs and after the last, on the checkpoint of the
pretraining's last epoch (the release loads ``pretext/epoch300_model.pt``, HiCLR's epoch 290:
here the latest, ``init_step = -1``).

Three streams: AimCLR pretrains one stream per run, so give the three workdirs,
``--config.init_from=W_joint,W_motion,W_bone --config.streams=joint,motion,bone``; the
result adds this project's softmax-mean fusion and AimCLR's ensemble
(ensemble_ntu_cs.py): the sum of the streams' raw logits, each at its best evaluation, with
the FIXED weights (joint, bone, motion) = (0.6, 0.6, 0.4)
(``results["weighted_logit_fusion"]``; one weight set, so no choice among sets, but each
stream's logits are still those of its best test evaluation, as the reference's).

Names and the numbers to compare with (top-1 %, the paper: joint stream / three streams):
ntu60_xsub 74.3 / 78.9, ntu60_xview 79.7 / 83.8, ntu120_xsub 63.4 / 68.2, ntu120_xset
63.4 / 68.8, pku_mmd2_xsub - / 38.5; the released joint checkpoints 74.34 (NTU-60 xsub) and
79.68 (xview); ``<name>_dsta`` the transformer (no published number); ``synthetic`` and
``msr_action3d`` CPU-sized (30 epochs, lr x0.1 after 24, batch 64).
"""

from __future__ import annotations

import ml_collections

from configs.linear_hiclr import torchlight_linear
from configs.pretrain_aimclr import REFERENCE_LINEAR, REFERENCE_LINEAR_3S
from configs.pretrain_hiclr import split_name

AIMCLR_FUSION_WEIGHTS = "joint=0.6,bone=0.6,motion=0.4"  # ensemble_ntu_cs.py: fixed, not chosen


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  base, dsta, _, _ = split_name(name, "configs/linear_aimclr.py")
  c = torchlight_linear(name, "aimclr", "configs/linear_aimclr.py")
  c.fusion_weights = AIMCLR_FUSION_WEIGHTS
  if not dsta and (base in REFERENCE_LINEAR or base in REFERENCE_LINEAR_3S):
    c.reference_top1 = REFERENCE_LINEAR.get(base, 0.0)
    c.reference_note = ("paper, linear evaluation, joint stream"
                        + (f"; three streams (the fixed-weight ensemble): {REFERENCE_LINEAR_3S[base]}"
                           if base in REFERENCE_LINEAR_3S else ""))
  c.lock()
  return c
