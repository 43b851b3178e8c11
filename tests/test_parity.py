"""Numerical parity with a PyTorch model of the reference CMD, written here from the spec.

Follows issue 5 scope item 2 and docs/references.md#cmd-encoder (``BIGRU``),
#cmd-pretraining-step (the MoCo/CMD builder: modalities, queries, EMA, keys, InfoNCE, the
six-term distillation, enqueue), #cmd-pretraining-settings (SGD) and #cmd-quirks items 3, 4 and
13. The torch side (``TorchBIGRU``, ``TorchCMD`` in ``tests/torch_reference.py``, shared with
the benchmarks) is written from that text, not copied from the reference repository:

- ``TorchBIGRU``: ``BatchNorm1d(F)`` on ``(N, F, T)``; ``nn.GRU(F, H, L, bidirectional=True,
  batch_first=True)`` called once per time step on a length-1 slice with the carried
  ``h_n`` (the reference's loop); the last step's output; ``fc`` or the MLP head
  ``Sequential(Linear(2H, 2H), ReLU, Linear(2H, out))``.
- ``TorchCMD``: six encoders (``encoder_q``/``encoder_k`` x joint/motion/bone), the
  modalities computed in torch from the 5-D views, three ``(D, K)`` queue buffers and
  pointers; ``forward`` = normalised queries, the momentum update of the key encoders'
  *parameters* (before the keys), keys in train mode, ``[l_pos, l_neg] / T`` with CE,
  teacher top-k on the keys' own-queue similarities, the student gathered from the other
  modality's query similarities, ``KLDivLoss(batchmean)`` with teacher T 0.05 / student T
  0.1, six terms, then the enqueue.

Both sides get the SAME weights: the JAX state is exported by the converter
(``cmd_jax.interop.cmd.state_to_state_dict``) and loaded strictly into the torch model, and
checked equal to an independent copy through the documented name mapping
(``tests.test_encoder._flax_name``; queues transposed),
and the SAME inputs: the random augmentation is bypassed by feeding fixed views (the JAX
``train_step`` runs with ``cmd_jax.methods.cmd.views.pretrain_views`` monkeypatched to return them).

Everything is float32 on both sides and compared within ``ATOL = 1e-5`` of ``max(1, the
largest |value|)`` of the compared tensors (``check``: absolute for the O(1) features,
outputs, statistics, parameters and queues, relative for larger values), except the loss
terms and their sums (``LOSS_RTOL``) and the gradients (``GRAD_RTOL``), whose comments say
how they were chosen. Measured maxima (printed with ``pytest -s``; CPU): encoder
features, head outputs and BN statistics <= 3e-7 (small and full size); InfoNCE losses and
each KL term <= 5e-7; the six-term sum and the total loss 2e-6 (sums of terms of size ~1-10);
query gradients <= 3.4e-6 (entries up to ~10); parameters, BN statistics and queues after
one and two full steps <= 7e-7. The JAX side runs with
``jax.default_matmul_precision("float32")`` so an accelerator does not use TF32.

Small sizes (H 16, 2 layers, T 8, N 4, K 16, top-k 8, D 16) keep the file quick (the whole
file: ~80 s on a 2-core CPU); ``test_full_size_encoder_forward`` runs the reference's
encoder sizes (H 1024, 3 layers, T 64, F 150, MLP head 2048 -> 128), forward only, batch 2
(~25 s of it).

The small CMD config uses an EMA momentum of 0.9 and lr 0.1 (the reference: 0.999 and
0.01) so that the ORDER of the EMA and the SGD step is observable above the tolerance:
the reference's EMA runs inside ``forward`` (before ``optimizer.step()``) with the current
query parameters, the JAX ``train_step`` with the pre-update ones; the test checks both
agree and that the other order would be told apart. SGD momentum 0.9 and weight decay 1e-4
are the reference's.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmd_jax import augment, data, losses, modalities  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.layouts import NTU25  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.models.gru import GRUEncoder as Encoder  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.trainers import pretrain as cp  # noqa: E402  pylint: disable=wrong-import-position
from configs import pretrain_cmd  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.interop import cmd as cmd_format  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax import optim  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.methods import cmd as cmd_method  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.methods.cmd import losses as cmd_losses  # noqa: E402  pylint: disable=wrong-import-position
from cmd_jax.methods.cmd import views as cmd_views  # noqa: E402  pylint: disable=wrong-import-position
from tests.test_encoder import _flax_name  # noqa: E402  pylint: disable=wrong-import-position
from tests.torch_reference import MODS, SUFFIX, TorchBIGRU, TorchCMD  # noqa: E402  pylint: disable=wrong-import-position

# O(1) quantities (GRU states in (-1, 1), unit-norm queries, keys and queue rows, parameters
# and BN statistics ~1): chains of T x L cell steps of sums of n = F + H terms (F = 150; H 16,
# or 1024 at the full size), ~sqrt(n) u each in any summation order (u = 6e-8); measured
# <= 7e-7 (full size <= 2e-7). 1e-5 is ~170 u of their size.
ATOL = 1e-5
DIRECTIONS = [(a, b) for a in MODS for b in MODS if a != b]

# The small CMD setup.
N, T, K, D, TOPK, H, L = 4, 8, 16, 16, 8, 16, 2
C, V, M = 3, 25, 2
F = V * C * M
LR, SGD_MOMENTUM, WD, EMA_M = 0.1, 0.9, 1e-4, 0.9
MOCO_T, TEACHER_T, STUDENT_T = 0.07, 0.05, 0.1


# ----------------------------------------------------------------------------------------
# Weights across frameworks and comparisons
# ----------------------------------------------------------------------------------------

def _get(tree, path):
  for part in path:
    tree = tree[part]
  return tree


def load_encoder(module: TorchBIGRU, params, batch_stats) -> None:
  """Flax ``params`` / ``batch_stats`` -> a ``TorchBIGRU`` through the documented name mapping."""
  state = module.state_dict()
  for key in state:
    if key.endswith("num_batches_tracked"):
      continue
    collection, *path = _flax_name(key)
    value = np.asarray(_get(params if collection == "params" else batch_stats, path), np.float32)
    assert tuple(state[key].shape) == value.shape, key
    state[key] = torch.from_numpy(value.copy())
  module.load_state_dict(state)


def encoder_tree(module: TorchBIGRU):
  """A ``TorchBIGRU``'s tensors as Flax-shaped ``(params, batch_stats)`` numpy trees."""
  params, stats = {}, {}
  for key, value in module.state_dict().items():
    if key.endswith("num_batches_tracked"):
      continue
    collection, *path = _flax_name(key)
    node = params if collection == "params" else stats
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value.detach().numpy().copy()
  return params, stats


