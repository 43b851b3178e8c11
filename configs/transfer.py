"""Transfer: fine-tuning on another dataset from a pretraining workdir (docs/references.md#cmd-transfer).

  python launch.py --config configs/transfer.py:<name> --config.init_from=<pretraining workdir> --workdir <dir>

The reference runs its semi-supervised script with all target labels (ratio 1.0, the
training split shuffled): the encoder pretrained on the source dataset and a new linear
head for the target's class count are fine-tuned end to end (BatchNorm in train mode) on
the target's training split, SGD lr 0.01, momentum 0.9, no weight decay, batch 64, 80
epochs, lr x0.1 at epochs 50 and 70, and tested on the target's test split. ``config.data``
is the target; ``init_from`` the source pretraining. Source and target must share the
skeleton layout (NTU-25 for NTU and PKU-MMD; MSR Action3D's 20 joints cannot transfer to
or from them): a clear error otherwise.

Names, hardware, and the numbers to compare with (paper, joint stream, top-1 %; from
memory, UNVERIFIED, docs/references.md#cmd-numbers):

  ntu60_to_pku             GPU; init_from an NTU-60 xsub pretraining -> PKU-MMD II xsub: ~56.0 (unverified)
  ntu120_to_pku            GPU; init_from an NTU-120 xsub pretraining -> PKU-MMD II xsub: ~57.0 (unverified)
  synthetic_xsub_to_xview  CPU minutes; init_from configs/pretrain_cmd.py:synthetic (pretrained on the
                           xsub training split) -> the synthetic xview benchmark. A smoke test of the
                           machinery on data every install has, NOT a real transfer: both benchmarks
                           come from the same generator (and share many clips).
"""

from __future__ import annotations

import ml_collections

from configs import linear, semi

TRANSFERS = {
    "ntu60_to_pku": ("pku_mmd2", "xsub", 56.0, "NTU-60 xsub"),
    "ntu120_to_pku": ("pku_mmd2", "xsub", 57.0, "NTU-120 xsub"),
    "synthetic_xsub_to_xview": ("synthetic", "xview", 0.0, "synthetic xsub"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic_xsub_to_xview"
  linear.check_name(name, TRANSFERS, "configs/transfer.py")
  dataset, benchmark, reference, source = TRANSFERS[name]
  c = linear.base_config(name, "transfer", dataset, benchmark)
  semi.add_finetuning(c, label_ratio=1.0, seeds=(0,))
  c.source_pretraining = source      # what init_from should hold (documentation only)
  if reference:
    c.reference_top1 = reference
    c.reference_note = (f"paper, transfer from {source} to PKU-MMD II: from memory, unverified "
                        "(docs/references.md#cmd-numbers)")
  if name == "synthetic_xsub_to_xview":
    c.num_epochs = 30
    c.optimizer.milestones = (20, 26)
    c.eval_batch_size = 128
    c.deviations = ("a smoke test, not a transfer: source and target are the same synthetic generator",
                    "CPU-sized: 30 epochs, lr x0.1 at (20, 26) (reference: 80, [50, 70])")
  c.lock()
  return c
