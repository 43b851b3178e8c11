"""The config checks the SkeletonCLR family shares, as one-line ``ValueError``\\ s naming the field.

SkeletonCLR, CrosSCLR, AimCLR and HiCLR train on the 50-frame clips with MoCo v2's queue,
momentum encoder and temperature, and their views' temporal crop; this module owns the checks
of those shared fields (``validate_run``) and of the strong views' options
(``check_aug_method``, ``check_noise_rng``), called by each method's ``validate`` before
anything is compiled.
"""

from __future__ import annotations

from cmd_jax import queue as queue_lib
from cmd_jax.methods.common.views import NOISE_RNGS

FRAMES = 50  # the 50-frame clips (config.data.variant = "frame50") the family trains on
AUG_DIGITS = {"1": "flip", "2": "rotation", "3": "noise", "4": "blur", "5": "axis mask", "6": "time reversal"}


def validate_run(config, method: str, *, topk: int = 1) -> None:
  """A queue that holds whole batches and at least ``topk`` entries, momentum in [0, 1], a
  positive temperature and crop padding, the 50-frame clips (``method``: the display name)."""
  queue_lib.validate_queue_config(int(config.moco.queue_size), int(config.batch_size), int(topk))
  if not 0 <= float(config.moco.momentum) <= 1:
    raise ValueError(f"config.moco.momentum={config.moco.momentum} must be in [0, 1]")
  if not float(config.moco.temperature) > 0:
    raise ValueError(f"config.moco.temperature={config.moco.temperature} must be positive")
  if int(config.augment.temporal_padding_ratio) <= 0:
    raise ValueError(f"config.augment.temporal_padding_ratio={config.augment.temporal_padding_ratio} must be positive")
  variant = str(config.data.get("variant", "standard"))
  if variant != "frame50":
    raise ValueError(f"config.data.variant={variant!r}; {method} trains on the 50-frame clips: expected 'frame50'")


def check_aug_method(aug_method: str, field: str, allowed: str = "123456") -> None:
  """Every digit of a strong view's ``aug_method`` is one of ``allowed``."""
  unknown = sorted(set(str(aug_method)) - set(allowed))
  if unknown:
    expected = ", ".join(f"{d} ({AUG_DIGITS[d]})" for d in allowed)
    raise ValueError(f"{field}={aug_method!r}: unknown option(s) {', '.join(unknown)}; expected digits from {expected}")


def check_noise_rng(noise_rng: str, field: str) -> None:
  """``noise_rng`` names one of the strong views' noise generators (``views.NOISE_RNGS``)."""
  if str(noise_rng) not in NOISE_RNGS:
    raise ValueError(f"{field}={noise_rng!r}; expected 'threefry' or 'fast'")