def load_cmd(model: TorchCMD, state: cmd_method.TrainState) -> None:
  """A JAX ``TrainState`` -> ``TorchCMD``: six encoders, the queues (transposed), the pointers."""
  for m, s in SUFFIX.items():
    load_encoder(model.enc("q", s), state.params[m], state.batch_stats[m])
    load_encoder(model.enc("k", s), state.key_params[m], state.key_batch_stats[m])
    getattr(model, f"queue{s}").copy_(torch.from_numpy(np.asarray(state.queues[m]).T.copy()))
    getattr(model, f"queue_ptr{s}")[0] = int(state.queue_ptr)


def cmd_trees(model: TorchCMD):
  """``TorchCMD`` -> the ``TrainState`` fields (params, key_params, stats, key stats, queues, ptr)."""
  out = {"params": {}, "key_params": {}, "batch_stats": {}, "key_batch_stats": {}, "queues": {}, "ptrs": {}}
  for m, s in SUFFIX.items():
    out["params"][m], out["batch_stats"][m] = encoder_tree(model.enc("q", s))
    out["key_params"][m], out["key_batch_stats"][m] = encoder_tree(model.enc("k", s))
    out["queues"][m] = getattr(model, f"queue{s}").numpy().T.copy()
    out["ptrs"][m] = int(getattr(model, f"queue_ptr{s}"))
  return out


