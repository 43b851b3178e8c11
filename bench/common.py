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


def ratios(row: dict[str, Any], others: list[dict[str, Any]], key: str = "samples_per_s",
           digits: int = 3) -> dict[str, float]:
  """The ``ratio_vs`` field: ``row[key]`` over each other row's, keyed by their ``impl``."""
  return {o["impl"]: round(row[key] / o[key], digits) for o in others if o is not row}
