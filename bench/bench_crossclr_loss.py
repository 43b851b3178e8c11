"""CrosSCLR's loss and its gradient, per phase: what the single compiled step pays for the phase switch.

The step computes the single-view loss before ``crossclr.cross_epoch`` and the cross-view
mining loss after (``cmd_jax.methods.crossclr.losses.crossclr_loss``), selected by a traced
flag so that one program serves both phases. The cross-view loss works on six ``[N, 1 + 2K]``
logit arrays (about 200 MB of float32 at the release's batch 128 and queue 32768), the
single-view loss on three ``[N, 1 + K]``. This script times ``value_and_grad`` of the loss with
respect to the three streams' queries (the rest of the step, the encoders, does not depend on
the phase) for each way of selecting, in each phase:

* ``cond_remat`` (what ``crossclr_loss`` does): ``lax.cond`` on the flag, the cross-view
  branch under ``jax.checkpoint`` (its intermediates recomputed in the backward pass instead
  of kept: ``lax.cond``'s residuals are the union of both branches', zero-filled in the
  branch not taken);
* ``cond``: ``lax.cond`` without the checkpoint;
* ``select``: both losses computed every step, one kept by ``jnp.where``;
* ``single_only``: the single-view loss alone (what phase 1 costs without any switch).

Each row: ``step_ms`` (mean over ``--steps`` timed calls after ``--warmup``), the phase, the
peak resident memory of the worker process (on a CPU) or the device's peak bytes, the sizes.
Every variant runs in its own worker process, ``--rounds`` times interleaved, best kept.

    python bench/bench_crossclr_loss.py                 # the release's sizes (batch 128, queue 32768)
    python bench/bench_crossclr_loss.py --batch 64 --queue 4096
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=wrong-import-position

VARIANTS = ("cond_remat", "cond", "select", "single_only")


def worker(args) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from cmd_jax.losses import l2_normalize  # pylint: disable=import-outside-toplevel
  from cmd_jax.methods.crossclr import losses  # pylint: disable=import-outside-toplevel

  streams = ("joint", "motion", "bone")
  t = 0.07
  keys = iter(jax.random.split(jax.random.PRNGKey(0), 9))
  unit = lambda shape: l2_normalize(jax.random.normal(next(keys), shape))  # noqa: E731
  q = {s: unit((args.batch, args.embed)) for s in streams}
  k = {s: unit((args.batch, args.embed)) for s in streams}
  queues = {s: unit((args.queue, args.embed)) for s in streams}

  def by_variant(q_, cross):
    if args.variant == "cond_remat":
      return losses.crossclr_loss(q_, k, queues, cross=cross, temperature=t)[0]
    logits, l_negs = losses.stream_logits(q_, k, queues, t)
    single = lambda ops: losses.single_view_loss(ops[0])[0]  # noqa: E731
    mined = lambda ops: losses.cross_view_loss(ops[0], ops[1], temperature=t)[0]  # noqa: E731
    if args.variant == "cond":
      return jax.lax.cond(cross, mined, single, (logits, l_negs))
    if args.variant == "select":
      return jnp.where(cross, mined((logits, l_negs)), single((logits, l_negs)))
    return single((logits, l_negs))

  fn = jax.jit(jax.value_and_grad(by_variant))
  cross = jnp.asarray(args.phase == "cross")
  mean, _ = common.time_loop(lambda: fn(q, cross), jax.block_until_ready, args.steps, args.warmup)
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  common.emit(name="crossclr_loss", impl=args.variant, phase=args.phase, step_ms=round(1e3 * mean, 3),
              samples_per_s=round(args.batch / mean, 1),
              peak_bytes=(stats or {}).get("peak_bytes_in_use", common.host_peak_rss_bytes()),
              sizes={"batch": args.batch, "queue": args.queue, "embed": args.embed, "streams": 3},
              machine=common.machine("jax"))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--variant", choices=VARIANTS, default="cond_remat", help=argparse.SUPPRESS)
  parser.add_argument("--phase", choices=("single", "cross"), default="single", help=argparse.SUPPRESS)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--queue", type=int, default=32768)
  parser.add_argument("--embed", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  if args.worker:
    worker(args)
    return
  sizes = ["--batch", str(args.batch), "--queue", str(args.queue), "--embed", str(args.embed), "--steps",
           str(args.steps), "--warmup", str(args.warmup)]
  jobs = [["--variant", v, "--phase", p, *sizes] for v in VARIANTS for p in ("single", "cross")
          if not (v == "single_only" and p == "cross")]
  rows, failed = common.best_of_rounds(__file__, jobs, args.rounds, timeout=1800,
                                       on_error=lambda j, msg: print(f"job {jobs[j]}: {msg}", file=sys.stderr))
  for row in rows:
    common.emit(**row)
  if failed:
    raise SystemExit(f"{failed} worker(s) failed")


if __name__ == "__main__":
  main()