def max_diff(a, b) -> float:
  """Largest absolute difference over matching leaves (trees must have the same structure)."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(jax.tree.map(np.asarray, a)) == jax.tree.structure(jax.tree.map(np.asarray, b))
  assert len(la) == len(lb) and la
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in zip(la, lb))


def check(what: str, jax_value, torch_value, rtol: float = ATOL) -> float:
  """max |jax - torch| <= ``rtol * max(1, max |torch|)`` over the leaves: absolute for O(1)
  values, relative to the largest entry for larger ones."""
  diff = max_diff(jax_value, torch_value)
  scale = max(1.0, max(float(np.max(np.abs(np.asarray(x, np.float64)))) for x in jax.tree.leaves(torch_value)))
  print(f"  {what}: max |diff| = {diff:.3g} (largest |value| {scale:.3g})")
  assert diff <= rtol * scale, f"{what}: max |diff| {diff} > {rtol} * {scale}"
  return diff


# Loss terms and their sums are compared relatively. A loss term is a log-sum-exp (or a KL of
# two log-softmaxes) of logits sim / tau with tau >= 0.05; the similarity of two unit vectors of
# D = 16 float32 products carries up to D * u ~ 1e-6 of rounding (u = 6e-8), i.e. up to
# ~2e-5 per logit, and a sum of nine such terms reaches 10-20. Summation order differs
# between CPUs (AVX2 vs AVX-512 vectorised reductions), so an absolute 1e-5 is only ~5
# float32 ulps of such a total (measured 1.14e-5 on an AVX-512 CPU, 6 ulps of 17.8).
# 1e-5 relative (~84 ulps at any magnitude) is well inside the error bound and still far
# below what a wrong formula, weight or term would change.
LOSS_RTOL = 1e-5
# Gradients, of the largest entry of a modality's tree (~10 here): they carry the logits'
# rounding (<= D u / tau = 1.4e-5 relative at worst, ~sqrt(D) u / tau = 3e-6 as a random walk)
# back through the T x L steps; measured 3.3e-7 of the largest entry (3.1e-6 of 9.5). An
# absolute 1e-5 would be 3x the measurement; a wrong gradient is off by O(1) of its scale.
GRAD_RTOL = 3e-5


def check_loss(what: str, jax_value, torch_value) -> float:
  return check(what, jax_value, torch_value, rtol=LOSS_RTOL)


def to_np(x):
  return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def skeleton_views(seed: int, n: int = N, t: int = T) -> np.ndarray:
  """Two fixed views ``[n, 2, C, t, V, M]``; the second person is absent (zeros) except in
  sample 0, as in NTU, so several BN channels are constant (batch variance 0)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 2, C, t, V, M)).astype(np.float32)
  x[1:, :, :, :, :, 1] = 0.0
  return x


# ----------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------

