"""Trainers, chosen by ``config.trainer``: each module named here has ``train_and_evaluate(config, workdir)``."""

from __future__ import annotations

import importlib

from cmd_jax.errors import ConfigError

TRAINERS = {
    # Pretraining of any method (config.method); "cmd_pretrain" is what CMD configs named it before.
    "pretrain": "cmd_jax.trainers.pretrain",
    "cmd_pretrain": "cmd_jax.trainers.pretrain",
    # The downstream protocols (docs/references.md#cmd-downstream-protocols): one module per
    # protocol family in cmd_jax/protocols/.
    "linear": "cmd_jax.protocols.linear",
    "knn": "cmd_jax.protocols.knn",
    "semi": "cmd_jax.protocols.finetune",
    "transfer": "cmd_jax.protocols.finetune",
    "finetune": "cmd_jax.protocols.finetune",
    "pipeline": "cmd_jax.trainers.pipeline",
}


def get_trainer(name: str):
  if name not in TRAINERS:
    raise ConfigError(f"config.trainer={name!r} is unknown; expected one of {', '.join(TRAINERS)}")
  return importlib.import_module(TRAINERS[name]).train_and_evaluate
