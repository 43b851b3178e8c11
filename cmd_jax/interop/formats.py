"""The checkpoint formats by method name, and telling them apart by their keys.

===========  ==============================  =========================================
name         module                          the reference's file
===========  ==============================  =========================================
``cmd``      ``cmd_jax.interop.cmd``         ``{'epoch', 'state_dict', 'optimizer'}``
``hiclr``    ``cmd_jax.interop.hiclr``       torchlight's bare ``state_dict``
===========  ==============================  =========================================

A format module provides (what ``cmd_jax.interop.convert`` calls):

- ``NAME``: the method's name (``config.method``, ``--method``);
- ``DEFAULT_CONFIG``: the config spec an import runs under when none is given;
- ``ONE_STREAM``: True when a checkpoint holds one stream and does not say which (the
  import then needs the stream: ``--stream``, the file name or the reference's
  ``config.yaml``); False when its keys name every stream;
- ``OPTIONS``: the names of the extra keyword options its ``resolve_config`` takes (CMD's
  GRU sizes), refused for the other formats;
- ``detect(state_dict) -> bool``: whether the keys can be this format's;
- ``checkpoint_kind(state_dict) -> str``: ``"pretrain"`` or the format's downstream kind;
- ``resolve_config(state_dict, config=None, *, stream=..., **options)``: the pretraining
  config the checkpoint is imported under (``stream`` only for ``ONE_STREAM`` formats):
  the default config with what the shapes tell, or the given one, checked;
- ``state_dict_to_state(state_dict, config, *, epoch=None) -> (state, meta)``: the
  method's train state and what it has no place for (``kind``, ``num_batches_tracked``,
  the reference epoch), raising ``TorchImportError`` listing what does not fit;
- ``state_to_state_dict(state, config, meta=None) -> {key: torch.Tensor}``: the reverse;
- ``saved_object(state_dict, epoch)``: what the reference's ``torch.save`` writes.

Adding a format = a module with those names (the torchlight family's shared mapping is
``cmd_jax.interop.torchlight``) + an entry in ``FORMATS``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Mapping

from cmd_jax.interop import cmd, hiclr
from cmd_jax.interop.common import TorchImportError

FORMATS: dict[str, ModuleType] = {"cmd": cmd, "hiclr": hiclr}
FALLBACK = "cmd"  # keys no format recognises are checked as CMD's (the error lists what differs)


def get_format(name: str) -> ModuleType:
  if name not in FORMATS:
    raise TorchImportError(f"method {name!r}; expected one of {', '.join(map(repr, FORMATS))} (or none: detected "
                           "from the keys)")
  return FORMATS[name]


def detect_format(state_dict: Mapping[str, Any], path: str) -> ModuleType:
  """The one format whose ``detect`` accepts the keys; ``FALLBACK`` if none does; an error
  naming the candidates if several do."""
  matches = [name for name, fmt in FORMATS.items() if fmt.detect(state_dict)]
  if len(matches) > 1:
    raise TorchImportError(f"{path}: the keys fit the checkpoints of {' and '.join(matches)}; give --method "
                           f"{'|'.join(matches)}")
  return FORMATS[matches[0] if matches else FALLBACK]
