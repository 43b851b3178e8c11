"""SkeletonCLR pretraining: ``python launch.py --config configs/pretrain_skeletonclr.py:<name>``.

Names and what they are for (linear evaluation of the joint stream to compare with, top-1 %:
CrosSCLR's README for NTU-60, a secondary source for NTU-120):

  synthetic          (default) the embedded synthetic set, CPU-sized (deviations named in
                     config.deviations: CMD's GRU, PyTorch's init, key momentum 0.99); minutes
  msr_action3d       MSR Action3D cross-subject, CPU-sized (the real-data learning check)
  ntu60_xsub         the release's hyperparameters: GPU. Compare with 68.3 (joint)
  ntu60_xview        ... 76.4
  ntu120_xsub        ... 56.8
  ntu120_xset        ... 55.9
  pku_mmd2_xsub      ... (no published number)
  <name>_dsta        the same with the DSTA-Net transformer and HiCLR's transformer settings
                     (weight decay 5e-4, attention dropout 0.5; SkeletonCLR has no transformer
                     configuration), e.g. ntu60_xsub_dsta

SkeletonCLR has NO released configuration (CrosSCLR's release ships only its three-stream
NTU-60 xview config; docs/references.md#skeletonclr-pretraining-settings). Every NTU/PKU name
here uses that config's hyperparameters with the SkeletonCLR model, as the CrosSCLR
description prescribes, the same for every dataset and benchmark (``config.notes`` says so):
50-frame clips (``config.data.variant = "frame50"``: build them with ``python -m data_prep
build <dataset> --variant frame50``), ST-GCN with 16 base channels and dropout 0.5, MLP head
to 128, the reference's ``weights_init`` (``model.init = normal_0.02``) on the query and the
key encoder independently, batch 128, queue 32768, key momentum 0.999, temperature 0.07, SGD
lr 0.1 momentum 0.9 without Nesterov (the processor's default is Nesterov: the config must
turn it off) weight decay 1e-4, 300 epochs with lr x0.1 after epoch 250, temporal crop
padding T // 6, shear 0.5, no other augmentation. ``--config.stream=joint|motion|bone`` picks
the stream (one per run, as the reference); ``--config.model.name=gru`` pairs SkeletonCLR
with CMD's GRU.

Any field can be overridden (``--config.optimizer.lr=0.05``); a mistyped field or an
impossible setup is a one-line error before anything is compiled. Deviations from the
reference are listed in ``config.deviations`` (the NTU/PKU configs: none beyond the
project-wide ones, docs/runs.md#deviations-every-method-shares); the kNN monitor
(``config.evaluator``) is this project's addition: the reference evaluates nothing during
pretraining. CPU-size measurements: docs/skeletonclr.md#skeletonclr-at-cpu-size.
"""

from __future__ import annotations

import ml_collections

from cmd_jax import models
from configs.pretrain_cmd import data_config
from configs.pretrain_hiclr import CPU_SIZED, encoder_name, split_name

# Linear evaluation of the joint stream (CrosSCLR's README for NTU-60; NTU-120 secondary).
REFERENCE_LINEAR = {"ntu60_xsub": 68.3, "ntu60_xview": 76.4, "ntu120_xsub": 56.8, "ntu120_xset": 55.9}

UNRELEASED_NOTE = ("SkeletonCLR has no released configuration: the hyperparameters of CrosSCLR's released "
                   "config (NTU-60 xview) with the SkeletonCLR model, 300 epochs, no cross-view phase, "
                   "Nesterov off, the same for every dataset and benchmark")


