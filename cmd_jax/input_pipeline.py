"""The host-side input pipeline: data sources, and grain loaders that shuffle, shard and batch.

Data sources (random access, ``len`` + ``source[i]``) all return the record contract::

  {"skeleton": float32 (3, 300, V, M), "num_frames": int (original count, may exceed 300),
   "label": int (0-based), "name": str | bytes}

Two kinds exist: the TFDS ArrayRecord datasets ``python -m data_prep build`` writes to
``<data_dir>/<dataset>/<benchmark>/<version>/`` (``tfds_source``), and the PyTorch
reference's ``.npy``/``.pkl`` folders (``cmd_jax.npy_source.NpySource``). ``make_source``
selects one from keyword arguments or a spec string.

``make_loader`` wraps a source in a ``grain.DataLoader``:

- sampling: ``grain.samplers.IndexSampler`` over the records, sharded per JAX process
  (``ShardByJaxProcess(drop_remainder=True)``: process ``p`` of ``P`` owns the ``p``-th
  contiguous slice of ``N // P`` records and shuffles within it; the slices are disjoint),
  shuffled with ``seed``, a different permutation in every epoch.
- epochs: with ``num_epochs=None`` the sampler repeats forever. Batches are cut from the
  stream of records, so when ``N`` is not a multiple of the batch size a batch can hold the
  end of one epoch and the start of the next; no record is ever skipped. Count training
  time in steps, with ``steps_per_epoch(N, global_batch_size) = N // global_batch_size``
  steps to an epoch (the reference's ``drop_last`` count). With a finite ``num_epochs`` and
  ``drop_remainder=True`` only the final partial batch of the whole run is dropped.
- batches: dicts of numpy arrays holding the *process-local* batch
  (``global_batch_size // process_count`` records), ready for
  ``jax.make_array_from_process_local_data(sharding, local_batch)``::

    {"skeleton": float32 [B, 3, 300, V, M], "num_frames": int32 [B], "label": int32 [B]}
    (+ "name": str [B] with keep_names=True)

- prefetching: ``worker_count`` child processes (each holding ``worker_buffer_size``
  batches in flight) and ``read_threads`` reader threads in the loading process. grain
  starts workers with ``spawn``: a script using ``worker_count > 0`` needs the
  ``if __name__ == "__main__":`` guard, and the source must pickle (ours do; the npy
  memory map is reopened in the worker). Outside ``absl.app.run`` the absl flags are
  marked parsed for the workers. Build loaders after ``jax.distributed.initialize``
  (the process sharding reads ``jax.process_index()``/``process_count()``).
- shuffling is per shard: each process permutes its own slice (grain's design), not the
  whole dataset as one single-process reference run does.

Iterator state (checkpointing): ``it = iter(loader)``; ``state = it.get_state()`` (bytes,
what ``save_iterator_state`` returns) after any number of batches; later, with a loader
built with the same arguments, ``it2 = iter(loader); it2.set_state(state)`` (or
``restore_iterator_state(loader, state)``) yields exactly the batches ``it`` would have
yielded next. grain checks that the sampler, the worker count and the source's ``repr``
match; our sources' ``repr`` names the data but not its absolute path, so moved data still
restores. The state is small JSON; store it beside the train state in the orbax checkpoint
(``DataLoaderIterator`` also implements orbax's ``save``/``load`` checkpointable protocol).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import grain
import jax
import numpy as np

from cmd_jax.npy_source import NpySource

BUILD_HINT = "python -m data_prep build {dataset}{raw} --out {data_dir}"
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


# ---------------------------------------------------------------------------------------
# Sources


def _listdir(path: Path) -> list[str]:
  return sorted(e for e in os.listdir(path) if not e.startswith(".") and (path / e).is_dir())


def find_version_dir(data_dir: str | os.PathLike, dataset: str, benchmark: str,
                     version: str | None = None) -> Path:
  """The directory ``<data_dir>/<dataset>/<benchmark>/<version>`` of a finished TFDS dataset.

  Without ``version``, the highest version holding a ``dataset_info.json`` (unfinished
  conversions live in ``incomplete.*`` directories and are never picked).

  Raises:
    FileNotFoundError: with what exists instead and how to build the dataset.
  """
  data_dir = Path(data_dir)
  hint = BUILD_HINT.format(dataset=dataset, data_dir=data_dir, raw="" if dataset == "synthetic" else " --raw <raw files>")
  if not data_dir.is_dir():
    raise FileNotFoundError(f"TFDS data directory {data_dir} does not exist; build a dataset with: {hint}")
  dataset_dir = data_dir / dataset
  if not dataset_dir.is_dir():
    found = [e for e in _listdir(data_dir) if e != "downloads"]
    raise FileNotFoundError(f"no dataset {dataset!r} in {data_dir} (datasets there: "
                            f"{', '.join(found) or 'none'}); build it with: {hint}")
  benchmark_dir = dataset_dir / benchmark
  if not benchmark_dir.is_dir():
    raise FileNotFoundError(f"dataset {dataset!r} in {data_dir} has no benchmark {benchmark!r} (benchmarks "
                            f"there: {', '.join(_listdir(dataset_dir)) or 'none'}); build it with: {hint}")
  entries = _listdir(benchmark_dir)
  complete = [e for e in entries if _VERSION_RE.match(e) and (benchmark_dir / e / "dataset_info.json").is_file()]
  if version is not None:
    if version not in complete:
      raise FileNotFoundError(f"{benchmark_dir} has no finished version {version!r} (finished versions: "
                              f"{', '.join(complete) or 'none'}; all entries: {', '.join(entries) or 'none'})")
    return benchmark_dir / version
  if not complete:
    unfinished = [e for e in entries if e.startswith("incomplete")]
    why = " (an unfinished conversion is there: rerun it)" if unfinished else ""
    raise FileNotFoundError(f"{benchmark_dir} holds no finished dataset version{why} (entries: "
                            f"{', '.join(entries) or 'none'}); build it with: {hint}")
  return benchmark_dir / max(complete, key=lambda v: tuple(int(p) for p in v.split(".")))


class TfdsSource:
  """A TFDS ArrayRecord split as a grain data source, with a location-independent ``repr``.

  Delegates ``len``/``[i]`` to ``tfds.builder_from_directory(path).as_data_source()[split]``
  (records decode to numpy: ``label``/``num_frames`` as int, ``name`` as bytes). The
  ``repr`` (which grain compares when restoring an iterator state) names the dataset,
  benchmark, version, split and size, not the data directory.
  """

  def __init__(self, path: str | os.PathLike, split: str):
    import tensorflow_datasets as tfds  # slow import, only needed here

    self.path = Path(path)
    self.split = split
    builder = tfds.builder_from_directory(str(self.path))
    self.info = builder.info
    splits = sorted(builder.info.splits.keys())
    if split not in splits:
      raise FileNotFoundError(f"{self.path} has no split {split!r} (splits there: {', '.join(splits) or 'none'})")
    self._source = builder.as_data_source(split=split)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index) -> dict[str, Any]:
    return self._source[index]

  def __getitems__(self, indices):
    return self._source.__getitems__(indices)

  def __repr__(self) -> str:
    benchmark, version = self.path.parts[-2:]
    return (f"TfdsSource(dataset={self.info.name}, benchmark={benchmark}, version={version}, "
            f"split={self.split}, num_records={len(self)})")


def tfds_source(data_dir: str | os.PathLike, dataset: str, benchmark: str, split: str, *,
                version: str | None = None) -> TfdsSource:
  """The ``split`` (``train``/``val``) of a TFDS dataset built by ``python -m data_prep build``.

  Finds ``<data_dir>/<dataset>/<benchmark>/<version>`` (the latest finished version unless
  ``version`` is given) and opens its ArrayRecord data source.

  Raises:
    FileNotFoundError: the dataset, benchmark, version or split is missing; the message
      lists what exists and how to build it.
  """
  return TfdsSource(find_version_dir(data_dir, dataset, benchmark, version), split)


_SOURCE_KEYS = {
    "tfds": ({"data_dir", "dataset", "benchmark", "split"}, {"version"}),
    "npy": ({"folder", "part"}, {"max_frames"}),
}


def parse_source_spec(spec: str) -> dict[str, str]:
  """``"kind:key=value,key=value"`` -> ``{"kind": kind, key: value, ...}``."""
  kind, sep, rest = spec.partition(":")
  if not sep or kind not in _SOURCE_KEYS:
    raise ValueError(f"source spec {spec!r}: expected 'tfds:data_dir=DIR,dataset=NAME,benchmark=B,split=S' "
                     "or 'npy:folder=DIR,part=train|val'")
  out = {"kind": kind}
  for item in filter(None, (s.strip() for s in rest.split(","))):
    key, eq, value = item.partition("=")
    if not eq:
      raise ValueError(f"source spec {spec!r}: {item!r} is not key=value")
    out[key.strip()] = value.strip()
  return out


def make_source(spec: str | None = None, /, **kwargs):
  """One entry point for every data source.

  Either keyword arguments, ``make_source(kind="tfds", data_dir=..., dataset=...,
  benchmark=..., split=..., [version=...])`` / ``make_source(kind="npy", folder=...,
  part=...)``, or a spec string ``"tfds:data_dir=data,dataset=ntu60,benchmark=xsub,
  split=train"`` / ``"npy:folder=data/NTU-RGB-D-60-AGCN/xsub,part=train"``; keyword
  arguments override the spec's fields.
  """
  fields: dict[str, Any] = parse_source_spec(spec) if spec is not None else {}
  fields.update({k: v for k, v in kwargs.items()})
  kind = fields.pop("kind", None)
  if kind not in _SOURCE_KEYS:
    raise ValueError(f"make_source: kind must be one of {', '.join(_SOURCE_KEYS)}, got {kind!r}")
  required, optional = _SOURCE_KEYS[kind]
  missing = sorted(required - fields.keys())
  unknown = sorted(fields.keys() - required - optional)
  if missing or unknown:
    raise ValueError(f"make_source(kind={kind!r}): "
                     + "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                               unknown and f"unknown {', '.join(unknown)}"]))
                     + f" (expected {', '.join(sorted(required))}"
                     + (f", optionally {', '.join(sorted(optional))})" if optional else ")"))
  if kind == "tfds":
    return tfds_source(fields["data_dir"], fields["dataset"], fields["benchmark"], fields["split"],
                       version=fields.get("version"))
  max_frames = fields.get("max_frames", 300)
  if isinstance(max_frames, str):
    max_frames = None if max_frames.lower() == "none" else int(max_frames)
  return NpySource(fields["folder"], fields["part"], max_frames=max_frames)


# ---------------------------------------------------------------------------------------
# Loaders


class ToBatchable(grain.transforms.Map):
  """A record -> the numeric dict that batches: skeleton float32, num_frames/label int32."""

  def __init__(self, keep_names: bool = False):
    self.keep_names = keep_names

  def map(self, record: Mapping[str, Any]) -> dict[str, Any]:
    out = {
        "skeleton": np.asarray(record["skeleton"], dtype=np.float32),
        "num_frames": np.int32(record["num_frames"]),
        "label": np.int32(record["label"]),
    }
    if self.keep_names:
      name = record["name"]
      out["name"] = np.str_(name.decode("utf-8") if isinstance(name, bytes) else name)
    return out


def steps_per_epoch(num_records: int, global_batch_size: int) -> int:
  """Full global batches per pass over the data: ``num_records // global_batch_size``."""
  return num_records // global_batch_size


