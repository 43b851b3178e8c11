"""The conversion engine: raw samples -> normalised fixed-length arrays, in parallel, resumable.

``prepare(spec, raw_dir, cache_dir, ..., variant=...)`` lists a dataset's samples, splits
them (in name order) into chunks, and converts each chunk in a worker process: load the
raw coordinates (``datasets.load``: the variant's reader), zero-pad/truncate to 300
frames, and normalise the whole chunk at once: the reference's ``pre_normalization``
(variant ``standard``, 300 frames stored, ``num_frames`` = the original frame count) or
HiCLR's ``frame50_normalization`` (variant ``frame50``, 50 frames stored, ``num_frames`` =
50, the valid frames of the stored clip). In ``frame50`` a sample of length 0 (person 0's
length joint zero in every frame: HiCLR's resize fails on it) is skipped and reported. Each finished chunk is written
atomically (temporary file + rename) into ``cache_dir``, so an interrupted conversion
rerun with the same inputs converts only the chunks that are missing. A bad sample is
reported and skipped, never fatal; the summary lists every skipped sample with its reason.

The TFDS builders and the npy export read the finished cache through ``Cache``; the
cache is shared by all benchmarks of a dataset (they differ only in the split), so each
raw file is parsed once per variant. Each variant has its own cache folder (the callers
use ``<root>/<dataset>/<variant>/``, see ``cache_folder``) and the variant is part of the
cache's fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import tqdm

from data_prep import datasets
from data_prep.datasets import DatasetSpec, Sample
from data_prep.errors import DataFormatError
from data_prep.frame50 import clip_lengths, frame50_normalization
from data_prep.preprocess import pre_normalization

CHUNK_SIZE = 128
_MANIFEST = "manifest.json"
# Errors a single bad sample may raise; they skip that sample. Anything else is a bug and stops the run.
_SAMPLE_ERRORS = (DataFormatError, OSError, ValueError, UnicodeDecodeError)


@dataclasses.dataclass
class Summary:
  """What a conversion did."""
  dataset: str
  listed: int
  converted: int
  skipped: list[tuple[str, str]]  # (sample name, reason)
  all_zero_kept: list[str]
  variant: str = "standard"

  def lines(self) -> list[str]:
    what = self.dataset if self.variant == "standard" else f"{self.dataset} ({self.variant})"
    out = [f"{what}: {self.converted} of {self.listed} samples converted, {len(self.skipped)} skipped"]
    for name, reason in self.skipped:
      out.append(f"  skipped {name}: {reason}")
    if self.all_zero_kept:
      out.append(f"  {len(self.all_zero_kept)} all-zero samples kept as all-zero inputs (as the reference does): "
                 + ", ".join(self.all_zero_kept[:10]) + (" ..." if len(self.all_zero_kept) > 10 else ""))
    return out


def cache_folder(root: str | os.PathLike, dataset: str, variant: str) -> Path:
  """The conversion cache of one dataset and variant under ``root``: ``<root>/<dataset>/<variant>``."""
  datasets.check_variant(variant)
  return Path(root) / dataset / variant


def _convert_chunk(job: tuple[str, list[Sample], str, str]) -> tuple[str, int]:
  """Worker: converts one chunk and writes it atomically. Returns (path, number of samples)."""
  spec_name, samples, path, variant = job
  spec = datasets.get_spec(spec_name)
  layout = spec.layout
  arrays, frames, labels, names, skipped, all_zero = [], [], [], [], [], []
  for sample in samples:
    try:
      raw = np.asarray(datasets.load(spec, sample, variant))
      expected = (3, layout.num_joints, layout.num_persons)
      if raw.ndim != 4 or (raw.shape[0], raw.shape[2], raw.shape[3]) != expected:
        raise ValueError(f"loaded array has shape {raw.shape}; expected (3, T, {layout.num_joints}, {layout.num_persons})")
      if raw.shape[1] == 0:
        raise ValueError("the recording has no frames")
      fixed, num_frames = datasets.to_fixed_length(raw)
    except _SAMPLE_ERRORS as err:
      skipped.append((sample.name, str(err)))
      continue
    if not fixed.any():
      if spec.drop_all_zero:
        skipped.append((sample.name, "all coordinates are zero (no skeleton recorded)"))
        continue
      if variant == "standard":
        all_zero.append(sample.name)
    if variant == "frame50":
      if clip_lengths(fixed[None], layout)[0] == 0:
        joint = layout.length_joint
        skipped.append((sample.name, f"length 0: person 0's joint {joint} ({layout.joint_names[joint]}) is zero in "
                        "every frame, so HiCLR's 50-frame resize has no frame to use (its cv2.resize fails)"))
        continue
      num_frames = datasets.VARIANT_FRAMES["frame50"]  # the stored clip's valid frames: all 50
    arrays.append(fixed)
    frames.append(num_frames)
    labels.append(sample.label)
    names.append(sample.name)
  v, m = layout.num_joints, layout.num_persons
  normalise = pre_normalization if variant == "standard" else frame50_normalization
  data = (normalise(np.stack(arrays), layout) if arrays
          else np.zeros((0, 3, datasets.VARIANT_FRAMES[variant], v, m), np.float32))
  tmp = f"{path}.tmp.{os.getpid()}.npz"
  np.savez(tmp, skeleton=data, num_frames=np.array(frames, np.int64), label=np.array(labels, np.int64),
           name=np.array(names, dtype=str), skipped=np.array(skipped, dtype=str).reshape(-1, 2),
           all_zero=np.array(all_zero, dtype=str))
  os.replace(tmp, path)
  return path, len(samples)


def _fingerprint(spec: DatasetSpec, samples: list[Sample], options: Mapping[str, Any], variant: str) -> str:
  h = hashlib.sha256()
  h.update(json.dumps([spec.name, spec.layout.name, spec.drop_all_zero, CHUNK_SIZE, variant,
                       datasets.VARIANT_FRAMES[variant]]).encode())
  for s in samples:
    h.update(f"{s.name}\t{s.label}\t{sorted(s.train)}\t{s.source!r}\n".encode())
  return h.hexdigest()


@dataclasses.dataclass
class Cache:
  """A finished conversion: the samples listed, and the chunk files holding the converted ones."""
  folder: Path
  spec: DatasetSpec
  samples: list[Sample]
  chunk_paths: list[Path]
  variant: str = "standard"

  @property
  def frames(self) -> int:
    """T of every stored skeleton: 300 (standard) or 50 (frame50)."""
    return datasets.VARIANT_FRAMES[self.variant]

  def split_names(self, benchmark: str, train: bool) -> set[str]:
    """Names of the listed samples in one part of a benchmark (before skipping bad ones)."""
    return {s.name for s in self.samples if (benchmark in s.train) == train}

  def iter_chunks(self) -> Iterator[dict[str, np.ndarray]]:
    for path in self.chunk_paths:
      with np.load(path) as z:
        yield {k: z[k] for k in z.files}

  def iter_split(self, benchmark: str, train: bool) -> Iterator[dict[str, Any]]:
    """Records of one part of a benchmark: skeleton, num_frames, label, name (in name order)."""
    names = self.split_names(benchmark, train)
    for chunk in self.iter_chunks():
      for i, name in enumerate(chunk["name"]):
        if name in names:
          yield {"skeleton": chunk["skeleton"][i], "num_frames": int(chunk["num_frames"][i]),
                 "label": int(chunk["label"][i]), "name": str(name)}

  def summary(self) -> Summary:
    skipped, all_zero, converted = [], [], 0
    for path in self.chunk_paths:
      with np.load(path) as z:
        skipped += [tuple(r) for r in z["skipped"].tolist()]
        all_zero += z["all_zero"].tolist()
        converted += len(z["name"])
    return Summary(self.spec.name, len(self.samples), converted, skipped, all_zero, self.variant)


def _stored_fingerprint(manifest: Path) -> str | None:
  """The fingerprint a cache's manifest records (None if the file is damaged: the cache is redone)."""
  try:
    return json.loads(manifest.read_text()).get("fingerprint")
  except (OSError, ValueError, AttributeError):
    return None


