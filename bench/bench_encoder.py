"""One modality's encoder: forward (train mode, as the keys) and forward + backward (as the queries).

Times ``cmd_jax.models.gru.GRUEncoder`` (the reference BiGRU: input BN, 3-layer two-cell GRU, MLP
head) at a step's per-encoder workload, jitted, interleaved over ``--rounds`` rounds of
``--calls`` calls, best round kept. ``--before-rev REV`` also loads
``cmd_jax/models/encoder.py`` (the module's name before the GRU got its own file,
``cmd_jax/models/gru.py``) as it was at git revision ``REV`` (``git show``) and times it
side by side in the same process, which is how the before/after figures of
bench/RESULTS.md were made. ``--options`` adds rows with Encoder options, e.g.
``input_projection=hoisted`` or ``compute_dtype=bfloat16``.

  python bench/bench_encoder.py --size cpu --before-rev 498479a
  python bench/bench_encoder.py --size full --options input_projection=per_step   # on a GPU
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=wrong-import-position

SIZES = {"full": dict(hidden=1024, layers=3, frames=64, batch=64),
         "cpu": dict(hidden=256, layers=3, frames=64, batch=64)}
FEATURES = 150


def load_module_at(rev: str):
  """The GRU encoder module at git revision ``rev`` (``cmd_jax/models/gru.py``, or
  ``cmd_jax/models/encoder.py`` before it was renamed), imported as a separate module; its
  class is ``GRUEncoder`` (or ``Encoder``)."""
  for path_at_rev in ("cmd_jax/models/gru.py", "cmd_jax/models/encoder.py"):
    shown = subprocess.run(["git", "show", f"{rev}:{path_at_rev}"], cwd=common.REPO, capture_output=True, text=True)
    if shown.returncode == 0:
      source = shown.stdout
      break
  else:
    raise SystemExit(f"git revision {rev} has neither cmd_jax/models/gru.py nor cmd_jax/models/encoder.py")
  path = Path(tempfile.mkdtemp()) / f"encoder_{rev}.py"
  path.write_text(source, encoding="utf-8")
  name = f"encoder_at_{rev}"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # flax dataclasses look their module up
  spec.loader.exec_module(module)
  return module


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
  parser.add_argument("--before-rev", default=None, help="also time the encoder of this git revision")
  parser.add_argument("--options", action="append", default=[], help="key=value Encoder options, one row each")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--calls", type=int, default=3)
  args = parser.parse_args(argv)

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from cmd_jax.models import gru as current  # pylint: disable=import-outside-toplevel

  s = SIZES[args.size]
  x = jnp.asarray(np.random.default_rng(0).normal(size=(s["batch"], s["frames"], FEATURES)).astype(np.float32))
  variants = [("current", current, {})]
  for opt in args.options:
    key, value = opt.split("=", 1)
    variants.append((f"current[{opt}]", current, {key: int(value) if value.isdigit() else value}))
  if args.before_rev:
    variants.append((f"rev {args.before_rev}", load_module_at(args.before_rev), {}))

  fns = {}
  for name, module, kwargs in variants:
    encoder_class = getattr(module, "GRUEncoder", None) or module.Encoder
    model = encoder_class(hidden_size=s["hidden"], num_layers=s["layers"], num_outputs=128, mlp=True, **kwargs)
    variables = jax.jit(model.init, static_argnames="train")(jax.random.PRNGKey(0), x, train=False)

    def forward(v, x, model=model):
      return model.apply(v, x, train=True, mutable=["batch_stats"])[0]

    def loss(p, x, model=model, stats=variables["batch_stats"]):
      out = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])[0]
      return jnp.sum(out ** 2)

    fwd, grad = jax.jit(forward), jax.jit(jax.grad(loss))
    jax.block_until_ready(fwd(variables, x))
    jax.block_until_ready(grad(variables["params"], x))
    fns[name] = {"forward": (fwd, (variables, x)), "forward_backward": (grad, (variables["params"], x))}

  best: dict = {}
  for _ in range(args.rounds):
    for name, kinds in fns.items():
      for kind, (fn, fn_args) in kinds.items():
        start = time.perf_counter()
        for _ in range(args.calls):
          jax.block_until_ready(fn(*fn_args))
        ms = 1e3 * (time.perf_counter() - start) / args.calls
        best[(name, kind)] = min(best.get((name, kind), float("inf")), ms)
  for (name, kind), ms in best.items():
    common.emit(name=f"encoder_{kind}", impl=name, samples_per_s=round(s["batch"] / ms * 1e3, 2), ms=round(ms, 2),
                sizes=dict(s, features=FEATURES), machine=common.machine("jax"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