def encoder_parity(hidden, layers, t, n, mlp, num_class, seed, perturb_bn, modes=(True, True, False),
                   numpy_init=False):
  """Runs JAX and torch side by side on batches ``x0, x1, x2`` in ``modes`` (True = training
  mode, which updates the BN running statistics); returns the max differences.

  ``numpy_init``: draw the weights with numpy, ``U(+-1/sqrt(H))`` everywhere (about the
  spec's bounds), instead of ``model.init``; threefry on a small CPU takes seconds at the
  full size."""
  model = Encoder(hidden_size=hidden, num_layers=layers, num_outputs=num_class, mlp=mlp, fc_init="xavier")
  views = skeleton_views(seed, n=n, t=t)
  xs = [np.asarray(modalities.flatten(jnp.asarray(views[:, i]))) for i in range(2)]
  xs.append(np.asarray(modalities.flatten(modalities.bone(jnp.asarray(views[:, 0]), NTU25))))
  if numpy_init:
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(seed), xs[0])
    rng = np.random.default_rng(seed)
    bound = 1.0 / hidden ** 0.5
    params = jax.tree.map(lambda a: rng.uniform(-bound, bound, a.shape).astype(np.float32), shapes["params"])
    params["input_norm"] = {"scale": np.ones(F, np.float32), "bias": np.zeros(F, np.float32)}
    stats = {"input_norm": {"mean": np.zeros(F, np.float32), "var": np.ones(F, np.float32)}}
  else:
    variables = jax.jit(model.init, static_argnames="train")(jax.random.PRNGKey(seed), xs[0], train=False)
    params, stats = variables["params"], variables["batch_stats"]
  if perturb_bn:  # non-default BN affine and running statistics, so both modes are exercised
    rng = np.random.default_rng(seed + 1)
    params = jax.tree.map(np.asarray, params)
    params["input_norm"] = {"scale": rng.uniform(0.5, 1.5, F).astype(np.float32),
                            "bias": rng.normal(0, 0.2, F).astype(np.float32)}
    stats = {"input_norm": {"mean": rng.normal(0, 0.5, F).astype(np.float32),
                            "var": rng.uniform(0.5, 2.0, F).astype(np.float32)}}
  ref = TorchBIGRU(F, hidden, layers, num_class, mlp=mlp)
  load_encoder(ref, params, stats)

  @functools.partial(jax.jit, static_argnames=("train",))
  def apply(params, stats, x, train):
    """(feature, head output, new stats) from ONE call (one BN update, like one torch forward);
    the feature is the GRU module's output at the last step, captured as an intermediate."""
    out, upd = model.apply({"params": params, "batch_stats": stats}, x, train=train,
                           capture_intermediates=lambda mdl, _: mdl.name == "gru",
                           mutable=["batch_stats", "intermediates"])
    feat = upd["intermediates"]["gru"]["__call__"][0][:, -1]
    return feat, out, upd["batch_stats"] if train else stats

  diffs = {}
  with jax.default_matmul_precision("float32"), torch.no_grad():
    for i, (x, train) in enumerate(zip(xs, modes)):
      mode = "train" if train else "eval"
      feat_j, out_j, stats = apply(params, stats, x, train)
      ref.train(train)
      xt = torch.from_numpy(np.array(x))
      # One torch forward per batch (one BN update); the feature is read by a hook on fc.
      seen = {}
      head = ref.fc[0] if mlp else ref.fc
      hook = head.register_forward_pre_hook(lambda _m, args: seen.setdefault("feature", args[0]))
      out_t = ref(xt)
      hook.remove()
      diffs[f"{mode}{i} feature"] = check(f"{mode}-mode feature, batch {i}", feat_j, to_np(seen["feature"]))
      diffs[f"{mode}{i} head"] = check(f"{mode}-mode head output, batch {i}", out_j, to_np(out_t))
      diffs[f"{mode}{i} bn stats"] = check(f"BN running statistics after batch {i}", stats,
                                           encoder_tree(ref)[1])
  return diffs


@pytest.mark.parametrize("mlp", [False, True], ids=["fc", "mlp"])
def test_small_encoder_train_and_eval_mode(mlp):
  """Features, head outputs and BN running statistics, H 16, 2 layers, T 8, N 4: two
  training-mode batches (the running statistics update twice, unbiased variance) then one
  inference-mode batch (running statistics used)."""
  print()
  diffs = encoder_parity(H, L, T, N, mlp, num_class=D if mlp else 60, seed=1, perturb_bn=True)
  assert len(diffs) == 9


def test_full_size_encoder_forward():
  """The reference's encoder sizes: F 150, H 1024, 3 layers, T 64, MLP head 2048 -> 2048 -> 128,
  batch 2, forward only: one training-mode batch (BN update), then one inference-mode batch.

  About 25 s on a 2-core CPU, nearly all of it torch's per-step loop (the reference's
  computation: 64 calls of a 45M-parameter ``nn.GRU``, ~8 s per forward)."""
  print()
  start = time.time()
  diffs = encoder_parity(1024, 3, 64, 2, True, num_class=128, seed=2, perturb_bn=False, modes=(True, False),
                         numpy_init=True)
  print(f"  full-size encoder parity: {time.time() - start:.1f} s")
  assert len(diffs) == 6