def _ensure_absl_flags_parsed() -> None:
  """grain's worker processes read absl flags; outside ``absl.app.run`` they are unparsed."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_loader(source, *, global_batch_size: int, seed: int, shuffle: bool = True,
                num_epochs: int | None = None, drop_remainder: bool = True, worker_count: int = 0,
                worker_buffer_size: int = 2, read_threads: int = 16, read_buffer_size: int = 500,
                shard: bool = True, shard_options: grain.sharding.ShardOptions | None = None,
                keep_names: bool = False) -> grain.DataLoader:
  """A ``grain.DataLoader`` yielding process-local batches of ``source`` (see the module doc).

  Args:
    source: a random-access source returning the record contract.
    global_batch_size: records per step over all processes; each process yields
      ``global_batch_size // num_shards`` of them.
    seed: shuffle seed (0 <= seed < 2**32). Same seed, same order.
    shuffle: shuffle (a new permutation per epoch); False reads in index order.
    num_epochs: passes over the data; None repeats forever.
    drop_remainder: drop a final partial batch (only reachable with finite num_epochs).
    worker_count: child processes doing the reading and batching (0: in this process).
    worker_buffer_size: batches each worker prepares ahead.
    read_threads, read_buffer_size: grain ``ReadOptions`` (reader threads, records
      prefetched) of the process that reads.
    shard: split the records between JAX processes (``ShardByJaxProcess``). False: every
      process reads every record and yields whole ``global_batch_size`` batches (host-side
      tools, e.g. one-process feature extraction).
    shard_options: explicit ``grain.sharding.ShardOptions`` overriding ``shard`` (e.g.
      ``ShardOptions(shard_index=i, shard_count=2, drop_remainder=True)`` to simulate
      process ``i`` of 2); the local batch is then ``global_batch_size // shard_count``.
    keep_names: also yield the sample names (``"name"``: str array).

  Raises:
    ValueError: the global batch does not divide between the shards, or a local batch is
      larger than the records of one shard while drop_remainder is set.
  """
  num_records = len(source)
  if num_records <= 0:
    raise ValueError(f"make_loader: {source!r} holds no records")
  if shard_options is None:
    shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True) if shard else grain.sharding.NoSharding()
  num_shards = shard_options.shard_count
  if global_batch_size <= 0 or global_batch_size % num_shards:
    raise ValueError(f"make_loader: global_batch_size={global_batch_size} must be a positive multiple of "
                     f"the {num_shards} data shards (JAX processes); each shard yields an equal part")
  local_batch_size = global_batch_size // num_shards
  shard_records = num_records // num_shards  # the smallest shard
  if drop_remainder and local_batch_size > shard_records:
    raise ValueError(f"make_loader: a batch of {local_batch_size} records per shard (global_batch_size="
                     f"{global_batch_size} over {num_shards} shards) is larger than the {shard_records} "
                     f"records of a shard of {source!r}; use a smaller batch or drop_remainder=False")
  sampler = grain.samplers.IndexSampler(num_records=num_records, shard_options=shard_options,
                                        shuffle=shuffle, num_epochs=num_epochs,
                                        seed=int(seed) if seed is not None else None)
  if worker_count:
    _ensure_absl_flags_parsed()
  return grain.DataLoader(
      data_source=source,
      sampler=sampler,
      operations=[ToBatchable(keep_names),
                  grain.transforms.Batch(batch_size=local_batch_size, drop_remainder=drop_remainder)],
      worker_count=worker_count,
      worker_buffer_size=worker_buffer_size,
      shard_options=shard_options,
      read_options=grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_buffer_size),
  )


class _LoadLocalSlice:
  """Index batch -> this process's slice of it, loaded and stacked (picklable for grain)."""

  def __init__(self, source, lo: int, hi: int, keep_names: bool, global_batch_size: int):
    self.source, self.lo, self.hi = source, lo, hi
    self.to_batchable = ToBatchable(keep_names)
    self.global_batch_size = global_batch_size

  def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices)
    valid = np.zeros(self.global_batch_size, bool)
    valid[:len(indices)] = True
    padded = np.concatenate([indices, np.full(self.global_batch_size - len(indices), indices[0])])
    local = padded[self.lo:self.hi]
    records = [self.to_batchable.map(self.source[int(i)]) for i in local]
    batch = {k: np.stack([r[k] for r in records]) for k in records[0]}
    batch["valid"] = valid[self.lo:self.hi]
    return batch


