"""CrosSCLR (Li, Wang, Ni, Wang, Yang, Zhang, CVPR 2021): cross-view consistent contrastive learning.

The three streams (joint, motion, bone; the paper's "views") are pretrained together in ONE
run, each a SkeletonCLR (MoCo v2) with its own query and key encoder and queue; after
``cross_epoch`` the streams exchange their nearest neighbours and similarity distributions
(cross-view consistent knowledge mining, ``losses``). One step, as the release's
``CrosSCLR`` (``net/crossclr_3views.py``) and its processor order it
(docs/references.md#crossclr-pretraining-step); the generic loop (``cmd_jax.trainers.pretrain``)
adds the SGD update and the step counter:

1. one normal view pair per clip, on the device (``normal_views``: temporal crop with
   mirrored padding, then shear; query and key drawn independently);
2. the streams of both views (``cmd_jax.modalities``), derived AFTER the augmentation, so
   all streams share one augmentation draw per copy (and row ``i`` of every queue holds the
   same past sample);
3. the query forwards, joint, motion, bone, each encoder in train mode (its own BatchNorm
   batch and running statistics, dropout on); the projection heads (below); features
   L2-normalised;
4. the momentum updates of the key encoders' parameters (not their BN statistics) with the
   query parameters from before this step's SGD update (below: which streams, per phase);
5. the key forwards (train mode: batch statistics, running statistics updated, dropout on),
   L2-normalised, no gradient;
6. the loss (``losses.crossclr_loss``) against the queues before the enqueue: single-view
   InfoNCE summed over the streams for the (0-based) epochs ``< crossclr.cross_epoch``, the
   cross-view mining loss after;
7. (generic loop) SGD, momentum 0.9, coupled weight decay on every query parameter;
8. the keys of every stream enqueued at the ONE shared pointer (``cmd_jax.queue``).

The heads, a quirk of the release kept (docs/references.md#crossclr-model): the joint
encoder's MLP head ``H = fc_2 . ReLU . fc_0`` is SHARED by the three streams; motion and bone
put a private ``Linear(D, D)`` (their ``fc_0``) and a ReLU before it::

  z_joint = H(h_joint),   z_motion = H(relu(P_motion h_motion)),   z_bone = H(relu(P_bone h_bone))

(``h`` the encoder's pooled feature), so ``H`` gets the gradients of all three streams' losses.
The key side mirrors it (``H_k`` in the key joint encoder, private ``P_k``).

The momentum rule, exactly as the release computes it: each stream's update moves that
stream's key encoder AND the shared ``H_k`` (the release's per-stream update zips the query
stream's parameters, which include ``H``, with the key stream's):

- single-view epochs: every stream's update runs (joint, motion, bone, in that order), so
  the backbones and private layers get ``m`` once and ``H_k`` gets it once per stream
  (``m^3`` with three streams, ``m^2`` with two);
- cross-view epochs: ONLY the motion stream's update runs (the release's
  ``cross_training``): the joint and bone key backbones and ``P_k_bone`` stay frozen while
  ``H_k`` gets ``m`` once per step. ``crossclr.update_all_keys = True`` runs every stream's
  update in the cross-view epochs too (the presumably intended rule; a deviation, named in
  ``config.deviations``).

State layout (``CrosSCLRState``; every dict keyed by stream), chosen so that the release's
``state_dict`` maps onto it by renaming: ``params[s]`` / ``key_params[s]`` are the release's
``encoder_q[_s]`` / ``encoder_k[_s]``: the joint one with ``fc_0``, ``fc_2`` (``H``, the
release's ``encoder_q.fc.0``/``fc.2``, repeated in ``encoder_q_<s>.fc.2.0``/``fc.2.2``), motion
and bone with ``fc_0`` (``P_s``, ``encoder_q_<s>.fc.0``); ``queues[s]`` ``[K, D]`` (the release's
``(D, K)`` ``queue[_s]`` transposed) and one ``queue_ptr`` (its three always-equal pointers).

``config.modalities = "joint,motion"`` is the release's two-stream variant (2s-CrosSCLR,
``net/crossclr.py``): the same step with two streams. The encoder is whatever
``config.model.name`` builds (the release: ST-GCN with 16 base channels and
``model.init = "normal_0.02"``, its ``weights_init``, applied to every query and key encoder
independently: the key encoders do not start as copies, a quirk kept).

Deliberate deviations: JAX's PRNG streams (the views match in distribution, not bit by bit),
a fresh key every step (the release's workers replay one augmentation stream every epoch),
batches cut from per-epoch permutations.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from cmd_jax import models, modalities
from cmd_jax import queue as queue_lib
from cmd_jax.layouts import SkeletonLayout
from cmd_jax.methods.common import moco
from cmd_jax.methods.common.views import view_params, view_with
from cmd_jax.methods.crossclr import losses
from cmd_jax.models import TorchLinear, strip_head

FRAMES = 50  # the 50-frame clips (config.data.variant = "frame50") CrosSCLR trains on
STREAMS_FIELD = "config.modalities"
# Fields a CrosSCLR config.json must have (cmd_jax.pretrained reads them back).
REQUIRED_FIELDS = ("modalities", "model.name", "model.mlp", "crossclr.cross_epoch", "moco.queue_size",
                   "moco.momentum")
# The stream sets the release trains: 3s-CrosSCLR (net/crossclr_3views.py) and 2s-CrosSCLR (net/crossclr.py).
STREAM_SETS = (("joint", "motion", "bone"), ("joint", "motion"))
SHARED_HEAD = ("fc_0", "fc_2")  # H: the joint encoder's MLP head, shared by every stream
PRIVATE = "fc_0"                # P_s: motion's and bone's own Linear(D, D) before H
HEAD_OWNER = "joint"            # the stream whose encoder holds H
MOMENTUM_STREAM = "motion"      # the one stream whose key encoder the release updates in cross-view epochs


@flax.struct.dataclass
class CrosSCLRState:
  """Everything a CrosSCLR step reads and writes; dicts keyed by stream (module docstring)."""
  step: jax.Array                    # int32 scalar: optimizer steps taken
  params: dict[str, Any]             # query encoders: joint with H (fc_0, fc_2), motion/bone with P (fc_0)
  key_params: dict[str, Any]         # the key encoders, the same layout (H_k, P_k)
  batch_stats: dict[str, Any]        # the query encoders' BN running statistics
  key_batch_stats: dict[str, Any]    # the key encoders' BN running statistics
  queues: dict[str, jax.Array]       # {stream: [K, D]}
  queue_ptr: jax.Array               # int32 scalar, shared by the queues
  opt_state: Any
  rng: jax.Array                     # uint32[2]: the run's base key; step keys are fold_in(rng, step)


State = CrosSCLRState


def streams(config) -> tuple[str, ...]:
  """The streams a run pretrains (``config.modalities``), in the release's order: joint,
  motion, bone (3s-CrosSCLR) or joint, motion (2s-CrosSCLR)."""
  names = modalities.parse_names(config.modalities, STREAMS_FIELD)
  ordered = tuple(s for s in modalities.MODALITIES if s in names)
  if ordered not in STREAM_SETS:
    raise ValueError(f"{STREAMS_FIELD}={config.modalities!r}: CrosSCLR trains 'joint,motion,bone' (3s-CrosSCLR) "
                     "or 'joint,motion' (2s-CrosSCLR) in one run")
  return ordered


def make_encoder(config, layout: SkeletonLayout, training: bool = False):
  """The encoder with its MLP head (``fc_0 -> ReLU -> fc_2`` to ``config.model.embed_dim``):
  what every stream's encoder is initialised as (motion and bone then keep ``fc_0`` as their
  private layer and drop ``fc_2``, as the release replaces their heads)."""
  return models.build_encoder(config.model, layout, num_outputs=int(config.model.embed_dim), mlp=True,
                              training=training)


def make_backbone(config, layout: SkeletonLayout, training: bool = False):
  """The encoder without a head (its pooled feature): the heads are applied by ``project``."""
  return models.build_encoder(config.model, layout, num_outputs=None, training=training)


def validate(config, *, num_train: int | None, num_devices: int, process_count: int) -> None:
  """CrosSCLR's own impossible setups (ValueError naming the field)."""
  del num_train, num_devices, process_count
  streams(config)
  c = config.crossclr
  queue_lib.validate_queue_config(int(config.moco.queue_size), int(config.batch_size), int(c.topk))
  if not 0 <= float(config.moco.momentum) <= 1:
    raise ValueError(f"config.moco.momentum={config.moco.momentum} must be in [0, 1]")
  if not float(config.moco.temperature) > 0:
    raise ValueError(f"config.moco.temperature={config.moco.temperature} must be positive")
  if int(c.cross_epoch) < 0:
    raise ValueError(f"config.crossclr.cross_epoch={c.cross_epoch}: expected the number of single-view epochs "
                     "(>= 0; at least config.num_epochs for none)")
  for field in ("context", "update_all_keys"):
    if not isinstance(c[field], bool):
      raise ValueError(f"config.crossclr.{field}={c[field]!r} must be True or False")
  if not bool(config.model.mlp):
    raise ValueError("config.model.mlp=False: CrosSCLR's projection head is the MLP shared by the streams; "
                     "expected True")
  if int(config.augment.temporal_padding_ratio) <= 0:
    raise ValueError(f"config.augment.temporal_padding_ratio={config.augment.temporal_padding_ratio} must be positive")
  variant = str(config.data.get("variant", "standard"))
  if variant != "frame50":
    raise ValueError(f"config.data.variant={variant!r}; CrosSCLR trains on the 50-frame clips: expected 'frame50'")


