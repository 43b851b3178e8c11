"""A one-stream MoCo run of the SkeletonCLR family: its train state, its checks, its encoder.

SkeletonCLR, AimCLR and HiCLR pretrain ONE stream per run (``config.stream``: joint, motion or
bone, converted from the views' joint coordinates) on the 50-frame clips, with one query
encoder, one momentum key encoder and one queue of keys (docs/references.md#skeletonclr). This
module owns what their method packages share about such a run:

- ``MoCoState``: the train state of SkeletonCLR and AimCLR (HiCLR's has the same fields and
  adds ``mask_param`` to ``params``), laid out so that the references' ``state_dict`` maps onto it by renaming:

  ==============================  ==========================================================
  PyTorch ``state_dict``          ``MoCoState``
  ==============================  ==========================================================
  ``encoder_q.<key>``             ``params["encoder"]`` / ``batch_stats`` (running mean/var),
                                  path by ``cmd_jax.models.torch_key``
  ``encoder_k.<key>``             ``key_params`` / ``key_batch_stats``
  ``queue`` ``(D, K)``            ``queues[stream]`` ``[K, D]`` (row ``j`` = column ``j``)
  ``queue_ptr`` ``(1,)`` int64    ``queue_ptr`` int32 scalar
  ==============================  ==========================================================

  (BatchNorm's ``num_batches_tracked`` and ST-GCN's graph ``A`` are not state:
  ``cmd_jax.models.torch_buffers``);
- ``one_stream``, ``validate``: the run's impossible setups as one-line errors;
- ``make_model``: the query/key encoder with the projection head;
- ``create_state``: query and key encoders initialised independently (the references'
  ``weights_init`` re-initialises both after the key encoder was copied from the query
  encoder: a quirk, kept), the queue of unit-norm Gaussian rows, pointer 0;
- ``query_encoders``: what the downstream protocols start from.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from cmd_jax import models, modalities
from cmd_jax import queue as queue_lib
from cmd_jax.layouts import SkeletonLayout
from cmd_jax.methods.common import checks, moco

FRAMES = checks.FRAMES  # the 50-frame clips (config.data.variant = "frame50") the family trains on


@flax.struct.dataclass
class MoCoState:
  """Everything a one-stream MoCo step reads and writes (the module docstring's table)."""
  step: jax.Array                    # int32 scalar: optimizer steps taken
  params: dict[str, Any]             # {"encoder": the query encoder (head included)}
  key_params: Any                    # the momentum (key) encoder
  batch_stats: Any                   # the query encoder's BN running statistics
  key_batch_stats: Any               # the key encoder's BN running statistics
  queues: dict[str, jax.Array]       # {stream: [K, D]}
  queue_ptr: jax.Array               # int32 scalar
  opt_state: Any
  rng: jax.Array                     # uint32[2]: the run's base key; step keys are fold_in(rng, step)


def one_stream(config, method: str) -> tuple[str]:
  """``(stream,)``: the one stream a run of ``method`` (its display name) pretrains."""
  names = modalities.parse_names(config.stream, "config.stream")
  if len(names) != 1:
    raise ValueError(f"config.stream={config.stream!r}: {method} pretrains one stream per run; expected one of "
                     f"{', '.join(modalities.MODALITIES)} (run three pretrainings for the three streams)")
  return names


def validate(config, method: str, *, topk: int = 1) -> None:
  """The checks every one-stream run of the family shares (``ValueError`` naming the field):
  one stream, then the family's (``checks.validate_run``: a queue that holds whole batches
  and at least ``topk`` entries, momentum in [0, 1], a positive temperature and crop padding,
  the 50-frame clips)."""
  one_stream(config, method)
  checks.validate_run(config, method, topk=topk)


def make_model(config, layout: SkeletonLayout, training: bool = False):
  """The query/key encoder with the projection head (``config.model.embed_dim``, MLP)."""
  return models.build_encoder(config.model, layout, num_outputs=int(config.model.embed_dim),
                              mlp=bool(config.model.mlp), training=training)


def create_state(config, layout: SkeletonLayout, tx: optax.GradientTransformation, method: str, *,
                 model, extra_params: dict[str, Any] | None = None, state_class=MoCoState):
  """A fresh ``state_class`` (host arrays), deterministic in ``config.seed`` (module docstring);
  ``params`` is ``{"encoder": ...}`` plus ``extra_params`` (HiCLR's ``mask_param``), all trained.
  ``model``: the encoder the method's loss applies (its ``make_model(config, layout)``), so
  that state and loss always use one encoder."""
  (stream,) = one_stream(config, method)
  rng = jax.random.PRNGKey(int(config.seed))
  query_key, key_key, queue_key, run_key = jax.random.split(rng, 4)
  query, key = moco.init_encoder_pair(model, query_key, key_key, moco.dummy_clip(layout, FRAMES))
  params = {"encoder": query["params"], **(extra_params or {})}
  queues, ptr = queue_lib.init_queues(queue_key, (stream,), int(config.model.embed_dim), int(config.moco.queue_size))
  return state_class(step=jnp.zeros((), jnp.int32), params=params, key_params=key["params"],
                     batch_stats=query["batch_stats"], key_batch_stats=key["batch_stats"], queues=queues,
                     queue_ptr=ptr, opt_state=tx.init(params), rng=run_key)


def query_encoders(state, config, method: str) -> dict[str, dict[str, Any]]:
  """``{stream: {"params", "batch_stats"}}``: the query encoder (head included)."""
  (stream,) = one_stream(config, method)
  return {stream: {"params": state.params["encoder"], "batch_stats": state.batch_stats}}


def stream_views(views: tuple[jax.Array, ...], like: jax.Array, stream: str, layout: SkeletonLayout):
  """The views converted to ``stream`` (after the augmentation, as the references' processors
  do), in the batch's float dtype (float32; float64 when the batch is, for precision tests)."""
  dtype = jnp.result_type(views[0], like)
  return tuple(modalities.modality(v.astype(dtype), stream, layout) for v in views)
