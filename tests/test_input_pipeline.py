"""Tests for cmd_jax.input_pipeline: shuffling, epochs, sharding, batching, iterator state, TFDS."""

from __future__ import annotations

import importlib
import pickle
import sys

import grain
import jax
import numpy as np
import pytest

from cmd_jax import input_pipeline as ip
from cmd_jax.npy_source import NpySource

N = 23  # records; prime, so no batch size divides it


def record_skeleton(i: int, v: int = 25, m: int = 2) -> np.ndarray:
  return np.random.default_rng(1000 + i).standard_normal((3, 300, v, m)).astype(np.float32)


@pytest.fixture(scope="module")
def npy_folder(tmp_path_factory):
  """A reference-format folder whose record i has num_frames 1000 + i (its id in a batch)."""
  folder = tmp_path_factory.mktemp("npy") / "NTU-RGB-D-60-AGCN" / "xsub"
  folder.mkdir(parents=True)
  np.save(folder / "train_data_joint.npy", np.stack([record_skeleton(i) for i in range(N)]))
  np.save(folder / "train_num_frame.npy", 1000 + np.arange(N, dtype=np.int64))
  with open(folder / "train_label.pkl", "wb") as f:
    pickle.dump(([f"S{i:03d}.skeleton" for i in range(N)], [(3 * i) % 7 for i in range(N)]), f)
  return folder


@pytest.fixture(scope="module")
def source(npy_folder):
  return NpySource(npy_folder, "train")


def ids(batch) -> list[int]:
  return [int(x) - 1000 for x in batch["num_frames"]]


def stream(loader, num_batches=None) -> list[int]:
  out = []
  for k, batch in enumerate(loader):
    if num_batches is not None and k == num_batches:
      break
    out += ids(batch)
  return out


# --------------------------------------------------------------------------------------
# Shuffling, epochs, batch contents


def test_same_seed_same_order_different_seed_different_order(source):
  def first_epoch(seed):
    return stream(ip.make_loader(source, global_batch_size=1, seed=seed, num_epochs=1))
  a, b, c = first_epoch(5), first_epoch(5), first_epoch(6)
  assert a == b
  assert a != c
  assert sorted(a) == sorted(c) == list(range(N))
  assert a != list(range(N))  # actually shuffled
  unshuffled = stream(ip.make_loader(source, global_batch_size=1, seed=5, shuffle=False, num_epochs=1))
  assert unshuffled == list(range(N))


def test_every_record_once_per_epoch(source):
  loader = ip.make_loader(source, global_batch_size=4, seed=0, num_epochs=1, drop_remainder=False)
  batches = list(loader)
  assert [len(b["label"]) for b in batches] == [4, 4, 4, 4, 4, 3]
  assert sorted(sum((ids(b) for b in batches), [])) == list(range(N))
  # drop_remainder drops only the final partial batch.
  dropped = list(ip.make_loader(source, global_batch_size=4, seed=0, num_epochs=1, drop_remainder=True))
  assert len(dropped) == N // 4 == ip.steps_per_epoch(N, 4)
  assert sum((ids(b) for b in dropped), []) == sum((ids(b) for b in batches[:-1]), [])


