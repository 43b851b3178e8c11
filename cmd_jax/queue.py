"""The MoCo negative-key queues of every method: layout, initialisation and the functional enqueue.

Follows docs/references.md#cmd-model-and-queues (construction), #cmd-step-order step 6
(enqueue) and #cmd-quirks item 3 (the queues advance in lock-step).

Layout: each queue is a ``[K, D]`` array, ROW ``j`` = the key of one past sample. (The
PyTorch reference stores ``(D, K)`` buffers with columns = samples; a torch-checkpoint
import transposes.) Rows make the enqueue a plain ``dynamic_update_slice`` of the
``[N, D]`` key batch, and the query-vs-queue similarity is ``q @ queue.T`` -> ``[N, K]``
(``losses.similarities``).

One pointer for all modalities: the references with several queues (CMD, CrosSCLR) keep
one ``queue_ptr`` per queue, but they start at 0 and advance by the same ``N`` every step,
so they are always equal. Sharing a single int32 scalar makes the invariant CMD's and
CrosSCLR's cross-modal losses rely on structural: row ``j`` holds the same sample's key in
the joint, motion and bone queues.

Everything here is a pure function of arrays; the queues and the pointer live in the
train state and are checkpointed with it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from cmd_jax import flat_random
from cmd_jax.losses import as_int, l2_normalize

Queues = dict[str, jax.Array]


def validate_queue_config(size: int, global_batch: int, topk: int) -> None:
  """Checks a queue size ``K``, the global batch ``N`` and the mined ``topk`` before training.

  Raises ``ValueError`` naming the offending values: the enqueue writes ``N`` rows at a
  pointer that advances by ``N`` modulo ``K``, so ``K % N`` must be 0 (the reference relies
  on ``drop_last=True`` and 16384 % 64 == 0); CMD's distillation and the family's mining keep
  the ``topk`` most similar queue entries, so ``0 < topk <= K``.
  """
  size = as_int(size, "queue size")
  global_batch = as_int(global_batch, "global batch")
  topk = as_int(topk, "topk")
  if size <= 0:
    raise ValueError(f"queue size must be positive, got {size}")
  if global_batch <= 0:
    raise ValueError(f"global batch must be positive, got {global_batch}")
  if size % global_batch != 0:
    raise ValueError(
        f"queue size {size} is not a multiple of the global batch {global_batch}: the "
        f"enqueue writes whole batches at a pointer that wraps modulo the queue size "
        f"(e.g. use a queue size of {size - size % global_batch or global_batch})")
  if topk <= 0:
    raise ValueError(f"topk must be positive, got {topk}")
  if topk > size:
    raise ValueError(f"topk {topk} is larger than the queue size {size}: the loss keeps "
                     f"the topk most similar of the {size} queue entries")


def init_queues(key: jax.Array, modalities: Sequence[str], dim: int,
                size: int) -> tuple[Queues, jax.Array]:
  """Random unit-norm queues, one per modality, and the shared pointer.

  As the reference (``randn`` then L2-normalised per sample), each queue is ``[size, dim]``
  float32 drawn from N(0, 1) and normalised along the feature axis; each modality gets
  its own fold of ``key``. Returns ``(queues, ptr)`` with ``ptr`` an int32 scalar 0.
  """
  modalities = list(modalities)
  if not modalities:
    raise ValueError("init_queues needs at least one modality")
  if len(set(modalities)) != len(modalities):
    raise ValueError(f"modality names must be unique, got {modalities}")
  if dim <= 0 or size <= 0:
    raise ValueError(f"queue dim and size must be positive, got dim={dim}, size={size}")
  keys = jax.random.split(key, len(modalities))
  queues = {}
  for name, k in zip(modalities, keys):
    queues[name] = l2_normalize(flat_random.normal(k, (size, dim), jnp.float32), axis=-1)
  return queues, jnp.zeros((), jnp.int32)


def enqueue(queues: Mapping[str, jax.Array], ptr: jax.Array,
            keys_by_modality: Mapping[str, jax.Array]) -> tuple[Queues, jax.Array]:
  """Writes this step's keys into every queue at the shared pointer and advances it.

  ``keys_by_modality[m]`` is the GLOBAL batch of (normalised) keys ``[N, D]`` for queue
  ``m``; it is written to rows ``[ptr, ptr + N)`` of every queue (``ptr`` is the same for
  all), and the new pointer is ``(ptr + N) mod K``. ``K % N == 0`` is required (checked
  here, at trace time), so a batch never straddles the end of the queue. Keys are
  stop-gradient'ed (the reference enqueues under ``no_grad``) and cast to the queue dtype.
  Returns ``(new_queues, new_ptr)``.
  """
  if set(queues) != set(keys_by_modality):
    raise ValueError(f"enqueue got keys for modalities {sorted(keys_by_modality)} but the "
                     f"queues are {sorted(queues)}")
  ptr = jnp.asarray(ptr, jnp.int32)
  batch = None
  new_queues = {}
  for name, queue in queues.items():
    keys = keys_by_modality[name]
    if queue.ndim != 2 or keys.ndim != 2 or keys.shape[1] != queue.shape[1]:
      raise ValueError(f"enqueue[{name!r}]: keys of shape {keys.shape} do not fit a queue of "
                       f"shape {queue.shape} (expected keys [N, {queue.shape[-1]}], queue [K, D])")
    if batch is None:
      batch = keys.shape[0]
    elif keys.shape[0] != batch:
      raise ValueError(f"enqueue: modality {name!r} has {keys.shape[0]} keys, another has "
                       f"{batch}; all modalities must enqueue the same batch")
    size = queue.shape[0]
    if batch == 0 or size % batch != 0:
      raise ValueError(f"enqueue[{name!r}]: queue size {size} is not a multiple of the batch "
                       f"{batch} (see validate_queue_config)")
    keys = jax.lax.stop_gradient(keys).astype(queue.dtype)
    new_queues[name] = jax.lax.dynamic_update_slice(queue, keys, (ptr, jnp.zeros_like(ptr)))
  size = next(iter(queues.values())).shape[0]
  new_ptr = ((ptr + batch) % size).astype(jnp.int32)
  return new_queues, new_ptr
