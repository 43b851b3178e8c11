"""The command line of the checkpoint conversion: ``python -m cmd_jax.torch_import``.

Import::

  python -m cmd_jax.torch_import checkpoint_0450.pth.tar --workdir W \\
      [--method cmd|hiclr|skeletonclr|aimclr|crossclr] [--stream joint|motion|bone] \\
      [--config configs/pretrain_cmd.py:ntu60_xsub] \\
      [--epoch N] [--hidden-size H] [--num-layers L]

``--method``: the checkpoint's method, needed when its keys fit several (SkeletonCLR's and
AimCLR's are the same) unless the ``model:`` class of the reference's ``config.yaml`` beside
it says it (``cmd_jax.interop.formats.detect_format``). ``--stream``: the stream a one-stream
checkpoint (HiCLR, SkeletonCLR, AimCLR) was trained on; needed unless the file name or the
reference's ``config.yaml`` beside it says it (``cmd_jax.interop.convert.checkpoint_stream``).

Export (the reverse, a file the reference's ``load_state_dict`` accepts)::

  python -m cmd_jax.torch_import --export W out.pth.tar

Exit status 0, or 1 with a one-paragraph ``error: ...`` on stderr (nothing written: a bad
file, a target in use by another import or export, a full disk), or 128 + the signal number
when SIGTERM/SIGINT stopped it (143, 130; nothing written, the target's lock released).
"""

from __future__ import annotations

import argparse
import sys

from cmd_jax import preemption
from cmd_jax.disk_full import DiskFullError, quiet_dropped_writes
from cmd_jax.interop.cmd import DEFAULT_CONFIG
from cmd_jax.interop.common import TorchImportError
from cmd_jax.interop.convert import export_checkpoint, import_checkpoint
from cmd_jax.interop.formats import FORMATS
from cmd_jax.interop.torchlight import STREAMS
from cmd_jax.workdir_lock import WorkdirLocked


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m cmd_jax.torch_import",
      description="Import a PyTorch reference CMD, HiCLR, SkeletonCLR, AimCLR or CrosSCLR checkpoint into a workdir, "
      "or --export a workdir to one.")
  parser.add_argument("checkpoint", nargs="?", help="reference checkpoint to import (CMD: checkpoint_0450.pth.tar; "
                      "HiCLR, SkeletonCLR, AimCLR, CrosSCLR: epoch300_model.pt)")
  parser.add_argument("--workdir", help="the new workdir to write (import)")
  parser.add_argument("--method", choices=tuple(FORMATS), default=None,
                      help="the checkpoint's method (default: detected from its keys, or from the model class of "
                      "the reference's config.yaml beside the file when the keys fit several)")
  parser.add_argument("--stream", choices=STREAMS, default=None,
                      help="the stream a one-stream (HiCLR, SkeletonCLR, AimCLR) checkpoint was trained on; needed "
                      "unless the file name "
                      "(e.g. ntu60_xsub_motion.pt) or the reference's config.yaml beside the file says it")
  parser.add_argument("--config", default=None, help=f"pretraining config (default {DEFAULT_CONFIG}, or "
                      "configs/pretrain_<method>.py:ntu60_xsub[_dsta] for the others, with the model sizes read off the "
                      "checkpoint; given: sizes are checked)")
  parser.add_argument("--epoch", type=int, default=None, help="the checkpoint's epoch (default: its own 'epoch', or "
                      "N of an epoch<N>_model.pt name, else 0)")
  parser.add_argument("--hidden-size", type=int, default=None, help="CMD: expected GRU hidden size")
  parser.add_argument("--num-layers", type=int, default=None, help="CMD: expected GRU layer count")
  parser.add_argument("--export", nargs=2, metavar=("WORKDIR", "OUT"), help="export WORKDIR to OUT (.pth.tar)")
  args = parser.parse_args(argv)
  try:
    with preemption.interrupted_by_signals():
      return _run(parser, args)
  except (TorchImportError, FileNotFoundError, WorkdirLocked, DiskFullError) as err:
    if isinstance(err, DiskFullError):  # an import writes an orbax checkpoint
      quiet_dropped_writes()
    print(f"error: {err}", file=sys.stderr)
    return 1
  except preemption.RunStopped as err:
    print(f"error: {err}; nothing was written: run the same command again", file=sys.stderr)
    return err.exit_status


def _run(parser, args) -> int:
  """The import or export ``args`` ask for; 0 when done."""
  if args.export:
    if args.checkpoint or args.workdir:
      parser.error("--export takes WORKDIR OUT and no checkpoint/--workdir")
    out = export_checkpoint(*args.export)
    print(f"wrote {args.export[1]}: epoch {out['epoch']}, {len(out['state_dict'])} tensors")
  else:
    if not args.checkpoint or not args.workdir:
      parser.error("give a checkpoint and --workdir (import), or --export WORKDIR OUT")
    meta = import_checkpoint(args.checkpoint, args.workdir, args.config, stream=args.stream,
                             hidden_size=args.hidden_size, num_layers=args.num_layers, method=args.method,
                             epoch=args.epoch)
    stream = f"{meta['stream']} stream (from {meta['stream_from']}); " if "stream" in meta else ""
    print(f"wrote {args.workdir}: {meta['method'].upper()} {meta['kind']} checkpoint, epoch {meta['torch_epoch']}, "
          f"step {meta['step']}; {stream}"
          f"key encoders {meta['key_encoders']}; queues {meta['queues']}; optimizer {meta['optimizer']}")
  return 0
