"""One encoder: forward (train mode, as a key encoder) and forward + backward (as a query encoder).

Times one of the project's encoders (``--encoder``) at a pretraining step's per-encoder
workload, jitted, in one process, interleaved over ``--rounds`` rounds of ``--calls`` calls,
best round kept, so that formulations of the same function are compared under the same
machine load:

* ``gru``: ``cmd_jax.models.gru.GRUEncoder`` (CMD's BiGRU: input BN, 3-layer two-cell GRU,
  MLP head) on ``[N, T, 150]``; sizes ``cpu``/``full`` = CMD's step (hidden 256/1024, T 64,
  batch 64);
* ``stgcn``: ``cmd_jax.models.stgcn.STGCNEncoder`` (HiCLR's release: 16 base channels,
  feature 256, dropout 0.5, MLP head to 128) on clips ``[N, 3, 50, 25, 2]``; sizes ``cpu``
  = batch 16, ``full`` = batch 128 (HiCLR's);
* ``dsta``: ``cmd_jax.models.dsta.DSTAEncoder`` (the release's blocks, attention dropout
  0.5, MLP head to 128), same clips and sizes.

``--batch`` overrides the size's batch. ``--options key=value[,key=value]`` adds one row
per flag with those encoder attributes (e.g. ``temporal_conv=conv,graph_order=conv_first``
for ST-GCN, ``input_projection=hoisted`` for the GRU); the first row is the encoder as the
training step builds it (``models.build_encoder(..., training=True)``). ``--before-rev REV``
(GRU only) also loads the GRU module as it was at git revision ``REV`` and times it in the
same process. ``--torch`` (ST-GCN and DSTA-Net) adds the PyTorch model of the reference
(``tests/torch_stgcn.TorchSTGCN``, ``tests/torch_dsta.DSTANet``) at the same sizes, timed
the same way in a separate process (``torch_forward``, ``torch_forward_backward``), and
every row's ``ratio_vs`` it.

Each row: ``ms`` per call, ``cpu_ms`` (the process's CPU time per call, all threads: on a
machine loaded by other jobs it moves less than the wall time, so it tells JAX formulations
apart there; PyTorch's OpenMP threads spin while they wait, which it counts too),
``samples_per_s``, ``gflop_per_s`` (conv and matmul FLOPs counted
by ``torch.utils.flop_counter`` on the PyTorch model when ``--torch``, forward and backward;
XLA's cost analysis of the jitted function otherwise, ``flops_source`` says which);
``hiclr_encoders_ms`` (three forward + backward and one forward, the encoder work of one
HiCLR step) on the ``forward_backward`` rows.

  python bench/bench_encoder.py --encoder gru --size cpu --before-rev 498479a
  python bench/bench_encoder.py --encoder stgcn --torch --options temporal_conv=conv,graph_order=conv_first
  python bench/bench_encoder.py --encoder gru --size full --options input_projection=per_step   # on a GPU
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=wrong-import-position

SIZES = {
    "gru": {"full": dict(hidden=1024, layers=3, frames=64, batch=64),
            "cpu": dict(hidden=256, layers=3, frames=64, batch=64)},
    "stgcn": {"full": dict(frames=50, batch=128), "cpu": dict(frames=50, batch=16)},
    "dsta": {"full": dict(frames=50, batch=128), "cpu": dict(frames=50, batch=16)},
}
GRU_FEATURES = 150
JOINTS, PERSONS, EMBED, DROPOUT = 25, 2, 128, 0.5


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


def parse_options(text: str) -> dict:
  """``key=value,key=value`` -> encoder attributes (integers as int, true/false as bool)."""
  out = {}
  for item in (i for i in text.split(",") if i):
    key, value = item.split("=", 1)
    if value.isdigit():
      out[key] = int(value)
    elif value in ("true", "false"):
      out[key] = value == "true"
    else:
      out[key] = value
  return out


def encoder_config(encoder: str, s: dict):
  """``config.model`` of the encoder at the benchmark's sizes."""
  from cmd_jax import models  # pylint: disable=import-outside-toplevel

  c = models.default_config()
  c.name = encoder
  c.embed_dim, c.mlp = EMBED, True
  if encoder == "gru":
    c.hidden_size, c.num_layers = s["hidden"], s["layers"]
  elif encoder == "stgcn":
    c.stgcn.dropout = DROPOUT
  else:
    c.dsta.attention_dropout = DROPOUT
  return c


