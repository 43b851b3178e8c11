"""One markdown table of the JSON lines the bench scripts wrote: every row, its rate and its ratios.

Reads the files given (e.g. ``bench/results/gpu_*.jsonl``) and prints, per file, one line per
row: ``name``, ``impl`` (with the ``encoder`` or ``method`` when the row has one), the batch,
``samples_per_s`` (or ``gflop_per_s`` for the matmul rows, ``margin`` for the input
pipeline's margin rows), ``step_ms``/``ms``, ``compile_s``, ``ratio_vs`` (this row's
samples/s over each named row's) and ``error`` where a worker failed. Lines that are not
JSON objects are skipped.

  python bench/summarize.py bench/results/gpu_*.jsonl > bench/results/gpu_summary.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows_of(path: Path) -> list[dict]:
  rows = []
  for line in path.read_text(encoding="utf-8").splitlines():
    line = line.strip()
    if line.startswith("{"):
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


def cell(value) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
  if isinstance(value, dict):
    return ", ".join(f"{k}: {cell(v)}" for k, v in value.items())
  return str(value)


def line_of(row: dict) -> list[str]:
  impl = row.get("impl", "")
  for key in ("encoder", "method"):
    if key in row:
      impl = f"{row[key]}: {impl}"
  sizes = row.get("sizes") or {}
  rate = row.get("samples_per_s")
  if rate is None and "gflop_per_s" in row:
    rate = f"{cell(row['gflop_per_s'])} GFLOP/s"
  if "margin" in row:
    rate = f"margin {cell(row['margin'])}"
  return [cell(row.get("name")), impl, cell(sizes.get("batch")), cell(rate),
          cell(row.get("step_ms", row.get("ms", row.get("ms_per_batch")))), cell(row.get("compile_s")),
          cell(row.get("ratio_vs")), cell(row.get("error"))]


def main(argv=None) -> int:
  paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
  header = ["name", "impl", "batch", "samples/s", "ms", "compile s", "ratio_vs", "error"]
  for path in paths:
    if not path.exists():
      print(f"\n{path}: missing\n")
      continue
    print(f"\n### {path.name}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows_of(path):
      print("| " + " | ".join(line_of(row)) + " |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
