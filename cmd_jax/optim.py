"""Optimizers and learning-rate schedules from ``config.optimizer``, shared by pretraining and the protocols.

Both references use PyTorch SGD with momentum and *coupled* weight decay (the decay is added
to the gradient before the momentum), on every trainable parameter (biases, BatchNorm and
any method parameter included): ``optax.add_decayed_weights(wd)`` then ``optax.sgd``. The
learning rate is set once per epoch:

- ``schedule="step"``: ``lr * gamma^(number of milestones m with epoch >= m)``, the epoch
  counted from 0 (so with milestone 351 epochs 0-350 use ``lr``: CMD's ``epoch >= 351`` on
  0-based epochs and HiCLR's ``epoch > 250`` on 1-based epochs are the same rule);
- ``schedule="cosine"``: MoCo's ``lr * 0.5 * (1 + cos(pi * epoch / num_epochs))``;
- ``warmup_epochs = W > 0`` (HiCLR's fine-tuning): epochs ``e < W - 1`` use
  ``lr * (e + 1) / W`` (the reference's ``base * epoch / W`` on 1-based epochs ``< W``),
  the rest the schedule above. HiCLR's fine-tuning counts its milestones with ``>=`` on
  1-based epochs, so its steps at 30 and 55 are 0-based milestones 29 and 54 here.

``clip_grad_norm = c > 0`` is PyTorch's ``clip_grad_norm_(parameters, c, norm_type=2)`` called
before ``optimizer.step()`` (AimCLR's semi-supervised processor: ``c = 2``): every gradient is
multiplied by ``min(1, c / (||g|| + 1e-6))``, ``||g||`` the L2 norm over all the gradients
this optimizer updates. SGD's coupled weight decay is added inside ``step()``, so AFTER the
clipping: ``clip_grad_norm(c)`` then ``add_decayed_weights`` then ``sgd``. ``0`` (the
default) clips nothing.

``nesterov = True`` is PyTorch's Nesterov momentum (``optax.sgd(nesterov=True)`` is the
same update). ``frozen`` names modules (e.g. DSTA-Net's ``proj``, the reference's
``fix_conv1``) whose parameters get no update and no weight decay.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("step", "cosine")
_EXPECTED = "expected 'step' or 'cosine'"


def lr_schedule(config, steps_per_epoch: int) -> Callable[[jax.Array], jax.Array]:
  """``step -> lr`` of ``config.optimizer`` and ``config.num_epochs`` (constant within an epoch)."""
  opt = config.optimizer
  base, epochs = float(opt.lr), int(config.num_epochs)
  warmup = int(opt.get("warmup_epochs", 0))
  if opt.schedule == "step":
    milestones = jnp.asarray(sorted(int(m) for m in opt.milestones), jnp.int32)  # may be empty: constant lr

    def decayed(epoch):
      return base * jnp.power(float(opt.gamma), jnp.sum(epoch >= milestones))
  elif opt.schedule == "cosine":
    def decayed(epoch):
      return base * 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / epochs))
  else:
    raise ValueError(f"config.optimizer.schedule={opt.schedule!r}; {_EXPECTED}")

  def schedule(step):
    epoch = step // steps_per_epoch
    if warmup <= 0:
      return decayed(epoch)
    return jnp.where(epoch + 1 < warmup, base * (epoch + 1) / warmup, decayed(epoch))

  return schedule


def clip_grad_norm(max_norm: float) -> optax.GradientTransformation:
  """PyTorch's ``clip_grad_norm_(parameters, max_norm, norm_type=2)``: every gradient times
  ``min(1, max_norm / (||g|| + 1e-6))``, ``||g||`` the L2 norm of all the gradients together
  (``optax.clip_by_global_norm`` without PyTorch's ``1e-6``)."""

  def clip(updates, params=None):
    del params
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(updates)))
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates)

  return optax.stateless(clip)


def make_optimizer(config, steps_per_epoch: int, frozen: tuple[str, ...] = ()) -> optax.GradientTransformation:
  """PyTorch SGD(momentum, dampening 0, weight_decay, nesterov) = add_decayed_weights then sgd,
  after ``clip_grad_norm`` when ``config.optimizer.clip_grad_norm > 0``; every parameter below
  a module named in ``frozen`` (anywhere in its path) is left unchanged (no update, no decay,
  not in the clipped norm)."""
  opt = config.optimizer
  tx = optax.chain(optax.add_decayed_weights(float(opt.weight_decay)),
                   optax.sgd(lr_schedule(config, steps_per_epoch), momentum=float(opt.momentum),
                             nesterov=bool(opt.get("nesterov", False))))
  max_norm = float(opt.get("clip_grad_norm", 0.0))
  if max_norm > 0:
    tx = optax.chain(clip_grad_norm(max_norm), tx)
  if not frozen:
    return tx
  frozen = tuple(frozen)

  def labels(params):
    def label(path, _):
      names = {str(getattr(k, "key", k)) for k in path}
      return "frozen" if names & set(frozen) else "trained"
    return jax.tree_util.tree_map_with_path(label, params)

  return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)


def validate(config) -> None:
  """One-line ValueErrors for an impossible ``config.optimizer``."""
  opt = config.optimizer
  if opt.schedule not in SCHEDULES:
    raise ValueError(f"config.optimizer.schedule={opt.schedule!r}; {_EXPECTED}")
  if int(opt.get("warmup_epochs", 0)) < 0:
    raise ValueError(f"config.optimizer.warmup_epochs={opt.warmup_epochs} must be >= 0")
  max_norm = opt.get("clip_grad_norm", 0.0)
  if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not 0 <= max_norm < float("inf"):
    raise ValueError(f"config.optimizer.clip_grad_norm={max_norm!r}: expected a finite gradient norm >= 0 "
                     "(0: no clipping; AimCLR's semi-supervised fine-tuning: 2)")
