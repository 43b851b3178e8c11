"""AimCLR (Guo et al., AAAI 2022): contrastive learning from extremely augmented skeleton sequences.

One AimCLR step, as the PyTorch reference orders it (Levigty/AimCLR at its latest commit: the
``AimCLR`` module's forward and nearest-neighbour-mining forward, its ST-GCN's ``drop=True``
forward and the ``pretrain_aimclr`` processor; docs/references.md#aimclr-pretraining-step); the
generic loop (``cmd_jax.trainers.pretrain``) adds the SGD update and the step counter:

1. three views of every stored 50-frame clip, on the device (``views.aimclr_views``): the
   extreme view (temporal crop, shear, then flip, rotation, noise, blur, axis mask), the
   normal view (crop, shear) for the query and, drawn independently, for the key;
2. the stream (joint, motion or bone, ``config.stream``) of every view;
3. the query encoder on the normal view (BatchNorm batch 1), then on the extreme view (BN
   batch 2) with EADM on its last feature map (``eadm.eadm``): ONE trunk pass gives the
   extreme feature and the extreme-drop feature, both through the same MLP head; all three
   L2-normalised (running statistics updated normal view first, then extreme);
4. the momentum update of the key encoder's parameters (not its BN statistics) with the
   current query parameters, then the key forward (train mode, its own statistics);
5. the loss (``losses.aimclr_loss``): InfoNCE of the normal view + (D3M of the extreme and of
   the extreme-drop distribution towards the detached normal one) / 2, against the
   pre-enqueue queue; from ``aimclr.mining_epoch`` on, the InfoNCE's positives include the
   top-1 queue neighbours of the three features (nearest-neighbour mining);
6. (generic loop) SGD, momentum 0.9, no Nesterov, coupled weight decay on every query
   parameter (head, BN and edge importances included);
7. enqueue the keys at the pointer.

The two release states (docs/references.md#aimclr-release-states): this module computes the
latest code by default; ``aimclr.eadm = "identity"`` with ``aimclr.extreme_time_flip = True``
computes the first public release (its EADM returned its input, its extreme view reversed
time with p 0.5).

The encoder is whatever ``config.model.name`` builds (the reference: ST-GCN with 16 base
channels; any encoder with the ``map_transform`` call argument works, CMD's GRU and DSTA-Net
included); ``config.model.init = "normal_0.02"`` is the reference's ``weights_init``, applied
to the query AND the key encoder independently (a quirk, kept). The train state is
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
from cmd_jax.methods.aimclr import eadm, losses, views
from cmd_jax.methods.common import checks, moco, single_stream

NAME = "AimCLR"
FRAMES = single_stream.FRAMES
STREAMS_FIELD = "config.stream"
# Fields an AimCLR config.json must have (cmd_jax.pretrained reads them back).
REQUIRED_FIELDS = ("stream", "model.name", "aimclr.mining_epoch", "moco.queue_size", "moco.momentum")

State = single_stream.MoCoState
make_model = single_stream.make_model  # the query/key encoder with the projection head


def streams(config) -> tuple[str, ...]:
  """The one stream an AimCLR run pretrains (``config.stream``)."""
  return single_stream.one_stream(config, NAME)


def validate(config, *, num_train: int | None, num_devices: int, process_count: int) -> None:
  """AimCLR's impossible setups (ValueError naming the field)."""
  del num_train, num_devices, process_count
  a = config.aimclr
  single_stream.validate(config, NAME, topk=int(a.topk))
  checks.check_aug_method(str(a.aug_method), "config.aimclr.aug_method", allowed="12345")
  if str(a.eadm) not in eadm.MODES:
    raise ValueError(f"config.aimclr.eadm={a.eadm!r}; expected 'threshold' (the release's latest code) or "
                     "'identity' (its first public release: EADM returned its input)")
  if not 0 < float(a.eadm_threshold) <= 1:
    raise ValueError(f"config.aimclr.eadm_threshold={a.eadm_threshold} must be in (0, 1] (an attention level; "
                     "every attention is at least sigmoid(0.5) = 0.62, so a lower threshold drops everything)")
  if not float(a.ddm_weight) >= 0:
    raise ValueError(f"config.aimclr.ddm_weight={a.ddm_weight} must be >= 0")
  checks.check_noise_rng(a.noise_rng, "config.aimclr.noise_rng")


def create_state(config, layout: SkeletonLayout, tx: optax.GradientTransformation) -> State:
  """A fresh state (host arrays): query and key encoders initialised independently, the
  queue of unit-norm Gaussian rows, pointer 0 (``single_stream.create_state``)."""
  return single_stream.create_state(config, layout, tx, NAME, model=make_model(config, layout))


def loss(params, state: State, batch: Mapping[str, jax.Array], key: jax.Array, *, config,
         layout: SkeletonLayout, steps_per_epoch: int):
  """Steps 1-5 and 7 of the module docstring: ``(loss, (metrics, state updates))``."""
  (stream,) = streams(config)
  a = config.aimclr
  model = make_model(config, layout, training=True)
  view_key, normal_dropout, extreme_dropout, key_dropout = jax.random.split(key, 4)
  extreme, q, k = views.aimclr_views(view_key, batch["skeleton"], layout=layout,
                                     temporal_padding_ratio=int(config.augment.temporal_padding_ratio),
                                     shear_amplitude=float(config.augment.shear_amplitude),
                                     aug_method=str(a.aug_method), time_flip=bool(a.extreme_time_flip),
                                     noise_rng=str(a.noise_rng))
  extreme, q, k = single_stream.stream_views((extreme, q, k), batch["skeleton"], stream, layout)

  feat_q, stats = moco.embed(model, params["encoder"], state.batch_stats, q, normal_dropout)
  (feat_e, feat_ed), stats = moco.embed(model, params["encoder"], stats, extreme, extreme_dropout,
                                        map_transform=eadm.map_transform(str(a.eadm), float(a.eadm_threshold)))
  key_params = moco.momentum_update(state.key_params, params["encoder"], float(config.moco.momentum))
  feat_k, key_stats = moco.embed(model, key_params, state.key_batch_stats, k, key_dropout)
  feat_k = jax.lax.stop_gradient(feat_k)

  epoch = state.step // steps_per_epoch  # 0-based: the reference's 1-based epoch > mining_epoch
  total, metrics = losses.aimclr_loss(feat_q, feat_e, feat_ed, feat_k, state.queues[stream],
                                      temperature=float(config.moco.temperature),
                                      mining=epoch >= int(a.mining_epoch), topk=int(a.topk),
                                      ddm_weight=float(a.ddm_weight))
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
