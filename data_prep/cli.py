"""The data command line: ``python -m data_prep {build,export-npy,list} ...``.

  build       raw files -> TFDS ArrayRecord datasets, every benchmark of a dataset
  export-npy  raw files -> the PyTorch reference's .npy/.pkl files for one benchmark
  list        the datasets and their benchmarks

Both conversions parse and normalise in parallel (--workers, default all cores), show
progress, and resume after an interruption: finished chunks of the conversion cache and
finished benchmarks are not redone, and nothing incomplete is left where a finished
dataset would be. Bad files are skipped and listed in a summary at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from data_prep import convert, datasets


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
                     "benchmark, written to <out>/<dataset>/<benchmark>/<version>/. Read them with "
                     "tfds.data_source('<dataset>/<benchmark>', data_dir=<out>) or cmd_jax.input_pipeline.")
  _add_common(b)
  b.add_argument("--out", default="data", help="TFDS data_dir to write into (default: ./data)")
  b.add_argument("--benchmarks", help="comma-separated subset of the dataset's benchmarks (default: all)")

  e = sub.add_parser("export-npy", help="write the reference's {train,val}_data_joint.npy / _num_frame.npy / _label.pkl",
                     description="Write one benchmark in the PyTorch reference's format: "
                     "{train,val}_data_joint.npy (N, 3, 300, V, M) float32, {train,val}_num_frame.npy, "
                     "{train,val}_label.pkl (names, labels), into --out.")
  _add_common(e)
  e.add_argument("--benchmark", required=True, help="e.g. xsub, xview, xset")
  e.add_argument("--out", required=True, help="folder for the files (the reference's <data>/<benchmark>/)")

  sub.add_parser("list", help="list the datasets and their benchmarks")
  return parser


def _raw(args, spec) -> str | None:
  if not spec.needs_raw:
    if args.raw:
      print(f"note: {spec.name} is generated; --raw is ignored")
    return None
  if not args.raw:
    raise SystemExit(f"error: {spec.name} needs --raw (the folder of raw files)")
  if not os.path.isdir(args.raw):
    raise SystemExit(f"error: --raw {args.raw}: no such directory")
  return args.raw


def _print_summary(cache: convert.Cache) -> int:
  summary = cache.summary()
  print("\n".join(summary.lines()))
  return len(summary.skipped)


def _remove_cache(cache_dir: Path) -> None:
  """Deletes a finished conversion cache, and its parent folder when that is left empty."""
  shutil.rmtree(cache_dir)
  if not any(cache_dir.parent.iterdir()):
    cache_dir.parent.rmdir()


def cmd_build(args) -> int:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from data_prep.builders import load_builder_class  # pylint: disable=import-outside-toplevel

  spec = datasets.get_spec(args.dataset)
  raw = _raw(args, spec)
  benchmarks = args.benchmarks.split(",") if args.benchmarks else list(spec.benchmarks)
  for b in benchmarks:
    try:
      datasets.check_benchmark(spec, b)
    except ValueError as err:
      raise SystemExit(f"error: {err}") from None
  out = Path(args.out)
  cache_dir = out / ".cache" / spec.name
  builder_cls = load_builder_class(spec.name)
  options = _options(args)
  if args.quiet:
    tfds.disable_progress_bar()
    from absl import logging  # pylint: disable=import-outside-toplevel
    logging.set_verbosity(logging.ERROR)  # TFDS warns about every not-yet-built config folder
  pending = [b for b in benchmarks
             if not builder_cls(config=b, data_dir=str(out), file_format="array_record").is_prepared()]
  if pending:  # convert once for all benchmarks; listing errors surface here, before any writing
    convert.prepare(spec, raw, cache_dir, options, args.workers, progress=not args.quiet)
  for benchmark in benchmarks:
    for stale in (out / spec.name / benchmark).glob("incomplete.*"):
      shutil.rmtree(stale)  # left by an interrupted earlier run
    builder = builder_cls(config=benchmark, data_dir=str(out), file_format="array_record", options=options,
                          workers=args.workers, cache_dir=cache_dir, progress=not args.quiet)
    if builder.is_prepared():
      print(f"{spec.name}/{benchmark}: already built in {builder.data_dir}")
      continue
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=raw),
                                 file_format="array_record")
    splits = builder.info.splits
    print(f"{spec.name}/{benchmark}: train {splits['train'].num_examples}, val {splits['val'].num_examples} "
          f"examples in {builder.data_dir}")
  if pending:
    _print_summary(convert.prepare(spec, raw, cache_dir, options, args.workers, progress=False))
    if not args.keep_cache:
      _remove_cache(cache_dir)
  return 0


def cmd_export(args) -> int:
  from data_prep import npy_export  # pylint: disable=import-outside-toplevel

  spec = datasets.get_spec(args.dataset)
  try:
    datasets.check_benchmark(spec, args.benchmark)
  except ValueError as err:
    raise SystemExit(f"error: {err}") from None
  raw = _raw(args, spec)
  cache_dir = Path(args.out) / ".cmd_jax_cache" / spec.name
  cache = convert.prepare(spec, raw, cache_dir, _options(args), args.workers, progress=not args.quiet)
  counts = npy_export.export(cache, args.benchmark, args.out)
  print(f"{spec.name}/{args.benchmark}: wrote train ({counts['train']}) and val ({counts['val']}) to {args.out}")
  _print_summary(cache)
  if not args.keep_cache:
    _remove_cache(cache_dir)
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
    return {"build": cmd_build, "export-npy": cmd_export, "list": cmd_list}[args.command](args)
  except (FileNotFoundError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
