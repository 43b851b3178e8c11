"""HiCLR (Zhang, Lin, Liu, AAAI 2023): hierarchical consistent contrastive learning with growing augmentations.

One HiCLR step, as the PyTorch reference (the release's ``pretrain_hiclr`` processor and
``HiCLR.forward_pretrain_wmask``) orders it; the generic loop
(``cmd_jax.trainers.pretrain``) adds the SGD update and the step counter:

1. four views of every stored 50-frame clip, on the device (``views.hiclr_views``): the
   basic view (temporal crop with mirrored padding, shear) for query branch 0 and, drawn
   independently, for the key; branch 1 adds the normal augmentations (flip, rotation,
   noise, blur, axis mask); branch 2 is another independent branch-1 draw;
2. the stream (joint, motion or bone, ``config.stream``) of every view;
3. the joint mask on branch 2: ``int(V * mask_ratio)`` joints per frame, one mask for the
   whole batch, masked entries replaced by the learnable scalar ``mask_param``;
4. the three query branches through the query encoder, as three separate BatchNorm
   batches (running statistics updated q, then q1, then q2); features L2-normalised;
5. the momentum update of the key encoder's parameters (not its BN statistics) with the
   current query parameters, then the key forward (train mode, its own statistics);
6. the loss (``losses.hiclr_loss``): InfoNCE of branch 0 (with nearest-neighbour mining
   from epoch ``hiclr.mining_epoch`` on) + (L_h1 + L_h2) / 2, against the pre-enqueue queue;
7. (generic loop) SGD, momentum 0.9, coupled weight decay on every trainable parameter:
   the query encoder (head, BN and edge importances included) and ``mask_param``;
8. enqueue the keys at the pointer.

``config.hiclr.branches = 1`` keeps branch 0 alone (MoCo v2 with the basic views, mining
from its own neighbours): the ablation the paper's claim rests on.

The encoder is whatever ``config.model.name`` builds (the release: ST-GCN with 16 base
channels, or ``dsta``); ``config.model.init = "normal_0.02"`` is the reference's
``weights_init``, applied to the query AND the key encoder independently (the key encoder
does not start as a copy of the query encoder: a reference quirk, kept).

Deliberate deviations: PRNG streams differ from the reference's numpy/random ones (the
views match in distribution, not bit by bit); the reference's DataLoader workers replay
the same augmentation stream every epoch (reseeded by worker id), here every step draws
fresh keys; batches are cut from per-epoch permutations (``cmd_jax.input_pipeline``).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from cmd_jax import queue as queue_lib
from cmd_jax.layouts import SkeletonLayout
from cmd_jax.methods.common import checks, moco, single_stream
from cmd_jax.methods.hiclr import losses, views

NAME = "HiCLR"
FRAMES = single_stream.FRAMES  # the 50-frame clips (config.data.variant = "frame50") HiCLR trains on
STREAMS_FIELD = "config.stream"
# Fields a HiCLR config.json must have (cmd_jax.pretrained reads them back).
REQUIRED_FIELDS = ("stream", "model.name", "hiclr.mining_epoch", "moco.queue_size", "moco.momentum")


@flax.struct.dataclass
class HiCLRState:
  """Everything a HiCLR step reads and writes."""
  step: jax.Array                    # int32 scalar: optimizer steps taken
  params: dict[str, Any]             # {"encoder": query encoder, "mask_param": float32 [1]}
  key_params: Any                    # the momentum (key) encoder
  batch_stats: Any                   # the query encoder's BN running statistics
  key_batch_stats: Any               # the key encoder's BN running statistics
  queues: dict[str, jax.Array]       # {stream: [K, D]}
  queue_ptr: jax.Array               # int32 scalar
  opt_state: Any
  rng: jax.Array                     # uint32[2]: the run's base key; step keys are fold_in(rng, step)


State = HiCLRState


def streams(config) -> tuple[str, ...]:
  """The one stream a HiCLR run pretrains (``config.stream``)."""
  return single_stream.one_stream(config, NAME)


make_model = single_stream.make_model  # the query/key encoder with the projection head


def validate(config, *, num_train: int | None, num_devices: int, process_count: int) -> None:
  """HiCLR's own impossible setups (ValueError naming the field)."""
  del num_train, num_devices, process_count
  single_stream.validate(config, NAME, topk=int(config.hiclr.topk))
  if int(config.hiclr.get("branches", 3)) not in (1, 3):
    raise ValueError(f"config.hiclr.branches={config.hiclr.branches}; expected 3 (HiCLR) or 1 (branch 0 alone: "
                     "MoCo with the basic views, the ablation of the hierarchy)")
  if not 0 <= float(config.hiclr.mask_ratio) < 1:
    raise ValueError(f"config.hiclr.mask_ratio={config.hiclr.mask_ratio} must be in [0, 1)")
  checks.check_aug_method(str(config.hiclr.aug_method), "config.hiclr.aug_method")
  checks.check_noise_rng(config.hiclr.get("noise_rng", "threefry"), "config.hiclr.noise_rng")


