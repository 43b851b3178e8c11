"""HiCLR pretraining throughput: this project's data-to-state path and step vs the PyTorch reference design.

Runs, one after another in fresh worker processes on the same machine, per encoder
(``--encoder``: ``stgcn``, ``dsta`` or both, the default):

``pipeline`` rows, data on disk to updated train state:

* ``jax_pipeline``: what ``cmd_jax.trainers.pretrain.train_and_evaluate`` runs for
  ``configs/pretrain_hiclr.py``: ``cmd_jax.input_pipeline.global_batches`` over the train
  split of a TFDS ArrayRecord dataset in the ``frame50`` variant (grain reader threads and
  prefetch as the config sets them), each batch placed with ``sharding.put_batch`` and fed to
  the jitted step of ``pretrain.jit_train_step`` (state donated), which makes the four views
  and the joint mask on the device (``cmd_jax.methods.hiclr``); the previous step's metrics
  are read while a step runs, as the loop does;
* ``torch_pipeline``: the reference's design: a ``torch.utils.data.DataLoader`` with
  ``--loader-workers`` worker processes (default: all cores), pinned memory on a GPU, whose
  dataset memory-maps the release's ``train_position.npy`` (written by ``python -m
  data_prep export-npy --format hiclr``) and returns, per sample, the four views of
  ``tests/hiclr_feeder_reference.feeder_views`` (per-sample float64 numpy, as the release's
  feeder) and the label; the training loop casts the views to float32, moves them to the
  device, draws the processor's joint mask for the batch
  (``hiclr_feeder_reference.joint_mask``) and runs ``tests/torch_hiclr.train_step``
  (``TorchHiCLRStep`` + ``make_optimizer``: forward, backward, SGD), reading the loss each
  step as the release does.

Both read the same clips: the embedded synthetic set (``synthetic/xsub``, 720 training clips
of ``[3, 50, 25, 2]``), built with the project's builder into a temporary folder (removed at
the end) or into ``--data-dir`` (kept, reused). The sampler of each side repeats the data
without a break (grain's repeated dataset; on the torch side one ``RandomSampler`` epoch
holding every batch of the run), so neither pays an epoch boundary every few steps of the
small set (the release's epochs over NTU are hundreds of batches).

``step`` rows, the step alone:

* ``jax_step``: the same jitted step given one batch of stored 50-frame clips (seeded random
  values) already on the device; it still makes the four views and the mask inside the step
  (work the torch step does not do); nearest-neighbour mining off;
* ``jax_step_mining``: the same with mining on. The config's mining starts at epoch 1 with
  ``1 + --warmup`` steps per epoch, so the first (compiling) call and the warm-up run
  without mining and every timed step with it (``mining_during_timed_steps``);
  ``programs_compiled_after_first_step`` says whether switching mining on compiled a second
  program (mining is a traced flag of the one step program: expected 0);
* ``torch_step``: ``train_step`` of ``TorchHiCLRStep`` on four ready-made float32 views
  (seeded random values) on the device and a fixed joint mask, mining off (the model computes
  both losses either way).

Encoders: ``stgcn`` = ST-GCN with the release's width (``config.model.stgcn``:
``hidden_channels`` 16, ``hidden_dim`` 256, dropout 0.5), ``tests/torch_stgcn.TorchSTGCN``
on the torch side; ``dsta`` = DSTA-Net in the release's configuration (8 blocks, attention
dropout 0.5, weight decay 5e-4), ``tests/torch_dsta.DSTANet`` on the torch side. Both with
the MLP head to ``embed``.

Sizes (``--size``): ``full`` = the HiCLR release's config (``configs/pretrain_hiclr.py``:
batch 128, T 50, queue 32768, embed 128, 25 joints x 2 persons, NTU layout); ``cpu`` = the
same encoders at batch 16 and queue 1024: a step in seconds on a 2-core CPU, not minutes
(there is no CPU-sized HiCLR ST-GCN config: the project's CPU-sized HiCLR configs train CMD's
GRU because ST-GCN's XLA:CPU step takes about 7 s at batch 32; the torch DSTA-Net step is the
slowest row). Any of batch, queue, embed, hidden_channels, hidden_dim can be overridden
(``--batch 8 --queue 64``). Every JAX row compiles its step in its own process, 1-2 minutes
on a 2-core CPU, so a CPU run spends much of its time compiling.

Each row: ``samples_per_s`` (batch / mean step time over ``--steps`` timed steps after
``--warmup`` untimed steps and the first call; for ``pipeline`` rows the wall time of the
timed steps, loading included; best of ``--rounds`` interleaved rounds, each in a fresh
process, all rounds in ``round_step_ms``), ``step_ms``, ``step_s_all`` (each timed step; for
``jax_pipeline`` the intervals between loop iterations, which return once the previous step
is done), ``first_step_s`` (the first call:
compilation, or the loader's worker start-up), ``peak_mem_bytes`` (bench/common.py; the
torch pipeline also ``peak_mem_loader_worker_bytes``, the largest loader worker's peak RSS),
``sizes``, ``machine``. JAX rows: ``compile_s`` (trace + lowering + XLA compilation of the
step, from JAX's own compile events during the first call; split in ``compile``) and
``xla_flops_per_step`` (XLA's cost analysis of the lowered, unoptimised step: every op
counted, the views included).
``model_flops_per_step``: the conv and matmul FLOPs of one torch step (forward of the three
query branches and the key, backward of the queries; ``torch.utils.flop_counter``), the
same count on every row of that encoder, with the achieved ``model_flops_per_s`` (and the
fraction of a known GPU's peak, bench/bench_step.py's table). ``ratio_vs``: each JAX row's
samples/s over the torch row of its kind (``jax_step_mining`` also over ``jax_step``).
``--jax-options`` adds, per flag, one more row of each JAX impl with those config overrides
(the encoders' speed options, e.g. ``model.stgcn.graph_order=conv_first``, the reference's
order, against the default ``auto``), named
``jax_step[<overrides>]`` and also compared with the row without them. On a
GPU the torch rows run on it too (``--cpu`` keeps them on the CPU), with TF32 allowed in both
frameworks unless ``--matmul-precision highest``.

  python bench/bench_hiclr.py --size cpu
  python bench/bench_hiclr.py --size full            # on a GPU
  python bench/bench_hiclr.py --size cpu --rounds 1 --steps 2 --warmup 1 --batch 8 --queue 64   # smoke run
  python bench/bench_hiclr.py --size cpu --encoder stgcn --impls jax_step,torch_step \
      --jax-options model.stgcn.graph_order=conv_first,model.stgcn.dropout_mask=flax
"""

