"""CMD (Cross-modal Mutual Distillation, Mao et al., ECCV 2022): its train state and step pieces.

One CMD step, as the PyTorch reference orders it (the generic loop,
``cmd_jax.trainers.pretrain``, adds the SGD update and the step counter):

1. two views of every clip: temporal crop-resize then a 50/50 spatial augmentation
   (``views.pretrain_views``, on the device, keyed by the step's key);
2. the modalities (joint, motion, bone) of each view (``cmd_jax.modalities``);
3. the momentum update of the key encoders' *parameters* (not BatchNorm statistics):
   ``k = m*k + (1-m)*q`` with the current query parameters, before the keys are computed;
4. keys: the key encoders in train mode (batch-statistic BN, their own running stats
   updated), L2-normalised, no gradient;
5. queries and the loss: the query encoders in train mode; per-modality InfoNCE against the
   modality's queue (pre-enqueue) plus ``cmd.weight`` x the six directed KL terms
   (``losses.cmd_loss``); gradients reach only the query encoders;
6. (generic loop) SGD with momentum and coupled weight decay on every query parameter;
7. enqueue the global batch's keys in every modality queue at the shared pointer.

The encoders are whatever ``config.model.name`` builds (the reference's GRU by default);
``config.modalities`` lists the streams, each with its own query/key encoder and queue.
With one modality and ``cmd.weight = 0`` this is plain MoCo v2.

Speed option: ``config.model.stack_modalities`` runs the modalities' encoders as one
``vmap``-ed encoder (same function).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from cmd_jax import losses as contrastive, models, modalities
from cmd_jax import queue as queue_lib
from cmd_jax.layouts import SkeletonLayout
from cmd_jax.methods.cmd import losses, views


@flax.struct.dataclass
class TrainState:
  """Everything a CMD step reads and writes. Dicts are keyed by modality."""
  step: jax.Array                    # int32 scalar: optimizer steps taken
  params: dict[str, Any]             # query encoders
  key_params: dict[str, Any]         # momentum (key) encoders
  batch_stats: dict[str, Any]        # query encoders' BN running statistics
  key_batch_stats: dict[str, Any]    # key encoders' BN running statistics
  queues: dict[str, jax.Array]       # [K, D] each
  queue_ptr: jax.Array               # int32 scalar, shared by the queues
  opt_state: Any
  rng: jax.Array                     # uint32[2]: the run's base key; step keys are fold_in(rng, step)


State = TrainState
STREAMS_FIELD = "config.modalities"
# Fields a CMD config.json must have (cmd_jax.pretrained reads them back).
REQUIRED_FIELDS = ("modalities", "model.hidden_size", "model.num_layers", "model.mlp", "model.bidirectional",
                   "augment.frames")


def streams(config) -> tuple[str, ...]:
  """The modalities a CMD run pretrains (``config.modalities``), each with its own encoders and queue."""
  return modalities.parse_names(config.modalities, "config.modalities")



def make_model(config, layout: SkeletonLayout, training: bool = False):
  """The pretraining encoder (with the projection head). ``training=True`` adds the step's
  speed options; evaluation and feature extraction always compute in float32."""
  return models.build_encoder(config.model, layout, num_outputs=int(config.model.embed_dim),
                              mlp=bool(config.model.mlp), training=training)


def validate(config, *, num_train: int | None, num_devices: int, process_count: int) -> None:
  """CMD's own impossible setups (ValueError naming the field)."""
  del num_train, num_devices, process_count
  names = streams(config)
  b = int(config.batch_size)
  topk = int(config.cmd.topk) if (float(config.cmd.weight) != 0 and len(names) > 1) else 1
  queue_lib.validate_queue_config(int(config.moco.queue_size), b, topk)
  if not 0 <= float(config.moco.momentum) <= 1:
    raise ValueError(f"config.moco.momentum={config.moco.momentum} must be in [0, 1]")
  if int(config.augment.min_length) > 300 or int(config.augment.frames) <= 0:
    raise ValueError("config.augment: min_length must be <= 300 and frames > 0")
  if config.model.get("stack_modalities", False) and models.model_name(config.model) != "gru":
    raise ValueError("config.model.stack_modalities=True is a GRU speed option; expected False for "
                     f"config.model.name={models.model_name(config.model)!r}")


def create_state(config, layout: SkeletonLayout, tx: optax.GradientTransformation) -> TrainState:
  """A fresh state (host arrays). Each query encoder is initialised independently, as the
  reference's; the key encoders' parameters are copies, their BN statistics the defaults."""
  names = streams(config)
  model = make_model(config, layout)
  rng = jax.random.PRNGKey(int(config.seed))
  init_key, queue_key, run_key = jax.random.split(rng, 3)
  dummy = jnp.zeros((2, 3, int(config.augment.frames), layout.num_joints, layout.num_persons), jnp.float32)
  params, stats = {}, {}
  for i, name in enumerate(names):
    variables = models.init_variables(model, jax.random.fold_in(init_key, i), dummy)
    params[name], stats[name] = variables["params"], variables["batch_stats"]
  queues, ptr = queue_lib.init_queues(queue_key, names, int(config.model.embed_dim), int(config.moco.queue_size))
  copy = lambda tree: jax.tree.map(jnp.array, tree)  # pylint: disable=unnecessary-lambda-assignment
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, key_params=copy(params), batch_stats=stats,
                    key_batch_stats=copy(stats), queues=queues, queue_ptr=ptr, opt_state=tx.init(params),
                    rng=run_key)


