"""The data command line: ``python -m data_prep {build,export-npy,list} ...``.

  build       raw files -> TFDS ArrayRecord datasets, every benchmark of a dataset
              (--variant standard: CMD's 300-frame conversion, the default; frame50:
              HiCLR's 50-frame clips, configs <benchmark>_frame50; all: both)
  export-npy  raw files -> a PyTorch reference's .npy/.pkl files for one benchmark
              (--format cmd: CMD's, the default; hiclr: HiCLR's 50-frame files)
  list        the datasets and their benchmarks

The commands are thin wrappers of ``data_prep.build.build_dataset`` and ``export_npy``.

Both conversions parse and normalise in parallel (--workers, default all cores), show
progress, and resume after an interruption: finished chunks of the conversion cache and
finished benchmarks are not redone, and nothing incomplete is left where a finished
dataset would be. Bad files are skipped and listed in a summary at the end.

Each command holds the lock of the folder it writes (build: ``<out>/<dataset>``; export-npy:
``--out``): a second command into it is refused in one line naming the first. Exit status: 0;
2 with one ``error: ...`` line (a bad input, a folder in use, a full disk: the line names
the folder); 128 + the signal number when SIGTERM/SIGINT stopped it (143, 130; the finished
parts are kept and the same command continues).
"""

from __future__ import annotations

import argparse
import os
import sys

from cmd_jax import preemption
from cmd_jax.disk_full import DiskFullError
from data_prep import datasets


def _options(args) -> dict:
  options = {}
  if getattr(args, "missing_list", None) is not None:
    options["missing_list"] = args.missing_list
  for item in getattr(args, "option", None) or []:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise SystemExit(f"--option {item!r}: expected KEY=VALUE")
    try:
      options[key] = int(value)
    except ValueError:
      options[key] = value
  return options


def _add_common(p: argparse.ArgumentParser) -> None:
  p.add_argument("dataset", choices=datasets.DATASET_NAMES, help="which dataset")
  p.add_argument("--raw", help="folder of the raw files (not for synthetic): NTU .skeleton files; "
                 "PKU-MMD II skeleton/, label/ and split files; MSR Action3D *_skeleton3D.txt")
  p.add_argument("--workers", type=int, default=None, help="conversion processes (default: all cores)")
  p.add_argument("--missing-list", help="NTU only: the official missing-skeleton list to skip "
                 "(default: looked for in --raw and its parent); 'none' keeps every file")
  p.add_argument("--option", action="append", metavar="KEY=VALUE",
                 help="a dataset-specific option, e.g. synthetic_seed=1 (repeatable)")
  p.add_argument("--keep-cache", action="store_true",
                 help="keep the conversion cache (normalised arrays) after a successful run")
  p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)

  b = sub.add_parser("build", help="convert a dataset into TFDS ArrayRecord shards (all benchmarks)",
                     description="Convert raw files into TFDS ArrayRecord datasets, one builder config per "
                     "benchmark and variant, written to <out>/<dataset>/<config>/<version>/ (config: the benchmark "
                     "for --variant standard, <benchmark>_frame50 for frame50). Read them with "
                     "tfds.data_source('<dataset>/<config>', data_dir=<out>) or cmd_jax.input_pipeline.")
  _add_common(b)
  b.add_argument("--out", default="data", help="TFDS data_dir to write into (default: ./data)")
  b.add_argument("--benchmarks", help="comma-separated subset of the dataset's benchmarks (default: all)")
  b.add_argument("--variant", default="standard", metavar="{standard,frame50,all}",
                 help="standard (default): CMD's conversion, 300 frames, configs <benchmark>; frame50: HiCLR's "
                 "50-frame clips, configs <benchmark>_frame50; all: both")

  e = sub.add_parser("export-npy", help="write a reference's .npy/.pkl files (CMD's by default, or HiCLR's)",
                     description="Write one benchmark in a PyTorch reference's format into --out. --format cmd: "
                     "{train,val}_data_joint.npy (N, 3, 300, V, M) float32, {train,val}_num_frame.npy, "
                     "{train,val}_label.pkl (names, labels). --format hiclr: {train,val}_position.npy "
                     "(N, 3, 50, V, M) float32 and {train,val}_label.pkl.")
  _add_common(e)
  e.add_argument("--benchmark", required=True, help="e.g. xsub, xview, xset")
  e.add_argument("--out", required=True, help="folder for the files (the reference's <data>/<benchmark>/)")
  e.add_argument("--format", default="cmd", metavar="{cmd,hiclr}",
                 help="cmd (default): CMD's 300-frame files; hiclr: HiCLR's 50-frame files")

  sub.add_parser("list", help="list the datasets and their benchmarks")
  return parser


def _raw(args, spec) -> str | None:
  if not spec.needs_raw:
    return args.raw  # build_dataset / export_npy note that it is ignored
  if not args.raw:
    raise SystemExit(f"error: {spec.name} needs --raw (the folder of raw files)")
  if not os.path.isdir(args.raw):
    raise SystemExit(f"error: --raw {args.raw}: no such directory")
  return args.raw


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> str:
  """``value`` if allowed, else a one-line error naming the flag and the allowed values."""
  if value not in allowed:
    raise SystemExit(f"error: {flag} {value!r}: expected one of {', '.join(allowed)}")
  return value


def cmd_build(args) -> int:
  from data_prep.build import VARIANT_CHOICES, build_dataset  # pylint: disable=import-outside-toplevel

  variant = _choice("--variant", args.variant, VARIANT_CHOICES)
  spec = datasets.get_spec(args.dataset)
  raw = _raw(args, spec)
  benchmarks = args.benchmarks.split(",") if args.benchmarks else list(spec.benchmarks)
  for b in benchmarks:
    try:
      datasets.check_benchmark(spec, b)
    except ValueError as err:
      raise SystemExit(f"error: {err}") from None
  build_dataset(spec.name, args.out, raw=raw, benchmarks=benchmarks, variant=variant, options=_options(args),
                workers=args.workers, progress=not args.quiet, keep_cache=args.keep_cache)
  return 0


def cmd_export(args) -> int:
  from data_prep import npy_export  # pylint: disable=import-outside-toplevel
  from data_prep.build import export_npy  # pylint: disable=import-outside-toplevel

  fmt = _choice("--format", args.format, npy_export.FORMATS)
  spec = datasets.get_spec(args.dataset)
  try:
    datasets.check_benchmark(spec, args.benchmark)
  except ValueError as err:
    raise SystemExit(f"error: {err}") from None
  raw = _raw(args, spec)
  export_npy(spec.name, args.benchmark, args.out, raw=raw, fmt=fmt, options=_options(args), workers=args.workers,
             progress=not args.quiet, keep_cache=args.keep_cache)
  return 0


def cmd_list(_args) -> int:
  for name in datasets.DATASET_NAMES:
    spec = datasets.get_spec(name)
    print(f"{name:14s} benchmarks: {', '.join(spec.benchmarks):12s} classes: {spec.num_classes:3d}  "
          f"layout: {spec.layout.name}  {spec.description}")
  return 0


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    with preemption.interrupted_by_signals():
      return {"build": cmd_build, "export-npy": cmd_export, "list": cmd_list}[args.command](args)
  except (FileNotFoundError, ValueError, DiskFullError) as err:  # a bad input, a folder in use, a full disk
    print(f"error: {err}", file=sys.stderr)
    return 2
  except preemption.RunStopped as err:
    print(f"error: {err}; the finished parts are kept: run the same command again to continue", file=sys.stderr)
    return err.exit_status


if __name__ == "__main__":
  sys.exit(main())