from __future__ import annotations

import argparse
import gc
import glob
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=wrong-import-position

SIZES = {
    "full": dict(batch=128, queue=32768, embed=128, hidden_channels=16, hidden_dim=256),
    "cpu": dict(batch=16, queue=1024, embed=128, hidden_channels=16, hidden_dim=256),
}
FRAMES, JOINTS, PERSONS = 50, 25, 2
ENCODERS = ("stgcn", "dsta")
IMPLS = ("jax_pipeline", "torch_pipeline", "jax_step", "jax_step_mining", "torch_step")
KINDS = {"jax_pipeline": "pipeline", "torch_pipeline": "pipeline", "jax_step": "step", "jax_step_mining": "step",
         "torch_step": "step"}
TORCH_OF = {"jax_pipeline": "torch_pipeline", "jax_step": "torch_step", "jax_step_mining": "torch_step"}
# The release's HiCLR settings the torch side needs (configs/pretrain_hiclr.py has the same).
LR, MOMENTUM, TEMPERATURE, KEY_MOMENTUM, MASK_RATIO = 0.1, 0.9, 0.07, 0.999, 0.1
WEIGHT_DECAY = {"stgcn": 1e-4, "dsta": 5e-4}
DROPOUT = 0.5  # ST-GCN's dropout and DSTA-Net's attention dropout in pretraining
NPY_FOLDER, TFDS_FOLDER = "npy", "tfds"


def sizes_of(args) -> dict:
  return common.sizes_with_overrides(SIZES[args.size], args, frames=FRAMES, joints=JOINTS, persons=PERSONS)


def encoder_sizes(s: dict, encoder: str) -> dict:
  """The sizes that apply to ``encoder`` (DSTA-Net's widths are the release's blocks)."""
  out = dict(s, encoder=encoder)
  if encoder == "dsta":
    out.pop("hidden_channels")
    out.pop("hidden_dim")
  return out


# ----------------------------------------------------------------------------------------
# Data: the synthetic set, frame50 variant, as TFDS ArrayRecord (JAX) and HiCLR's npy (torch)
# ----------------------------------------------------------------------------------------

def data_ready(data_dir: Path) -> tuple[bool, bool]:
  tfds_done = bool(glob.glob(str(data_dir / TFDS_FOLDER / "synthetic" / "xsub_frame50" / "*" / "dataset_info.json")))
  return tfds_done, (data_dir / NPY_FOLDER / "train_position.npy").exists()


