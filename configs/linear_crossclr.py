"""CrosSCLR's linear evaluation of a pretraining workdir (the release's
config/linear_eval/linear_eval_crossclr_3views_xview.yaml).

  python launch.py --config configs/linear_crossclr.py:<name> --config.init_from=<pretraining workdir> --workdir <dir>

The torchlight family's linear evaluation (``configs/linear_hiclr.py`` describes it): the
frozen query encoders in eval mode, a new ``Linear(256, classes)`` per stream with
``weights_init`` (``N(0, 0.02)``), SGD lr 3.0, momentum 0.9, no weight decay, batch 128, 100
epochs, lr x0.1 after epoch 80, no augmentation, ``N // 128`` full batches an epoch
(``drop_last``), evaluated every 5 epochs and after the last, on the checkpoint of the
pretraining's last epoch (the release loads ``epoch300_model.pt``: the latest,
``init_step = -1``).

The three streams come from ONE pretraining (CrosSCLR trains them together), so
``init_from`` is one workdir and ``streams = "joint,motion,bone"`` by default. The release's
3s number is its view ``'all'``: the three heads trained jointly with one cross-entropy on the
MEAN of their logits (``joint_probe = True``; ``results["mean_logit_probe"]``); the per-stream
heads (views ``joint``/``motion``/``bone``) and this project's softmax-mean fusion are
trained beside it from the same initial heads.

Names and the numbers to compare with (3s-CrosSCLR, top-1 %, the release's README / paper):
ntu60_xview 83.4 (the released config), ntu60_xsub 77.8, ntu120_xsub 67.9, ntu120_xset 66.7;
``<name>_dsta`` the transformer (no published number); ``synthetic`` and ``msr_action3d``
CPU-sized (30 epochs, lr x0.1 after 24, batch 64).
"""

from __future__ import annotations

import ml_collections

from configs.linear_hiclr import torchlight_linear
from configs.pretrain_crossclr import REFERENCE_LINEAR
from configs.pretrain_hiclr import split_name


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  base, dsta, _, _ = split_name(name, "configs/linear_crossclr.py")
  c = torchlight_linear(name, "crossclr", "configs/linear_crossclr.py")
  c.streams = "joint,motion,bone"
  c.joint_probe = True               # net/crossclr_3views.py view 'all': one probe on the mean of the logits
  if base in REFERENCE_LINEAR and not dsta:
    c.reference_top1 = REFERENCE_LINEAR[base]
    c.reference_note = ("the release's README / paper, 3s-CrosSCLR linear evaluation (the mean-logit probe, "
                        "results['mean_logit_probe'])")
  c.lock()
  return c
