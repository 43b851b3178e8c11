"""SkeletonCLR (Li et al., CVPR 2021, CrosSCLR's single-view baseline): MoCo v2 on one skeleton stream.

One SkeletonCLR step, as the PyTorch reference orders it (CrosSCLR's release: the
``SkeletonCLR`` module's forward and the ``pretrain_skeletonclr`` processor;
docs/references.md#skeletonclr-pretraining-step); the generic loop
(``cmd_jax.trainers.pretrain``) adds the SGD update and the step counter:

1. two views of every stored 50-frame clip, on the device (``views.skeletonclr_views``): the
   normal view (temporal crop with mirrored padding, shear) for the query and, drawn
   independently, for the key;
2. the stream (joint, motion or bone, ``config.stream``) of both views;
3. the query encoder on the query view (train mode: batch statistics, running statistics
   updated, dropout on); the feature L2-normalised;
4. the momentum update of the key encoder's parameters (not its BN statistics) with the
   current query parameters, then the key forward (train mode, its own statistics);
5. the loss (``losses.skeletonclr_loss``): InfoNCE against the key and the pre-enqueue queue;
6. (generic loop) SGD, momentum 0.9, no Nesterov, coupled weight decay on every query
   parameter (head, BN and edge importances included);
7. enqueue the keys at the pointer.

The encoder is whatever ``config.model.name`` builds (the reference: ST-GCN with 16 base
channels); ``config.model.init = "normal_0.02"`` is the reference's ``weights_init``,
applied to the query AND the key encoder independently (a quirk, kept). The train state is
``cmd_jax.methods.common.single_stream.MoCoState``.

Deliberate deviations: PRNG streams differ from the reference's numpy/random ones (the views
match in distribution, not bit by bit); the reference's DataLoader workers replay the same
augmentation stream every epoch (reseeded by worker id), here every step draws fresh keys;
batches are cut from per-epoch permutations (``cmd_jax.input_pipeline``).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import optax

from cmd_jax import queue as queue_lib
from cmd_jax.layouts import SkeletonLayout
from cmd_jax.methods.common import moco, single_stream
from cmd_jax.methods.skeletonclr import losses, views

NAME = "SkeletonCLR"
FRAMES = single_stream.FRAMES
STREAMS_FIELD = "config.stream"
# Fields a SkeletonCLR config.json must have (cmd_jax.pretrained reads them back).
REQUIRED_FIELDS = ("stream", "model.name", "moco.queue_size", "moco.momentum")

State = single_stream.MoCoState
make_model = single_stream.make_model  # the query/key encoder with the projection head


def streams(config) -> tuple[str, ...]:
  """The one stream a SkeletonCLR run pretrains (``config.stream``)."""
  return single_stream.one_stream(config, NAME)


def validate(config, *, num_train: int | None, num_devices: int, process_count: int) -> None:
  """SkeletonCLR's impossible setups (ValueError naming the field)."""
  del num_train, num_devices, process_count
  single_stream.validate(config, NAME)


def create_state(config, layout: SkeletonLayout, tx: optax.GradientTransformation) -> State:
  """A fresh state (host arrays): query and key encoders initialised independently, the
  queue of unit-norm Gaussian rows, pointer 0 (``single_stream.create_state``)."""
  return single_stream.create_state(config, layout, tx, NAME, model=make_model(config, layout))


def loss(params, state: State, batch: Mapping[str, jax.Array], key: jax.Array, *, config,
         layout: SkeletonLayout, steps_per_epoch: int):
  """Steps 1-5 and 7 of the module docstring: ``(loss, (metrics, state updates))``."""
  del steps_per_epoch  # one phase: nothing changes with the epoch
  (stream,) = streams(config)
  model = make_model(config, layout, training=True)
  view_key, query_dropout, key_dropout = jax.random.split(key, 3)
  q, k = views.skeletonclr_views(view_key, batch["skeleton"],
                                 temporal_padding_ratio=int(config.augment.temporal_padding_ratio),
                                 shear_amplitude=float(config.augment.shear_amplitude))
  q, k = single_stream.stream_views((q, k), batch["skeleton"], stream, layout)

  feat_q, stats = moco.embed(model, params["encoder"], state.batch_stats, q, query_dropout)
  key_params = moco.momentum_update(state.key_params, params["encoder"], float(config.moco.momentum))
  feat_k, key_stats = moco.embed(model, key_params, state.key_batch_stats, k, key_dropout)
  feat_k = jax.lax.stop_gradient(feat_k)

  total, metrics = losses.skeletonclr_loss(feat_q, feat_k, state.queues[stream],
                                           temperature=float(config.moco.temperature))
  queues, ptr = queue_lib.enqueue(state.queues, state.queue_ptr, {stream: feat_k})
  updates = dict(key_params=key_params, batch_stats=jax.lax.stop_gradient(stats),
                 key_batch_stats=jax.lax.stop_gradient(key_stats), queues=queues, queue_ptr=ptr)
  return total, (metrics, updates)


def query_encoders(state: State, config) -> dict[str, dict[str, Any]]:
  return single_stream.query_encoders(state, config, NAME)


def eval_view(config) -> tuple[int, float | None]:
  """The protocols' view: the stored 50-frame clip as it is (the reference's linear
  evaluation feeds its clips unaugmented)."""
  del config
  return FRAMES, None


def min_length(config) -> int:
  del config
  return FRAMES
