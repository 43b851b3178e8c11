"""Reference-format export: the files the PyTorch references' feeders read.

For one benchmark, ``export(cache, benchmark, out_dir, fmt)`` writes, for part in (train, val),
in one of two formats:

``cmd`` (CMD's reference, docs/references.md#cmd-splits-and-files; from a ``standard`` conversion)::

  {part}_data_joint.npy   float32 (N, 3, 300, V, M), after pre_normalization
  {part}_num_frame.npy    int64 (N,), the original frame counts
  {part}_label.pkl        pickle of (list of sample names, list of int labels)

``hiclr`` (HiCLR's ``*_frame50`` folders; from a ``frame50`` conversion)::

  {part}_position.npy     float32 (N, 3, 50, V, M), after HiCLR's 50-frame preprocessing
  {part}_label.pkl        pickle of (list of sample names, list of int labels)

(HiCLR's own scripts also write ``{part}_motion.npy`` and an int64 ``{part}_label.npy``,
which its training never reads; they are not written.)

Samples are in name order (the references use ``os.listdir`` order, which is arbitrary).
Each file is written under a temporary name (``.partial``; the data file is allocated in
full before it is filled, so a full disk is an error there and not a SIGBUS of the memory
map) and renamed when complete; the data file is renamed last, so a part is complete exactly
when its data file (``_data_joint.npy``, ``_position.npy``) exists, and a rerun skips
complete parts.
``cmd_jax.npy_source.NpySource`` reads both formats back.

``export.json`` records the dataset, benchmark, format and variant; an export into a folder
holding another one (by ``export.json``, or by the sample names of a complete part) is
refused before anything is written.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from data_prep import datasets
from data_prep.convert import Cache

PARTS = (("train", True), ("val", False))
FORMAT_VARIANTS = {"cmd": "standard", "hiclr": "frame50"}  # each format is written from this conversion
FORMATS = tuple(FORMAT_VARIANTS)
PROVENANCE = "export.json"  # dataset, benchmark, format and variant of the folder's export


def check_format(fmt: str) -> None:
  if fmt not in FORMAT_VARIANTS:
    raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")


def part_paths(out_dir: str | os.PathLike, part: str, fmt: str = "cmd") -> dict[str, Path]:
  """The files of one part in a format; the key ``data`` is the file renamed last."""
  check_format(fmt)
  out = Path(out_dir)
  if fmt == "hiclr":
    return {"data": out / f"{part}_position.npy", "label": out / f"{part}_label.pkl"}
  return {"data": out / f"{part}_data_joint.npy", "num_frame": out / f"{part}_num_frame.npy",
          "label": out / f"{part}_label.pkl"}


def check_provenance(out_dir: str | os.PathLike, dataset: str, benchmark: str, fmt: str) -> dict[str, str]:
  """The provenance record of an export; ValueError when ``out_dir/export.json`` names another."""
  wanted = {"dataset": dataset, "benchmark": benchmark, "format": fmt, "variant": FORMAT_VARIANTS[fmt]}
  path = Path(out_dir) / PROVENANCE
  if path.exists():  # what made this folder (written by every export)
    try:
      there = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
      there = {}
    differ = [f"{k} {there.get(k)!r}" for k in wanted if there.get(k) != wanted[k]]
    if differ:
      raise ValueError(f"{out_dir} holds another export ({', '.join(differ)}; asked: {dataset} {benchmark} {fmt}); "
                       "nothing was written: export into another --out folder, or delete that one")
  return wanted


def export(cache: Cache, benchmark: str, out_dir: str | os.PathLike, fmt: str = "cmd") -> dict[str, int]:
  """Writes both parts of ``benchmark`` into ``out_dir``; returns the sample count per part.

  ``fmt``: ``"cmd"`` (needs a ``standard`` conversion) or ``"hiclr"`` (a ``frame50`` one).
  """
  check_format(fmt)
  if cache.variant != FORMAT_VARIANTS[fmt]:
    raise ValueError(f"the {fmt} format is written from the {FORMAT_VARIANTS[fmt]!r} conversion; this cache holds "
                     f"the {cache.variant!r} one")
  datasets.check_benchmark(cache.spec, benchmark)
  out = Path(out_dir)
  for other in FORMATS:
    clash = [part_paths(out, part, other)["data"] for part, _ in PARTS] if other != fmt else []
    if any(p.exists() for p in clash):
      raise ValueError(f"{out} already holds the {other} format ({next(p for p in clash if p.exists()).name}); "
                       f"export the {fmt} format into another folder (both formats use {{part}}_label.pkl)")
  wanted = check_provenance(out, cache.spec.name, benchmark, fmt)
  index = {}
  for part, train in PARTS:
    names = cache.split_names(benchmark, train)
    if not names:
      raise ValueError(f"{cache.spec.name} {benchmark}: the {part} part is empty")
    index[part] = list(_part_index(cache, names))
    paths = part_paths(out, part, fmt)
    if paths["label"].exists() and paths["data"].exists():  # a complete part: must be this very split
      with open(paths["label"], "rb") as f:
        found = list(pickle.load(f)[0])
      if found != index[part]:
        raise ValueError(f"{out} holds another export: its {part} part has {len(found)} samples, not the "
                         f"{len(index[part])} of {cache.spec.name} {benchmark} ({part}); nothing was written: "
                         "export into another --out folder, or delete that one")
  out.mkdir(parents=True, exist_ok=True)
  (out / (PROVENANCE + ".tmp")).write_text(json.dumps(wanted, indent=2), encoding="utf-8")
  os.replace(out / (PROVENANCE + ".tmp"), out / PROVENANCE)  # never a cut record a rerun would refuse
  counts = {}
  for part, train in PARTS:
    paths = part_paths(out, part, fmt)
    if all(p.exists() for p in paths.values()):
      counts[part] = len(index[part])
      print(f"{paths['data']} exists: {part} part already exported")
      continue
    records = index[part]
    n = len(records)
    v, m = cache.spec.layout.num_joints, cache.spec.layout.num_persons
    tmp = {k: p.with_name(p.name + ".partial") for k, p in paths.items()}
    data = open_memmap(tmp["data"], mode="w+", dtype=np.float32, shape=(n, 3, cache.frames, v, m))
    _reserve(tmp["data"])
    frames = np.zeros(n, np.int64)
    labels, sample_names = [], []
    for i, record in enumerate(cache.iter_split(benchmark, train)):
      data[i] = record["skeleton"]
      frames[i] = record["num_frames"]
      labels.append(record["label"])
      sample_names.append(record["name"])
    assert len(sample_names) == n, (len(sample_names), n)
    data.flush()
    del data
    if "num_frame" in paths:
      np.save(tmp["num_frame"], frames)
      os.replace(str(tmp["num_frame"]) + ".npy", paths["num_frame"])  # np.save appends .npy
    with open(tmp["label"], "wb") as f:
      pickle.dump((sample_names, labels), f)
    os.replace(tmp["label"], paths["label"])
    os.replace(tmp["data"], paths["data"])
    counts[part] = n
  return counts


def _reserve(path: Path) -> None:
  """Allocates the whole (sparse) memory-mapped file now: a full disk is then an ``OSError``
  here, not a SIGBUS when a page of the mapping is first written."""
  if hasattr(os, "posix_fallocate"):
    with open(path, "r+b") as f:
      try:
        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
      except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None  # the error names the file


def _part_index(cache: Cache, names: set[str]):
  """The converted samples of a part (skipped ones excluded), without loading the arrays."""
  for path in cache.chunk_paths:
    with np.load(path) as z:
      for name in z["name"]:
        if name in names:
          yield name