def prepare_data(data_dir: Path, need_tfds: bool, need_npy: bool) -> None:
  """Builds what is asked for and missing with the project's own data command."""
  tfds_done, npy_done = data_ready(data_dir)
  commands = []
  if need_tfds and not tfds_done:
    commands.append(["build", "synthetic", "--out", str(data_dir / TFDS_FOLDER), "--benchmarks", "xsub",
                     "--variant", "frame50", "--quiet"])
  if need_npy and not npy_done:
    commands.append(["export-npy", "synthetic", "--benchmark", "xsub", "--format", "hiclr",
                     "--out", str(data_dir / NPY_FOLDER), "--quiet"])
  for cmd in commands:
    print(f"data: python -m data_prep {' '.join(cmd[:2])} ... into {data_dir}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "data_prep", *cmd], stdout=sys.stderr, cwd=common.REPO, check=True)


# ----------------------------------------------------------------------------------------
# JAX workers
# ----------------------------------------------------------------------------------------

class CompileEvents:
  """JAX's own compile events (trace, lowering, XLA compilation) as they happen."""

  NAMES = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
           "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
           "/jax/core/compile/backend_compile_duration": "backend_compile_s"}
  BACKEND = "/jax/core/compile/backend_compile_duration"

  def __init__(self):
    import jax  # pylint: disable=import-outside-toplevel

    self.events: list[tuple[str, float]] = []
    jax.monitoring.register_event_duration_secs_listener(self._record)

  def _record(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if event in self.NAMES:
      self.events.append((event, float(duration)))

  def take(self) -> dict:
    """The events since the last call: seconds per kind, their sum, programs compiled."""
    events, self.events = self.events, []
    out = {name: round(sum(d for e, d in events if e == event), 3) for event, name in self.NAMES.items()}
    out["compile_s"] = round(sum(d for _, d in events), 3)
    out["programs"] = sum(1 for e, _ in events if e == self.BACKEND)
    return out


def jax_config(s: dict, encoder: str, data_dir: Path | None, options: list[str] = ()):
  """The HiCLR config of ``encoder`` at the sizes ``s``, then the ``--jax-options`` entries."""
  from configs import pretrain_hiclr  # pylint: disable=import-outside-toplevel

  config = pretrain_hiclr.get_config("ntu60_xsub_dsta" if encoder == "dsta" else "ntu60_xsub")
  config.batch_size, config.moco.queue_size, config.model.embed_dim = s["batch"], s["queue"], s["embed"]
  if encoder == "stgcn":
    config.model.stgcn.hidden_channels, config.model.stgcn.hidden_dim = s["hidden_channels"], s["hidden_dim"]
  config.data.dataset, config.data.benchmark = "synthetic", "xsub"
  config.data.data_dir = str(data_dir / TFDS_FOLDER) if data_dir else "unused"
  config.data.prepare_synthetic = False
  config.evaluator.name = ""
  config.mesh.data = 1
  common.apply_overrides(config, options)
  return config


def jax_peak_memory() -> tuple[int, str]:
  import jax  # pylint: disable=import-outside-toplevel

  dev = jax.devices()[0]
  stats = dev.memory_stats() if dev.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device"
  return common.host_peak_rss_bytes(), "host_rss"


def xla_flops(step_fn, state, batch) -> float | None:
  """XLA's FLOP estimate of the lowered step (every op, not only convs and matmuls)."""
  try:
    cost = step_fn.lower(state, batch).cost_analysis()
  except Exception as e:  # pylint: disable=broad-except
    print(f"xla cost analysis unavailable: {type(e).__name__}: {e}", file=sys.stderr)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def jax_step_worker(s: dict, encoder: str, args, mining: bool) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from cmd_jax import data as data_lib, sharding  # pylint: disable=import-outside-toplevel
  from cmd_jax.trainers import pretrain  # pylint: disable=import-outside-toplevel

  config = jax_config(s, encoder, None, args.option_list)
  if mining:  # epoch 0 = the first call and the warm-up; every timed step is in epoch >= 1
    steps_per_epoch = 1 + args.warmup
    config.hiclr.mining_epoch = 1
  else:
    steps_per_epoch = 1000
    config.hiclr.mining_epoch = 10**6
  layout = data_lib.layout_of(config.data)
  mesh = sharding.make_mesh(1)
  state = sharding.put_replicated(pretrain.create_train_state(config, layout, steps_per_epoch), mesh)
  step_fn = pretrain.jit_train_step(config, layout, steps_per_epoch, mesh)
  rng = np.random.default_rng(0)
  b = s["batch"]
  clips = (0.3 * rng.standard_normal((b, 3, FRAMES, JOINTS, PERSONS))).astype(np.float32)
  batch = sharding.put_batch({"skeleton": clips, "num_frames": np.full(b, FRAMES, np.int32),
                              "label": np.zeros(b, np.int32)}, mesh)
  events = CompileEvents()
  holder = {"state": state}

  def step():
    holder["state"], holder["metrics"] = step_fn(holder["state"], batch)
    return holder["metrics"]["loss"]

  start = time.perf_counter()
  jax.block_until_ready(step())
  first_step_s = time.perf_counter() - start
  first_mining = float(holder["metrics"]["mining"])
  compiled = events.take()
  mean, times = common.time_loop(step, jax.block_until_ready, args.steps, args.warmup)
  later = events.take()
  peak, kind = jax_peak_memory()
  row = {"impl": "jax_step_mining" if mining else "jax_step", "mean_step_s": mean, "step_s": times,
         "first_step_s": first_step_s, "compile_s": compiled["compile_s"], "compile": compiled,
         "programs_compiled_after_first_step": later["programs"], "peak_mem_bytes": peak, "peak_mem_kind": kind}
  if mining:
    row["mining_during_first_step"] = bool(first_mining)
    row["mining_during_timed_steps"] = bool(float(holder["metrics"]["mining"]))
  else:
    row["mining"] = bool(float(holder["metrics"]["mining"]))
  row["xla_flops_per_step"] = xla_flops(step_fn, holder["state"], batch)
  row["views_on_device"] = True
  row["machine"] = common.machine("jax")
  return row


def jax_pipeline_worker(s: dict, encoder: str, args) -> dict:
  import jax  # pylint: disable=import-outside-toplevel

  from cmd_jax import data as data_lib, input_pipeline, sharding  # pylint: disable=import-outside-toplevel
  from cmd_jax.trainers import pretrain  # pylint: disable=import-outside-toplevel

  config = jax_config(s, encoder, Path(args.data_dir), args.option_list)
  layout = data_lib.layout_of(config.data)
  mesh = sharding.make_mesh(1)
  source = data_lib.open_split(config.data, "train")
  steps_per_epoch = input_pipeline.steps_per_epoch(len(source), s["batch"])
  state = sharding.put_replicated(pretrain.create_train_state(config, layout, steps_per_epoch), mesh)
  step_fn = pretrain.jit_train_step(config, layout, steps_per_epoch, mesh)
  dataset = input_pipeline.global_batches(source, global_batch_size=s["batch"], seed=int(config.seed),
                                          read_threads=int(config.data.read_threads),
                                          prefetch_batches=int(config.data.prefetch_batches))
  events = CompileEvents()
  start = time.perf_counter()
  iterator = iter(dataset)
  holder = {"state": state, "pending": None}

  def step():
    """One iteration of the training loop: load, place, step; read the previous step's metrics."""
    batch = sharding.put_batch(next(iterator), mesh)
    holder["state"], metrics = step_fn(holder["state"], batch)
    if holder["pending"] is not None:
      jax.device_get(holder["pending"])
    holder["pending"] = metrics

  step()
  jax.block_until_ready(holder["pending"])
  first_step_s = time.perf_counter() - start
  compiled = events.take()
  for _ in range(args.warmup):
    step()
  jax.block_until_ready(holder["pending"])
  times = []
  start = last = time.perf_counter()
  for _ in range(args.steps):
    step()
    now = time.perf_counter()
    times.append(now - last)
    last = now
  jax.block_until_ready((holder["state"], holder["pending"]))
  wall = time.perf_counter() - start
  times[-1] += wall - (last - start)  # the last step's device time
  later = events.take()
  peak, kind = jax_peak_memory()
  return {"impl": "jax_pipeline", "mean_step_s": wall / args.steps, "step_s": times, "first_step_s": first_step_s,
          "compile_s": compiled["compile_s"], "compile": compiled,
          "programs_compiled_after_first_step": later["programs"], "peak_mem_bytes": peak, "peak_mem_kind": kind,
          "read_threads": int(config.data.read_threads), "prefetch_batches": int(config.data.prefetch_batches),
          "data": f"{source!r}", "views_on_device": True, "machine": common.machine("jax")}


# ----------------------------------------------------------------------------------------
# Torch workers
# ----------------------------------------------------------------------------------------

def _numpy_module(name: str, relative: str):
  """A numpy-only module of this project loaded from its file, so that the torch worker
  does not import JAX through the package (``cmd_jax.models`` imports Flax)."""
  import importlib.util  # pylint: disable=import-outside-toplevel

  spec = importlib.util.spec_from_file_location(name, common.REPO / relative)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def dsta_release_blocks() -> tuple:
  """``cmd_jax.models.dsta.RELEASE_BLOCKS``, read from the source (importing it imports Flax)."""
  import ast  # pylint: disable=import-outside-toplevel

  tree = ast.parse((common.REPO / "cmd_jax" / "models" / "dsta.py").read_text(encoding="utf-8"))
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "RELEASE_BLOCKS" for t in node.targets):
      return ast.literal_eval(node.value)
  raise ValueError("cmd_jax/models/dsta.py: no RELEASE_BLOCKS")


