"""What the protocols feed their steps and evaluations: epoch batches and stream features.

This module owns the references' shuffled training loader (``epoch_batches``: a fresh seeded
permutation per epoch, full batches sharded over the mesh) with its two endings,
``config.drop_last``: ``False`` is the CMD reference's ``DataLoader(shuffle=True,
drop_last=False)`` (the last partial batch too, replicated), ``True`` the torchlight family's
(HiCLR, SkeletonCLR, CrosSCLR, AimCLR: ``processor/processor.py``'s train loader,
``drop_last=True``: ``N // B`` full batches, the rest of the permutation unused that epoch);
the epoch's step count (``steps_per_epoch``: ``ceil(N / B)`` or ``N // B``, which the lr
schedule counts epochs with); and ``StreamFeatures``: the
pooled features of several streams' encoders for a whole split in one pass
(``cmd_jax.evaluators.knn``'s extraction; the test views of docs/references.md#cmd-downstream-views).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cmd_jax import input_pipeline, preemption, sharding
from cmd_jax.errors import ConfigError
from cmd_jax.evaluators import knn
from cmd_jax.layouts import SkeletonLayout


def epoch_seed(seed: int, epoch: int) -> int:
  return (int(seed) * 1_000_003 + int(epoch)) % (2 ** 31)


def epoch_batches(source, *, batch_size: int, seed: int, epoch: int, mesh, read_threads: int = 4,
                  prefetch_batches: int = 4, drop_last: bool = False):
  """One epoch of device batches, as a PyTorch ``DataLoader(shuffle=True, drop_last=drop_last)``:
  ``N // B`` full batches (batch-sharded) of a fresh permutation, then, unless ``drop_last``,
  the remaining ``N % B`` records as a smaller batch (replicated on every device: its own
  shape, so BatchNorm batch statistics and the loss see exactly those records)."""
  n = len(source)
  full = n // batch_size
  dataset = input_pipeline.global_batches(source, global_batch_size=batch_size, seed=epoch_seed(seed, epoch),
                                          shuffle=True, num_epochs=1, drop_remainder=False,
                                          read_threads=read_threads, prefetch_batches=prefetch_batches)
  for i, batch in enumerate(dataset):
    batch = {k: batch[k] for k in ("skeleton", "num_frames", "label")}
    if i < full:
      yield sharding.put_batch(batch, mesh)
    elif not drop_last:
      rest = n - full * batch_size
      whole = {k: _gather_host(v)[:rest] for k, v in batch.items()}
      yield sharding.put_replicated(whole, mesh)


def _gather_host(x: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def steps_per_epoch(num_records: int, batch_size: int, drop_last: bool = False) -> int:
  """``ceil(N / B)`` (the CMD reference's loaders keep the last partial batch), or ``N // B``
  with ``drop_last`` (ConfigError when that leaves an epoch without a step)."""
  if not drop_last:
    return -(-num_records // batch_size)
  steps = num_records // batch_size
  if steps < 1:
    raise ConfigError(f"config.batch_size={batch_size} with config.drop_last=True leaves an epoch of {num_records} "
                      f"records without a step; expected a batch size of at most {num_records}")
  return steps


class StreamFeatures:
  """Test-split features of several streams in one pass (``knn.extract_features`` on the
  concatenation of ``knn.make_feature_fn`` per stream); the jitted function is built once."""

  def __init__(self, model, layout: SkeletonLayout, streams: Sequence[str], frames: int, crop_ratio: float | None,
               feature_dim: int):
    self.streams, self.dim = tuple(streams), feature_dim
    fns = {m: knn.make_feature_fn(model, layout, m, frames, crop_ratio) for m in streams}

    def fn(variables, skeleton, num_frames):
      return jnp.concatenate([fns[m](variables[m], skeleton, num_frames) for m in self.streams], axis=-1)

    self.fn = fn

  def __call__(self, variables: Mapping[str, Any], source, *, batch_size: int, mesh) -> tuple[dict, np.ndarray]:
    feats, labels = knn.extract_features(self.fn, dict(variables), source, batch_size=batch_size, mesh=mesh,
                                         after_batch=lambda: preemption.check("while computing features"))
    return {m: feats[:, i * self.dim:(i + 1) * self.dim] for i, m in enumerate(self.streams)}, labels
