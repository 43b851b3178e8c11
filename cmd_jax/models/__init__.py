"""Neural network modules of cmd_jax (Flax linen).

- ``encoder``: the reference's per-stream ``BIGRU`` encoder (reference_cmd.md 3), with
  PyTorch-layout parameters for checkpoint conversion.
"""

from __future__ import annotations

from cmd_jax.models.encoder import Encoder, TorchBatchNorm, TorchGRU, TorchLinear

__all__ = ["Encoder", "TorchBatchNorm", "TorchGRU", "TorchLinear"]