def _embed(model, params, stats, x, key):
  """Encoder in train mode: (L2-normalised embedding, updated BN statistics)."""
  out, updated = model.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"],
                             rngs={"dropout": key})
  return contrastive.l2_normalize(out), updated["batch_stats"]


def embed_modalities(model, params, stats, inputs, names, stacked: bool, key: jax.Array):
  """Every modality's encoder on its input: ``({m: embedding}, {m: BN stats})``.

  ``stacked=False`` runs the encoders one after another; ``stacked=True`` stacks the
  modalities' parameters, statistics and inputs on a new leading axis and runs ONE
  ``vmap``-ed encoder (batched GEMMs: fewer, larger kernels and loop iterations). Both
  compute the same function; gradients flow back through the stacking to each modality.
  ``key`` seeds the encoders' dropout (one key per modality).
  """
  keys = jax.random.split(key, len(names))
  if not stacked or len(names) == 1:
    out = {m: _embed(model, params[m], stats[m], inputs[m], keys[i]) for i, m in enumerate(names)}
    return {m: out[m][0] for m in names}, {m: out[m][1] for m in names}
  stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)  # pylint: disable=unnecessary-lambda-assignment
  emb, new_stats = jax.vmap(functools.partial(_embed, model))(
      stack([params[m] for m in names]), stack([stats[m] for m in names]), jnp.stack([inputs[m] for m in names]),
      keys)
  return ({m: emb[i] for i, m in enumerate(names)},
          {m: jax.tree.map(lambda a, i=i: a[i], new_stats) for i, m in enumerate(names)})


def loss(params, state: TrainState, batch: Mapping[str, jax.Array], key: jax.Array, *, config,
         layout: SkeletonLayout, steps_per_epoch: int):
  """Steps 1-5 and 7 of the module docstring: ``(loss, (metrics, state updates))``."""
  del steps_per_epoch  # CMD's loss does not change over the epochs
  names = streams(config)
  model = make_model(config, layout, training=True)
  stacked = bool(config.model.get("stack_modalities", False))
  aug = config.augment
  # The views draw from the step's key itself and the encoders' dropout keys are folded from
  # it, so a step's views are the same whichever encoder (with or without dropout) runs.
  query_key, key_key = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
  view_q, view_k = views.pretrain_views(
      key, batch["skeleton"], batch["num_frames"], ratio_range=(aug.crop_ratio_min, aug.crop_ratio_max),
      min_len=int(aug.min_length), out_len=int(aug.frames), num_corrupted=int(aug.num_corrupted_joints),
      shear_amplitude=float(aug.shear_amplitude), corruption_amplitude=float(aug.corruption_amplitude))
  inputs_q = {m: modalities.modality(view_q, m, layout) for m in names}
  inputs_k = {m: modalities.modality(view_k, m, layout) for m in names}

  momentum = float(config.moco.momentum)
  key_params = jax.tree.map(lambda k, q: momentum * k + (1.0 - momentum) * q, state.key_params,
                            jax.lax.stop_gradient(params))
  keys, key_stats = embed_modalities(model, key_params, state.key_batch_stats, inputs_k, names, stacked, key_key)
  keys = jax.lax.stop_gradient(keys)

  queries, stats = embed_modalities(model, params, state.batch_stats, inputs_q, names, stacked, query_key)
  total, metrics = losses.cmd_loss(
      queries, keys, state.queues, topk=int(config.cmd.topk), temperature=float(config.moco.temperature),
      teacher_temperature=float(config.cmd.teacher_temperature),
      student_temperature=float(config.cmd.student_temperature), cmd_weight=float(config.cmd.weight))
  queues, ptr = queue_lib.enqueue(state.queues, state.queue_ptr, keys)
  updates = dict(key_params=key_params, batch_stats=jax.lax.stop_gradient(stats),
                 key_batch_stats=jax.lax.stop_gradient(key_stats), queues=queues, queue_ptr=ptr)
  return total, (metrics, updates)


def query_encoders(state: TrainState, config) -> dict[str, dict[str, Any]]:
  return {m: {"params": state.params[m], "batch_stats": state.batch_stats[m]} for m in streams(config)}


def eval_view(config) -> tuple[int, float | None]:
  """The protocols' test view: the centre crop (95%) resized to the pretraining's clip length."""
  return int(config.augment.frames), float(config.evaluator.get("crop_ratio", 0.95))


def min_length(config) -> int:
  """The pretraining's minimum crop length: the downstream train view's default."""
  return int(config.augment.min_length)


__all__ = ["State", "TrainState", "create_state", "embed_modalities", "eval_view", "loss", "make_model",
           "min_length", "query_encoders", "streams", "validate", "views", "losses"]
