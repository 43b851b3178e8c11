"""Linear evaluation (docs/references.md#cmd-linear-evaluation) of a pretraining workdir.

  python launch.py --config configs/linear.py:<name> --config.init_from=<pretraining workdir> --workdir <dir>

The pretrained query encoder is frozen (BatchNorm in inference mode); a new linear layer on
its 2H last-step feature is trained with SGD (lr 0.1, momentum 0.9, no weight decay), batch
64, 80 epochs, lr x0.1 at epochs 50 and 70, on random crop-resizes (50-100% of the clip,
at least ``min_length`` frames) and tested on the 95% centre crop. Results (final-epoch
top-1 and the reference's best-of-evaluations-every-5-epochs top-1) go to
``<workdir>/results.json``. ``--config.streams=joint,motion,bone`` also evaluates the motion
and bone encoders and their three-stream fusion (mean of the heads' class probabilities);
``--config.random_init=True`` evaluates the same encoder at its random initialisation.

Names, hardware, and the number to compare with (paper, joint stream, top-1 %;
docs/references.md#cmd-numbers, moderately high confidence; three-stream numbers from memory, unverified):

  synthetic      CPU minutes (30 epochs); the pretraining of configs/pretrain_cmd.py:synthetic
  msr_action3d   CPU minutes (40 epochs); configs/pretrain_cmd.py:msr_action3d
  ntu60_xsub     GPU; 79.8 (3s: ~84.1, unverified)
  ntu60_xview    GPU; 86.9 (3s: ~90.9, unverified)
  ntu120_xsub    GPU; 70.3 (3s: ~74.7, unverified)
  ntu120_xset    GPU; 71.5 (3s: ~76.1, unverified)
  pku_mmd2_xsub  GPU; 43.0 (the reference ships no PKU linear script: its settings assumed)

Clip length and minimum crop length default to the pretraining's (``augment.frames`` /
``augment.min_length`` = 0): 64/64 for the reference settings, 32/32 for the CPU-sized
pretrainings. ``init_from`` has no default: a run without it stops with a clear error.
This module also holds the parts the other downstream configs (knn, semi, transfer) share.
"""

from __future__ import annotations

import ml_collections

from configs.pretrain_cmd import DATASETS, REFERENCE_LINEAR, data_config

CPU_SIZED = ("synthetic", "msr_action3d")

REFERENCE_THREE_STREAM = {"ntu60_xsub": 84.1, "ntu60_xview": 90.9, "ntu120_xsub": 74.7, "ntu120_xset": 76.1}


def check_name(name: str, names, config_file: str) -> None:
  if name not in names:
    raise ValueError(f"{config_file}: unknown config {name!r}; expected one of {', '.join(names)}")