def test_repeating_reshuffles_each_epoch_and_never_skips(source):
  # num_epochs=None repeats forever; batches are cut from the record stream, so a batch can
  # straddle two epochs, but each consecutive block of N records is one full epoch.
  loader = ip.make_loader(source, global_batch_size=4, seed=3, num_epochs=None)
  records = stream(loader, num_batches=(3 * N) // 4 + 1)[:3 * N]
  epochs = [records[e * N:(e + 1) * N] for e in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(N))
  assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
  finite = stream(ip.make_loader(source, global_batch_size=4, seed=3, num_epochs=3, drop_remainder=False))
  assert finite == records


def test_batches_hold_the_records_their_indices_point_to(source):
  loader = ip.make_loader(source, global_batch_size=4, seed=1, num_epochs=1, keep_names=True)
  for batch in loader:
    assert set(batch) == {"skeleton", "num_frames", "label", "name"}
    assert batch["skeleton"].dtype == np.float32 and batch["skeleton"].shape == (4, 3, 300, 25, 2)
    assert batch["num_frames"].dtype == np.int32 and batch["label"].dtype == np.int32
    for row, i in enumerate(ids(batch)):
      np.testing.assert_array_equal(batch["skeleton"][row], record_skeleton(i))
      assert batch["label"][row] == (3 * i) % 7
      assert batch["name"][row] == f"S{i:03d}.skeleton"
  batch = next(iter(ip.make_loader(source, global_batch_size=4, seed=1)))
  assert set(batch) == {"skeleton", "num_frames", "label"}  # names only on request


def test_two_process_shards_are_disjoint_and_cover_the_epoch(source):
  def shard(i, n_records_source=source, **kw):
    options = grain.sharding.ShardOptions(shard_index=i, shard_count=2, drop_remainder=True)
    loader = ip.make_loader(n_records_source, global_batch_size=4, seed=7, num_epochs=1,
                            drop_remainder=False, shard_options=options, **kw)
    batches = list(loader)
    assert all(len(b["label"]) <= 2 for b in batches)  # local batch = global // 2
    return sum((ids(b) for b in batches), [])
  s0, s1 = shard(0), shard(1)
  assert not set(s0) & set(s1)
  assert len(s0) == len(s1) == N // 2
  # 23 records over 2 shards with drop_remainder: the last record is left out of the epoch.
  assert sorted(s0 + s1) == list(range(2 * (N // 2)))
  # One process (ShardByJaxProcess on a single process) reads everything.
  assert jax.process_count() == 1
  assert sorted(stream(ip.make_loader(source, global_batch_size=4, seed=7, num_epochs=1,
                                      drop_remainder=False))) == list(range(N))


def test_validation_errors(source):
  options = grain.sharding.ShardOptions(shard_index=0, shard_count=2, drop_remainder=True)
  with pytest.raises(ValueError, match="must be a positive multiple of the 2 data shards"):
    ip.make_loader(source, global_batch_size=5, seed=0, shard_options=options)
  with pytest.raises(ValueError, match="larger than the 23 records"):
    ip.make_loader(source, global_batch_size=24, seed=0)
  with pytest.raises(ValueError, match="larger than the 11 records of a shard"):
    ip.make_loader(source, global_batch_size=24, seed=0, shard_options=options)
  whole = list(ip.make_loader(source, global_batch_size=32, seed=0, num_epochs=1, drop_remainder=False))
  assert [len(b["label"]) for b in whole] == [N]


# --------------------------------------------------------------------------------------
# Iterator state


def assert_same_batches(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert g.keys() == w.keys()
    for key in g:
      np.testing.assert_array_equal(g[key], w[key])


def test_state_restore_continues_with_the_next_batches(source):
  kwargs = dict(global_batch_size=4, seed=11, num_epochs=None, keep_names=True, read_buffer_size=32)
  uninterrupted = iter(ip.make_loader(source, **kwargs))
  want = [next(uninterrupted) for _ in range(9)]  # crosses an epoch boundary (23 records)

  first = iter(ip.make_loader(source, **kwargs))
  start_state = ip.save_iterator_state(first)
  got = [next(first) for _ in range(3)]
  state = ip.save_iterator_state(first)
  assert isinstance(state, bytes)
  # A fresh loader, as after a restart, with the same arguments and source.
  resumed = ip.restore_iterator_state(ip.make_loader(NpySource(source.folder, "train"), **kwargs), state)
  got += [next(resumed) for _ in range(6)]
  assert_same_batches(got, want)
  # The raw grain API does the same; a state taken before any batch restarts at the beginning.
  again = iter(ip.make_loader(source, **kwargs))
  again.set_state(start_state)
  assert_same_batches([next(again) for _ in range(2)], want[:2])
  # A loader built differently refuses the state instead of silently diverging.
  with pytest.raises(ValueError, match="Sampler in checkpoint does not match"):
    ip.restore_iterator_state(ip.make_loader(source, **dict(kwargs, seed=12)), state)


# --------------------------------------------------------------------------------------
# TFDS


BUILDER_SOURCE = '''
"""A tiny TFDS builder writing the record contract."""
import numpy as np
import tensorflow_datasets as tfds


class TinySkeletons(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  record_fn = None  # index -> record; the test sets it

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="xsub")]

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "skeleton": tfds.features.Tensor(shape=(3, 300, 25, 2), dtype=np.float32),
        "num_frames": tfds.features.Scalar(dtype=np.int32),
        "label": tfds.features.ClassLabel(num_classes=5),
        "name": tfds.features.Text(),
    }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(range(0, 9)), "val": self._generate_examples(range(9, 12))}

  def _generate_examples(self, indices):
    for i in indices:
      yield i, type(self).record_fn(i)
'''


def tiny_record(i: int) -> dict:
  return {"skeleton": record_skeleton(i), "num_frames": 290 + 7 * i, "label": i % 5,
          "name": f"S{i:03d}C002P003R001A{i % 5 + 1:03d}.skeleton"}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  package = root / "tiny_builders"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "tiny_skeletons.py").write_text(BUILDER_SOURCE)
  sys.path.insert(0, str(root))
  try:
    module = importlib.import_module("tiny_builders.tiny_skeletons")
    module.TinySkeletons.record_fn = staticmethod(tiny_record)
    data_dir = root / "data"
    builder = module.TinySkeletons(data_dir=str(data_dir), config="xsub", file_format="array_record")
    builder.download_and_prepare()
  finally:
    sys.path.remove(str(root))
  return data_dir


def test_tfds_round_trip(tfds_dir):
  assert (tfds_dir / "tiny_skeletons" / "xsub" / "1.0.0" / "dataset_info.json").is_file()
  train = ip.tfds_source(tfds_dir, "tiny_skeletons", "xsub", "train")
  assert len(train) == 9
  assert "benchmark=xsub" in repr(train) and str(tfds_dir) not in repr(train)
  names_seen = []
  loader = ip.make_loader(train, global_batch_size=3, seed=2, num_epochs=1, keep_names=True)
  for batch in loader:
    for row, name in enumerate(batch["name"]):
      i = int(str(name)[1:4])
      names_seen.append(i)
      want = tiny_record(i)
      np.testing.assert_array_equal(batch["skeleton"][row], want["skeleton"])
      assert batch["num_frames"][row] == want["num_frames"]  # 346 > 300 kept as written
      assert batch["label"][row] == want["label"]
      assert name == want["name"]
  assert sorted(names_seen) == list(range(9))
  val = ip.make_source(f"tfds:data_dir={tfds_dir},dataset=tiny_skeletons,benchmark=xsub,split=val")
  assert len(val) == 3
  # TFDS shuffles records when writing: find them by name.
  records = {val[k]["name"]: val[k] for k in range(3)}
  assert set(records) == {tiny_record(i)["name"].encode() for i in range(9, 12)}  # Text reads as bytes
  for i in range(9, 12):
    record = records[tiny_record(i)["name"].encode()]
    np.testing.assert_array_equal(record["skeleton"], tiny_record(i)["skeleton"])
    assert record["label"] == tiny_record(i)["label"] and record["num_frames"] == tiny_record(i)["num_frames"]


def test_tfds_state_restore_with_a_worker_process(tfds_dir):
  """worker_count=1 (a spawned process, about 3 s): same batches as in-process, and resumable."""
  train = ip.tfds_source(tfds_dir, "tiny_skeletons", "xsub", "train")
  kwargs = dict(global_batch_size=2, seed=4, num_epochs=None)
  want = [b for _, b in zip(range(7), ip.make_loader(train, **kwargs))]
  loader = ip.make_loader(train, worker_count=1, **kwargs)
  it = iter(loader)
  got = [next(it) for _ in range(3)]
  state = ip.save_iterator_state(it)
  del it
  resumed = ip.restore_iterator_state(loader, state)
  got += [next(resumed) for _ in range(4)]
  assert_same_batches(got, want)


def test_tfds_missing_dataset_benchmark_split(tfds_dir):
  with pytest.raises(FileNotFoundError, match=r"no dataset 'ntu60' .*datasets there: tiny_skeletons.*"
                                              r"python -m data_prep build ntu60 --raw <raw files> --out"):
    ip.tfds_source(tfds_dir, "ntu60", "xsub", "train")
  with pytest.raises(FileNotFoundError, match=r"no benchmark 'xview' \(benchmarks there: xsub\)"):
    ip.tfds_source(tfds_dir, "tiny_skeletons", "xview", "train")
  with pytest.raises(FileNotFoundError, match=r"no split 'test' \(splits there: train, val\)"):
    ip.tfds_source(tfds_dir, "tiny_skeletons", "xsub", "test")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    ip.tfds_source(tfds_dir / "nope", "tiny_skeletons", "xsub", "train")


def test_find_version_dir_picks_latest_finished(tmp_path):
  bench = tmp_path / "ntu60" / "xsub"
  for version in ("1.0.0", "1.2.0", "1.10.0", "2.0.0"):
    (bench / version).mkdir(parents=True)
    if version != "2.0.0":  # 2.0.0 has no dataset_info.json: unfinished
      (bench / version / "dataset_info.json").write_text("{}")
  (bench / "incomplete.ABCDEF_3.0.0").mkdir()
  assert ip.find_version_dir(tmp_path, "ntu60", "xsub") == bench / "1.10.0"
  assert ip.find_version_dir(tmp_path, "ntu60", "xsub", "1.2.0") == bench / "1.2.0"
  with pytest.raises(FileNotFoundError, match="no finished version '2.0.0'"):
    ip.find_version_dir(tmp_path, "ntu60", "xsub", "2.0.0")
  empty = tmp_path / "pku_mmd2" / "xsub" / "incomplete.XYZ_1.0.0"
  empty.mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=r"no finished dataset version \(an unfinished conversion"):
    ip.find_version_dir(tmp_path, "pku_mmd2", "xsub")


# --------------------------------------------------------------------------------------
# make_source, global batches


def test_make_source_spec_and_kwargs(npy_folder, source):
  from_spec = ip.make_source(f"npy:folder={npy_folder},part=train")
  from_kwargs = ip.make_source(kind="npy", folder=npy_folder, part="train")
  assert repr(from_spec) == repr(from_kwargs) == repr(source)
  np.testing.assert_array_equal(from_spec[5]["skeleton"], record_skeleton(5))
  with pytest.raises(ValueError, match="missing part"):
    ip.make_source(kind="npy", folder=npy_folder)
  with pytest.raises(ValueError, match="unknown split"):
    ip.make_source(kind="npy", folder=npy_folder, part="train", split="train")
  with pytest.raises(ValueError, match="kind must be one of tfds, npy"):
    ip.make_source(kind="csv")
  with pytest.raises(ValueError, match="expected 'tfds:data_dir="):
    ip.make_source("hdf5:folder=x")
  with pytest.raises(ValueError, match="is not key=value"):
    ip.make_source("npy:folder")


def test_global_batch_from_local_batch(source):
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  local = next(iter(ip.make_loader(source, global_batch_size=len(jax.devices()), seed=0, keep_names=True)))
  batch = ip.global_batch(local, sharding)
  assert set(batch) == {"skeleton", "num_frames", "label"}
  np.testing.assert_array_equal(np.asarray(batch["skeleton"]), local["skeleton"])
  assert batch["label"].sharding == sharding