def torch_model(s: dict, encoder: str, device):
  import torch  # pylint: disable=import-outside-toplevel

  from tests.torch_hiclr import TorchHiCLRStep  # pylint: disable=import-outside-toplevel

  if encoder == "stgcn":
    from cmd_jax.layouts import NTU25  # pylint: disable=import-outside-toplevel  (numpy only)
    from tests.torch_stgcn import TorchSTGCN  # pylint: disable=import-outside-toplevel
    a = _numpy_module("_bench_graph", "cmd_jax/models/graph.py").layout_graph(NTU25)

    def make():
      return TorchSTGCN(a, hidden_channels=s["hidden_channels"], hidden_dim=s["hidden_dim"], num_class=s["embed"],
                        dropout=DROPOUT, mlp=True)
  else:
    from tests.torch_dsta import DSTANet  # pylint: disable=import-outside-toplevel
    blocks = dsta_release_blocks()

    class FeatureAndHead(torch.nn.Module):
      """DSTA-Net returning ``(feature, head output)``, the encoder interface of TorchHiCLRStep."""

      def __init__(self):
        super().__init__()
        self.net = DSTANet([list(r) for r in blocks], s["embed"], True, joints=JOINTS, frames=FRAMES,
                           attention_drop=DROPOUT)

      def forward(self, x):
        feature = self.net(x, features_only=True)
        return feature, self.net.fc(feature)

    make = FeatureAndHead
  torch.manual_seed(0)
  model = TorchHiCLRStep(make, s["embed"], s["queue"], KEY_MOMENTUM, TEMPERATURE).to(device)
  return model