def global_batches(source, *, global_batch_size: int, seed: int, shuffle: bool = True,
                   num_epochs: int | None = None, drop_remainder: bool = True,
                   process_index: int | None = None, process_count: int | None = None,
                   read_threads: int = 4, prefetch_batches: int = 4,
                   keep_names: bool = False) -> grain.IterDataset:
  """Process-local parts of global batches that do not depend on the number of processes.

  The global batch sequence is a function of ``(source, seed, global_batch_size)`` only:
  the record indices are shuffled once per epoch over the whole dataset (a new
  permutation each epoch, as the reference's single-process ``shuffle=True``), cut into
  global batches, and process ``p`` of ``P`` loads rows ``[p*B/P, (p+1)*B/P)`` of every
  global batch, so ``P`` processes together see exactly the batches one process would.
  This is what lets a run on a pod reproduce a single-host run; ``make_loader``'s
  per-process shards do not.

  Batches are dicts of numpy arrays as ``make_loader`` yields, plus ``"valid"`` (bool [B]):
  with ``drop_remainder=False`` the last global batch is padded to the full size with
  copies of its first record, marked invalid (evaluation uses this). The returned dataset
  is iterated with ``iter()``; its iterator's ``get_state()`` / ``set_state()`` are a
  small dict, identical on every process.
  """
  num_records = len(source)
  if process_index is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global_batches: global_batch_size={global_batch_size} must be a positive multiple of "
                     f"the {process_count} JAX processes")
  if drop_remainder and global_batch_size > num_records:
    raise ValueError(f"global_batches: a global batch of {global_batch_size} is larger than the "
                     f"{num_records} records of {source!r}")
  local = global_batch_size // process_count
  ds = grain.MapDataset.range(num_records)
  if shuffle:
    ds = ds.shuffle(seed=int(seed))
  ds = ds.repeat(num_epochs).batch(global_batch_size, drop_remainder=drop_remainder)
  ds = ds.map(_LoadLocalSlice(source, process_index * local, (process_index + 1) * local, keep_names,
                              global_batch_size))
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches))


def save_iterator_state(iterator: grain.DataLoaderIterator) -> bytes:
  """The iterator's position (small JSON bytes) after the batches it has yielded."""
  return iterator.get_state()


def restore_iterator_state(loader: grain.DataLoader, state: bytes | str) -> grain.DataLoaderIterator:
  """A new iterator over ``loader`` that continues where the saved one stopped.

  ``loader`` must be built with the same arguments (grain validates the sampler, worker
  count and source ``repr`` and raises ``ValueError`` on a mismatch).
  """
  iterator = iter(loader)
  iterator.set_state(state.encode() if isinstance(state, str) else state)
  return iterator


def global_batch(local_batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """The global ``jax.Array`` batch from each process's local numpy batch (names dropped)."""
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items() if v.dtype.kind not in "USO"}


__all__ = ["TfdsSource", "tfds_source", "find_version_dir", "make_source", "parse_source_spec",
           "make_loader", "global_batches", "ToBatchable", "steps_per_epoch", "save_iterator_state",
           "restore_iterator_state", "global_batch", "NpySource"]
