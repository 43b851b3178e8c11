"""CMD pretraining: ``python launch.py --config configs/pretrain_cmd.py:<name>``.

Names and what they are for:

  synthetic      (default) the embedded synthetic set, CPU-sized model; minutes on a laptop CPU
  msr_action3d   MSR Action3D cross-subject, CPU-sized model (the real-data learning check)
  ntu60_xsub     the paper's settings (reference scripts): GPU. Compare linear eval with 79.8
  ntu60_xview    ... 86.9
  ntu120_xsub    ... 70.3
  ntu120_xset    ... 71.5
  pku_mmd2_xsub  1001 epochs, lr step at 801 ... 43.0

The reference settings (docs/references.md#cmd-pretraining-settings): BiGRU encoders
(hidden 1024, 3 layers, forward-only as the reference computes), MLP head to 128, batch 64,
MoCo queue 16384, momentum 0.999, InfoNCE temperature 0.07, top-k 8192, teacher/student
temperatures 0.05/0.1, SGD lr 0.01, momentum 0.9, weight decay 1e-4, 451 epochs with lr
x0.1 from epoch 351, crops of 10-100% of the clip resized to 64 frames. Any field can be
overridden: ``--config.optimizer.lr=0.02``.

The CPU-sized configs (synthetic, msr_action3d) deviate on purpose, each deviation named in
``config.deviations``: smaller model, queue and top-k (a queue must be smaller than the
training set), a short schedule, key momentum 0.99 and milder spatial augmentation (with
the reference's strength the small model stays at chance on instance discrimination in a
CPU-sized run; measured on MSR Action3D, see docs/cmd.md#cmd-at-cpu-size).
Single-modality MoCo: ``--config.modalities=joint --config.cmd.weight=0``.

Speed options (bench/RESULTS.md): ``model.stack_modalities``, ``model.input_projection``,
``model.scan_unroll`` change how the step runs, not what it computes;
``model.compute_dtype=bfloat16`` (bf16 matmul operands, float32 accumulation) is a
DEVIATION from the reference's float32, off by default.
"""

from __future__ import annotations

import ml_collections

from cmd_jax import models

REFERENCE_LINEAR = {"ntu60_xsub": 79.8, "ntu60_xview": 86.9, "ntu120_xsub": 70.3, "ntu120_xset": 71.5,
                    "pku_mmd2_xsub": 43.0}

DATASETS = {
    "synthetic": ("synthetic", "xsub"),
    "msr_action3d": ("msr_action3d", "xsub"),
    "ntu60_xsub": ("ntu60", "xsub"),
    "ntu60_xview": ("ntu60", "xview"),
    "ntu120_xsub": ("ntu120", "xsub"),
    "ntu120_xset": ("ntu120", "xset"),
    "pku_mmd2_xsub": ("pku_mmd2", "xsub"),
}