def test_sequence_impl_computes_the_step_impl_function():
  """The benchmarks' "optimised PyTorch" encoder (each forward-only cell as one whole-sequence
  ``nn.GRU`` call) computes the reference's per-step function: same weights -> same head
  outputs, BN statistics and parameter gradients (float32, ``ATOL``)."""
  torch.manual_seed(0)
  step = TorchBIGRU(F, H, L, D, mlp=True, impl="step")
  seq = TorchBIGRU(F, H, L, D, mlp=True, impl="sequence")
  seq.copy_from(step)
  x = torch.randn(N, T, F)
  out_step, out_seq = step(x), seq(x)
  out_step.square().sum().backward()
  out_seq.square().sum().backward()
  print()
  check("head output, step vs sequence", to_np(out_seq), to_np(out_step))
  check("BN running mean", to_np(seq.input_norm.running_mean), to_np(step.input_norm.running_mean))
  grads_step = {k: to_np(p.grad) for k, p in step.named_parameters()}
  for k in range(L):
    for c, suffix in enumerate(("", "_reverse")):
      for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        check(f"grad {name}_l{k}{suffix}", to_np(getattr(seq.encoder.cells[2 * k + c], f"{name}_l0").grad),
              grads_step[f"encoder.gru.{name}_l{k}{suffix}"])
  check("grad fc", to_np(seq.fc[2].weight.grad), grads_step["fc.2.weight"])


def test_sequence_impl_cmd_step_matches_step_impl():
  """``TorchCMD(impl="sequence")`` and ``TorchCMD(impl="step")`` with the same weights give
  the same losses for one forward (the benchmark compares the same function)."""
  torch.manual_seed(1)
  a = TorchCMD(H, L, D, K, EMA_M, MOCO_T, TOPK, TEACHER_T, STUDENT_T, impl="step")
  b = TorchCMD(H, L, D, K, EMA_M, MOCO_T, TOPK, TEACHER_T, STUDENT_T, impl="sequence")
  for name in ("", "_motion", "_bone"):
    for kind in ("q", "k"):
      b.enc(kind, name).copy_from(a.enc(kind, name))
    getattr(b, f"queue{name}").copy_(getattr(a, f"queue{name}"))
  views = skeleton_views(3)
  im_q, im_k = torch.from_numpy(views[:, 0].copy()), torch.from_numpy(views[:, 1].copy())
  out_a, out_b = a(im_q, im_k), b(im_q, im_k)
  print()
  for key in ["loss_joint", "loss_motion", "loss_bone", "loss_cmd", "loss"]:
    check_loss(f"{key}, step vs sequence", to_np(out_b[key]), to_np(out_a[key]))


# ----------------------------------------------------------------------------------------
# The CMD step
# ----------------------------------------------------------------------------------------

def small_config():
  config = pretrain_cmd.get_config("ntu60_xsub")
  config.model.hidden_size, config.model.num_layers, config.model.embed_dim = H, L, D
  config.model.mlp, config.model.bidirectional = True, False
  config.batch_size, config.moco.queue_size, config.cmd.topk = N, K, TOPK
  config.moco.momentum, config.moco.temperature = EMA_M, MOCO_T
  config.cmd.teacher_temperature, config.cmd.student_temperature, config.cmd.weight = TEACHER_T, STUDENT_T, 1.0
  config.augment.frames = config.augment.min_length = T
  config.optimizer.lr, config.optimizer.momentum, config.optimizer.weight_decay = LR, SGD_MOMENTUM, WD
  config.optimizer.schedule, config.optimizer.milestones = "step", ()
  config.evaluator.name = ""
  return config