def _stream_parameters(variables: Mapping[str, Any], stream: str) -> dict[str, Any]:
  """The parameters the release's encoder of ``stream`` holds: its own and, for motion
  and bone, the shared head (``{"own": ..., "head": {fc_0, fc_2}}``)."""
  if stream == HEAD_OWNER:
    return {"own": variables[stream]}
  return {"own": variables[stream], "head": {n: variables[HEAD_OWNER][n] for n in SHARED_HEAD}}


def _with_stream_parameters(variables: Mapping[str, Any], stream: str, parts: Mapping[str, Any]) -> dict[str, Any]:
  """``variables`` with ``_stream_parameters(variables, stream)`` replaced by ``parts``."""
  out = dict(variables)
  out[stream] = parts["own"]
  if "head" in parts:
    out[HEAD_OWNER] = dict(out[HEAD_OWNER], **parts["head"])
  return out


def create_state(config, layout: SkeletonLayout, tx: optax.GradientTransformation) -> CrosSCLRState:
  """A fresh state (host arrays): every query and key encoder initialised independently (the
  release's ``weights_init`` re-initialises the whole model after it copied q into k), the
  motion/bone heads replaced by their private ``fc_0`` (H is the joint encoder's), the queues
  of unit-norm Gaussian rows, pointer 0."""
  names = streams(config)
  model = make_encoder(config, layout)
  rng = jax.random.PRNGKey(int(config.seed))
  init_key, queue_key, run_key = jax.random.split(rng, 3)
  dummy = moco.dummy_clip(layout, FRAMES)
  params, key_params, stats, key_stats = {}, {}, {}, {}
  for i, s in enumerate(names):
    query_key, key_key = jax.random.split(jax.random.fold_in(init_key, i))
    query, key = moco.init_encoder_pair(model, query_key, key_key, dummy)
    own = (lambda p: p) if s == HEAD_OWNER else (lambda p: {n: v for n, v in p.items() if n != "fc_2"})
    params[s], key_params[s] = own(query["params"]), own(key["params"])
    stats[s], key_stats[s] = query["batch_stats"], key["batch_stats"]
  queues, ptr = queue_lib.init_queues(queue_key, names, int(config.model.embed_dim), int(config.moco.queue_size))
  return CrosSCLRState(step=jnp.zeros((), jnp.int32), params=params, key_params=key_params, batch_stats=stats,
                       key_batch_stats=key_stats, queues=queues, queue_ptr=ptr, opt_state=tx.init(params),
                       rng=run_key)


