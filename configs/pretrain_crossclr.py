"""CrosSCLR pretraining: ``python launch.py --config configs/pretrain_crossclr.py:<name>``.

Three streams (joint, motion, bone) in ONE run, as the release's 3s-CrosSCLR. Names and what
they are for (the paper's three-stream linear evaluation to compare with, top-1 %, from the
release's README; its probe trains the three streams' classifiers jointly on their averaged
logits):

  synthetic          (default) the embedded synthetic set, CPU-sized (deviations named in
                     config.deviations); minutes
  msr_action3d       MSR Action3D cross-subject, CPU-sized (the real-data learning check)
  ntu60_xview        the release's config (config/CrosSCLR/crossclr_3views_xview.yaml): GPU.
                     Compare with 83.4
  ntu60_xsub         not released: the same hyperparameters (the paper: 77.8)
  ntu120_xsub        not released: the same hyperparameters (67.9)
  ntu120_xset        not released: the same hyperparameters (66.7)
  pku_mmd2_xsub      not released: the same hyperparameters (no published PKU-MMD II number)
  <name>_dsta        the same with the DSTA-Net transformer (weight decay 5e-4, attention
                     dropout 0.5, as HiCLR's transformer configuration; no published number)

The release's settings: 50-frame clips (``config.data.variant = "frame50"``: build them with
``python -m data_prep build <dataset> --variant frame50``), ST-GCN with 16 base channels and
dropout 0.5 for every query and key encoder, the MLP head to 128 shared by the streams,
``weights_init`` (``model.init = normal_0.02``), batch 128, queue 32768, key momentum 0.999,
temperature 0.07, SGD lr 0.1 momentum 0.9 (no Nesterov) weight decay 1e-4, 300 epochs with lr
x0.1 after epoch 250, cross-view mining from epoch 150 (top-1, with context), temporal crop
padding T // 6, shear 0.5. ``--config.modalities=joint,motion`` is 2s-CrosSCLR (README: 82.1
on NTU-60 xview); ``--config.model.name=gru`` pairs CrosSCLR with CMD's GRU;
``--config.crossclr.update_all_keys=True`` momentum-updates every stream's key encoder in the
cross-view epochs too (the release updates motion's only: a deviation from the release, the
rule its authors presumably meant).

Any field can be overridden (``--config.optimizer.lr=0.05``); a mistyped field or an
impossible setup is a one-line error before anything is compiled. Deviations from the
release are listed in ``config.deviations`` (the NTU/PKU configs: none beyond the
project-wide ones, see docs/runs.md#deviations-every-method-shares); the kNN monitor
(``config.evaluator``, joint stream) is this project's addition: the release evaluates nothing
during pretraining.
"""

from __future__ import annotations

import ml_collections

from cmd_jax import models
from configs.pretrain_cmd import data_config
from configs.pretrain_hiclr import CPU_SIZED, split_name

CONFIG_FILE = "configs/pretrain_crossclr.py"
# 3s-CrosSCLR linear evaluation (the release's README); the xview config is the released one.
REFERENCE_LINEAR = {"ntu60_xsub": 77.8, "ntu60_xview": 83.4, "ntu120_xsub": 67.9, "ntu120_xset": 66.7}


