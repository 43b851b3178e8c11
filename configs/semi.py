"""Semi-supervised fine-tuning (docs/references.md#cmd-semi-supervised) of a pretraining workdir.

  python launch.py --config configs/semi.py:<name> --config.init_from=<pretraining workdir> --workdir <dir> \
      [--config.label_ratio=0.1] [--config.sampling=stratified] [--config.seeds=0,1,2,3,4]

The pretrained encoder and a new linear head are fine-tuned end to end (BatchNorm in train
mode) on a labelled subset of the training split, SGD lr 0.01, momentum 0.9, no weight
decay, batch 64, 80 epochs, lr x0.1 at epochs 50 and 70, and tested on the whole test split.
The subset is drawn with each seed of ``seeds`` (the same seed, the same subset):
``sampling="global"`` is the reference's (``int(N * label_ratio)`` samples, uniformly, not
class-balanced), ``"stratified"`` takes ``label_ratio`` of every class (at least one each).
One run per seed; mean and standard deviation are reported, final-epoch and the reference's
best-of-evaluations-every-5-epochs.

Names, hardware, and the numbers to compare with (paper, joint stream, top-1 %; from
memory, UNVERIFIED, docs/references.md#cmd-numbers; the reference scripts run NTU-60 only, with
ratios 0.01, 0.05, 0.1, 0.2 and 5 repeats):

  synthetic      CPU, about a minute: 10% labels, 3 seeds
  msr_action3d   CPU, about a minute: 20% labels, 3 seeds
  ntu60_xsub     GPU; 1%: ~50.6, 10%: ~75.4 (unverified)
  ntu60_xview    GPU; 1%: ~53.0, 10%: ~80.2 (unverified)
  ntu120_xsub    GPU; no reference number
  ntu120_xset    GPU; no reference number
  pku_mmd2_xsub  GPU; no reference number
"""

from __future__ import annotations

import ml_collections

from configs import linear

REFERENCE_SEMI = {"ntu60_xsub": {0.01: 50.6, 0.1: 75.4}, "ntu60_xview": {0.01: 53.0, 0.1: 80.2}}


def add_finetuning(c: ml_collections.ConfigDict, *, label_ratio: float, seeds) -> None:
  linear.add_training(c, lr=0.01)
  c.label_ratio = label_ratio        # fraction of the training labels used, in (0, 1]
  c.sampling = "global"              # "global" (CMD's), "stratified" (per class) or "class_balanced" (HiCLR's)
  c.epoch_length = "subset"          # "subset", or "full": an epoch is as long as the whole training split (HiCLR's)
  c.seeds = tuple(seeds)             # one fine-tuning run (and subset) per seed
  c.finetune_mode = "train"          # "train" (BN batch statistics, dropout on) or "eval" (AimCLR's model.eval())


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  linear.check_name(name, linear.DATASETS, "configs/semi.py")
  c = linear.base_config(name, "semi", *linear.DATASETS[name])
  add_finetuning(c, label_ratio=0.01, seeds=(0, 1, 2, 3, 4))
  if name in REFERENCE_SEMI:
    c.reference_top1 = REFERENCE_SEMI[name][0.01]
    c.reference_note = ("paper, semi-supervised 1% labels, joint stream: from memory, unverified; 10%: ~"
                        f"{REFERENCE_SEMI[name][0.1]} (docs/references.md#cmd-numbers)")
  if name in linear.CPU_SIZED:  # the reference's schedule (a small labelled subset is few steps per epoch)
    c.label_ratio = 0.1 if name == "synthetic" else 0.2
    c.seeds = (0, 1, 2)
    c.eval_batch_size = 128
    c.deviations = (f"CPU-sized: {c.label_ratio:.0%} labels, 3 seeds (the reference scripts: NTU-60 only, "
                    "1/5/10/20% labels, 5 repeats)",)
  c.lock()
  return c
