"""Importing a reference checkpoint file into a new workdir, and exporting a workdir to one.

This module owns the steps every format shares (``cmd_jax.interop.formats`` picks the
format): read the file, detect or check the format, resolve the config, convert, refuse
non-finite values, write the workdir atomically (``config.json`` + ``checkpoints/<step>/``,
what ``--config.init_from``, ``cmd_jax.pretrained.load_pretrained`` and
``cmd_jax.api.load_encoder`` read); and the reverse, a workdir's checkpoint written as its
method's reference writes one. The command line is ``cmd_jax.interop.cli``
(``python -m cmd_jax.torch_import``); the formats and decisions: docs/pytorch_interop.md.

A one-stream checkpoint (``ONE_STREAM`` formats: HiCLR) does not say which stream it was
trained on; ``checkpoint_stream`` finds it (the rules are its docstring's) and the workdir
records it (``config.stream``, ``config.torch_import.stream``, the meta's ``stream``), so the
protocols feed that stream.

The checkpoint step is the reference epoch (the file's ``epoch``, else ``N`` of a torchlight
``epoch<N>_model.pt`` name, else ``epoch``/0); ``TrainState.step`` is the same number. The
data-iterator state is empty: continued pretraining starts after that epoch
(``cmd_jax.trainers.pretrain``). Bad input raises ``TorchImportError`` with nothing written.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import jax
import ml_collections

from cmd_jax import checkpoint, data, disk_full, pretrained, sharding, workdir_lock
from cmd_jax.interop import torchlight
from cmd_jax.interop.common import (TorchImportError, check_new_workdir, epoch_from_name, read_checkpoint,
                                    remove_unfinished_imports, save_torch_file, write_atomically)
from cmd_jax.interop.formats import detect_format, get_format
from cmd_jax.interop.torchlight import STREAMS
from cmd_jax.methods import create_train_state, method_name
from cmd_jax.state_checks import non_finite_leaves


def checkpoint_stream(path: str, stream: str | None, method: str) -> tuple[str, str]:
  """``(stream, what said it)`` of a one-stream checkpoint file of ``method``.

  What can say it: ``stream`` (``--stream``), the file name (its one ``joint``/``motion``/
  ``bone`` token: ``ntu60_xsub_motion.pt``; a name with several is not guessed from), and the
  top-level ``stream`` of the reference run's ``config.yaml`` beside the file
  (``cmd_jax.interop.torchlight``). Given, ``stream`` must agree with what the name and the
  config say; not given, the name or the config must say it (and agree with each other).
  Otherwise one-line ``TorchImportError``\\ s naming the file and ``--stream``.
  """
  if stream is not None and stream not in STREAMS:
    raise TorchImportError(f"--stream {stream!r}; expected one of {', '.join(STREAMS)}")
  in_name = torchlight.streams_in_name(path)
  named = in_name[0] if len(in_name) == 1 else None
  configured, config_path = torchlight.stream_in_run_config(path)
  said = [(s, where) for s, where in ((named, "the file name"), (configured, config_path)) if s is not None]
  if stream is not None:
    for value, where in said:
      if value != stream:
        raise TorchImportError(f"{path}: --stream {stream}, but {where} says {value}; expected the stream the "
                               "checkpoint was trained on (nothing was written)")
    return stream, "--stream"
  if len({value for value, _ in said}) > 1:
    raise TorchImportError(f"{path}: the file name says {named} but {config_path} says {configured}; give --stream "
                           "with the stream the checkpoint was trained on (nothing was written)")
  if said:
    return said[0]
  several = f" (its name names {' and '.join(in_name)})" if len(in_name) > 1 else ""
  raise TorchImportError(f"{path}: a {method.upper()} checkpoint holds one stream and does not say which{several}; "
                         f"give --stream {'|'.join(STREAMS)} (or stream=), the stream it was trained on")


def import_checkpoint(path: str | os.PathLike, workdir: str | os.PathLike, config=None, *,
                      stream: str | None = None, hidden_size: int | None = None, num_layers: int | None = None,
                      method: str | None = None, epoch: int | None = None) -> dict[str, Any]:
  """Converts a reference checkpoint file into a new pretraining workdir; returns the meta written.

  ``method``: a format name (``cmd_jax.interop.formats.FORMATS``); None detects it from the
  keys. ``config``: None (the format's default config, sizes from the checkpoint), a
  ``path.py[:arg]`` spec or a ConfigDict (sizes checked). ``stream``: the stream a
  one-stream checkpoint was trained on (``checkpoint_stream``: needed unless its file name
  or the reference's ``config.yaml`` beside it says it). ``hidden_size``/``num_layers``:
  CMD's expected GRU sizes. ``epoch`` overrides the checkpoint's epoch (torchlight files
  hold none: it is read from ``epoch<N>_model.pt`` names). Raises ``TorchImportError`` with
  nothing written.

  The import holds the target's lock (``<parent>/.<name>.lock``: the target appears only by
  the final rename), removes the temporary folders of killed imports into it (saying so),
  and reports a full disk as ``DiskFullError`` in one line with nothing written.
  """
  workdir = os.path.abspath(os.fspath(workdir))
  with workdir_lock.WorkdirLock(workdir, "python -m cmd_jax.torch_import (import)",
                                lock_path=workdir_lock.sibling_lock_path(workdir)):
    remove_unfinished_imports(workdir, _say)
    try:
      return _import_checkpoint(path, workdir, config, stream=stream, hidden_size=hidden_size, num_layers=num_layers,
                                method=method, epoch=epoch)
    except Exception as err:  # pylint: disable=broad-except
      if disk_full.errno_of(err) is None:
        raise
      raise disk_full.reported(err, os.path.dirname(workdir), (
          f"{workdir} was not written (the temporary folder was removed): free space (or raise the quota) and "
          "run the same command again")) from None


def _say(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def _import_checkpoint(path, workdir: str, config, *, stream, hidden_size, num_layers, method, epoch) -> dict[str, Any]:
  """``import_checkpoint`` with the target's lock held."""
  path = os.path.abspath(os.fspath(path))
  check_new_workdir(workdir)
  fmt = get_format(method) if method is not None else None
  state_dict, stored_epoch = read_checkpoint(path)
  if fmt is None:
    fmt = detect_format(state_dict, path)
  if epoch is None:
    epoch = stored_epoch if stored_epoch is not None else epoch_from_name(path)
  options = {name: value for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers))
             if value is not None}
  refused = [name for name in options if name not in fmt.OPTIONS]
  if refused:
    raise TorchImportError(f"--hidden-size/--num-layers are CMD's GRU sizes; a {fmt.NAME.upper()} checkpoint's sizes "
                           "are read off its shapes (or give --config)")
  if fmt.ONE_STREAM:
    stream, stream_from = checkpoint_stream(path, stream, fmt.NAME)
    options["stream"] = stream
  elif stream is not None:
    raise TorchImportError(f"--stream is for one-stream checkpoints; a {fmt.NAME.upper()} checkpoint names its "
                           "streams in its keys")
  config = fmt.resolve_config(state_dict, config, **options)
  try:
    data.layout_of(config.data)
  except ValueError as err:
    raise TorchImportError(str(err)) from None
  state, meta = fmt.state_dict_to_state(state_dict, config, epoch=epoch)
  bad = non_finite_leaves({"params": state.params, "key_params": state.key_params,
                           "batch_stats": state.batch_stats, "queues": state.queues})
  if bad:
    raise TorchImportError(f"{path} holds non-finite values ({'; '.join(bad[:3])}{'; ...' if len(bad) > 3 else ''}); "
                           "expected a finite checkpoint (nothing was written)")
  step = int(epoch or 0)
  config.torch_import = ml_collections.ConfigDict(
      {"source": path, "epoch": -1 if epoch is None else epoch, "kind": meta["kind"]})
  if fmt.ONE_STREAM:
    config.torch_import.stream, config.torch_import.stream_from = stream, stream_from
    meta.update({"stream": stream, "stream_from": stream_from})
  config.name = f"{config.name}_torch_import_epoch{epoch if epoch is not None else 'unknown'}"
  meta.update({"config": config.name, "epoch": step, "step": step, "source": path, "method": fmt.NAME})

  def write(tmp):
    with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
    ckpt = checkpoint.Checkpointer(tmp, keep=1)
    try:
      ckpt.save(step, state, {}, meta)
    finally:
      ckpt.close()

  write_atomically(workdir, write)
  return meta


