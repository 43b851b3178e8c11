"""The machine's matmul peak as XLA reaches it: the denominator of "% of peak" in bench/RESULTS.md.

Times one large matmul ``[4096, 512] @ [512, 1536]`` (the shape of a layer's input
projection at the CPU size: T*N rows, 2H inputs, 2 cells x 3H outputs), jitted on the
default JAX device, in float32 and with bfloat16 operands accumulated in float32; the best of
``--rounds`` rounds of ``--calls`` calls. Prints one JSON line per dtype.

  python bench/bench_matmul.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=wrong-import-position


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--size", choices=("cpu", "full"), default="cpu",
                      help="cpu: [4096, 512] @ [512, 1536] (a CPU-size layer's input projection); "
                           "full: [4096, 2048] @ [2048, 6144] (the full size's)")
  parser.add_argument("--shape", default=None, help="M,K,N (overrides --size)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--calls", type=int, default=10)
  args = parser.parse_args(argv)

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  shape = args.shape or {"cpu": "4096,512,1536", "full": "4096,2048,6144"}[args.size]
  m, k, n = (int(v) for v in shape.split(","))
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.random((m, k), np.float32))
  b = jnp.asarray(rng.random((k, n), np.float32))
  flops = 2.0 * m * k * n
  for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
    x, y = a.astype(dtype), b.astype(dtype)
    fn = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    jax.block_until_ready(fn(x, y))
    best = float("inf")
    for _ in range(args.rounds):
      start = time.perf_counter()
      for _ in range(args.calls):
        jax.block_until_ready(fn(x, y))
      best = min(best, (time.perf_counter() - start) / args.calls)
    common.emit(name="matmul", impl=f"xla_{name}", samples_per_s=None, gflop_per_s=round(flops / best / 1e9, 1),
                ms=round(1e3 * best, 3), sizes={"m": m, "k": k, "n": n}, machine=common.machine("jax"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