def _linear(p, x):
  return TorchLinear(p["weight"].shape[0]).apply({"params": p}, x)


def project(variables: Mapping[str, Any], stream: str, feature: jax.Array) -> jax.Array:
  """The head of ``stream`` on its pooled feature: ``H(h)`` for joint, ``H(relu(P h))`` for
  motion and bone (``variables``: the query or the key encoders)."""
  if stream != HEAD_OWNER:
    feature = jax.nn.relu(_linear(variables[stream][PRIVATE], feature))
  head = variables[HEAD_OWNER]
  return _linear(head["fc_2"], jax.nn.relu(_linear(head["fc_0"], feature)))


def momentum_updates(key_params, params, names, updated: Mapping[str, Any], momentum: float):
  """The release's per-stream momentum updates, in stream order: stream ``s``'s moves its key
  encoder and the shared ``H_k`` towards the (stop-gradient'ed) query side, where
  ``updated[s]`` (a bool, or a traced bool) says it runs."""
  for s in names:
    before = _stream_parameters(key_params, s)
    after = moco.momentum_update(before, _stream_parameters(params, s), momentum)
    if updated[s] is not True:
      after = jax.tree.map(lambda a, b, u=updated[s]: jnp.where(u, a, b), after, before)
    key_params = _with_stream_parameters(key_params, s, after)
  return key_params