def jax_rows(encoder: str, s: dict, args) -> tuple[list[dict], float | None, str]:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from cmd_jax import models  # pylint: disable=import-outside-toplevel
  from cmd_jax.layouts import NTU25  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  if encoder == "gru":
    x = jnp.asarray(rng.normal(size=(s["batch"], s["frames"], GRU_FEATURES)).astype(np.float32))
  else:
    x = jnp.asarray((0.3 * rng.normal(size=(s["batch"], 3, s["frames"], JOINTS, PERSONS))).astype(np.float32))
  base = models.build_encoder(encoder_config(encoder, s), NTU25, num_outputs=EMBED, mlp=True, training=True)
  variants = [("current", base)]
  for opt in args.options:
    variants.append((f"current[{opt}]", base.clone(**parse_options(opt))))
  if args.before_rev:
    if encoder != "gru":
      raise SystemExit("--before-rev: GRU only")
    module = load_module_at(args.before_rev)
    encoder_class = getattr(module, "GRUEncoder", None) or module.Encoder
    variants.append((f"rev {args.before_rev}", encoder_class(hidden_size=s["hidden"], num_layers=s["layers"],
                                                             num_outputs=EMBED, mlp=True)))

  fns, xla_flops = {}, None
  for name, model in variants:
    variables = models.init_variables(model, jax.random.PRNGKey(0), x)
    rngs = {"dropout": jax.random.PRNGKey(1)}

    def forward(v, x, model=model, rngs=rngs):
      return model.apply(v, x, train=True, mutable=["batch_stats"], rngs=rngs)[0]

    def loss(p, x, model=model, stats=variables["batch_stats"], rngs=rngs):
      out = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"], rngs=rngs)[0]
      return jnp.sum(out ** 2)

    fwd, grad = jax.jit(forward), jax.jit(jax.grad(loss))
    if xla_flops is None:
      try:
        cost = grad.lower(variables["params"], x).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        xla_flops = float(cost["flops"]) if cost and "flops" in cost else None
      except Exception:  # pylint: disable=broad-except
        xla_flops = None
    jax.block_until_ready(fwd(variables, x))
    jax.block_until_ready(grad(variables["params"], x))
    fns[name] = {"forward": (fwd, (variables, x)), "forward_backward": (grad, (variables["params"], x))}

  best = time_interleaved({(name, kind): (lambda fn=fn, a=a: jax.block_until_ready(fn(*a)))
                           for name, kinds in fns.items() for kind, (fn, a) in kinds.items()},
                          args.rounds, args.calls)
  rows = [{"name": f"encoder_{kind}", "impl": name, "ms": ms, "cpu_ms": cpu_ms}
          for (name, kind), (ms, cpu_ms) in best.items()]
  return rows, xla_flops, common.machine("jax")


def time_interleaved(calls: dict, rounds: int, per_round: int) -> dict:
  """Best-of-``rounds`` ``(wall ms, process CPU ms)`` per call of every entry, the entries
  interleaved in each round (each figure's best round on its own)."""
  best: dict = {}
  for _ in range(rounds):
    for key, call in calls.items():
      start, cpu = time.perf_counter(), time.process_time()
      for _ in range(per_round):
        call()
      ms = 1e3 * (time.perf_counter() - start) / per_round
      cpu_ms = 1e3 * (time.process_time() - cpu) / per_round
      wall, cpu_best = best.get(key, (float("inf"), float("inf")))
      best[key] = (min(wall, ms), min(cpu_best, cpu_ms))
  return best


