"""AimCLR's fine-tuning of a pretraining workdir (processor/finetune_evaluation.py; no config released).

  python launch.py --config configs/finetune_aimclr.py:<name> --config.init_from=<pretraining workdir> --workdir <dir>

What the processor fixes: ``weights_init`` on Conv, Linear and BatchNorm before loading, so
the new classifier is ``N(0, 0.02)``, bias 0 (``head_init = "normal_0.02"``); every parameter
trained; SGD, momentum 0.9, no warmup, lr x0.1 for epochs after each step; and
``self.model.eval()`` during training (``finetune_mode = "eval"``): BatchNorm normalises with
the pretrained running statistics and never updates them, dropout is off. The train loader
drops the last partial batch (``drop_last``); evaluated every 5 epochs and after the last.

Not released, so ASSUMED here (``config.notes`` says so): lr 0.1 (the authors' answer in the
release's issue #7; another answer says 0.01 or 0.001 with weight decay 1e-4), Nesterov on and
weight decay 1e-4 (the processor's parser defaults), batch 128, 100 epochs with lr x0.1 after
80 (the linear evaluation's schedule), no augmentation (the linear configs' Feeder_single
settings). HiCLR's fine-tuning (train mode, warmup, 70 epochs: ``configs/finetune_hiclr.py``)
differs and is not assumed.

Numbers to compare with (three streams, top-1 %, secondary sources): ntu60_xsub 86.9,
ntu60_xview 92.8, ntu120_xsub 80.1, ntu120_xset 80.9; ``synthetic`` and ``msr_action3d``
CPU-sized (20 epochs, lr x0.1 after 14, batch 32).
"""

from __future__ import annotations

import ml_collections

from configs import linear, semi
from configs.pretrain_hiclr import CPU_SIZED, encoder_name, split_name

REFERENCE_FINETUNE_3S = {"ntu60_xsub": 86.9, "ntu60_xview": 92.8, "ntu120_xsub": 80.1, "ntu120_xset": 80.9}
ASSUMED_NOTE = ("no released fine-tuning config: lr 0.1 (the authors, issue #7), Nesterov and weight decay 1e-4 "
                "(parser defaults), batch 128, 100 epochs with the step after 80, no augmentation are assumptions")


def add_aimclr_finetuning(c: ml_collections.ConfigDict, *, label_ratio: float, seeds) -> None:
  """The finetune processor's fixed parts and the assumed optimizer values (module docstring)."""
  semi.add_finetuning(c, label_ratio=label_ratio, seeds=seeds)
  c.finetune_mode = "eval"           # finetune_evaluation.py: self.model.eval() while training
  c.head_init = "normal_0.02"        # weights_init applied to the new fc too
  c.drop_last = True                 # processor/processor.py's train loader: drop_last=True
  c.optimizer.lr = 0.1
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 1e-4
  c.optimizer.milestones = (80,)
  c.num_epochs = 100
  c.batch_size = 128
  c.eval_batch_size = 128
  c.augment.train_view = "none"
  c.notes = ASSUMED_NOTE


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  base, dsta, dataset, benchmark = split_name(name, "configs/finetune_aimclr.py")
  c = linear.base_config(name, "finetune", dataset, benchmark)
  c.expected_method = "aimclr"
  c.expected_encoder = encoder_name(name, "configs/finetune_aimclr.py")  # the encoder pretrain_aimclr.py:<name> trains
  c.name = f"finetune_aimclr_{name}"
  add_aimclr_finetuning(c, label_ratio=1.0, seeds=(0,))
  if base in REFERENCE_FINETUNE_3S and not dsta:
    c.reference_top1 = REFERENCE_FINETUNE_3S[base]
    c.reference_note = "fine-tuning, three streams (secondary sources)"
  if base in CPU_SIZED:
    c.num_epochs = 20
    c.optimizer.milestones = (14,)
    c.batch_size = 32
    c.deviations = ("CPU-sized schedule: 20 epochs, lr x0.1 after 14, batch 32",)
  c.lock()
  return c
