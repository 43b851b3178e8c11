"""HiCLR's semi-supervised evaluation of a pretraining workdir (the authors' semi-supervised configs).

  python launch.py --config configs/semi_hiclr.py:<name> --config.init_from=<pretraining workdir> --workdir <dir> \
      [--config.label_ratio=0.01] [--config.seeds=0,1,2]

Fine-tuning (``configs/finetune_hiclr.py``'s optimizer and view) on a class-balanced labelled
subset: ``round(label_ratio * class count)`` samples of every class, drawn with each seed
(the reference draws one subset with Python's ``random`` seeded 0; several seeds here give a
mean and standard deviation). As the reference's feeder, an epoch is as long as the whole
training split (the subset is revisited about ``1 / label_ratio`` times per epoch), in ``N // B``
full batches (the reference's train loader drops the last partial batch). ST-GCN:
10% labels, lr 0.1, Nesterov, weight decay 1e-4, warmup 5 epochs, lr x0.1 at epochs 20 and 40
(0-based milestones 19 and 39), 60 epochs, batch 64, evaluated every 3 epochs. DSTA-Net
(``<name>_dsta``): weight decay 5e-4, steps at 15 and 25, 50 epochs, batch 128.

The paper's semi-supervised numbers could not be retrieved: no reference number is named.
"""

from __future__ import annotations

import ml_collections

from configs import finetune_hiclr, linear
from configs.pretrain_hiclr import CPU_SIZED, encoder_name, split_name


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  base, dsta, dataset, benchmark = split_name(name, "configs/semi_hiclr.py")
  c = linear.base_config(name, "semi", dataset, benchmark)
  c.expected_method = "hiclr"
  c.expected_encoder = encoder_name(name, "configs/semi_hiclr.py")  # the encoder pretrain_hiclr.py:<name> trains
  c.name = f"semi_hiclr_{name}"
  finetune_hiclr.add_hiclr_finetuning(c, dsta=dsta, label_ratio=0.1, seeds=(0, 1, 2))
  c.sampling = "class_balanced"
  c.epoch_length = "full"
  c.batch_size = 128 if dsta else 64
  c.num_epochs = 50 if dsta else 60
  c.optimizer.milestones = (14, 24) if dsta else (19, 39)
  c.eval_every_epochs = 3
  c.reference_note = "the paper's semi-supervised numbers could not be retrieved"
  if base in CPU_SIZED:
    c.num_epochs = 6
    c.optimizer.milestones = (4,)
    c.optimizer.warmup_epochs = 1
    c.batch_size = 32
    c.eval_batch_size = 128
    c.deviations = ("CPU-sized schedule: 6 epochs (of the whole split's length), warmup 1, lr x0.1 at 4",)
  c.lock()
  return c
