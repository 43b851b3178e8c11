"""Shared test fixtures: the real recordings in ../shared/data (skipped when absent).

Numerical tolerances, the convention of the suite: each float comparison says next to its
bound (or at the module constant it uses) why the bound holds. Results that must be
bit-identical (copies, integer paths, the same float operations in the same order) are
compared exactly; float64 comparisons use bounds far above float64 rounding (~1e-10 of the
values or tighter). Float32 results, whose summation order depends on the CPU (AVX2 or
AVX-512 kernels), the thread count and the library (XLA, PyTorch, BLAS), are compared within
a bound relative to the size of the compared quantity (an rtol, or an atol scaled by the
largest |value|; a plain atol only where the values are O(1) by construction) and derived
from float32 rounding: unit roundoff u = 2^-24 = 6e-8 times the growth of the computation
(n terms of a sum at worst, sqrt(n) typically, times its depth), usually 10x or more above the
measured error and far below what a wrong formula changes, never tuned to the error one
machine shows. Statistical checks use seeded draws (jax.random is counter-based: the same
numbers on every CPU) and bounds of 4-6 standard errors of their sample size.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CMD_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
  """A path under the shared recordings; skips the calling test when it is absent."""
  path = SHARED_DATA.joinpath(*parts)
  if not path.exists():
    pytest.skip(f"real recordings not available: {path} is absent (set CMD_JAX_SHARED_DATA to the "
                "folder holding ntu_skeletons/, pku_mmd/, msr_action3d/, ntu_missing/)")
  return path


@pytest.fixture
def ntu_dir() -> Path:
  return shared_path("ntu_skeletons")


@pytest.fixture
def ntu_missing_dir() -> Path:
  return shared_path("ntu_missing")


@pytest.fixture
def pku_dir() -> Path:
  return shared_path("pku_mmd")


@pytest.fixture
def msr_dir() -> Path:
  return shared_path("msr_action3d")


# The test session's persistent JAX compilation cache: the suite builds the same tiny steps
# again and again (a new jit per run, kill-and-resume and 8-device subprocesses, the same
# pretraining in several modules); with the cache each is compiled once per session and
# loaded afterwards. A loaded executable is the one the compilation wrote, so no result
# changes. Every compilation is stored (min compile time 0: most of the suite's compilations
# take well under the default 1 s). The environment variables hand the cache to subprocesses.
# Under pytest-xdist (``-n``, as in the README's command) every worker is a session of its own:
# the workers share one folder beside their temporary folders, so a program is compiled once
# for all of them (a reader that meets an entry still being written gets JAX's cache-read
# warning and compiles it itself).
# Tests only: set here, restored at the session's end.
_CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": None, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


@pytest.fixture(scope="session", autouse=True)
def compilation_cache_dir(tmp_path_factory):
  """The session's compilation cache folder (one already configured is used as it is)."""
  existing = jax.config.jax_compilation_cache_dir
  if existing:
    yield existing
    return
  if os.environ.get("PYTEST_XDIST_WORKER"):
    shared = tmp_path_factory.getbasetemp().parent / "jax_compilation_cache"
    shared.mkdir(exist_ok=True)
    path = str(shared)
  else:
    path = str(tmp_path_factory.mktemp("jax_compilation_cache"))
  saved_env = {name: os.environ.get(name) for name in _CACHE_ENV}
  saved_min_time = jax.config.jax_persistent_cache_min_compile_time_secs
  os.environ.update({name: value or path for name, value in _CACHE_ENV.items()})
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  compilation_cache.set_cache_dir(path)
  compilation_cache.reset_cache()
  try:
    yield path
  finally:
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved_min_time)
    compilation_cache.reset_cache()
    for name, value in saved_env.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value


TINY_SYNTHETIC = {"synthetic_subjects": 2, "synthetic_repetitions": 1}