def encoder_name(name: str) -> str:
  """The encoder ``get_config(name)`` pretrains, the one rule for it: DSTA-Net for
  ``<name>_dsta``, CMD's GRU for the CPU-sized names (ST-GCN is too slow there), ST-GCN
  otherwise."""
  base, dsta, _, _ = split_name(name, CONFIG_FILE)
  return "dsta" if dsta else ("gru" if base in CPU_SIZED else "stgcn")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  base, dsta, dataset, benchmark = split_name(name, CONFIG_FILE)
  c = ml_collections.ConfigDict()
  c.name = f"pretrain_crossclr_{name}"
  c.trainer = "pretrain"
  c.method = "crossclr"
  c.seed = 42

  c.data = data_config(dataset, benchmark)
  c.data.variant = "frame50"          # the 50-frame clips

  c.modalities = "joint,motion,bone"  # 3s-CrosSCLR; "joint,motion": 2s-CrosSCLR

  c.model = models.default_config()
  c.model.name = encoder_name(name)
  c.model.embed_dim = 128             # feature_dim
  c.model.mlp = True                  # the MLP head, shared by the streams
  c.model.init = "normal_0.02"        # the processor's weights_init on the whole model

  c.moco = ml_collections.ConfigDict()
  c.moco.queue_size = 32768
  c.moco.temperature = 0.07
  c.moco.momentum = 0.999

  c.crossclr = ml_collections.ConfigDict()
  c.crossclr.cross_epoch = 150        # cross-view mining for (0-based) epochs >= this
  c.crossclr.topk = 1                 # the partner stream's most similar queue entries taken as positives
  c.crossclr.context = True           # the context logits S_u * S_v beside S_u
  c.crossclr.update_all_keys = False  # True: every key encoder momentum-updated in cross-view epochs too

  c.augment = ml_collections.ConfigDict()
  c.augment.temporal_padding_ratio = 6  # crop padding T // 6 on both ends
  c.augment.shear_amplitude = 0.5

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False        # the config's choice (the processor's default is True)
  c.optimizer.weight_decay = 5e-4 if dsta else 1e-4
  c.optimizer.schedule = "step"
  c.optimizer.milestones = (250,)     # lr x0.1 for (1-based) epochs > 250
  c.optimizer.gamma = 0.1

  c.batch_size = 128
  c.num_epochs = 300
  if c.model.name == "gru":           # ST-GCN's XLA:CPU step is ~2 s at batch 16 (h4): too slow for minutes
    c.model.hidden_size = 64
    c.model.num_layers = 2
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.keep_checkpoints = 3

  c.evaluator = ml_collections.ConfigDict()
  c.evaluator.name = "knn"            # "" disables the online monitor (the release has none)
  c.evaluator.every_epochs = 50
  c.evaluator.batch_size = 256

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1

  c.reference_linear = 0.0 if dsta else REFERENCE_LINEAR.get(base, 0.0)
  c.deviations = ()

  if base in CPU_SIZED:
    _cpu_sized(c, base)
  c.lock()
  return c


def _cpu_sized(c: ml_collections.ConfigDict, base: str) -> None:
  """The CPU-sized settings (docs/crossclr.md#crossclr-at-cpu-size: with the release's
  initialisation and key momentum a run of this size does not learn; the same two changes as
  SkeletonCLR's and AimCLR's CPU-sized configs, and on the synthetic set twice their epochs)."""
  if c.model.name == "gru":           # ST-GCN's XLA:CPU step is ~2 s at batch 16 (h4): too slow for minutes
    c.model.hidden_size = 64
    c.model.num_layers = 2
  c.log_every_steps = 10
  c.checkpoint_every_steps = 200
  c.evaluator.every_epochs = 10
  c.evaluator.batch_size = 128
  c.batch_size = 64 if base == "synthetic" else 32
  c.moco.queue_size = 512 if base == "synthetic" else 128
  # The single-view phase needs ~300-450 steps before the joint encoder's kNN rises above its
  # random initialisation (docs): on the synthetic set (11 steps per epoch) 80 epochs (SkeletonCLR's
  # 40 in all: the joint kNN ends below random initialisation). There the cross-view phase at the
  # full lr took the joint linear probe below random initialisation (its partner streams are
  # weak at this size), so it mines for the last 20 epochs, after the lr step (docs).
  c.num_epochs = 80 if base == "synthetic" else 100
  c.optimizer.milestones = (60,) if base == "synthetic" else (80,)
  c.crossclr.cross_epoch = 60 if base == "synthetic" else 50
  c.model.init = "default"            # as SkeletonCLR's CPU-sized config
  c.moco.momentum = 0.99              # 0.999: the independently initialised key encoders stay random
  c.deviations = (
      "PyTorch's default initialisation instead of the release's N(0, 0.02) weights_init, as SkeletonCLR's and "
      "AimCLR's CPU-sized configs (with the release's values the loss sits at ln(K + 1): "
      "docs/crossclr.md#crossclr-at-cpu-size)",
      "key-encoder momentum 0.99 (release 0.999) for the short schedule",
      "CPU-sized batch, a queue below the training-set size, a short schedule (synthetic: 80 epochs, twice "
      "SkeletonCLR's, cross-view mining for the last 20, after the lr step; MSR: 100, mining from half-way)",
  )