def export_checkpoint(workdir: str | os.PathLike, out_path: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
  """Writes the latest (or ``step``) checkpoint of a pretraining workdir as the reference of
  its method writes one (the format's ``saved_object``: CMD ``{'epoch', 'state_dict',
  'optimizer': None}``; HiCLR a bare ``state_dict``). Returns ``{'epoch', 'state_dict', ...}``.

  ``out_path`` is written under its lock (``<parent>/.<name>.lock``) through a temporary file
  renamed when complete: a kill or a full disk leaves no file or the complete one, and a
  full disk is a one-line ``DiskFullError``."""
  out_path = os.path.abspath(os.fspath(out_path))
  with workdir_lock.WorkdirLock(out_path, "python -m cmd_jax.torch_import --export",
                                lock_path=workdir_lock.sibling_lock_path(out_path)):
    try:
      return _export_checkpoint(workdir, out_path, step)
    except Exception as err:  # pylint: disable=broad-except
      if disk_full.errno_of(err) is None:
        raise
      raise disk_full.reported(err, os.path.dirname(out_path), (
          f"{out_path} was not written (the partial file was removed): free space (or raise the quota) and run "
          "the same command again")) from None


def _export_checkpoint(workdir, out_path: str, step: int | None) -> dict[str, Any]:
  """``export_checkpoint`` with the output's lock held."""
  workdir = os.path.abspath(os.fspath(workdir))
  config = pretrained.read_pretrain_config(workdir)
  fmt = get_format(method_name(config))
  ckpt = checkpoint.Checkpointer(workdir, keep=1000)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise FileNotFoundError(f"{workdir} has no checkpoint (expected checkpoints/<step>/)")
    step = max(steps) if step is None else int(step)
    if step not in steps:
      raise FileNotFoundError(f"{workdir} has no step {step} (steps: {', '.join(map(str, sorted(steps)))})")
    like = jax.eval_shape(lambda: create_train_state(config, data.layout_of(config.data), 1))
    state, _, meta = ckpt.restore(step, like, sharding.make_mesh())
  finally:
    ckpt.close()
  state_dict = fmt.state_to_state_dict(state, config, meta)
  epoch = meta.get("torch_epoch")
  if epoch is None:
    epoch = int(math.floor(float(meta.get("epoch", step))))
  save_torch_file(fmt.saved_object(state_dict, int(epoch)), out_path)
  return {"epoch": int(epoch), "state_dict": state_dict, "optimizer": None}


__all__ = ["TorchImportError", "export_checkpoint", "import_checkpoint"]
