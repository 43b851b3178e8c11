"""HiCLR pretraining: ``python launch.py --config configs/pretrain_hiclr.py:<name>``.

Names and what they are for (the paper's linear-evaluation numbers to compare with, top-1 %,
three-stream ST-GCN; the release's joint-stream checkpoint gives 77.30 on NTU-60 xsub):

  synthetic          (default) the embedded synthetic set, CPU-sized (deviations named in
                     config.deviations: CMD's GRU, PyTorch's init, key momentum 0.99); minutes
  msr_action3d       MSR Action3D cross-subject, CPU-sized (the real-data learning check)
  ntu60_xsub         the release's settings: GPU. Compare with 80.4 (three streams)
  ntu60_xview        ... 85.5
  ntu120_xsub        ... 70.0
  ntu120_xset        ... 70.4
  pku_mmd2_xsub      1500 epochs, lr step at 1250, mining from 750 ... 53.8
  <name>_dsta        the same with the DSTA-Net transformer (weight decay 5e-4, attention
                     dropout 0.5), e.g. ntu60_xsub_dsta (paper, transformer: 78.8 / 83.1 / 67.3 / 69.9)

The release's settings (ST-GCN): 50-frame clips (``config.data.variant = "frame50"``:
build them with ``python -m data_prep build <dataset> --variant frame50``), ST-GCN with 16
base channels and dropout 0.5, MLP head to 128, HiCLR's ``weights_init`` (``model.init =
normal_0.02``), batch 128, queue 32768, key momentum 0.999, temperature 0.07, SGD lr 0.1
momentum 0.9 weight decay 1e-4, 300 epochs with lr x0.1 after epoch 250, nearest-neighbour
mining from epoch 150 (top-1), joint mask ratio 0.1, temporal crop padding T // 6, shear 0.5,
normal augmentations '12345'. ``--config.stream=joint|motion|bone`` picks the stream (one
per run, as the reference); ``--config.model.name=gru`` pairs HiCLR with CMD's GRU.

Any field can be overridden (``--config.optimizer.lr=0.05``); a mistyped field or an
impossible setup is a one-line error before anything is compiled. Deviations from the
reference are listed in ``config.deviations`` (the NTU/PKU configs: none beyond the
project-wide ones, see docs/runs.md#deviations-every-method-shares); the kNN monitor
(``config.evaluator``) is this project's addition: the reference evaluates nothing during
pretraining.
"""

from __future__ import annotations

import ml_collections

from cmd_jax import models
from configs.pretrain_cmd import DATASETS, data_config

# The paper's linear evaluation (three-stream ST-GCN; PKU-MMD II from the authors' later paper).
REFERENCE_LINEAR = {"ntu60_xsub": 80.4, "ntu60_xview": 85.5, "ntu120_xsub": 70.0, "ntu120_xset": 70.4,
                    "pku_mmd2_xsub": 53.8}
REFERENCE_LINEAR_DSTA = {"ntu60_xsub": 78.8, "ntu60_xview": 83.1, "ntu120_xsub": 67.3, "ntu120_xset": 69.9}
CPU_SIZED = ("synthetic", "msr_action3d")


def split_name(name: str, config_file: str) -> tuple[str, bool, str, str]:
  """``(base name, DSTA-Net?, dataset, benchmark)`` of a HiCLR config name, e.g. ``ntu60_xsub_dsta``."""
  base, dsta = (name[:-len("_dsta")], True) if name.endswith("_dsta") else (name, False)
  if base not in DATASETS:
    names = ", ".join([*DATASETS, *(f"{n}_dsta" for n in DATASETS)])
    raise ValueError(f"{config_file}: unknown config {name!r}; expected one of {names}")
  return (base, dsta, *DATASETS[base])