def base_config(name: str, method: str, config_file: str) -> ml_collections.ConfigDict:
  """The fields every one-stream MoCo pretraining of the family has, with the release's
  values (the module docstring), for ``name`` (``<dataset>[_dsta]``); unlocked."""
  base, dsta, dataset, benchmark = split_name(name, config_file)
  c = ml_collections.ConfigDict()
  c.name = f"pretrain_{method}_{name}"
  c.trainer = "pretrain"
  c.method = method
  c.seed = 42

  c.data = data_config(dataset, benchmark)
  c.data.variant = "frame50"          # the family's 50-frame clips

  c.stream = "joint"                  # joint | motion | bone: one stream per run

  c.model = models.default_config()
  c.model.name = encoder_name(name, config_file)  # ST-GCN; DSTA-Net for <name>_dsta; CPU-sized: CMD's GRU
  c.model.embed_dim = 128             # feature_dim
  c.model.mlp = True
  c.model.init = "normal_0.02"        # the processor's weights_init on the whole model

  c.moco = ml_collections.ConfigDict()
  c.moco.queue_size = 32768
  c.moco.temperature = 0.07
  c.moco.momentum = 0.999

  c.augment = ml_collections.ConfigDict()
  c.augment.temporal_padding_ratio = 6  # crop padding T // 6 on both ends
  c.augment.shear_amplitude = 0.5

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False        # the configs' choice (the processors' default is True)
  c.optimizer.weight_decay = 5e-4 if dsta else 1e-4
  c.optimizer.schedule = "step"
  c.optimizer.milestones = (250,)     # lr x0.1 for (1-based) epochs > 250
  c.optimizer.gamma = 0.1

  c.batch_size = 128
  c.num_epochs = 300
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.keep_checkpoints = 3

  c.evaluator = ml_collections.ConfigDict()
  c.evaluator.name = "knn"            # "" disables the online monitor (the reference has none)
  c.evaluator.every_epochs = 50
  c.evaluator.batch_size = 256

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1

  c.reference_linear = 0.0
  c.notes = ""
  c.deviations = ()
  if dsta:
    c.deviations = ("DSTA-Net with HiCLR's transformer settings (weight decay 5e-4, attention dropout 0.5): "
                    "the reference has no transformer configuration",)
  if base in CPU_SIZED:
    cpu_sized(c, base)
  return c


def cpu_sized(c: ml_collections.ConfigDict, base: str) -> None:
  """The CPU-sized settings of ``synthetic`` and ``msr_action3d`` (measured: see the method's
  docs page, section "at CPU size"): with the release's initialisation and key momentum a run
  of this size does not learn."""
  if c.model.name == "gru":           # ST-GCN's XLA:CPU step is too slow for minutes
    c.model.hidden_size = 64
    c.model.num_layers = 2
  c.model.init = "default"            # the reference's N(0, 0.02) re-initialisation does not learn at this scale
  c.moco.momentum = 0.99              # 0.999: the independently initialised key encoder stays random
  c.log_every_steps = 10
  c.checkpoint_every_steps = 200
  c.evaluator.every_epochs = 10
  c.evaluator.batch_size = 128
  c.batch_size = 64 if base == "synthetic" else 32
  c.moco.queue_size = 512 if base == "synthetic" else 128
  c.num_epochs = 40 if base == "synthetic" else 100
  c.optimizer.milestones = (30,) if base == "synthetic" else (80,)
  c.deviations = (() if c.model.name != "gru" else (
      "CPU-sized encoder: CMD's GRU (hidden 64, 2 layers) instead of ST-GCN, whose step is too slow on a CPU",)) + (
      "PyTorch's default initialisation instead of the reference's N(0, 0.02) weights_init (which does not learn "
      "at this scale)",
      "key-encoder momentum 0.99 (reference 0.999) for the short schedule",
      "CPU-sized batch, a queue below the training-set size, a short schedule",
  )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  c = base_config(name, "skeletonclr", "configs/pretrain_skeletonclr.py")
  base, dsta, _, _ = split_name(name, "configs/pretrain_skeletonclr.py")
  if base not in CPU_SIZED:
    c.notes = UNRELEASED_NOTE
    c.reference_linear = 0.0 if dsta else REFERENCE_LINEAR.get(base, 0.0)
  c.lock()
  return c
