"""The device mesh and the shardings of the train step (design.md convention 4).

One ``jax.sharding.Mesh`` with a single ``data`` axis over all devices of all processes
(explicitly ``AxisType.Auto``: the partitioner places collectives, e.g. the global
BatchNorm statistics of a sharded batch, what the reference gets from one GPU or
SyncBatchNorm). Batches are sharded on ``data`` along their first axis; the train state
(parameters, batch statistics, queues, optimizer state) is replicated.
"""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int = -1) -> Mesh:
  """A 1-D ``data`` mesh over the first ``num_devices`` devices (-1: all of them)."""
  devices = jax.devices()
  if num_devices not in (-1, len(devices)):
    if not 0 < num_devices <= len(devices):
      raise ValueError(f"mesh.data={num_devices}: {len(devices)} devices are available")
    devices = devices[:num_devices]
  return Mesh(np.array(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_divisible(global_batch: int, mesh: Mesh, what: str = "batch_size") -> None:
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f"{what}={global_batch} is not divisible by the {n} devices of the mesh; "
                     f"use a multiple of {n}")
  if global_batch % jax.process_count():
    raise ValueError(f"{what}={global_batch} is not divisible by the {jax.process_count()} processes")


def put_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's local rows (non-numeric fields dropped)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items() if np.asarray(v).dtype.kind not in "USO"}


def put_replicated(tree, mesh: Mesh):
  """Places a host pytree (identical on every process) replicated on the mesh."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_callback(np.shape(x), sharding,
                                                             lambda idx, x=x: np.asarray(x)[idx]), tree)
