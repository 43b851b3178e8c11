"""How the training step's time grows with batch size, hidden size and sequence length.

Varies one size at a time around a base size (``--size cpu``: hidden 256, batch 64, T 64,
queue 4096, top-k 2048; ``--size full``: the reference's, hidden 1024, batch 64, T 64,
queue 16384, top-k 8192) and measures each point with ``bench/bench_step.py``'s workers
(fresh process per implementation and point, ``--rounds`` interleaved rounds, best kept).
Prints one JSON object per point and implementation (``name: train_step_scaling``, with
``varied`` naming the size that was changed, ``step_ms``, ``samples_per_s`` and, on the JAX
rows, ``ratio_vs`` the other implementations), then, with ``--markdown``, a table for
bench/RESULTS.md on stderr.

  python bench/bench_scaling.py --size cpu --markdown
  python bench/bench_scaling.py --size full --markdown      # on a GPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402  pylint: disable=wrong-import-position
import common  # noqa: E402  pylint: disable=wrong-import-position

GRIDS = {
    "cpu": {"hidden": (64, 128, 256), "batch": (16, 32, 64), "frames": (16, 32, 64)},
    "full": {"hidden": (256, 512, 1024), "batch": (32, 64, 128), "frames": (32, 64, 128)},
}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--size", choices=sorted(GRIDS), default="cpu")
  parser.add_argument("--impls", default="jax,torch_step,torch_sequence")
  parser.add_argument("--vary", default="hidden,batch,frames", help="which sizes to vary (comma-separated)")
  parser.add_argument("--rounds", type=int, default=1)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--timeout", type=float, default=3600)
  parser.add_argument("--markdown", action="store_true", help="print a markdown table on stderr at the end")
  args = parser.parse_args(argv)
  impls = [i.strip() for i in args.impls.split(",") if i.strip()]
  base = bench_step.SIZES[args.size]
  table = []
  done = set()
  for varied in [v.strip() for v in args.vary.split(",") if v.strip()]:
    if varied not in GRIDS[args.size]:
      parser.error(f"--vary: unknown size {varied!r}; expected one of {', '.join(GRIDS[args.size])}")
    for value in GRIDS[args.size][varied]:
      sizes = dict(base, **{varied: value})
      if tuple(sorted(sizes.items())) in done:  # the base size, measured once
        continue
      done.add(tuple(sorted(sizes.items())))
      passthrough = ["--size", args.size, "--steps", str(args.steps), "--warmup", str(args.warmup)]
      for k, v in sizes.items():
        passthrough += [f"--{k}", str(v)]
      s = dict(sizes, modalities=3, joints=bench_step.JOINTS, persons=bench_step.PERSONS)
      rows = bench_step.run_rounds([(impl, "") for impl in impls], passthrough, args.rounds, args.timeout, s)
      jax_row = next((r for r in rows if r["impl"] == "jax"), None)
      if jax_row is not None:
        jax_row["ratio_vs"] = common.ratios(jax_row, rows)
      for r in rows:
        r.pop("machine", None)
        r.pop("step_s_all", None)
        common.emit(**dict(r, name="train_step_scaling", varied=varied, value=value))
      table.append((varied, value, {r["impl"]: r for r in rows}))
  if args.markdown:
    header = "| varied | value | " + " | ".join(f"{i} ms/step" for i in impls) + " | " + \
             " | ".join(f"jax vs {i}" for i in impls if i != "jax") + " |"
    print(header, file=sys.stderr)
    print("|" + "---|" * (2 + len(impls) + len([i for i in impls if i != "jax"])), file=sys.stderr)
    for varied, value, by_impl in table:
      cells = [f"{by_impl[i]['step_ms']:.0f}" if i in by_impl else "-" for i in impls]
      ratios = [f"{by_impl['jax']['ratio_vs'].get(i, float('nan')):.2f}x" if "jax" in by_impl and i in by_impl
                else "-" for i in impls if i != "jax"]
      print(f"| {varied} | {value} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
