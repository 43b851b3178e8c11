"""AimCLR pretraining: ``python launch.py --config configs/pretrain_aimclr.py:<name>``.

Names and what they are for (linear evaluation to compare with, top-1 %: the paper's joint
stream / three streams; the release's joint checkpoints 74.34 (NTU-60 xsub) and 79.68 (xview)):

  synthetic          (default) the embedded synthetic set, CPU-sized (deviations named in
                     config.deviations); minutes
  msr_action3d       MSR Action3D cross-subject, CPU-sized (the real-data learning check)
  ntu60_xsub         the release's config: GPU. Compare with 74.3 (joint) / 78.9 (three streams)
  ntu60_xview        the release's config ... 79.7 / 83.8
  ntu120_xsub        no released config: the NTU-60 values ... 63.4 / 68.2
  ntu120_xset        no released config: the NTU-60 values ... 63.4 / 68.8
  pku_mmd2_xsub      no released config: the NTU-60 values ... 38.5 (three streams)
  <name>_dsta        the same with the DSTA-Net transformer and HiCLR's transformer settings
                     (weight decay 5e-4, attention dropout 0.5; AimCLR has no transformer
                     configuration), e.g. ntu60_xsub_dsta

The release's settings (its NTU-60 and PKU-MMD I pretext configs, all identical but for paths
and the stream; ``config.notes`` says which names have no released config): 50-frame clips
(``config.data.variant = "frame50"``: build them with ``python -m data_prep build <dataset>
--variant frame50``), ST-GCN with 16 base channels and dropout 0.5, MLP head to 128, the
processor's ``weights_init`` (``model.init = normal_0.02``) on the query and the key encoder
independently, batch 128, queue 32768, key momentum 0.999, temperature 0.07, SGD lr 0.1
momentum 0.9 without Nesterov weight decay 1e-4, 300 epochs with lr x0.1 after epoch 250,
temporal crop padding T // 6, shear 0.5, the extreme view's augmentations ``'12345'`` (flip,
rotation, noise, blur, axis mask), EADM with threshold 0.7 on the query encoder's last
feature map, D3M weight 1/2, nearest-neighbour mining from epoch 150 (top-1).
``--config.stream=joint|motion|bone`` picks the stream (one per run, as the reference);
``--config.model.name=gru`` pairs AimCLR with CMD's GRU.

The two release states (docs/references.md#aimclr-release-states): the configs compute the
latest code (EADM on, no time reversal). The first public release, from which the README's
checkpoints date, is ``--config.aimclr.eadm=identity --config.aimclr.extreme_time_flip=True``
(its EADM returned its input, its extreme view reversed time with p 0.5).

Any field can be overridden; a mistyped field or an impossible setup is a one-line error
before anything is compiled. Deviations from the reference are listed in
``config.deviations`` (the NTU/PKU configs: none beyond the project-wide ones,
docs/runs.md#deviations-every-method-shares); the kNN monitor (``config.evaluator``) is this
project's addition: the reference evaluates nothing during pretraining. CPU-size
measurements: docs/aimclr.md#aimclr-at-cpu-size.
"""

from __future__ import annotations

import ml_collections

from configs.pretrain_hiclr import CPU_SIZED, split_name
from configs.pretrain_skeletonclr import base_config

# The paper's linear evaluation: the joint stream, and three streams (PKU-MMD II: three streams only).
REFERENCE_LINEAR = {"ntu60_xsub": 74.3, "ntu60_xview": 79.7, "ntu120_xsub": 63.4, "ntu120_xset": 63.4}
REFERENCE_LINEAR_3S = {"ntu60_xsub": 78.9, "ntu60_xview": 83.8, "ntu120_xsub": 68.2, "ntu120_xset": 68.8,
                       "pku_mmd2_xsub": 38.5}
RELEASED = ("ntu60_xsub", "ntu60_xview")  # (and PKU-MMD I) the release's pretext configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  base, dsta, _, _ = split_name(name, "configs/pretrain_aimclr.py")
  c = base_config(name, "aimclr", "configs/pretrain_aimclr.py")

  c.aimclr = ml_collections.ConfigDict()
  c.aimclr.mining_epoch = 150         # nearest-neighbour mining for (0-based) epochs >= this
  c.aimclr.topk = 1                   # queue entries mined per feature
  c.aimclr.aug_method = "12345"       # the extreme view: 1 flip, 2 rotate, 3 noise, 4 blur, 5 axis mask
  c.aimclr.extreme_time_flip = False  # True: + time reversal (p 0.5), the first public release
  c.aimclr.eadm = "threshold"         # "threshold" (the latest code) or "identity" (the first release's no-op)
  c.aimclr.eadm_threshold = 0.7       # attention level at which joints / elements are dropped
  c.aimclr.ddm_weight = 0.5           # L = L_info + weight * (L_e + L_ed)
  c.aimclr.noise_rng = "threefry"     # the views' Gaussian noise: "threefry" or "fast" (a hash; speed option)

  if base in CPU_SIZED:
    c.aimclr.mining_epoch = c.num_epochs // 2
    c.deviations = tuple(c.deviations[:-1]) + (
        "CPU-sized batch, a queue below the training-set size, a short schedule, mining from half-way",)
  else:
    c.reference_linear = 0.0 if dsta else REFERENCE_LINEAR.get(base, 0.0)
    if dsta:
      c.notes = "no released transformer config: the release's NTU-60 pretext values with HiCLR's transformer settings"
    elif base in RELEASED:
      c.notes = "the release's pretext config"
    else:
      c.notes = "no released config: the release's NTU-60 pretext values (num_class only matters downstream)"
    if base in REFERENCE_LINEAR_3S and not dsta:
      c.notes += f"; the paper's three-stream linear evaluation: {REFERENCE_LINEAR_3S[base]}"
  c.lock()
  return c