def prepare(spec: DatasetSpec, raw_dir: str | os.PathLike | None, cache_dir: str | os.PathLike,
            options: Mapping[str, Any] | None = None, workers: int | None = None,
            progress: bool = True, variant: str = "standard") -> Cache:
  """Converts every sample of ``spec`` into ``cache_dir``, reusing chunks already there.

  Args:
    spec: the dataset.
    raw_dir: the raw files (None for generated datasets).
    cache_dir: where the chunks go; a cache made from a different listing or variant is
      discarded. Use one folder per variant (``cache_folder``).
    options: dataset-specific options (see the spec's ``list_samples``).
    workers: processes (default: all cores); 1 converts in this process.
    progress: show a tqdm bar.
    variant: ``"standard"`` (CMD, 300 frames) or ``"frame50"`` (HiCLR, 50 frames).

  Raises:
    FileNotFoundError: a missing raw directory, or no samples.
    ValueError: an unknown variant.
  """
  datasets.check_variant(variant)
  options = dict(options or {})
  if spec.needs_raw:
    if raw_dir is None:
      raise FileNotFoundError(f"{spec.name}: --raw is required (the directory holding the raw files)")
    if not Path(raw_dir).is_dir():
      raise FileNotFoundError(f"{spec.name}: raw directory {raw_dir} does not exist")
  samples = spec.list_samples(Path(raw_dir) if raw_dir is not None else None, options)
  if not samples:
    raise FileNotFoundError(f"{spec.name}: no samples found in {raw_dir}")
  names = [s.name for s in samples]
  if len(set(names)) != len(names):
    raise ValueError(f"{spec.name}: duplicate sample names in the listing")

  folder = Path(cache_dir)
  fingerprint = _fingerprint(spec, samples, options, variant)
  manifest = folder / _MANIFEST
  if manifest.exists() and _stored_fingerprint(manifest) != fingerprint:
    print(f"{spec.name}: the cache in {folder} was made from other inputs; converting again")
    shutil.rmtree(folder)
  folder.mkdir(parents=True, exist_ok=True)
  if not manifest.exists():
    tmp = folder / (_MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"dataset": spec.name, "variant": variant, "fingerprint": fingerprint,
                               "samples": len(samples)}))
    os.replace(tmp, manifest)
  for stale in folder.glob("*.tmp.*"):
    stale.unlink()

  chunks = [samples[i:i + CHUNK_SIZE] for i in range(0, len(samples), CHUNK_SIZE)]
  paths = [folder / f"chunk_{k:05d}.npz" for k in range(len(chunks))]
  todo = [(spec.name, chunk, str(path), variant) for chunk, path in zip(chunks, paths) if not path.exists()]
  done = len(samples) - sum(len(job[1]) for job in todo)
  workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
  if todo:
    desc = f"converting {spec.name}" + ("" if variant == "standard" else f" ({variant})")
    bar = tqdm.tqdm(total=len(samples), initial=done, unit="sample", desc=desc,
                    disable=not progress)
    with bar:
      if workers == 1:
        for job in todo:
          bar.update(_convert_chunk(job)[1])
      else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
          for _, n in pool.imap_unordered(_convert_chunk, todo):
            bar.update(n)
  return Cache(folder, spec, samples, paths, variant)
