"""Building and exporting datasets from Python, without the command line.

``build_dataset`` is what ``python -m data_prep build`` runs and ``export_npy`` what
``python -m data_prep export-npy`` runs (``data_prep/cli.py`` only parses arguments); the
training side (``cmd_jax.data.ensure_prepared``) and the tests call them directly.

``build_dataset`` converts each asked variant once (parallel, resumable, into the cache
``<out>/.cache/<dataset>/<variant>/``), writes one TFDS config per benchmark and variant
(``<benchmark>`` for ``standard``, ``<benchmark>_frame50`` for ``frame50``), skips
configs that are already built, removes leftovers of an interrupted build, and deletes
the cache of a variant once all its configs are written (unless ``keep_cache``). Each
built config records what it was built from (``<out>/<dataset>/<config>/inputs.json``: the
sample list's size and hash, the options); a rebuild whose raw files, missing list or
options changed refuses with the command that rebuilds, instead of reporting "already
built". Unknown option keys are errors; files in ``--raw`` that are not samples are named.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cmd_jax import disk_full, workdir_lock
from data_prep import convert, datasets, float_lists

VARIANT_CHOICES = (*datasets.VARIANTS, "all")


def variants_of(variant: str) -> tuple[str, ...]:
  """The variants a ``variant`` argument asks for: one of them, or ``"all"``."""
  if variant == "all":
    return datasets.VARIANTS
  if variant not in datasets.VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANT_CHOICES)}")
  return (variant,)


@dataclasses.dataclass
class BuildSummary:
  """What ``build_dataset`` did.

  Attributes:
    dataset: the dataset name.
    data_dir: the TFDS data_dir written into.
    configs: every config asked for (``xsub``, ``xsub_frame50``, ...) -> ``{"train": n, "val": n}``.
    already_built: the configs that were complete before this call (not rewritten).
    conversions: variant -> the conversion summary (samples converted and skipped), for
      the variants this call converted (none when every config was already built).
  """
  dataset: str
  data_dir: Path
  configs: dict[str, dict[str, int]]
  already_built: list[str]
  conversions: dict[str, convert.Summary]

  @property
  def skipped(self) -> list[tuple[str, str, str]]:
    """``(variant, sample name, reason)`` of every skipped sample."""
    return [(v, name, reason) for v, s in self.conversions.items() for name, reason in s.skipped]


def check_raw(spec: datasets.DatasetSpec, raw: str | os.PathLike | None) -> Path | None:
  """The raw folder to use: None for generated datasets; raises FileNotFoundError if absent."""
  if not spec.needs_raw:
    return None
  if raw is None:
    raise FileNotFoundError(f"{spec.name} needs --raw (the folder of raw files)")
  if not os.path.isdir(raw):
    raise FileNotFoundError(f"--raw {raw}: no such directory")
  return Path(raw)


def remove_cache(cache_dir: str | os.PathLike, levels: int = 2) -> None:
  """Deletes a finished conversion cache, then up to ``levels`` parent folders left empty
  (``<root>/<dataset>/<variant>``: the dataset folder and the root)."""
  folder = Path(cache_dir)
  shutil.rmtree(folder)
  for _ in range(levels):
    folder = folder.parent
    if not folder.is_dir() or any(folder.iterdir()):
      break
    folder.rmdir()


INPUTS_FILE = "inputs.json"  # per built config: what it was built from (build_dataset)


def input_record(spec: datasets.DatasetSpec, raw_dir: Path | None, options: Mapping[str, Any]) -> dict[str, Any]:
  """What a build of ``spec`` reads: the sample list (names, labels, splits; the missing list
  and the setups' cut included) and the options that shape the samples."""
  digest = hashlib.sha256()
  samples = spec.list_samples(raw_dir, options)
  for sample in samples:
    digest.update(f"{sample.name}\t{sample.label}\t{','.join(sorted(sample.train))}\n".encode())
  shaping = {k: str(v) for k, v in sorted(options.items()) if k != "missing_list"}  # its effect is in the list
  return {"samples": len(samples), "samples_sha256": digest.hexdigest(), "options": shaping}


def _report_ignored_files(spec: datasets.DatasetSpec, raw_dir: Path | None, say: Callable[[str], None]) -> None:
  """One line naming the files directly in ``raw_dir`` that are not samples of ``spec``."""
  if raw_dir is None or spec.name == "pku_mmd2":  # PKU-MMD's files are in sub-folders
    return
  used = {os.path.basename(str(s.source)) for s in spec.list_samples(raw_dir, {"missing_list": "none"}
                                                                     if "missing_list" in spec.option_keys else {})}
  expected = used | set(datasets.MISSING_LIST_NAMES.values())  # the missing list may sit beside the files
  ignored = sorted(e for e in os.listdir(raw_dir) if e not in expected and (raw_dir / e).is_file())
  if ignored:
    say(f"note: {len(ignored)} file(s) in {raw_dir} are not {spec.name} samples and are ignored "
        f"(e.g. {', '.join(ignored[:3])})")


def _check_inputs(folder: Path, record: dict[str, Any], config: str) -> None:
  """ValueError when a built config's recorded inputs differ from today's."""
  path = folder / INPUTS_FILE
  if not path.exists():
    return  # built before inputs were recorded: nothing to compare
  try:
    there = json.loads(path.read_text(encoding="utf-8"))
  except ValueError:
    there = {}
  differ = [f"{k}: {there.get(k)!r} there, {record[k]!r} now" for k in ("samples", "options") if there.get(k) != record[k]]
  if not differ and there.get("samples_sha256") != record["samples_sha256"]:
    differ = ["the same number of samples, other names, labels or splits"]
  if differ:
    raise ValueError(f"{folder} ({config}) was built from other inputs ({'; '.join(differ)}); it was left as it is: "
                     f"to rebuild it from these, rm -rf {folder} and run this build command again")


def _quiet_tfds() -> None:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel
  tfds.disable_progress_bar()
  logging.set_verbosity(logging.ERROR)  # TFDS warns about every not-yet-built config folder


def build_dataset(dataset: str, out: str | os.PathLike, *, raw: str | os.PathLike | None = None,
                  benchmarks: Sequence[str] | None = None, variant: str = "standard",
                  options: Mapping[str, Any] | None = None, workers: int | None = None,
                  progress: bool = True, keep_cache: bool = False,
                  log: Callable[[str], None] | None = print, lock_wait: float = 0.0) -> BuildSummary:
  """Converts ``dataset`` into TFDS ArrayRecord configs under ``out`` (a TFDS data_dir).

  The build holds the lock of ``<out>/<dataset>`` (``cmd_jax.workdir_lock``): a build of the
  same dataset into the same ``out`` is refused in one line (``lock_wait`` seconds: waited
  for instead), builds of other datasets into it go on side by side (each writes only its
  ``<out>/<dataset>/`` and ``<out>/.cache/<dataset>/``). A full disk raises ``DiskFullError``
  in one line after removing the unfinished files; the finished chunks and configs stay and
  the same command continues once space is freed.

  Args:
    dataset: a name of ``data_prep.datasets.DATASET_NAMES``.
    out: the TFDS data_dir; configs go to ``<out>/<dataset>/<config>/1.0.0/``.
    raw: the folder of raw files (ignored for generated datasets).
    benchmarks: a subset of the dataset's benchmarks (default: all).
    variant: ``"standard"`` (CMD's 300-frame conversion, configs ``<benchmark>``),
      ``"frame50"`` (HiCLR's 50-frame clips, configs ``<benchmark>_frame50``) or ``"all"``.
    options: dataset options (``missing_list``, ``synthetic_subjects``, ...).
    workers: conversion processes (default: all cores).
    progress: progress bars (False also silences TFDS's logging).
    keep_cache: keep the conversion caches after a successful build.
    log: where the per-config and summary lines go (None: nowhere).

  Returns:
    a ``BuildSummary``.

  Raises:
    ValueError: an unknown dataset, benchmark or variant, or an empty split.
    FileNotFoundError: a missing raw folder, missing list or no samples.
    WorkdirLocked: another build of this dataset writes into ``out``.
    DiskFullError: no space left (or the quota exceeded).
  """
  from data_prep.builders import load_builder_class  # pylint: disable=import-outside-toplevel

  say = log or (lambda _line: None)
  spec = datasets.get_spec(dataset)
  variants = variants_of(variant)
  if raw is not None and not spec.needs_raw:
    say(f"note: {spec.name} is generated; --raw is ignored")
  raw_dir = check_raw(spec, raw)
  benchmarks = list(benchmarks) if benchmarks else list(spec.benchmarks)
  for b in benchmarks:
    datasets.check_benchmark(spec, b)
  out = Path(out)
  options = dict(options or {})
  datasets.check_options(spec, options)
  record = input_record(spec, raw_dir, options)  # listing errors surface here, before any writing
  _report_ignored_files(spec, raw_dir, say)
  builder_cls = load_builder_class(spec.name)
  if not progress:
    _quiet_tfds()
  with workdir_lock.WorkdirLock(out / spec.name, f"python -m data_prep build {spec.name}", wait_seconds=lock_wait):
    try:
      return _build(spec, out, raw_dir, benchmarks, variants, options, record, builder_cls, workers, progress,
                    keep_cache, say)
    except Exception as err:  # pylint: disable=broad-except
      if disk_full.errno_of(err) is None:
        raise
      _remove_unfinished(out, spec.name, variants, benchmarks)
      raise disk_full.reported(err, out / spec.name, (
          "the unfinished files were removed, the finished conversion chunks and benchmarks are kept: free space "
          "(or raise the quota) and run the same command again to continue")) from None


def _remove_unfinished(out: Path, dataset: str, variants: Sequence[str], benchmarks: Sequence[str]) -> None:
  """Removes what an interrupted build leaves: temporary cache chunks, TFDS's ``incomplete.*`` folders."""
  for v in variants:
    for stale in convert.cache_folder(out / ".cache", dataset, v).glob("*.tmp.*"):
      stale.unlink()
    for b in benchmarks:
      for stale in (out / dataset / datasets.config_name(b, v)).glob("incomplete.*"):
        shutil.rmtree(stale, ignore_errors=True)


def _build(spec, out: Path, raw_dir, benchmarks, variants, options, record, builder_cls, workers, progress,
           keep_cache, say) -> BuildSummary:
  """``build_dataset``'s conversions and TFDS configs, with the dataset's lock held."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  manual = None if raw_dir is None else str(raw_dir)
  summary = BuildSummary(spec.name, out, {}, [], {})
  for v in variants:
    cache_dir = convert.cache_folder(out / ".cache", spec.name, v)
    names = [datasets.config_name(b, v) for b in benchmarks]
    pending = [c for c in names
               if not builder_cls(config=c, data_dir=str(out), file_format="array_record").is_prepared()]
    for config in names:  # built ones must come from these inputs, checked before anything is written
      if config not in pending:
        _check_inputs(out / spec.name / config, record, config)
    if pending:  # convert once for all benchmarks; listing errors surface here, before any writing
      convert.prepare(spec, raw_dir, cache_dir, options, workers, progress=progress, variant=v)
    for config in names:
      for stale in (out / spec.name / config).glob("incomplete.*"):
        shutil.rmtree(stale)  # left by an interrupted earlier run
      builder = builder_cls(config=config, data_dir=str(out), file_format="array_record", options=options,
                            workers=workers, cache_dir=cache_dir, progress=progress)
      folder = out / spec.name / config
      if builder.is_prepared():
        say(f"{spec.name}/{config}: already built in {builder.data_dir}")
        summary.already_built.append(config)
      else:
        with float_lists.fast_float_lists():  # the same bytes as TFDS's own serializer, ~6x faster
          builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual),
                                       file_format="array_record")
        _write_text_atomically(folder / INPUTS_FILE, json.dumps(record, indent=2))
      splits = builder.info.splits
      summary.configs[config] = {"train": splits["train"].num_examples, "val": splits["val"].num_examples}
      if config not in summary.already_built:
        say(f"{spec.name}/{config}: train {splits['train'].num_examples}, val {splits['val'].num_examples} "
            f"examples in {builder.data_dir}")
    if pending:
      conversion = convert.prepare(spec, raw_dir, cache_dir, options, workers, progress=False, variant=v).summary()
      summary.conversions[v] = conversion
      for line in conversion.lines():
        say(line)
      if not keep_cache:
        remove_cache(cache_dir)
  return summary


def _write_text_atomically(path: Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)


def export_npy(dataset: str, benchmark: str, out: str | os.PathLike, *, raw: str | os.PathLike | None = None,
               fmt: str = "cmd", options: Mapping[str, Any] | None = None, workers: int | None = None,
               progress: bool = True, keep_cache: bool = False,
               log: Callable[[str], None] | None = print) -> tuple[dict[str, int], convert.Summary]:
  """Writes one benchmark in a PyTorch reference's file format into ``out``.

  ``fmt``: ``"cmd"`` (``{part}_data_joint.npy``, ``_num_frame.npy``, ``_label.pkl``; the
  ``standard`` conversion) or ``"hiclr"`` (``{part}_position.npy``, ``_label.pkl``; the
  ``frame50`` conversion); see ``data_prep.npy_export``. The conversion cache is
  ``<out>/.cmd_jax_cache/<dataset>/<variant>/``. Returns the sample count per part and the
  conversion summary.

  The export holds the lock of ``out`` (``cmd_jax.workdir_lock``; one benchmark's export per
  folder, so the whole folder): a second export into it is refused in one line. A full disk
  raises ``DiskFullError`` in one line after removing the partial files; the same command
  continues once space is freed.
  """
  from data_prep import npy_export  # pylint: disable=import-outside-toplevel

  say = log or (lambda _line: None)
  npy_export.check_format(fmt)
  variant = npy_export.FORMAT_VARIANTS[fmt]
  spec = datasets.get_spec(dataset)
  datasets.check_benchmark(spec, benchmark)
  if raw is not None and not spec.needs_raw:
    say(f"note: {spec.name} is generated; --raw is ignored")
  raw_dir = check_raw(spec, raw)
  datasets.check_options(spec, options)
  with workdir_lock.WorkdirLock(out, f"python -m data_prep export-npy {spec.name} --benchmark {benchmark}"):
    npy_export.check_provenance(out, spec.name, benchmark, fmt)  # before anything is written
    cache_dir = convert.cache_folder(Path(out) / ".cmd_jax_cache", spec.name, variant)
    try:
      return _export(spec, benchmark, out, raw_dir, fmt, variant, cache_dir, options, workers, progress, keep_cache,
                     say)
    except Exception as err:  # pylint: disable=broad-except
      if disk_full.errno_of(err) is None:
        raise
      for stale in [*Path(out).glob("*.partial"), *Path(cache_dir).glob("*.tmp.*")]:
        stale.unlink()
      raise disk_full.reported(err, out, (
          "the partial files were removed, the parts already exported are kept: free space (or raise the quota) and "
          "run the same command again to continue")) from None


def _export(spec, benchmark, out, raw_dir, fmt, variant, cache_dir, options, workers, progress, keep_cache, say):
  """``export_npy`` with the output folder's lock held."""
  from data_prep import npy_export  # pylint: disable=import-outside-toplevel

  had_cache = Path(cache_dir).exists()
  cache = convert.prepare(spec, raw_dir, cache_dir, options, workers, progress=progress, variant=variant)
  try:
    counts = npy_export.export(cache, benchmark, out, fmt)
  except ValueError:
    if not had_cache and not keep_cache:  # a refused export leaves the folder as it was
      remove_cache(cache_dir)
    raise
  what = "" if fmt == "cmd" else f" in the {fmt} format"
  say(f"{spec.name}/{benchmark}: wrote train ({counts['train']}) and val ({counts['val']}){what} to {out}")
  conversion = cache.summary()
  for line in conversion.lines():
    say(line)
  if not keep_cache:
    remove_cache(cache_dir)
  return counts, conversion


__all__ = ["build_dataset", "export_npy", "BuildSummary", "VARIANT_CHOICES", "variants_of", "check_raw",
           "remove_cache"]