def create_state(config, layout: SkeletonLayout, tx: optax.GradientTransformation) -> HiCLRState:
  """A fresh state (host arrays): query and key encoders initialised independently (the
  reference's ``weights_init`` re-initialises both after HiCLR copied one into the other),
  ``mask_param = 0``, the queue of unit-norm Gaussian rows, pointer 0
  (``single_stream.create_state``)."""
  return single_stream.create_state(config, layout, tx, NAME, model=make_model(config, layout), state_class=HiCLRState,
                                    extra_params={"mask_param": jnp.zeros((1,), jnp.float32)})


def loss(params, state: HiCLRState, batch: Mapping[str, jax.Array], key: jax.Array, *, config,
         layout: SkeletonLayout, steps_per_epoch: int):
  """Steps 1-6 and 8 of the module docstring: ``(loss, (metrics, state updates))``."""
  (stream,) = streams(config)
  model = make_model(config, layout, training=True)
  view_key, mask_key, *dropout_keys = jax.random.split(key, 6)
  aug = config.augment
  q, k, q1, q2 = views.hiclr_views(view_key, batch["skeleton"], layout=layout,
                                   temporal_padding_ratio=int(aug.temporal_padding_ratio),
                                   shear_amplitude=float(aug.shear_amplitude), aug_method=str(config.hiclr.aug_method),
                                   adain=bool(config.hiclr.adain), noise_rng=str(config.hiclr.get("noise_rng", "threefry")))
  q, k, q1, q2 = single_stream.stream_views((q, k, q1, q2), batch["skeleton"], stream, layout)
  mask = views.joint_mask(mask_key, q2.shape[2], layout.num_joints, float(config.hiclr.mask_ratio))
  q2 = views.apply_joint_mask(q2, mask, params["mask_param"])

  feat_q, stats = moco.embed(model, params["encoder"], state.batch_stats, q, dropout_keys[0])
  feat_q1 = feat_q2 = None
  if int(config.hiclr.get("branches", 3)) == 3:
    feat_q1, stats = moco.embed(model, params["encoder"], stats, q1, dropout_keys[1])
    feat_q2, stats = moco.embed(model, params["encoder"], stats, q2, dropout_keys[2])

  momentum = float(config.moco.momentum)
  key_params = moco.momentum_update(state.key_params, params["encoder"], momentum)
  feat_k, key_stats = moco.embed(model, key_params, state.key_batch_stats, k, dropout_keys[3])
  feat_k = jax.lax.stop_gradient(feat_k)

  epoch = state.step // steps_per_epoch  # 0-based: the reference's 1-based epoch > mining_epoch
  total, metrics = losses.hiclr_loss(feat_q, feat_q1, feat_q2, feat_k, state.queues[stream],
                                     temperature=float(config.moco.temperature),
                                     mining=epoch >= int(config.hiclr.mining_epoch), topk=int(config.hiclr.topk),
                                     consistency_weight=float(config.hiclr.consistency_weight))
  queues, ptr = queue_lib.enqueue(state.queues, state.queue_ptr, {stream: feat_k})
  metrics = dict(metrics, mask_param=params["mask_param"][0])
  updates = dict(key_params=key_params, batch_stats=jax.lax.stop_gradient(stats),
                 key_batch_stats=jax.lax.stop_gradient(key_stats), queues=queues, queue_ptr=ptr)
  return total, (metrics, updates)


def query_encoders(state: HiCLRState, config) -> dict[str, dict[str, Any]]:
  return single_stream.query_encoders(state, config, NAME)


def eval_view(config) -> tuple[int, float | None]:
  """The protocols' view: the stored 50-frame clip as it is (the reference's linear
  evaluation feeds its clips unaugmented)."""
  del config
  return FRAMES, None


def min_length(config) -> int:
  del config
  return FRAMES
