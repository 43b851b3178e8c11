"""HiCLR's fine-tuning of a pretraining workdir (the release's finetune configs).

  python launch.py --config configs/finetune_hiclr.py:<name> --config.init_from=<pretraining workdir> --workdir <dir>

The pretrained query encoder and a new classifier (PyTorch's default Linear initialisation:
the reference's ``weights_init`` skips Linear layers when fine-tuning) trained end to end on
every training label, BatchNorm and the encoder's dropout in train mode. ST-GCN: SGD lr 0.1,
Nesterov momentum 0.9, weight decay 1e-4, batch 64, 70 epochs, linear warmup over 5 epochs,
lr x0.1 at epochs 30 and 55, no augmentation, dropout 0.5. DSTA-Net (``<name>_dsta``): weight
decay 5e-4, batch 128, 80 epochs, steps at 35 and 55, the basic view (temporal crop with
mirrored padding, shear 0.5) for training, no attention dropout, the input projection
``proj`` frozen (the reference's ``fix_conv1``). Each epoch is ``N // B`` full batches (the
reference's train loader drops the last partial batch: ``drop_last``). Evaluated every 5
epochs: the last epoch's accuracy and the reference's best of the evaluations.

The reference counts epochs from 1 and its fine-tuning steps with ``epoch >= step``, so its
steps 30/55 are the 0-based milestones 29/54 here (``cmd_jax.optim``).

Numbers to compare with (top-1 %, the authors' supervised-evaluation table, stream count
unstated): ntu60_xsub 88.3, ntu60_xview 93.2, ntu120_xsub 82.1, ntu120_xset 83.7; the
transformer 90.4 / 95.7 / 85.6 / 87.5.
"""

from __future__ import annotations

import ml_collections

from configs import linear, semi
from configs.pretrain_hiclr import CPU_SIZED, encoder_name, split_name

REFERENCE_FINETUNE = {"ntu60_xsub": 88.3, "ntu60_xview": 93.2, "ntu120_xsub": 82.1, "ntu120_xset": 83.7}
REFERENCE_FINETUNE_DSTA = {"ntu60_xsub": 90.4, "ntu60_xview": 95.7, "ntu120_xsub": 85.6, "ntu120_xset": 87.5}


def add_hiclr_finetuning(c: ml_collections.ConfigDict, *, dsta: bool, label_ratio: float, seeds) -> None:
  """The finetune processor's optimizer and the release's per-encoder settings."""
  semi.add_finetuning(c, label_ratio=label_ratio, seeds=seeds)
  c.optimizer.lr = 0.1
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 5e-4 if dsta else 1e-4
  c.optimizer.warmup_epochs = 5
  c.head_init = "default"
  c.drop_last = True                 # processor/processor.py's train loader: drop_last=True
  c.augment.train_view = "crop_shear" if dsta else "none"
  if dsta:
    c.encoder_dropout = 0.0
    c.freeze = "proj"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  base, dsta, dataset, benchmark = split_name(name, "configs/finetune_hiclr.py")
  c = linear.base_config(name, "finetune", dataset, benchmark)
  c.expected_method = "hiclr"
  c.expected_encoder = encoder_name(name, "configs/finetune_hiclr.py")  # the encoder pretrain_hiclr.py:<name> trains
  c.name = f"finetune_hiclr_{name}"
  add_hiclr_finetuning(c, dsta=dsta, label_ratio=1.0, seeds=(0,))
  c.batch_size = 128 if dsta else 64
  c.num_epochs = 80 if dsta else 70
  c.optimizer.milestones = (34, 54) if dsta else (29, 54)
  reference = (REFERENCE_FINETUNE_DSTA if dsta else REFERENCE_FINETUNE).get(base)
  if reference:
    c.reference_top1 = reference
    c.reference_note = "paper, fine-tuning (" + ("transformer" if dsta else "ST-GCN") + "; stream count unstated)"
  if base in CPU_SIZED:
    c.num_epochs = 20
    c.optimizer.milestones = (14,)
    c.optimizer.warmup_epochs = 2
    c.batch_size = 64 if dsta else 32
    c.eval_batch_size = 128
    c.deviations = ("CPU-sized schedule: 20 epochs, warmup 2, lr x0.1 at 14",)
  c.lock()
  return c
