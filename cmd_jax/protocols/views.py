"""The protocols' training and test views of the stored clips.

This module owns which clip a protocol's step and evaluation feed the encoders
(docs/references.md#cmd-downstream-crops, #cmd-downstream-views; HiCLR's
#hiclr-downstream-protocols), from ``config.augment`` and the pretraining:

- training (``train_view_params``, applied by ``train_clip`` inside the jitted step):
  ``crop_resize``, the CMD reference's random crop-resize (``augment.downstream_train_view``);
  ``crop_shear``, HiCLR's basic view (``cmd_jax.methods.common.views.basic_view``: a temporal
  crop with mirrored padding, then a shear; HiCLR's transformer fine-tuning); ``none``, the
  stored clip. ``""`` picks the pretraining's: ``none`` for a 50-frame pretraining (HiCLR's
  linear evaluation feeds its clips unaugmented), else ``crop_resize``;
- test (``evaluation_view``): the centre crop of ``augment.test_crop`` resized to the clip length,
  or the stored clip as it is (50-frame data).
"""

from __future__ import annotations

from typing import Any

from cmd_jax import augment
from cmd_jax import pretrained as pretrained_lib
from cmd_jax.methods.common import views as family_views

TRAIN_VIEWS = ("", "crop_resize", "none", "crop_shear")


def train_view_mode(config, pre: pretrained_lib.Pretrained) -> str:
  """``config.augment.train_view``, or the pretraining's default: CMD's random crop-resize,
  none for a 50-frame pretraining (HiCLR's linear evaluation feeds its clips unaugmented)."""
  mode = str(config.augment.get("train_view", ""))
  if mode:
    return mode
  return "none" if pre.eval_crop is None else "crop_resize"


def train_view_params(config, pre: pretrained_lib.Pretrained) -> dict[str, Any] | None:
  """The training view: ``{"mode": ..., <its arguments>}``, or None for the stored clip as it is.

  ``crop_resize``: the CMD reference's random crop-resize (``augment.downstream_train_view``);
  ``crop_shear``: HiCLR's basic view, a temporal crop with mirrored padding and a shear
  (``cmd_jax.methods.common.views.basic_view``; HiCLR's transformer fine-tuning);
  ``none``: the stored clip."""
  mode = train_view_mode(config, pre)
  if mode == "none":
    return None
  if mode == "crop_shear":
    return {"mode": mode, "temporal_padding_ratio": int(config.augment.get("temporal_padding_ratio", 6)),
            "shear_amplitude": float(config.augment.get("shear_amplitude", 0.5))}
  frames = int(config.augment.frames) or pre.frames
  min_len = int(config.augment.min_length) or pre.min_length
  return {"mode": mode, "out_len": frames, "min_len": min_len,
          "ratio_range": (float(config.augment.train_crop_min), float(config.augment.train_crop_max))}


def evaluation_view(config, pre: pretrained_lib.Pretrained) -> tuple[int, float | None]:
  """``(frames, crop ratio)`` of the test view (``crop=None``: the stored clip as it is)."""
  frames = int(config.augment.frames) or pre.frames
  return frames, (None if pre.eval_crop is None else float(config.augment.test_crop))


def train_clip(key, batch, view):
  """The training view ``view`` (``train_view_params``) of ``batch["skeleton"]``, drawn from ``key``."""
  if view is None:
    return batch["skeleton"]
  if view["mode"] == "crop_shear":
    return family_views.basic_view(key, batch["skeleton"], temporal_padding_ratio=view["temporal_padding_ratio"],
                                   shear_amplitude=view["shear_amplitude"])
  args = {k: v for k, v in view.items() if k != "mode"}
  return augment.downstream_train_view(key, batch["skeleton"], batch["num_frames"], **args)