def base_config(name: str, trainer: str, dataset: str, benchmark: str) -> ml_collections.ConfigDict:
  """The fields every downstream protocol reads (unlocked)."""
  c = ml_collections.ConfigDict()
  c.name = f"{trainer}_{name}"
  c.trainer = trainer
  c.init_from = ""                   # the pretraining workdir (config.json + checkpoints/); required
  c.init_step = -1                   # checkpoint step to load (-1: the latest)
  c.random_init = False              # True: the same encoders at their random initialisation (baseline)
  c.seed = 0
  c.streams = "joint"                # comma-separated: joint, motion, bone (the reference: joint only)
  c.data = data_config(dataset, benchmark)
  c.data.variant = ""                # "": the pretraining's data variant (standard or frame50)
  c.num_classes = 0                  # 0: the dataset's
  c.augment = ml_collections.ConfigDict()
  c.augment.frames = 0               # clip length fed to the encoder (0: the pretraining's augment.frames)
  c.augment.min_length = 0           # minimum random-crop length (0: the pretraining's augment.min_length)
  c.augment.train_crop_min = 0.5     # training crops: 50-100% of the clip (l_ratio [0.5, 1.0])
  c.augment.train_crop_max = 1.0
  c.augment.test_crop = 0.95         # centre crop of the test clips (l_ratio [0.95])
  # The training view: "" = the pretraining method's (CMD: crop_resize; a 50-frame pretraining:
  # none), or crop_resize | none | crop_shear (HiCLR's basic view: crop with mirrored padding, shear).
  c.augment.train_view = ""
  c.augment.temporal_padding_ratio = 6  # crop_shear: padding T // 6
  c.augment.shear_amplitude = 0.5       # crop_shear: shear coefficients U(-a, a)
  c.head_init = "normal_0.01"        # the new classifier: normal_0.01 (CMD) | normal_0.02 (HiCLR linear) | default
  c.encoder_dropout = -1.0           # fine-tuning: the encoder's dropout rate (-1: the pretraining's)
  c.freeze = ""                      # fine-tuning: comma-separated encoder modules not trained (HiCLR DSTA: proj)
  # Three-stream ensembles besides the softmax mean: HiCLR's weighted sums of raw logits,
  # e.g. "joint=0.5,bone=0.5,motion=0.5;joint=0.6,bone=0.6,motion=0.4" (the better set on the test set)
  c.fusion_weights = ""
  if trainer == "linear":
    # CrosSCLR's multi-stream linear evaluation (its "3s" number), beside the per-stream heads:
    # one head per stream trained jointly on the mean of their logits (needs 2+ streams).
    c.joint_probe = False
  c.expected_method = "cmd" if trainer != "knn" else ""  # these settings are CMD's; "" accepts any pretraining
  c.expected_encoder = ""            # "": any encoder
  c.eval_batch_size = 256            # feature extraction batch (a multiple of the device count)
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                   # devices on the data axis (-1: all)
  c.plots = True                     # t-SNE of the test features, confusion matrices (PNG in the workdir)
  c.tsne = True                      # with plots: the t-SNE maps too (their slow part; the default pipeline draws
                                     # them in its kNN stages only, the linear stages' features being the same)
  c.reference_top1 = 0.0             # the paper's number to compare with (%; 0: none)
  c.reference_note = ""
  c.deviations = ()
  return c


def add_training(c: ml_collections.ConfigDict, *, lr: float, num_epochs: int = 80,
                 milestones=(50, 70)) -> None:
  """The reference's downstream optimizer: SGD, momentum 0.9, no weight decay, lr x0.1 at milestones."""
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = lr
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "step"      # "step" (milestones, per epoch) or "cosine"
  c.optimizer.milestones = tuple(milestones)
  c.optimizer.gamma = 0.1
  c.optimizer.nesterov = False
  c.optimizer.warmup_epochs = 0      # linear warmup of the first epochs (HiCLR's fine-tuning: 5)
  c.optimizer.clip_grad_norm = 0.0   # > 0: clip the gradients' global L2 norm first (AimCLR's semi: 2); 0: off
  c.batch_size = 64
  c.drop_last = False                # True: drop each epoch's last partial batch (HiCLR/CrosSCLR/AimCLR loaders)
  c.num_epochs = num_epochs
  c.eval_every_epochs = 5            # test-set evaluations (the reference reports the best of them)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  check_name(name, DATASETS, "configs/linear.py")
  c = base_config(name, "linear", *DATASETS[name])
  add_training(c, lr=0.1)
  if name in REFERENCE_LINEAR:
    c.reference_top1 = REFERENCE_LINEAR[name]
    c.reference_note = "paper, linear evaluation, joint stream (docs/references.md#cmd-numbers)"
    if name in REFERENCE_THREE_STREAM:
      c.reference_note += f"; three-stream ~{REFERENCE_THREE_STREAM[name]} (unverified)"
  if name == "pku_mmd2_xsub":
    c.deviations = ("the reference ships no PKU-MMD II linear-evaluation script; the NTU settings are used",)
  if name == "synthetic":
    c.num_epochs = 30
    c.optimizer.milestones = (20, 26)
  if name == "msr_action3d":
    c.num_epochs = 40
    c.optimizer.milestones = (25, 35)
  if name in CPU_SIZED:
    c.eval_batch_size = 128
    c.deviations = (f"CPU-sized schedule: {c.num_epochs} epochs, lr x0.1 at {c.optimizer.milestones} "
                    "(reference: 80, [50, 70])",)
  c.lock()
  return c
