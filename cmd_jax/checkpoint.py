"""Orbax checkpoints in a workdir: the whole train state, the data iterator state, and metadata.

``<workdir>/checkpoints/<step>/`` holds three items: ``state`` (the train-state pytree),
``data`` (the input iterator's state, a small dict identical on every process because the
global batch sequence does not depend on the process count) and ``meta`` (config name,
epoch, ...). Orbax writes a step under a temporary name (``<step>.orbax-checkpoint-tmp*``) and commits
it by a rename, so a step folder (digits only) is complete; a write that failed or was
killed leaves only the temporary folder, which no listing here counts, which the run
holding the workdir removes when it opens it (``writer=True``: orbax's
``cleanup_tmp_directories``) and which ``remove_unfinished`` removes after a failed save.
Only the last ``keep`` steps are kept. Restoring places every leaf replicated on the mesh;
``restore_newest_readable`` falls back past damaged checkpoints.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from etils import epath

from cmd_jax import sharding as sharding_lib
from cmd_jax.errors import ConfigError


TMP_MARK = ".orbax-checkpoint-tmp"  # in the name of a step folder orbax has not committed


class CheckpointError(ConfigError):
  """No checkpoint of a workdir can be read (one line naming the folder and the problem)."""


def _first_line(err: BaseException) -> str:
  text = str(err).strip().splitlines()
  return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def saved_steps(workdir: str | os.PathLike) -> list[int]:
  """The step numbers under ``<workdir>/checkpoints`` (sorted), listed without opening or
  creating anything; [] when there is no such folder."""
  ckpt_dir = os.path.join(os.fspath(workdir), "checkpoints")
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if os.path.isdir(ckpt_dir) else []


def stored_state_tree(step_dir: str) -> Any:
  """The shapes and dtypes of the ``state`` item saved in ``<checkpoints>/<step>`` (orbax's
  metadata; reads no array). Raises whatever orbax raises on a missing or damaged file."""
  return ocp.StandardCheckpointHandler().metadata(epath.Path(os.path.join(step_dir, "state"))).tree


def remove_unfinished(workdir: str | os.PathLike) -> list[str]:
  """Removes the temporary folders of saves under ``<workdir>/checkpoints`` that did not
  finish (process 0; only the run holding the workdir may); returns their names."""
  ckpt_dir = os.path.join(os.fspath(workdir), "checkpoints")
  if jax.process_index() != 0 or not os.path.isdir(ckpt_dir):
    return []
  names = sorted(d for d in os.listdir(ckpt_dir) if TMP_MARK in d)
  for name in names:
    shutil.rmtree(os.path.join(ckpt_dir, name), ignore_errors=True)
  return names


class Checkpointer:
  """Saves and restores ``(state, data_state, meta)`` under ``<workdir>/checkpoints``."""

  def __init__(self, workdir: str | os.PathLike, keep: int = 3, writer: bool = False):
    """``writer``: the run that holds the workdir (its lock): removes the temporary folders of
    unfinished saves. A reader must not (they may be a running pretraining's save)."""
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                             cleanup_tmp_directories=writer),
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

  def restore_newest_readable(self, like_state: Any, mesh: jax.sharding.Mesh, *,
                              check: Callable[[Any, str], None] | None = None,
                              log: Callable[[str], None] = print,
                              set_aside: bool = True) -> tuple[int, Any, dict, dict] | None:
    """``(step, state, data_state, meta)`` of the newest checkpoint that can be read, or None
    when there is none.

    A checkpoint whose files are damaged (a truncated array file, a broken ``_METADATA``)
    is reported in one line naming its folder and the problem, and the next older one is
    tried; once one is restored, the unreadable newer ones are moved to
    ``<workdir>/checkpoints_unreadable/`` when ``set_aside`` (a run resuming: kept for
    inspection, and new saves then reuse their step numbers; a reader leaves them).
    ``check(stored_tree, step_dir)`` may refuse a readable checkpoint of another
    configuration (a ``ConfigError``, not a fallback). Raises ``CheckpointError`` when
    checkpoints exist and none is readable.
    """
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      return None
    unreadable = []

    def skip(step: int, step_dir: str, err: BaseException) -> None:
      unreadable.append((step, _first_line(err)))
      log(f"checkpoint {step_dir} is unreadable ({unreadable[-1][1]}); trying the next older one")

    for step in steps:
      step_dir = os.path.join(self.directory, str(step))
      try:
        stored = stored_state_tree(step_dir)
      except Exception as err:  # pylint: disable=broad-except
        skip(step, step_dir, err)
        continue
      if check is not None:
        check(stored, step_dir)  # a readable checkpoint of another configuration: refused, no fallback
      try:
        state, data_state, meta = self.restore(step, like_state, mesh)
      except Exception as err:  # pylint: disable=broad-except
        skip(step, step_dir, err)
        continue
      if unreadable and set_aside:
        self._set_aside([s for s, _ in unreadable])
        log(f"resuming from {step_dir}, the newest readable checkpoint; the unreadable ones are in "
            f"{os.path.join(os.path.dirname(self.directory), 'checkpoints_unreadable')}")
      elif unreadable:
        log(f"reading {step_dir}, the newest readable checkpoint")
      return step, state, data_state, meta
    newest, reason = unreadable[0]
    raise CheckpointError(f"{self.directory}: none of the {len(steps)} checkpoints is readable (the newest, step "
                          f"{newest}: {reason}); start over in a new --workdir, or move that folder away")

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unreadable step folders out of the manager's directory (process 0), then syncs."""
    if jax.process_index() == 0:
      target = os.path.join(os.path.dirname(self.directory), "checkpoints_unreadable")
      os.makedirs(target, exist_ok=True)
      for step in steps:
        dest = os.path.join(target, str(step))
        suffix = 1
        while os.path.exists(dest):
          dest, suffix = os.path.join(target, f"{step}.{suffix}"), suffix + 1
        shutil.move(os.path.join(self.directory, str(step)), dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices("cmd_jax.checkpoint.set_aside")
    self.manager.reload()

  def reached_preemption(self, step: int) -> bool:
    """Orbax's check of JAX's preemption sync point at ``step`` (False with no ``jax.distributed``
    or with its preemption service off); ``save`` makes the same check."""
    return bool(self.manager.reached_preemption(step))

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
