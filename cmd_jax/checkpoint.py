"""Orbax checkpoints in a workdir: the whole train state, the data iterator state, and metadata.

``<workdir>/checkpoints/<step>/`` holds three items: ``state`` (the train-state pytree),
``data`` (the input iterator's state, a small dict identical on every process because the
global batch sequence does not depend on the process count) and ``meta`` (config name,
epoch, ...). Orbax writes a step under a temporary name and commits it atomically; only
the last ``keep`` steps are kept. Restoring places every leaf replicated on the mesh.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from cmd_jax import sharding as sharding_lib


class Checkpointer:
  """Saves and restores ``(state, data_state, meta)`` under ``<workdir>/checkpoints``."""

  def __init__(self, workdir: str | os.PathLike, keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=("state", "data", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)))

  def restore(self, step: int, like_state: Any, mesh: jax.sharding.Mesh) -> tuple[Any, dict, dict]:
    """Restores step ``step``; ``like_state`` gives the tree structure, shapes and dtypes."""
    rep = sharding_lib.replicated(mesh)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), like_state)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    return out["state"], out["data"], out["meta"]

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
