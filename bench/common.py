"""Shared helpers of the benchmark scripts: JSON lines, machine facts, timing, peak memory, workers.

Every benchmark prints one JSON object per line (``emit``) with at least ``name``, ``impl``,
``samples_per_s`` and ``sizes``. Implementations that are compared are run one after another
in fresh worker processes of the same script (``run_worker``), so each gets the whole
machine, its own peak memory figure and no state left behind by another framework; the
parent adds ``ratio_vs`` (this implementation's samples/s over the other's).

Peak memory: on an accelerator the framework's own device counter (JAX
``memory_stats()["peak_bytes_in_use"]``, ``torch.cuda.max_memory_allocated``); on the CPU
the worker process's peak resident set size (``ru_maxrss``), which includes the framework
itself (a JAX or torch process idles at a few hundred MB).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))


def emit(**fields) -> None:
  print(json.dumps(fields, sort_keys=False), flush=True)


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine(framework: str | None = None) -> dict[str, Any]:
  """The facts a figure needs next to it: CPU, cores, memory, Python, versions, accelerator."""
  info: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}
  try:
    with open("/proc/meminfo", encoding="utf-8") as f:
      info["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
  except (OSError, ValueError, IndexError):
    pass
  if framework == "jax":
    import jax  # pylint: disable=import-outside-toplevel
    info["jax"] = jax.__version__
    info["device"] = jax.devices()[0].device_kind
    info["platform"] = jax.devices()[0].platform
  elif framework == "torch":
    import torch  # pylint: disable=import-outside-toplevel
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
      info["device"] = torch.cuda.get_device_name(0)
      info["platform"] = "gpu"
    else:
      info["device"], info["platform"] = "cpu", "cpu"
  return info


def host_peak_rss_bytes() -> int:
  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def time_loop(step: Callable[[], Any], sync: Callable[[Any], Any], steps: int, warmup: int) -> tuple[float, list[float]]:
  """Runs ``warmup`` untimed then ``steps`` timed calls of ``step``; ``sync(result)`` waits
  for the device. Returns (mean seconds per call over the timed calls, each call's seconds)."""
  for _ in range(warmup):
    sync(step())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    sync(step())
    times.append(time.perf_counter() - start)
  return sum(times) / len(times), times


def run_worker(script: str | Path, args: Sequence[str], timeout: float | None = None) -> list[dict[str, Any]]:
  """Runs ``python script --worker args...``; returns the JSON objects it printed (its other
  output passes through to stderr). A failed worker gives one ``{"error": ...}`` object."""
  cmd = [sys.executable, str(script), "--worker", *args]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO)
  except subprocess.TimeoutExpired:
    return [{"error": f"timed out after {timeout} s: {' '.join(args)}"}]
  results = []
  for line in proc.stdout.splitlines():
    line = line.strip()
    if line.startswith("{"):
      try:
        results.append(json.loads(line))
        continue
      except json.JSONDecodeError:
        pass
    print(line, file=sys.stderr)
  if proc.returncode != 0:
    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
    print(tail, file=sys.stderr)
    results.append({"error": f"worker exited with {proc.returncode}: {' '.join(args)}: "
                             f"{tail.splitlines()[-1] if tail else ''}"})
  return results


def torch_device(cpu_only: bool, matmul_precision: str):
  """The torch device of a benchmark: the GPU when one is visible (unless ``cpu_only``), with
  cuDNN autotuning and TF32 as ``matmul_precision`` says ("default": allowed; "highest": not)."""
  import torch  # pylint: disable=import-outside-toplevel

  device = torch.device("cuda" if torch.cuda.is_available() and not cpu_only else "cpu")
  if device.type == "cuda":
    torch.backends.cudnn.benchmark = True
    tf32 = matmul_precision == "default"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
  return device


def sizes_with_overrides(sizes: dict[str, Any], args, **fixed) -> dict[str, Any]:
  """A copy of ``sizes`` with every key that ``args`` sets (not None) overridden, then ``fixed``."""
  s = dict(sizes)
  for k in s:
    v = getattr(args, k, None)
    if v is not None:
      s[k] = v
  s.update(fixed)
  return s


def split_options(text: str) -> list[str]:
  """A ``--jax-options`` flag's comma-separated ``key.path=value`` entries."""
  return [o for o in text.split(",") if o]


def with_options(impl: str, options: Sequence[str]) -> str:
  """A row's ``impl`` name: ``impl[<entries>]`` when config overrides were applied."""
  return f"{impl}[{','.join(options)}]" if options else impl


def apply_overrides(config, options: Sequence[str]) -> None:
  """Sets each ``key.path=value`` of ``options`` (a ``--jax-options`` flag's comma-separated
  entries) in the ml_collections ``config``, the value converted to the field's type (booleans
  as JSON: ``true``/``false``). An unknown field or an entry without ``=`` raises a
  ``SystemExit`` naming it."""
  for opt in options:
    key, sep, value = opt.partition("=")
    if not sep:
      raise SystemExit(f"--jax-options: {opt!r}: expected key.path=value")
    node = config
    *path, leaf = key.split(".")
    try:
      for p in path:
        node = node[p]
      old = node[leaf]
    except (KeyError, TypeError, AttributeError):
      raise SystemExit(f"--jax-options: {opt!r}: the config has no field {key!r}") from None
    node[leaf] = type(old)(json.loads(value) if isinstance(old, bool) else value)


def best_of_rounds(script: str | Path, job_args: Sequence[Sequence[str]], rounds: int, timeout: float | None,
                   on_error: Callable[[int, str], None]) -> tuple[list[dict[str, Any]], int]:
  """Runs every job (its worker arguments) once per round, interleaved, each in a fresh worker
  process of ``script``; keeps per job the row of its fastest round (``step_ms``), with the
  step times of all rounds in ``round_step_ms``. ``on_error(job index, message)`` reports a
  failed worker. Returns (the rows in job order, the number of failed workers)."""
  best: dict[int, dict[str, Any]] = {}
  history: dict[int, list[float]] = {}
  failed = 0
  for _ in range(max(rounds, 1)):
    for j, args in enumerate(job_args):
      for row in run_worker(script, args, timeout):
        if "error" in row:
          failed += 1
          on_error(j, row["error"])
          continue
        history.setdefault(j, []).append(row["step_ms"])
        if j not in best or row["step_ms"] < best[j]["step_ms"]:
          best[j] = row
  rows = []
  for j in sorted(best):
    best[j]["round_step_ms"] = history[j]
    rows.append(best[j])
  return rows, failed


def ratios(row: dict[str, Any], others: list[dict[str, Any]], key: str = "samples_per_s",
           digits: int = 3) -> dict[str, float]:
  """The ``ratio_vs`` field: ``row[key]`` over each other row's, keyed by their ``impl``."""
  return {o["impl"]: round(row[key] / o[key], digits) for o in others if o is not row}