def torch_rows(encoder: str, s: dict, args) -> tuple[list[dict], float | None, dict]:
  """The PyTorch model of the reference encoder at the same sizes: forward in train mode and
  forward + backward of ``sum(out^2)``; FLOPs of the latter by ``torch.utils.flop_counter``."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  import bench_hiclr  # pylint: disable=import-outside-toplevel

  device = common.torch_device(args.cpu, "default")
  sizes = dict(batch=s["batch"], queue=s["batch"], embed=EMBED, hidden_channels=16, hidden_dim=256)
  model = bench_hiclr.torch_model(sizes, encoder, device).encoder_q.train()
  x = torch.from_numpy((0.3 * np.random.default_rng(0).normal(
      size=(s["batch"], 3, s["frames"], JOINTS, PERSONS))).astype(np.float32)).to(device)

  def sync():
    if device.type == "cuda":
      torch.cuda.synchronize()

  def forward():
    with torch.no_grad():
      model(x)
    sync()

  def forward_backward():
    model.zero_grad(set_to_none=True)
    (model(x)[1] ** 2).sum().backward()
    sync()

  forward()
  forward_backward()
  flops = None
  try:
    from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=import-outside-toplevel
    with FlopCounterMode(display=False) as counter:
      forward_backward()
    flops = float(counter.get_total_flops())
  except Exception as e:  # pylint: disable=broad-except
    print(f"torch flop counter unavailable: {type(e).__name__}: {e}", file=sys.stderr)
  best = time_interleaved({"forward": forward, "forward_backward": forward_backward}, args.rounds, args.calls)
  rows = [{"name": f"encoder_{kind}", "impl": "torch", "ms": ms, "cpu_ms": cpu_ms}
          for kind, (ms, cpu_ms) in best.items()]
  return rows, flops, common.machine("torch")


def finish(rows: list[dict], s: dict, encoder: str, flops_fb: float | None, source: str | None) -> list[dict]:
  """samples/s, GFLOP/s (the forward as a third of the forward + backward count), ratios."""
  out = []
  for r in rows:
    fb = r["name"] == "encoder_forward_backward"
    row = {"name": r["name"], "impl": r["impl"], "encoder": encoder, "samples_per_s": round(s["batch"] / r["ms"] * 1e3, 2),
           "ms": round(r["ms"], 2), "cpu_ms": round(r["cpu_ms"], 1), "sizes": dict(s, encoder=encoder)}
    if flops_fb:
      row["gflop_per_s"] = round((flops_fb if fb else flops_fb / 3) / r["ms"] / 1e6, 1)
      row["flops_source"] = source
    if fb:
      forward = next((o["ms"] for o in rows if o["impl"] == r["impl"] and o["name"] == "encoder_forward"), None)
      if forward is not None:
        row["hiclr_encoders_ms"] = round(3 * r["ms"] + forward, 1)
    row["machine"] = r["machine"]
    out.append(row)
  for row in out:
    torch_row = next((o for o in out if o["impl"] == "torch" and o["name"] == row["name"]), None)
    if torch_row is not None and row is not torch_row:
      row["ratio_vs"] = common.ratios(row, [torch_row])
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--encoder", choices=sorted(SIZES), default="gru")
  parser.add_argument("--size", choices=("cpu", "full"), default="cpu")
  parser.add_argument("--batch", type=int, default=None, help="override the size's batch")
  parser.add_argument("--before-rev", default=None, help="GRU: also time the encoder of this git revision")
  parser.add_argument("--options", action="append", default=[],
                      help="key=value[,key=value] encoder attributes, one row each")
  parser.add_argument("--torch", action="store_true", help="ST-GCN, DSTA-Net: also time the PyTorch model")
  parser.add_argument("--cpu", action="store_true", help="torch on the CPU even when a GPU is visible")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--calls", type=int, default=3)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  s = dict(SIZES[args.encoder][args.size])
  if args.batch is not None:
    s["batch"] = args.batch
  if args.torch and args.encoder == "gru":
    parser.error("--torch: ST-GCN and DSTA-Net only (bench_step.py compares the GRU step with PyTorch)")

  if args.worker:  # the torch rows, in their own process
    rows, flops, machine = torch_rows(args.encoder, s, args)
    for r in rows:
      r["machine"] = machine
    common.emit(rows=rows, flops=flops)
    return 0

  rows, xla_flops, machine = jax_rows(args.encoder, s, args)
  for r in rows:
    r["machine"] = machine
  flops, source = xla_flops, "XLA cost analysis of the jitted forward + backward (every op)"
  if args.torch:
    worker = ["--encoder", args.encoder, "--size", args.size, "--rounds", str(args.rounds), "--calls", str(args.calls)]
    if args.batch is not None:
      worker += ["--batch", str(args.batch)]
    if args.cpu:
      worker.append("--cpu")
    result = common.run_worker(__file__, worker)
    if not result or "error" in result[-1]:
      print(json.dumps(result[-1] if result else {"error": "no torch result"}), file=sys.stderr)
      return 1
    rows += result[-1]["rows"]
    if result[-1]["flops"]:
      flops, source = result[-1]["flops"], "torch flop_counter: conv + matmul of the forward + backward"
  for row in finish(rows, s, args.encoder, flops, source):
    common.emit(**row)
  return 0


if __name__ == "__main__":
  sys.exit(main())