@pytest.fixture(scope="module")
def setup():
  """The initial JAX state (random queues, BN defaults) and a TorchCMD loaded with it."""
  config = small_config()
  layout = data.layout_of(config.data)
  state = cp.create_train_state(config, layout, steps_per_epoch=100)
  state = jax.tree.map(lambda x: np.array(x, copy=True), state)
  return config, layout, state


def torch_model(state, config) -> TorchCMD:
  """A TorchCMD holding the JAX state's weights, exported by the converter
  (``cmd_jax.interop.cmd.state_to_state_dict``, strict load), as a user's checkpoint would
  be; the independent name mapping (``load_cmd``) must give the very same tensors."""
  model = TorchCMD(H, L, D, K, EMA_M, MOCO_T, TOPK, TEACHER_T, STUDENT_T)
  model.load_state_dict(cmd_format.state_to_state_dict(state, config), strict=True)
  by_mapping = TorchCMD(H, L, D, K, EMA_M, MOCO_T, TOPK, TEACHER_T, STUDENT_T)
  load_cmd(by_mapping, state)
  for (name, a), (_, b) in zip(model.state_dict().items(), by_mapping.state_dict().items()):
    if not name.endswith("num_batches_tracked"):
      assert torch.equal(a, b), name
  model.train()
  return model


def jax_loss_and_grads(config, layout, state, views):
  """The JAX step's pieces called directly: EMA, keys, queries, ``cmd_loss`` and its gradient."""
  model = cmd_method.make_model(config, data.layout_of(config.data))
  inputs_q = {m: modalities.flatten(modalities.modality(jnp.asarray(views[:, 0]), m, layout)) for m in MODS}
  inputs_k = {m: modalities.flatten(modalities.modality(jnp.asarray(views[:, 1]), m, layout)) for m in MODS}

  @jax.jit
  def run(state):
    key_params = jax.tree.map(lambda k, q: EMA_M * k + (1 - EMA_M) * q, state.key_params, state.params)
    unused = jax.random.PRNGKey(0)  # the GRU has no dropout: the key is not used
    keys = {m: cmd_method._embed(model, key_params[m], state.key_batch_stats[m], inputs_k[m], unused)[0]  # pylint: disable=protected-access
            for m in MODS}

    def loss_fn(params):
      queries = {m: cmd_method._embed(model, params[m], state.batch_stats[m], inputs_q[m], unused)[0]  # pylint: disable=protected-access
                 for m in MODS}
      loss, metrics = cmd_losses.cmd_loss(queries, keys, state.queues, topk=TOPK, temperature=MOCO_T,
                                          teacher_temperature=TEACHER_T, student_temperature=STUDENT_T)
      return loss, (metrics, queries)

    (_, (metrics, queries)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return metrics, queries, keys, grads

  with jax.default_matmul_precision("float32"):
    return run(state)


def test_losses_and_query_gradients_for_one_step(setup):
  """Queries and keys, the three InfoNCE losses, the six KL terms, their sum, the total loss,
  and the gradient of every query-encoder parameter, for one step with the same queues."""
  config, layout, state = setup
  views = skeleton_views(10)
  metrics, queries, keys, grads = jax_loss_and_grads(config, layout, state, views)
  ref = torch_model(state, config)
  out = ref(torch.from_numpy(views[:, 0].copy()), torch.from_numpy(views[:, 1].copy()))
  ref.zero_grad()
  out["loss"].backward()
  print()
  check("queries q (normalised, 3 modalities)", queries, {m: to_np(out["q"][m]) for m in MODS})
  check("keys k (EMA'd key encoders, train mode)", keys, {m: to_np(out["k"][m]) for m in MODS})
  for m in MODS:
    check_loss(f"InfoNCE loss_{m}", metrics[f"loss_{m}"], to_np(out[f"loss_{m}"]))
  for a, b in DIRECTIONS:
    name = cmd_losses.kl_name(a, b)
    check_loss(f"CMD term {name}", metrics[name], to_np(out[name]))
  check_loss("CMD loss (sum of six)", metrics["loss_cmd"], to_np(out["loss_cmd"]))
  check_loss("total loss", metrics["loss"], to_np(out["loss"]))
  torch_grads = {}
  for m, s in SUFFIX.items():
    module = ref.enc("q", s)
    g = {}
    for key, p in module.named_parameters():
      collection, *path = _flax_name(key)
      assert collection == "params"
      node = g
      for part in path[:-1]:
        node = node.setdefault(part, {})
      node[path[-1]] = to_np(p.grad)
    torch_grads[m] = g
    assert all(p.grad is None for p in ref.enc("k", s).parameters())
  for m in MODS:
    check(f"query-encoder gradients ({m}, every parameter)", grads[m], torch_grads[m], rtol=GRAD_RTOL)
  scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(grads))
  print(f"  (largest gradient entry: {scale:.3g})")
  assert scale > 1e-3  # the gradients are not trivially zero