def torch_device(args):
  import torch  # pylint: disable=import-outside-toplevel

  device = common.torch_device(args.cpu, args.matmul_precision)
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  return device


def torch_on(device):
  """The device as the default for new tensors (``TorchHiCLRStep`` makes its cross-entropy
  target with ``torch.zeros`` and no device); nothing on the CPU."""
  import contextlib  # pylint: disable=import-outside-toplevel

  return device if device.type == "cuda" else contextlib.nullcontext()


def torch_peak_memory(device) -> tuple[int, str]:
  import torch  # pylint: disable=import-outside-toplevel

  if device.type == "cuda":
    return int(torch.cuda.max_memory_allocated()), "device"
  return common.host_peak_rss_bytes(), "host_rss"


def torch_flops(step) -> float | None:
  """Conv and matmul FLOPs of one call of ``step`` (forward and backward), counted by torch."""
  try:
    from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=import-outside-toplevel
    with FlopCounterMode(display=False) as counter:
      step()
    return float(counter.get_total_flops())
  except Exception as e:  # pylint: disable=broad-except
    print(f"torch flop counter unavailable: {type(e).__name__}: {e}", file=sys.stderr)
    return None


def torch_step_worker(s: dict, encoder: str, args) -> dict:
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  from tests.hiclr_feeder_reference import joint_mask  # pylint: disable=import-outside-toplevel
  from tests.torch_hiclr import make_optimizer, train_step  # pylint: disable=import-outside-toplevel

  device = torch_device(args)
  model = torch_model(s, encoder, device)
  opt = make_optimizer(model, lr=LR, weight_decay=WEIGHT_DECAY[encoder], momentum=MOMENTUM)
  gen = torch.Generator().manual_seed(0)
  views = [(0.3 * torch.randn(s["batch"], 3, FRAMES, JOINTS, PERSONS, generator=gen)).to(device) for _ in range(4)]
  keep = torch.from_numpy(~joint_mask(np.random.default_rng(0), FRAMES, JOINTS, MASK_RATIO)).to(device)

  def step():
    with torch_on(device):
      return train_step(model, opt, views, keep, mining=False)["loss"]

  def sync(loss):
    if device.type == "cuda":
      torch.cuda.synchronize()
    return float(loss)

  start = time.perf_counter()
  sync(step())
  first_step_s = time.perf_counter() - start
  mean, times = common.time_loop(step, sync, args.steps, args.warmup)
  peak, kind = torch_peak_memory(device)
  flops = torch_flops(step)
  return {"impl": "torch_step", "mean_step_s": mean, "step_s": times, "first_step_s": first_step_s,
          "peak_mem_bytes": peak, "peak_mem_kind": kind, "torch_flops_per_step": flops, "views_on_device": False,
          "machine": common.machine("torch")}