def encoder_name(name: str, config_file: str) -> str:
  """The encoder ``get_config(name)`` pretrains, the one rule for it (the downstream configs
  expect it in ``init_from``): DSTA-Net for ``<name>_dsta``, CMD's GRU for the CPU-sized
  names (ST-GCN is too slow there), ST-GCN otherwise."""
  base, dsta, _, _ = split_name(name, config_file)
  return "dsta" if dsta else ("gru" if base in CPU_SIZED else "stgcn")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  base, dsta, dataset, benchmark = split_name(name, "configs/pretrain_hiclr.py")
  c = ml_collections.ConfigDict()
  c.name = f"pretrain_hiclr_{name}"
  c.trainer = "pretrain"
  c.method = "hiclr"
  c.seed = 42

  c.data = data_config(dataset, benchmark)
  c.data.variant = "frame50"          # HiCLR's 50-frame clips

  c.stream = "joint"                  # joint | motion | bone: one stream per run

  c.model = models.default_config()
  c.model.name = encoder_name(name, "configs/pretrain_hiclr.py")  # CPU-sized: CMD's GRU (below)
  c.model.embed_dim = 128             # feature_dim
  c.model.mlp = True
  c.model.init = "normal_0.02"        # the processor's weights_init on the whole model

  c.moco = ml_collections.ConfigDict()
  c.moco.queue_size = 32768
  c.moco.temperature = 0.07
  c.moco.momentum = 0.999

  c.hiclr = ml_collections.ConfigDict()
  c.hiclr.mining_epoch = 150          # nearest-neighbour mining for (0-based) epochs >= this
  c.hiclr.topk = 1                    # queue entries mined per branch
  c.hiclr.mask_ratio = 0.1            # joint mask: int(V * ratio) joints per frame (2 of 25)
  c.hiclr.aug_method = "12345"        # the normal augmentations: 1 flip, 2 rotate, 3 noise, 4 blur, 5 axis mask, 6 time flip
  c.hiclr.adain = False               # SkeleAdaIN on the strong branches (an ablation; off in the release)
  c.hiclr.consistency_weight = 0.5    # L = L_info + weight * (L_h1 + L_h2)
  c.hiclr.branches = 3                # 3: HiCLR; 1: branch 0 alone (MoCo with the basic views, the ablation)
  c.hiclr.noise_rng = "threefry"      # the views' Gaussian noise: "threefry" (JAX's PRNG) or "fast" (a hash; speed option)

  c.augment = ml_collections.ConfigDict()
  c.augment.temporal_padding_ratio = 6  # crop padding T // 6 on both ends
  c.augment.shear_amplitude = 0.5

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 0.1
  c.optimizer.momentum = 0.9
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

  c.reference_linear = (REFERENCE_LINEAR_DSTA if dsta else REFERENCE_LINEAR).get(base, 0.0)
  c.deviations = ()

  if dataset == "pku_mmd2":
    c.num_epochs = 1500
    c.optimizer.milestones = (1250,)
    c.hiclr.mining_epoch = 750
  if base in CPU_SIZED:
    # Measured on the synthetic set (docs/hiclr.md#hiclr-at-cpu-size): with the release's settings
    # a CPU-sized run collapses (InfoNCE stays at ln(queue + 1), kNN falls below random
    # init), as the original PyTorch code does on the same data; these deviations make it learn.
    if c.model.name == "gru":         # ST-GCN's XLA:CPU step is 7 s at batch 32 (h16): too slow for minutes
      c.model.hidden_size = 64
      c.model.num_layers = 2
    c.model.init = "default"          # HiCLR's N(0, 0.02) re-initialisation collapses at this scale
    c.moco.momentum = 0.99            # 0.999: the independently initialised key encoder stays random
    c.log_every_steps = 10
    c.checkpoint_every_steps = 200
    c.evaluator.every_epochs = 10
    c.evaluator.batch_size = 128
    c.batch_size = 64 if base == "synthetic" else 32
    c.moco.queue_size = 512 if base == "synthetic" else 128
    c.num_epochs = 40 if base == "synthetic" else 100
    c.optimizer.milestones = (30,) if base == "synthetic" else (80,)
    c.hiclr.mining_epoch = c.num_epochs // 2
    c.deviations = (() if c.model.name != "gru" else (
        "CPU-sized encoder: CMD's GRU (hidden 64, 2 layers) instead of ST-GCN, whose step is too slow on a CPU",)) + (
        "PyTorch's default initialisation instead of HiCLR's N(0, 0.02) weights_init (which collapses at this scale)",
        "key-encoder momentum 0.99 (reference 0.999) for the short schedule",
        "CPU-sized batch, a queue below the training-set size, a short schedule, mining from half-way",
    )
  c.lock()
  return c