def normal_views(key: jax.Array, x: jax.Array, *, temporal_padding_ratio: int, shear_amplitude: float):
  """The query and key views of a batch ``x [B, 3, T, V, M]`` (joint space): each a normal view
  (temporal crop with mirrored padding, then shear), drawn independently."""
  params_q, params_k = view_params(key, x.shape, (False, False), temporal_padding_ratio=temporal_padding_ratio,
                                   shear_amplitude=shear_amplitude, aug_method="")
  return tuple(view_with(x, p, mirror=None, strong=False, temporal_padding_ratio=temporal_padding_ratio,
                         aug_method="") for p in (params_q, params_k))


def loss(params, state: CrosSCLRState, batch: Mapping[str, jax.Array], key: jax.Array, *, config,
         layout: SkeletonLayout, steps_per_epoch: int):
  """Steps 1-6 and 8 of the module docstring: ``(loss, (metrics, state updates))``."""
  names = streams(config)
  c = config.crossclr
  backbone = make_backbone(config, layout, training=True)
  view_key, *dropout_keys = jax.random.split(key, 1 + 2 * len(names))
  aug = config.augment
  view_q, view_k = normal_views(view_key, batch["skeleton"], temporal_padding_ratio=int(aug.temporal_padding_ratio),
                                shear_amplitude=float(aug.shear_amplitude))
  dtype = jnp.result_type(view_q, batch["skeleton"])  # float32; float64 when the batch is (precision tests)
  inputs_q = {s: modalities.modality(view_q.astype(dtype), s, layout) for s in names}
  inputs_k = {s: modalities.modality(view_k.astype(dtype), s, layout) for s in names}

  def embed(variables, stats, s, x, dropout_key):
    return moco.embed(backbone, strip_head(variables[s]), stats, x, dropout_key,
                      project=lambda h: project(variables, s, h))

  q, stats = {}, {}
  for i, s in enumerate(names):
    q[s], stats[s] = embed(params, state.batch_stats[s], s, inputs_q[s], dropout_keys[i])

  epoch = state.step // steps_per_epoch  # 0-based: the reference's 1-based epoch > cross_epoch
  cross = epoch >= int(c.cross_epoch)
  single_view = jnp.logical_not(cross) | bool(c.update_all_keys)
  updated = {s: True if s == MOMENTUM_STREAM else single_view for s in names}
  key_params = momentum_updates(state.key_params, params, names, updated, float(config.moco.momentum))
  k, key_stats = {}, {}
  for i, s in enumerate(names):
    k[s], key_stats[s] = embed(key_params, state.key_batch_stats[s], s, inputs_k[s], dropout_keys[len(names) + i])
  k = jax.lax.stop_gradient(k)

  total, metrics = losses.crossclr_loss(q, k, state.queues, cross=cross, temperature=float(config.moco.temperature),
                                        topk=int(c.topk), context=bool(c.context))
  queues, ptr = queue_lib.enqueue(state.queues, state.queue_ptr, k)
  updates = dict(key_params=key_params, batch_stats=jax.lax.stop_gradient(stats),
                 key_batch_stats=jax.lax.stop_gradient(key_stats), queues=queues, queue_ptr=ptr)
  return total, (metrics, updates)


def query_encoders(state: CrosSCLRState, config) -> dict[str, dict[str, Any]]:
  """Every stream's query encoder (motion and bone with their private ``fc_0``, joint with
  ``H``: the loader drops every head layer)."""
  return {s: {"params": state.params[s], "batch_stats": state.batch_stats[s]} for s in streams(config)}


def eval_view(config) -> tuple[int, float | None]:
  """The protocols' view: the stored 50-frame clip as it is (the release's linear evaluation
  feeds its clips unaugmented)."""
  del config
  return FRAMES, None


def min_length(config) -> int:
  del config
  return FRAMES