def data_config(dataset: str, benchmark: str) -> ml_collections.ConfigDict:
  """The ``data`` fields every config has (the downstream configs use it too)."""
  d = ml_collections.ConfigDict()
  d.source = "tfds"                  # "tfds" (data_dir/dataset/benchmark) or "npy" (npy_folder)
  d.data_dir = "data"
  d.dataset = dataset
  d.benchmark = benchmark
  d.variant = "standard"             # "standard" (CMD's 300-frame conversion) or "frame50" (HiCLR's 50-frame clips)
  d.npy_folder = ""                  # the reference's <data>/<benchmark>/ folder when source == "npy"
  d.prepare_synthetic = True         # build the synthetic set into data_dir if it is missing
  d.read_threads = 4
  d.prefetch_batches = 4
  return d


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "synthetic"
  if name not in DATASETS:
    raise ValueError(f"configs/pretrain_cmd.py: unknown config {name!r}; expected one of {', '.join(DATASETS)}")
  dataset, benchmark = DATASETS[name]
  c = ml_collections.ConfigDict()
  c.name = f"pretrain_cmd_{name}"
  c.trainer = "pretrain"
  c.method = "cmd"
  c.seed = 42

  c.data = data_config(dataset, benchmark)

  c.modalities = "joint,motion,bone"   # comma-separated; one modality + cmd.weight=0 is MoCo

  # The encoder (cmd_jax.models): the reference's GRU by default; any encoder by name
  # (--config.model.name=stgcn|dsta, their fields under config.model.stgcn / config.model.dsta).
  c.model = models.default_config()
  c.model.embed_dim = 128             # --contrast-dim
  c.model.mlp = True                  # --mlp

  c.moco = ml_collections.ConfigDict()
  c.moco.queue_size = 16384           # --contrast-k
  c.moco.temperature = 0.07           # --contrast-t
  c.moco.momentum = 0.999             # --contrast-m

  c.cmd = ml_collections.ConfigDict()
  c.cmd.topk = 8192
  c.cmd.teacher_temperature = 0.05
  c.cmd.student_temperature = 0.1
  c.cmd.weight = 1.0                  # 0: plain MoCo per modality (no distillation)

  c.augment = ml_collections.ConfigDict()
  c.augment.crop_ratio_min = 0.1      # l_ratio [0.1, 1]
  c.augment.crop_ratio_max = 1.0
  c.augment.min_length = 64
  c.augment.frames = 64               # input_size
  c.augment.num_corrupted_joints = 15
  c.augment.shear_amplitude = 1.0     # shear off-diagonals U(-a, a); the reference: 1
  c.augment.corruption_amplitude = 1.0  # joint-corruption matrix entries U(-a, a); the reference: 1

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "step"       # "step" (milestones, per epoch) or "cosine" (per epoch, --cos)
  c.optimizer.milestones = (351,)     # epochs at which lr is multiplied by gamma
  c.optimizer.gamma = 0.1

  c.batch_size = 64                   # global batch
  c.num_epochs = 451
  c.log_every_steps = 50
  c.checkpoint_every_steps = 2000
  c.keep_checkpoints = 3

  c.evaluator = ml_collections.ConfigDict()
  c.evaluator.name = "knn"            # "" disables the online monitor
  c.evaluator.every_epochs = 50
  c.evaluator.batch_size = 256
  c.evaluator.crop_ratio = 0.95

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                    # devices on the data axis (-1: all)

  c.deviations = ()

  if dataset == "pku_mmd2":
    c.num_epochs = 1001
    c.optimizer.milestones = (801,)
  if name in ("synthetic", "msr_action3d"):
    c.model.hidden_size = 64
    c.model.num_layers = 2
    c.augment.frames = 32
    c.augment.min_length = 32
    c.log_every_steps = 10
    c.checkpoint_every_steps = 200
    c.evaluator.every_epochs = 10
    c.evaluator.batch_size = 128
    # A short run on a small set: the key encoder must follow the query encoder within a few
    # hundred steps (0.999 would leave it ~40% random after 900 steps), and the reference's
    # spatial augmentation strength (shear and corruption matrices U(-1, 1), 15 corrupted
    # joints) keeps instance discrimination at chance for a model this small in this many
    # steps (measured: contrastive top-1 ~2%, kNN below random init), so it is milder here.
    c.moco.momentum = 0.99
    c.augment.shear_amplitude = 0.3
    c.augment.corruption_amplitude = 0.3
    c.optimizer.lr = 0.05
    c.deviations = (
        "CPU-sized model: hidden 64, 2 layers; 32-frame crops (min 32)",
        "queue and top-k below the training-set size; short schedule; lr 0.05",
        "key-encoder momentum 0.99 (reference 0.999) for the short schedule",
        "milder spatial augmentation: shear/corruption amplitude 0.3 (reference 1.0), fewer corrupted joints",
    )
  if name == "synthetic":
    c.moco.queue_size = 512
    c.cmd.topk = 256
    c.num_epochs = 40
    c.optimizer.milestones = (30,)
    c.augment.num_corrupted_joints = 6
  if name == "msr_action3d":
    c.batch_size = 32
    c.moco.queue_size = 128
    c.cmd.topk = 64
    c.num_epochs = 100
    c.optimizer.milestones = (80,)
    c.augment.num_corrupted_joints = 5
  c.lock()
  return c
