"""Optimizers and learning-rate schedules from ``config.optimizer``, shared by pretraining and the protocols.

Both references use PyTorch SGD with momentum and *coupled* weight decay (the decay is added
to the gradient before the momentum), on every trainable parameter (biases, BatchNorm and
any method parameter included): ``optax.add_decayed_weights(wd)`` then ``optax.sgd``. The
learning rate is set once per epoch:

- ``schedule="step"``: ``lr * gamma^(number of milestones m with epoch >= m)``, the epoch
  counted from 0 (so with milestone 351 epochs 0-350 use ``lr``: CMD's ``epoch >= 351`` on
  0-based epochs and HiCLR's ``epoch > 250`` on 1-based epochs are the same rule);
- ``schedule="cosine"``: MoCo's ``lr * 0.5 * (1 + cos(pi * epoch / num_epochs))``.
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
  if opt.schedule == "step":
    milestones = jnp.asarray(sorted(int(m) for m in opt.milestones), jnp.int32)  # may be empty: constant lr

    def schedule(step):
      epoch = step // steps_per_epoch
      return base * jnp.power(float(opt.gamma), jnp.sum(epoch >= milestones))
  elif opt.schedule == "cosine":
    def schedule(step):
      epoch = step // steps_per_epoch
      return base * 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / epochs))
  else:
    raise ValueError(f"config.optimizer.schedule={opt.schedule!r}; {_EXPECTED}")
  return schedule


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """PyTorch SGD(momentum, dampening 0, weight_decay) = add_decayed_weights then sgd."""
  opt = config.optimizer
  return optax.chain(optax.add_decayed_weights(float(opt.weight_decay)),
                     optax.sgd(lr_schedule(config, steps_per_epoch), momentum=float(opt.momentum)))


def validate(config) -> None:
  """One-line ValueErrors for an impossible ``config.optimizer``."""
  opt = config.optimizer
  if opt.schedule not in SCHEDULES:
    raise ValueError(f"config.optimizer.schedule={opt.schedule!r}; {_EXPECTED}")