def test_two_full_sgd_steps_ema_and_enqueue(setup, monkeypatch):
  """Two full steps: ``cmd_jax.trainers.pretrain.train_step`` (views patched in) vs the torch builder's
  forward + ``torch.optim.SGD(model.parameters(), lr, momentum 0.9, weight_decay 1e-4)``.
  After each step: query and key parameters, query and key BN statistics, queues, pointer
  and the logged losses agree. Step 2 exercises the SGD momentum buffers and the queue
  rows written at pointer N."""
  config, layout, state = setup
  views = [skeleton_views(20), skeleton_views(21)]
  # Bypass the random augmentation: the "skeleton" of the batch carries the two views.
  monkeypatch.setattr(cmd_views, "pretrain_views", lambda key, x, num_frames, **kwargs: (x[:, 0], x[:, 1]))
  tx = optim.make_optimizer(config, 100)
  step = jax.jit(functools.partial(cp.train_step, config=config, layout=layout, tx=tx,
                                   schedule=optim.lr_schedule(config, 100), steps_per_epoch=100))
  ref = torch_model(state, config)
  opt = torch.optim.SGD(ref.parameters(), lr=LR, momentum=SGD_MOMENTUM, weight_decay=WD)
  print()
  for i, v in enumerate(views):
    before_params, before_key, before_queues = state.params, state.key_params, state.queues
    with jax.default_matmul_precision("float32"):
      state, metrics = step(state, {"skeleton": jnp.asarray(v), "num_frames": jnp.full((N,), T, jnp.int32)})
    state = jax.tree.map(lambda x: np.array(x, copy=True), state)
    out = ref(torch.from_numpy(v[:, 0].copy()), torch.from_numpy(v[:, 1].copy()))
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    got = cmd_trees(ref)
    print(f" step {i + 1}:")
    check_loss("total loss", metrics["loss"], to_np(out["loss"]))
    check_loss("CMD loss", metrics["loss_cmd"], to_np(out["loss_cmd"]))
    check("query parameters after SGD", state.params, got["params"])
    check("key parameters after the EMA", state.key_params, got["key_params"])
    check("query BN running statistics", state.batch_stats, got["batch_stats"])
    check("key BN running statistics", state.key_batch_stats, got["key_batch_stats"])
    check("queues (after the enqueue)", state.queues, got["queues"])
    assert all(p == int(state.queue_ptr) == (N * (i + 1)) % K for p in got["ptrs"].values())
    # The comparisons can tell the orders apart: an EMA with the POST-step query params,
    # or no SGD step at all, would be far outside the tolerance.
    post = jax.tree.map(lambda k, q: EMA_M * k + (1 - EMA_M) * q, before_key, state.params)
    assert max_diff(post, got["key_params"]) > 100 * ATOL
    assert max_diff(before_params, got["params"]) > 100 * ATOL
    assert max_diff(before_queues, got["queues"]) > 100 * ATOL  # the enqueue wrote new rows