def build_tiny_synthetic(out: Path) -> str:
  """The synthetic set with 2 subjects x 1 repetition (xsub: 36 train, 36 val; 3 clips per class)."""
  import data_prep  # pylint: disable=import-outside-toplevel
  data_prep.build_dataset("synthetic", str(out), options=TINY_SYNTHETIC, progress=False)
  return str(out)


def build_tiny_frame50(out: Path) -> str:
  """The 50-frame variant of that set, xsub only (36 train, 36 val): HiCLR's input."""
  import data_prep  # pylint: disable=import-outside-toplevel
  data_prep.build_dataset("synthetic", str(out), variant="frame50", benchmarks=["xsub"], options=TINY_SYNTHETIC,
                          progress=False)
  return str(out)


# The tiny sets, built once per session for every module that trains on them (each build
# imports TFDS and converts; ~10 s). Tests only read them: a test that writes into a data
# folder builds its own.
@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> str:
  return build_tiny_synthetic(tmp_path_factory.mktemp("tiny_synthetic"))


@pytest.fixture(scope="session")
def tiny_frame50(tmp_path_factory) -> str:
  return build_tiny_frame50(tmp_path_factory.mktemp("tiny_frame50"))


def folder_digest(folder) -> str:
  """A hash of every file's relative path and bytes under ``folder``."""
  digest = hashlib.sha256()
  for root, _, files in sorted(os.walk(folder)):
    for name in sorted(files):
      path = os.path.join(root, name)
      digest.update(os.path.relpath(path, folder).encode())
      with open(path, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


def array_data_file(state_dir) -> str:
  """The data file of an orbax state folder that holds the most array bytes of its newest tree
  version. Found through the OCDBT manifest (``tensorstore.ocdbt.dump``), not by file size: the
  folder also keeps each process's own b-tree nodes, which the merged tree replaces and a restore
  never reads, and one of them can be the largest file when the arrays' bytes were written in
  several flushes."""
  import tensorstore as ts  # pylint: disable=import-outside-toplevel  (orbax's own dependency)
  base = ts.KvStore.open(Path(os.path.abspath(state_dir)).as_uri() + "/").result()
  referenced: dict[str, int] = {}  # file -> bytes of the tree's values in it
  end: dict[str, int] = {}  # file -> where its last referenced value ends

  def walk(location: str) -> None:
    for entry in ts.ocdbt.dump(base, location).result()["entries"]:
      for value in entry.values():
        if isinstance(value, str) and value.startswith("btreenode:"):
          walk(value)
        elif isinstance(value, str) and value.startswith("value:"):
          # "value:<base path>:<file>:<offset>:<length>", the file relative to the base path
          where, offset, length = value[len("value:"):].rsplit(":", 2)
          path = os.path.join(state_dir, where.replace(":", "", 1))
          referenced[path] = referenced.get(path, 0) + int(length)
          end[path] = max(end.get(path, 0), int(offset) + int(length))

  walk(ts.ocdbt.dump(base).result()["versions"][-1]["root"]["location"])
  assert referenced, f"{state_dir}: no array bytes outside the b-tree (all values inline?)"
  path = max(referenced, key=referenced.get)
  # damage_checkpoint truncates to half: that must cut into bytes the tree refers to
  assert os.path.isfile(path) and os.path.getsize(path) // 2 < end[path], (state_dir, path)
  return path


def damage_checkpoint(step_dir, kind: str) -> str:
  """Truncates one file of a checkpoint step to half, as a crash or a full disk would; returns
  its path. ``kind``: "metadata" (the state's tree metadata), "array_data" (the state's data
  file holding the most array bytes, ``array_data_file``) or a path relative to the step folder
  (e.g. "data/metadata")."""
  state = os.path.join(step_dir, "state")
  if kind == "metadata":
    path = os.path.join(state, "_METADATA")
  elif kind == "array_data":
    path = array_data_file(state)
  else:
    path = os.path.join(step_dir, kind)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)
  return path
