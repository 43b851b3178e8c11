"""Trainers, chosen by ``config.trainer``: each module has ``train_and_evaluate(config, workdir)``."""

from __future__ import annotations

import importlib

from cmd_jax.errors import ConfigError

TRAINERS = {
    # Pretraining of any method (config.method); "cmd_pretrain" is what CMD configs named it before.
    "pretrain": "cmd_jax.trainers.pretrain",
    "cmd_pretrain": "cmd_jax.trainers.pretrain",
    # The downstream protocols (docs/references.md#cmd-downstream-protocols): one module, dispatching
    # on config.trainer.
    "linear": "cmd_jax.trainers.downstream",
    "knn": "cmd_jax.trainers.downstream",
    "semi": "cmd_jax.trainers.downstream",
    "transfer": "cmd_jax.trainers.downstream",
    "finetune": "cmd_jax.trainers.downstream",
    "pipeline": "cmd_jax.trainers.pipeline",
}


def get_trainer(name: str):
  if name not in TRAINERS:
    raise ConfigError(f"config.trainer={name!r} is unknown; expected one of {', '.join(TRAINERS)}")
  return importlib.import_module(TRAINERS[name]).train_and_evaluate