class FeederViews:
  """The release's pretraining feeder over ``train_position.npy`` (memory-mapped): per item
  ``([q, k, q1, q2], label)``, the four views of ``feeder_views`` in float64 numpy. A plain
  map-style dataset (``len`` and ``[i]``), so it pickles into loader workers started any way."""

  def __init__(self, folder: str):
    import numpy as np  # pylint: disable=import-outside-toplevel

    self.data = np.load(os.path.join(folder, "train_position.npy"), mmap_mode="r")
    with open(os.path.join(folder, "train_label.pkl"), "rb") as f:
      self.labels = [int(v) for v in pickle.load(f)[1]]
    self.rng = None

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int):
    import numpy as np  # pylint: disable=import-outside-toplevel

    from tests.hiclr_feeder_reference import feeder_views  # pylint: disable=import-outside-toplevel

    if self.rng is None:  # a worker's own stream (seeded by the loader's per-worker seed)
      self.rng = np.random.default_rng(_worker_seed())
    x = np.array(self.data[index])
    return feeder_views(x, self.rng), self.labels[index]


def _worker_seed() -> int:
  import torch  # pylint: disable=import-outside-toplevel

  info = torch.utils.data.get_worker_info()
  return int(info.seed if info is not None else torch.initial_seed()) % 2**32


def torch_pipeline_worker(s: dict, encoder: str, args) -> dict:
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  from tests.hiclr_feeder_reference import joint_mask  # pylint: disable=import-outside-toplevel
  from tests.torch_hiclr import make_optimizer, train_step  # pylint: disable=import-outside-toplevel

  device = torch_device(args)
  model = torch_model(s, encoder, device)
  opt = make_optimizer(model, lr=LR, weight_decay=WEIGHT_DECAY[encoder], momentum=MOMENTUM)
  dataset = FeederViews(str(Path(args.data_dir) / NPY_FOLDER))
  b = s["batch"]
  total = 1 + args.warmup + args.steps
  sampler = torch.utils.data.RandomSampler(dataset, replacement=False, num_samples=total * b,
                                           generator=torch.Generator().manual_seed(0))
  workers = args.loader_workers if args.loader_workers is not None else (os.cpu_count() or 1)
  loader = torch.utils.data.DataLoader(dataset, batch_size=b, sampler=sampler, num_workers=workers, drop_last=True,
                                       pin_memory=device.type == "cuda")
  mask_rng = np.random.default_rng(0)

  def step():
    """One iteration of the release's training loop."""
    views, label = next(iterator)
    views = [v.float().to(device, non_blocking=True) for v in views]
    label = label.long().to(device, non_blocking=True)
    keep = torch.from_numpy(~joint_mask(mask_rng, FRAMES, JOINTS, MASK_RATIO)).to(device, non_blocking=True)
    with torch_on(device):
      out = train_step(model, opt, views, keep, mining=False)
    return float(out["loss"])  # loss.item(), as the release logs every iteration

  start = time.perf_counter()
  iterator = iter(loader)
  step()
  first_step_s = time.perf_counter() - start
  for _ in range(args.warmup):
    step()
  times = []
  start = time.perf_counter()
  for _ in range(args.steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  wall = time.perf_counter() - start
  del iterator  # joins the loader's workers: their peak RSS is then in RUSAGE_CHILDREN
  gc.collect()
  peak, kind = torch_peak_memory(device)
  return {"impl": "torch_pipeline", "mean_step_s": wall / args.steps, "step_s": times, "first_step_s": first_step_s,
          "peak_mem_bytes": peak, "peak_mem_kind": kind,
          "peak_mem_loader_worker_bytes": int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024,
          "loader_workers": workers, "data": f"{NPY_FOLDER}/train_position.npy ({len(dataset)} clips)",
          "views_on_device": False, "machine": common.machine("torch")}


# ----------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------

def finish(row: dict, s: dict, encoder: str, args) -> dict:
  out = {"name": KINDS[row["impl"]], "impl": common.with_options(row["impl"], args.option_list), "encoder": encoder,
         "samples_per_s": round(s["batch"] / row["mean_step_s"], 3), "step_ms": round(1e3 * row["mean_step_s"], 2),
         "first_step_s": round(row["first_step_s"], 3)}
  for key in ("compile_s", "compile", "programs_compiled_after_first_step", "mining", "mining_during_first_step",
              "mining_during_timed_steps"):
    if key in row:
      out[key] = row[key]
  out.update(sizes=encoder_sizes(s, encoder), matmul_precision=args.matmul_precision,
             peak_mem_bytes=row["peak_mem_bytes"], peak_mem_kind=row["peak_mem_kind"])
  for key in ("peak_mem_loader_worker_bytes", "loader_workers", "read_threads", "prefetch_batches", "data",
              "views_on_device", "xla_flops_per_step", "torch_flops_per_step"):
    if key in row:
      out[key] = row[key]
  out["step_s_all"] = [round(t, 4) for t in row["step_s"]]
  out["machine"] = row["machine"]
  return out


def add_flops(rows: list[dict]) -> None:
  """``model_flops_per_step`` (the torch step's conv + matmul count, else XLA's estimate) on
  every row of an encoder, with the achieved rate and the fraction of a known GPU's peak."""
  from bench_step import PEAK_FLOPS  # pylint: disable=import-outside-toplevel

  for encoder in {r["encoder"] for r in rows}:
    same = [r for r in rows if r["encoder"] == encoder]
    torch_count = next((r["torch_flops_per_step"] for r in same if r.get("torch_flops_per_step")), None)
    xla_count = next((r["xla_flops_per_step"] for r in same if r.get("xla_flops_per_step")), None)
    flops, source = ((torch_count, "torch flop_counter: conv + matmul of one torch step") if torch_count else
                     (xla_count, "XLA cost analysis of the jax step: every op") if xla_count else (None, None))
    if not flops:
      continue
    for r in same:
      r["model_flops_per_step"] = flops
      r["model_flops_source"] = source
      r["model_flops_per_s"] = flops * r["samples_per_s"] / r["sizes"]["batch"]
      device = r["machine"].get("device", "")
      peaks = next((v for k, v in PEAK_FLOPS.items() if device.startswith(k)), None)
      if peaks:
        r["fraction_of_peak"] = {k: round(r["model_flops_per_s"] / v, 4) for k, v in peaks.items()}


def add_ratios(rows: list[dict]) -> None:
  """Each JAX row against the torch row of its kind and encoder (a mining or ``--jax-options``
  row also against the plain ``jax_step`` / its own impl without options)."""
  for r in rows:
    impl = r["impl"].split("[")[0]
    if impl in TORCH_OF:
      others = [o for o in rows if o["encoder"] == r["encoder"]
                and (o["impl"] == TORCH_OF[impl] or (impl == "jax_step_mining" and o["impl"] == "jax_step")
                     or (o["impl"] == impl and r["impl"] != impl))]
      if others:
        r["ratio_vs"] = common.ratios(r, others)


def run_rounds(jobs, passthrough, rounds, timeout, s) -> tuple[list[dict], int]:
  """Every job ``(impl, encoder, options)`` once per round, interleaved; per job the row of its
  fastest round, with the step times of all rounds (``round_step_ms``). Returns (rows, failed
  workers)."""

  def report(j, error):
    impl, encoder, options = jobs[j]
    common.emit(name=KINDS[impl], impl=common.with_options(impl, common.split_options(options)), encoder=encoder,
                error=error, sizes=encoder_sizes(s, encoder))

  return common.best_of_rounds(
      __file__, [passthrough + ["--impl", impl, "--encoder", encoder, "--options", options]
                 for impl, encoder, options in jobs], rounds, timeout, report)


def names(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
  values = [v.strip() for v in text.split(",") if v.strip()]
  bad = [v for v in values if v not in allowed]
  if bad or not values:
    raise argparse.ArgumentTypeError(f"{flag}: {', '.join(bad) or 'nothing given'}; expected some of "
                                     f"{', '.join(allowed)}")
  return values


# ----------------------------------------------------------------------------------------

def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
  parser.add_argument("--encoder", default=",".join(ENCODERS), help="comma-separated: stgcn, dsta (default both)")
  parser.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated: {', '.join(IMPLS)}")
  parser.add_argument("--rounds", type=int, default=3,
                      help="interleaved rounds (every row once per round, fresh processes); each row reports its "
                           "best round")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first (compiling) call")
  for k in SIZES["full"]:
    parser.add_argument(f"--{k.replace('_', '-')}", dest=k, type=int, default=None, help=f"override the size's {k}")
  parser.add_argument("--loader-workers", type=int, default=None,
                      help="torch pipeline: DataLoader worker processes (default: all cores)")
  parser.add_argument("--data-dir", type=Path, default=None,
                      help="where the synthetic frame50 data is built or found (default: a temporary folder, "
                           "removed at the end)")
  parser.add_argument("--cpu", action="store_true", help="torch on the CPU even when a GPU is visible")
  parser.add_argument("--matmul-precision", choices=("default", "highest"), default="default",
                      help="default: float32 matmuls and convolutions may use TF32 on GPUs in both frameworks; "
                           "highest: full float32 in both")
  parser.add_argument("--timeout", type=float, default=3600, help="seconds per worker")
  parser.add_argument("--jax-options", action="append", default=[],
                      help="one extra row per JAX impl and flag: comma-separated overrides of the HiCLR config, "
                           "e.g. model.stgcn.graph_order=conv_first or model.dsta.dropout_mask=flax (the reference's "
                           "formulations; the defaults are auto and packed)")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--impl", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--options", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.option_list = common.split_options(args.options)
  try:
    encoders = names(args.encoder, ENCODERS, "--encoder")
    impls = names(args.impls, IMPLS, "--impls")
  except argparse.ArgumentTypeError as e:
    parser.error(str(e))
  if args.steps < 1 or args.warmup < 0:
    parser.error("--steps must be at least 1 and --warmup at least 0")
  s = sizes_of(args)
  if min(s.values()) <= 0 or s["queue"] % s["batch"]:
    parser.error(f"sizes {s}: positive, and the queue a multiple of the batch (the enqueue writes whole batches)")

  if args.worker:
    encoder = encoders[0]
    if args.impl.startswith("jax") and args.matmul_precision == "highest":
      import jax  # pylint: disable=import-outside-toplevel
      jax.config.update("jax_default_matmul_precision", "highest")
    if args.impl == "jax_pipeline":
      row = jax_pipeline_worker(s, encoder, args)
    elif args.impl in ("jax_step", "jax_step_mining"):
      row = jax_step_worker(s, encoder, args, mining=args.impl == "jax_step_mining")
    elif args.impl == "torch_pipeline":
      row = torch_pipeline_worker(s, encoder, args)
    else:
      row = torch_step_worker(s, encoder, args)
    common.emit(**finish(row, s, encoder, args))
    return 0

  for options in args.jax_options:  # an unknown field fails here, before any worker starts
    for encoder in encoders:
      jax_config(s, encoder, None, common.split_options(options))
  need_tfds, need_npy = "jax_pipeline" in impls, "torch_pipeline" in impls
  data_dir, temporary = args.data_dir, None
  if need_tfds or need_npy:
    if data_dir is None:
      temporary = data_dir = Path(tempfile.mkdtemp(prefix="bench_hiclr_"))
    try:
      prepare_data(data_dir, need_tfds, need_npy)
    except subprocess.CalledProcessError as e:
      common.emit(name="pipeline", impl="data", error=str(e), sizes=s)
      if temporary:
        shutil.rmtree(temporary, ignore_errors=True)
      return 1
  passthrough = ["--size", args.size, "--steps", str(args.steps), "--warmup", str(args.warmup),
                 "--matmul-precision", args.matmul_precision]
  for k in SIZES["full"]:
    if getattr(args, k) is not None:
      passthrough += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
  if args.loader_workers is not None:
    passthrough += ["--loader-workers", str(args.loader_workers)]
  if data_dir is not None:
    passthrough += ["--data-dir", str(data_dir)]
  if args.cpu:
    passthrough.append("--cpu")
  jobs = [(impl, encoder, options) for encoder in encoders for impl in impls
          for options in [""] + (args.jax_options if impl.startswith("jax") else [])]
  try:
    rows, failed = run_rounds(jobs, passthrough, args.rounds, args.timeout, s)
  finally:
    if temporary:
      shutil.rmtree(temporary, ignore_errors=True)
  add_flops(rows)
  add_ratios(rows)
  for r in rows:
    common.emit(**r)
  return 0 if rows and len(rows) == len(jobs) and not failed else 1


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.exit(main())
