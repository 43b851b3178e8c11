"""The downstream protocols on a pretrained checkpoint: linear, kNN, semi-supervised, transfer.

Follows docs/references.md#cmd-downstream-protocols (the reference's
``action_classification_cmd.py``, ``action_retrieval_cmd.py``,
``action_classification_cmd_semi.py`` and the transfer script), #cmd-downstream-crops,
#cmd-downstream-views, #cmd-labelled-subsets (semi-supervised subsets) and #cmd-quirks
items 5-7.
``train_and_evaluate(config, workdir)`` runs the protocol named by ``config.trainer``:

- ``linear`` (#cmd-linear-evaluation): the pretrained query encoder frozen, BatchNorm in inference mode
  (pretraining running statistics), a new ``Linear(2H, classes)`` (weight ``N(0, 0.01)``,
  bias 0) on the last-step GRU feature; SGD lr 0.1, momentum 0.9, no weight decay, batch
  64, 80 epochs, lr x0.1 at epochs 50 and 70. The encoder forward runs inside the jitted
  step under ``stop_gradient`` (the crop is random each step); only the heads are in the
  optimizer state, so every encoder parameter and statistic stays bit-identical.
- ``knn`` (#cmd-knn-retrieval): 1-NN cosine on the L2-normalised 2H features, centre crop (95%) on both
  splits; ``cmd_jax.evaluators.knn`` does the work.
- ``semi`` (#cmd-semi-supervised): full fine-tuning (BN in train mode, running statistics updated; eval
  mode for testing) of encoder + new head on a labelled subset of the training split, SGD
  lr 0.01, momentum 0.9, no weight decay, 80 epochs, [50, 70]. The subset is drawn with a
  seed (``labelled_subset``): ``sampling="global"`` is the reference's (a uniform sample of
  ``int(N * ratio)`` indices), ``"stratified"`` keeps ``max(1, int(n_c * ratio))`` of every
  class. Several seeds run in one command (``config.seeds``); mean and standard deviation
  (sample, ddof=1; 0 for one seed) are reported.
- ``transfer`` (#cmd-transfer): the same fine-tuning on another dataset's split (``config.data``, e.g.
  PKU-MMD II xsub) from a checkpoint pretrained elsewhere (``init_from``), with a new
  classifier for the target's class count and all its labels (ratio 1.0).

Every protocol runs the streams of ``config.streams`` (``joint``, ``motion``, ``bone``, any
subset the pretraining has; the reference evaluates ``joint`` only, #cmd-quirks item 5). Streams are
trained in one jitted step from the same batches and crops, each with its own encoder and
head; their parameters are disjoint, so this equals training them one by one.

Multi-stream fusion (not in the reference's scripts, whose ``view='all'`` averages logits
but is never used): the streams' **class probabilities** (softmax of each head's logits)
are averaged and the arg-max is the fused prediction. For kNN, the fused neighbour is the
bank sample with the largest **average cosine similarity** over the streams (the same as
1-NN on the concatenation of the per-stream L2-normalised features). The entry is named
``three_stream`` for joint + motion + bone and ``fusion`` for any other set of 2+ streams.

Honest reporting (#cmd-quirks item 6): the reference evaluates on the *test* set every 5 epochs and
reports the best of those evaluations (model selection on the test set). Here every
protocol reports ``final_top1``, the accuracy after the last epoch, and, labelled as such,
``best_of_evals_top1``, the reference's number. Accuracies are fractions in [0, 1].

Files written in the workdir (process 0):

- ``results.json``: protocol, init_from, pretraining step and dataset, the downstream
  dataset, per stream ``final_top1``, ``best_of_evals_top1``, ``best_epoch`` and the curve
  of evaluations (semi/transfer: per seed, plus mean and std), the fusion entry;
- ``metrics.jsonl`` (+ TensorBoard): per-epoch train loss/accuracy/lr, every evaluation; of the
  last run only (a recomputation replaces what a killed or other run left);
- ``predictions_<stream>.npz`` (``labels``, ``predictions``, ``probabilities`` of the test
  split after the last epoch; kNN: probabilities are one-hot of the 1-NN label) and
  ``predictions_<three_stream|fusion>.npz``;
- ``features_<stream>.npz`` (``features``, ``labels``): the test split's 2H features of the
  final encoder (the frozen one for linear/kNN), e.g. for a t-SNE;
- ``model.msgpack``: ``{stream: {"params", "batch_stats"}}``, the variables of
  ``Encoder(num_outputs=C, mlp=False)`` (``Pretrained.model(C)``) after the protocol: the
  frozen encoder + trained head (linear), the fine-tuned model of the first seed
  (semi/transfer); linear also writes ``heads.msgpack`` (``{stream: {"weight" [C, 2H],
  "bias" [C]}}``, torch layout). ``flax.serialization`` msgpack (``msgpack_restore``).

Deviations from the reference (also in ``results.json``): crops and subsets come from
seeded JAX/numpy generators (the reference's semi subset is unseeded, #cmd-labelled-subsets); the per-epoch
shuffle is grain's; multi-stream fusion is ours; the final-epoch number is reported beside
the reference's best-of-evaluations number.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
from typing import Any, Callable, Mapping, Sequence

import flax
import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from cmd_jax import augment, checkpoint, data, input_pipeline, metrics as metrics_lib, modalities, optim
from cmd_jax import pretrained as pretrained_lib, sharding
from cmd_jax.errors import ConfigError
from cmd_jax.evaluators import knn
from cmd_jax.layouts import SkeletonLayout

PROTOCOLS = ("linear", "knn", "semi", "transfer", "finetune")
FINETUNE_PROTOCOLS = ("semi", "transfer", "finetune")
SAMPLINGS = ("global", "stratified", "class_balanced")
EPOCH_LENGTHS = ("subset", "full")
HEAD_INITS = ("normal_0.01", "normal_0.02", "default")
TRAIN_VIEWS = ("", "crop_resize", "none", "crop_shear")
THREE_STREAMS = ("joint", "motion", "bone")
MODEL_FILE = "model.msgpack"

# Class counts (the converters' DatasetSpec has the same; a TFDS source's own metadata wins).
DATASET_CLASSES = {"ntu60": 60, "ntu120": 120, "pku_mmd2": 51, "msr_action3d": 20, "synthetic": 12}

FUSION_NOTE = ("mean of the per-stream class probabilities (softmax of each stream's head), arg-max; "
               "not in the reference's scripts")
KNN_FUSION_NOTE = ("1-NN by the mean of the per-stream cosine similarities (= 1-NN on the concatenated "
                   "per-stream L2-normalised features); not in the reference's scripts")
WEIGHTED_FUSION_NOTE = ("HiCLR's ensemble: sum of each stream's raw linear logits, weighted, each stream's logits "
                        "at its own best test evaluation, the better weight set chosen on the test set "
                        "(test-set selection, as the reference reports it)")
BEST_NOTE = ("best_of_evals_top1: the best test accuracy over the evaluations every eval_every_epochs epochs, "
             "the reference's reported number (model selection on the test set); final_top1: after the last epoch")
DEVIATIONS = (
    "crops (and semi-supervised subsets) come from seeded JAX/numpy generators: the same in distribution as the "
    "reference's numpy/random ones, not bit by bit; the reference's semi subset is unseeded",
    "multi-stream fusion is not in the reference's scripts (they evaluate the joint stream only)",
    "final-epoch accuracy is reported beside the reference's best-of-evaluations (test-set selection) number",
)


# ---------------------------------------------------------------------------------------------
# Config helpers


def stream_names(config) -> tuple[str, ...]:
  """``config.streams`` ("joint", "joint,motion,bone", ...) as a tuple; ConfigError if malformed."""
  try:
    return modalities.parse_names(config.streams, "config.streams")
  except ValueError as err:
    raise ConfigError(str(err)) from None


def fusion_name(streams: Sequence[str]) -> str | None:
  """``three_stream`` for joint+motion+bone, ``fusion`` for another set of 2+ streams, else None."""
  if len(streams) < 2:
    return None
  return "three_stream" if sorted(streams) == sorted(THREE_STREAMS) else "fusion"


def validate_ratio(ratio) -> float:
  """A label ratio must be a fraction in (0, 1]."""
  try:
    value = float(ratio)
  except (TypeError, ValueError):
    raise ConfigError(f"config.label_ratio={ratio!r}: expected a number in (0, 1]") from None
  if not 0.0 < value <= 1.0 or not math.isfinite(value):
    raise ConfigError(f"config.label_ratio={ratio!r}: expected a fraction of the training labels in (0, 1], "
                      "e.g. 0.01 for 1% or 1.0 for all")
  return value


def _validate(config, protocol: str, mesh) -> tuple[str, ...]:
  """Every config check that needs no data or checkpoint; returns the streams."""
  if protocol not in PROTOCOLS:
    raise ConfigError(f"config.trainer={protocol!r}: expected one of {', '.join(PROTOCOLS)}")
  streams = stream_names(config)
  if not str(config.init_from):
    raise ConfigError("config.init_from is empty: pass --config.init_from=<pretraining workdir> (the --workdir of "
                      "a configs/pretrain_cmd.py run: it holds config.json and checkpoints/)")
  try:
    data.validate(config.data)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  sizes = [("config.eval_batch_size", int(config.eval_batch_size))]
  if protocol != "knn":
    sizes.append(("config.batch_size", int(config.batch_size)))
    if int(config.num_epochs) <= 0 or int(config.eval_every_epochs) <= 0:
      raise ConfigError(f"config.num_epochs={config.num_epochs} and config.eval_every_epochs="
                        f"{config.eval_every_epochs} must be positive")
    if config.optimizer.schedule not in ("step", "cosine"):
      raise ConfigError(f"config.optimizer.schedule={config.optimizer.schedule!r}; expected 'step' or 'cosine'")
  for what, b in sizes:
    if b <= 0:
      raise ConfigError(f"{what}={b} must be positive")
    try:
      sharding.check_batch_divisible(b, mesh, what)
    except ValueError as err:
      raise ConfigError(str(err)) from None
  if protocol in FINETUNE_PROTOCOLS:
    validate_ratio(config.label_ratio)
    if config.sampling not in SAMPLINGS:
      raise ConfigError(f"config.sampling={config.sampling!r}; expected one of {', '.join(SAMPLINGS)}")
    if not list(config.seeds):
      raise ConfigError("config.seeds is empty; expected at least one seed, e.g. (0, 1, 2, 3, 4)")
    if str(config.get("epoch_length", "subset")) not in EPOCH_LENGTHS:
      raise ConfigError(f"config.epoch_length={config.epoch_length!r}; expected one of {', '.join(EPOCH_LENGTHS)}")
  if str(config.get("head_init", "normal_0.01")) not in HEAD_INITS:
    raise ConfigError(f"config.head_init={config.head_init!r}; expected one of {', '.join(HEAD_INITS)}")
  if str(config.augment.get("train_view", "")) not in TRAIN_VIEWS:
    raise ConfigError(f"config.augment.train_view={config.augment.train_view!r}; expected one of "
                      f"{', '.join(repr(v) for v in TRAIN_VIEWS)} ('' = the pretraining method's)")
  parse_fusion_weights(config.get("fusion_weights", ""), streams)
  return streams


def parse_fusion_weights(value, streams: Sequence[str]) -> list[dict[str, float]]:
  """``"joint=0.5,bone=0.5,motion=0.5;joint=0.6,bone=0.6,motion=0.4"`` -> one dict per weight
  set (HiCLR's three-stream ensemble), or ``[]`` when the sets do not weigh exactly
  ``streams`` (a run of other streams has no such ensemble). Malformed text is an error."""
  sets = []
  for part in (p.strip() for p in str(value or "").split(";")):
    if not part:
      continue
    weights = {}
    for item in part.split(","):
      name, sep, number = item.partition("=")
      try:
        weights[name.strip()] = float(number)
      except ValueError:
        sep = ""
      if not sep:
        raise ConfigError(f"config.fusion_weights={value!r}: {item!r} is not stream=weight; expected e.g. "
                          "'joint=0.6,bone=0.6,motion=0.4' (sets separated by ';')")
    unknown = sorted(set(weights) - set(modalities.MODALITIES))
    if unknown:
      raise ConfigError(f"config.fusion_weights={value!r}: unknown stream(s) {', '.join(unknown)}; expected names "
                        f"from {', '.join(modalities.MODALITIES)}")
    sets.append(weights)
  if any(sorted(w) != sorted(streams) for w in sets):
    return []  # the ensemble of other streams than the evaluated ones (e.g. a one-stream run): not computed
  return sets


def weighted_logit_fusion(best_logits: Mapping[str, np.ndarray], labels: np.ndarray,
                          weight_sets: Sequence[Mapping[str, float]]) -> dict[str, Any]:
  """HiCLR's ensemble: top-1 of ``sum_m w_m * logits_m`` for each weight set, the logits of each
  stream taken at its own best evaluation (as the reference's ensemble script reads the
  scores saved at each stream's best epoch); the better set is chosen ON THE TEST SET."""
  per_set = []
  for weights in weight_sets:
    fused = sum(float(weights[m]) * np.asarray(best_logits[m], np.float64) for m in weights)
    per_set.append({"weights": dict(weights), "top1": top1(fused, labels)})
  best = max(per_set, key=lambda r: r["top1"])
  return {"best_of_sets_top1": best["top1"], "best_weights": best["weights"], "sets": per_set}


def train_view_mode(config, pre: pretrained_lib.Pretrained) -> str:
  """``config.augment.train_view``, or the pretraining's default: CMD's random crop-resize,
  none for a 50-frame pretraining (HiCLR's linear evaluation feeds its clips unaugmented)."""
  mode = str(config.augment.get("train_view", ""))
  if mode:
    return mode
  return "none" if pre.eval_crop is None else "crop_resize"


def _train_view_params(config, pre: pretrained_lib.Pretrained) -> dict[str, Any] | None:
  """The training view: ``{"mode": ..., <its arguments>}``, or None for the stored clip as it is.

  ``crop_resize``: the CMD reference's random crop-resize (``augment.downstream_train_view``);
  ``crop_shear``: HiCLR's basic view, a temporal crop with mirrored padding and a shear
  (``cmd_jax.methods.common.views.basic_view``; HiCLR's transformer fine-tuning);
  ``none``: the stored clip."""
  mode = train_view_mode(config, pre)
  if mode == "none":
    return None
  if mode == "crop_shear":
    return {"mode": mode, "temporal_padding_ratio": int(config.augment.get("temporal_padding_ratio", 6)),
            "shear_amplitude": float(config.augment.get("shear_amplitude", 0.5))}
  frames = int(config.augment.frames) or pre.frames
  min_len = int(config.augment.min_length) or pre.min_length
  return {"mode": mode, "out_len": frames, "min_len": min_len,
          "ratio_range": (float(config.augment.train_crop_min), float(config.augment.train_crop_max))}


def _test_view(config, pre: pretrained_lib.Pretrained) -> tuple[int, float | None]:
  """``(frames, crop ratio)`` of the test view (``crop=None``: the stored clip as it is)."""
  frames = int(config.augment.frames) or pre.frames
  return frames, (None if pre.eval_crop is None else float(config.augment.test_crop))


def _train_clip(key, batch, view):
  if view is None:
    return batch["skeleton"]
  if view["mode"] == "crop_shear":
    from cmd_jax.methods.common import views  # pylint: disable=import-outside-toplevel
    return views.basic_view(key, batch["skeleton"], temporal_padding_ratio=view["temporal_padding_ratio"],
                                  shear_amplitude=view["shear_amplitude"])
  args = {k: v for k, v in view.items() if k != "mode"}
  return augment.downstream_train_view(key, batch["skeleton"], batch["num_frames"], **args)


def num_classes_of(config, source) -> int:
  """``config.num_classes`` if set, else the TFDS metadata's class count, else the dataset's."""
  if int(config.get("num_classes", 0)) > 0:
    return int(config.num_classes)
  info = getattr(source, "info", None)
  try:
    return int(info.features["label"].num_classes)
  except (AttributeError, KeyError, TypeError):
    pass
  if config.data.dataset in DATASET_CLASSES:
    return DATASET_CLASSES[config.data.dataset]
  raise ConfigError(f"cannot tell the class count of {config.data.dataset!r}; set config.num_classes")


# ---------------------------------------------------------------------------------------------
# Labelled subsets (docs/references.md#cmd-labelled-subsets)


def split_labels(source) -> np.ndarray:
  """Every record's label, in index order (a source's ``labels`` array when it has one)."""
  labels = getattr(source, "labels", None)
  if labels is not None:
    return np.asarray(labels, np.int64)
  return np.array([int(source[i]["label"]) for i in range(len(source))], np.int64)


def labelled_subset(labels: np.ndarray, ratio: float, seed: int, sampling: str = "global",
                    num_classes: int | None = None) -> np.ndarray:
  """The indices (sorted) of a seeded labelled subset of a training split.

  ``global`` (the reference's ``random_select_data``): a uniform random permutation of the
  ``N`` indices, of which the first ``int(N * ratio)`` are kept; some classes may get none.
  ``stratified``: per class ``c`` (``0..num_classes-1``), ``max(1, int(n_c * ratio))`` of
  its ``n_c`` samples, uniformly; every class must have an example.
  ``class_balanced`` (HiCLR's semi-supervised feeder): per class ``round(n_c * ratio)``
  of its samples (Python's round: halves to even), uniformly; a class may get none.
  The same ``(labels, ratio, seed, sampling)`` always gives the same subset
  (``np.random.default_rng(seed)``).

  Raises:
    ConfigError: ratio outside (0, 1], an empty subset, an unknown sampling, or (stratified)
      a class with no example.
  """
  ratio = validate_ratio(ratio)
  labels = np.asarray(labels, np.int64)
  n = len(labels)
  rng = np.random.default_rng(int(seed))
  if sampling == "global":
    keep = int(n * ratio)
    if keep < 1:
      raise ConfigError(f"label_ratio={ratio} of the {n} training samples keeps int({n} * {ratio}) = 0 samples; "
                        "expected a ratio that keeps at least one (or sampling='stratified')")
    return np.sort(rng.permutation(n)[:keep])
  if sampling not in ("stratified", "class_balanced"):
    raise ConfigError(f"sampling={sampling!r}; expected one of {', '.join(SAMPLINGS)}")
  if num_classes is None:
    num_classes = int(labels.max()) + 1 if n else 0
  counts = np.bincount(labels, minlength=num_classes) if n else np.zeros(num_classes, np.int64)
  if sampling == "class_balanced":
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:round(int(counts[c]) * ratio)]
              for c in range(num_classes)]
    subset = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    if not len(subset):
      raise ConfigError(f"label_ratio={ratio}: round(class count * ratio) is 0 for every class; expected a ratio "
                        "that keeps at least one sample")
    return subset
  empty = [c for c in range(num_classes) if counts[c] == 0]
  if empty:
    raise ConfigError(f"stratified sampling: class {empty[0]} has no example in the training split"
                      + (f" (nor classes {', '.join(map(str, empty[1:]))})" if len(empty) > 1 else "")
                      + f"; expected at least one example of each of the {num_classes} classes "
                      f"({n} samples, classes present: {int(np.sum(counts > 0))})")
  chosen = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    k = max(1, int(len(members) * ratio))
    chosen.append(rng.permutation(members)[:k])
  return np.sort(np.concatenate(chosen))


class SubsetSource:
  """The records ``indices`` of ``source`` (a grain random-access source).

  ``length`` (default: the subset's size) is the epoch length: HiCLR's semi-supervised
  feeder reports the FULL training split's length and reads record ``i`` as subset entry
  ``i mod size``, so one of its epochs revisits the labelled subset about ``1 / ratio`` times.
  """

  def __init__(self, source, indices: np.ndarray, length: int | None = None):
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    self.length = len(self.indices) if length is None else int(length)

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, i):
    return self.source[int(self.indices[int(i) % len(self.indices)])]

  def __repr__(self) -> str:
    return f"SubsetSource({self.source!r}, {len(self)} records)"


# ---------------------------------------------------------------------------------------------
# Pure math: heads, probabilities, fusion


def init_head(key: jax.Array, num_classes: int, dim: int, scheme: str = "normal_0.01") -> dict[str, jax.Array]:
  """The downstream ``fc`` (torch layout ``weight [C, dim]``, ``bias [C]``), by ``scheme``:
  ``normal_0.01`` (CMD's protocols: ``N(0, 0.01^2)``, bias 0), ``normal_0.02`` (HiCLR's linear
  evaluation, its ``weights_init``: ``N(0, 0.02^2)``, bias 0) or ``default`` (HiCLR's
  fine-tuning: PyTorch's Linear default, weight and bias ``U(+-1/sqrt(dim))``)."""
  if scheme in ("normal_0.01", "normal_0.02"):
    std = 0.01 if scheme == "normal_0.01" else 0.02
    return {"weight": std * jax.random.normal(key, (num_classes, dim), jnp.float32),
            "bias": jnp.zeros((num_classes,), jnp.float32)}
  if scheme != "default":
    raise ConfigError(f"config.head_init={scheme!r}; expected one of {', '.join(HEAD_INITS)}")
  bound = 1.0 / dim ** 0.5
  w_key, b_key = jax.random.split(key)
  return {"weight": jax.random.uniform(w_key, (num_classes, dim), jnp.float32, -bound, bound),
          "bias": jax.random.uniform(b_key, (num_classes,), jnp.float32, -bound, bound)}


def head_logits(head: Mapping[str, jax.Array], features: jax.Array) -> jax.Array:
  """``features @ weight.T + bias`` (the Encoder's ``TorchLinear``)."""
  return jnp.einsum("...i,oi->...o", features, head["weight"]) + head["bias"]


def softmax(logits: np.ndarray) -> np.ndarray:
  """Row-wise softmax in float64 (host)."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def fused_probabilities(logits_by_stream: Mapping[str, np.ndarray]) -> np.ndarray:
  """The multi-stream fusion: the mean over streams of each stream's softmax probabilities."""
  return np.mean([softmax(v) for v in logits_by_stream.values()], axis=0)


def top1(scores: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(np.asarray(scores), axis=-1) == np.asarray(labels)))


def fused_knn_neighbours(banks: Mapping[str, np.ndarray], queries: Mapping[str, np.ndarray]) -> np.ndarray:
  """Per query, the bank index with the largest mean cosine similarity over the streams.

  ``sum_m cos(q_m, b_m) = <concat_m q_m/|q_m|, concat_m b_m/|b_m|>``, and every concatenated
  vector has the same norm ``sqrt(S)``, so this is ``knn.nearest_neighbours`` on the
  concatenated per-stream L2-normalised features (an all-zero stream feature breaks the
  equal-norm argument; such a feature has no direction anyway).
  """
  def unit(x):
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm == 0, 1.0, norm)

  bank = np.concatenate([unit(banks[m]) for m in banks], axis=-1)
  query = np.concatenate([unit(queries[m]) for m in banks], axis=-1)
  return np.asarray(knn.nearest_neighbours(jnp.asarray(bank), jnp.asarray(query), chunk=min(1024, len(query))))


# ---------------------------------------------------------------------------------------------
# Train state and steps


@flax.struct.dataclass
class DownstreamState:
  """Everything a downstream step changes. Dicts are keyed by stream.

  linear: ``params[m]`` is the head ``{"weight", "bias"}`` and ``batch_stats`` is empty (the
  frozen encoders are a separate argument of the step). semi/transfer: ``params[m]`` is the
  whole ``Encoder(num_outputs=C)`` params (``input_norm``, ``gru``, ``fc``) and
  ``batch_stats[m]`` its BN running statistics.
  """
  step: jax.Array
  params: dict[str, Any]
  batch_stats: dict[str, Any]
  opt_state: Any
  rng: jax.Array


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """PyTorch SGD(lr, momentum, weight_decay), lr per epoch: the pretraining's optimizer code."""
  return optim.make_optimizer(config, steps_per_epoch)


def _ce_and_accuracy(logits, labels):
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
  return loss, accuracy


def linear_train_step(state: DownstreamState, frozen: Mapping[str, Any], batch: Mapping[str, jax.Array], *,
                      model, layout: SkeletonLayout, streams: Sequence[str], tx: optax.GradientTransformation,
                      schedule: Callable, view: Mapping[str, Any]) -> tuple[DownstreamState, dict[str, jax.Array]]:
  """One linear-evaluation step (#cmd-linear-evaluation): the random crop of ``fold_in(rng, step)``, the frozen
  encoders' features (inference-mode BN, ``stop_gradient``), mean cross-entropy of every
  stream's head, one SGD step on the heads only."""
  key = jax.random.fold_in(state.rng, state.step)
  clip = _train_clip(key, batch, view)
  feats = {m: jax.lax.stop_gradient(model.apply(frozen[m], modalities.modality(clip, m, layout), train=False,
                                                features_only=True)) for m in streams}
  labels = batch["label"]

  def loss_fn(heads):
    out = {m: _ce_and_accuracy(head_logits(heads[m], feats[m]), labels) for m in streams}
    return sum(v[0] for v in out.values()), out

  (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"lr": schedule(state.step)}
  for m in streams:
    metrics[f"loss_{m}"], metrics[f"train_top1_{m}"] = out[m]
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def finetune_train_step(state: DownstreamState, batch: Mapping[str, jax.Array], *, model, layout: SkeletonLayout,
                        streams: Sequence[str], tx: optax.GradientTransformation, schedule: Callable,
                        view: Mapping[str, Any]) -> tuple[DownstreamState, dict[str, jax.Array]]:
  """One fine-tuning step (#cmd-semi-supervised): every parameter trained, BN in train mode (batch
  statistics, running statistics updated), the encoder's dropout on, mean cross-entropy, SGD."""
  key = jax.random.fold_in(state.rng, state.step)
  clip = _train_clip(key, batch, view)
  inputs = {m: modalities.modality(clip, m, layout) for m in streams}
  labels = batch["label"]
  dropout_keys = jax.random.split(jax.random.fold_in(key, 1), len(streams))

  def loss_fn(params):
    out, stats = {}, {}
    for i, m in enumerate(streams):
      logits, updated = model.apply({"params": params[m], "batch_stats": state.batch_stats[m]}, inputs[m],
                                    train=True, mutable=["batch_stats"], rngs={"dropout": dropout_keys[i]})
      out[m], stats[m] = _ce_and_accuracy(logits, labels), updated["batch_stats"]
    return sum(v[0] for v in out.values()), (out, stats)

  (_, (out, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"lr": schedule(state.step)}
  for m in streams:
    metrics[f"loss_{m}"], metrics[f"train_top1_{m}"] = out[m]
  return state.replace(step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state), metrics


# ---------------------------------------------------------------------------------------------
# Data


def epoch_seed(seed: int, epoch: int) -> int:
  return (int(seed) * 1_000_003 + int(epoch)) % (2 ** 31)


def epoch_batches(source, *, batch_size: int, seed: int, epoch: int, mesh, read_threads: int = 4,
                  prefetch_batches: int = 4):
  """One epoch of device batches, as a PyTorch ``DataLoader(shuffle=True, drop_last=False)``:
  ``N // B`` full batches (batch-sharded) of a fresh permutation, then the remaining
  ``N % B`` records as a smaller batch (replicated on every device: its own shape, so
  BatchNorm batch statistics and the loss see exactly those records)."""
  n = len(source)
  full = n // batch_size
  dataset = input_pipeline.global_batches(source, global_batch_size=batch_size, seed=epoch_seed(seed, epoch),
                                          shuffle=True, num_epochs=1, drop_remainder=False,
                                          read_threads=read_threads, prefetch_batches=prefetch_batches)
  for i, batch in enumerate(dataset):
    batch = {k: batch[k] for k in ("skeleton", "num_frames", "label")}
    if i < full:
      yield sharding.put_batch(batch, mesh)
    else:
      rest = n - full * batch_size
      whole = {k: _gather_host(v)[:rest] for k, v in batch.items()}
      yield sharding.put_replicated(whole, mesh)


def _gather_host(x: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def steps_per_epoch(num_records: int, batch_size: int) -> int:
  """``ceil(N / B)``: the reference's downstream loaders keep the last partial batch."""
  return -(-num_records // batch_size)


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
    feats, labels = knn.extract_features(self.fn, dict(variables), source, batch_size=batch_size, mesh=mesh)
    return {m: feats[:, i * self.dim:(i + 1) * self.dim] for i, m in enumerate(self.streams)}, labels


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise ConfigError(f"{what}: labels span [{labels.min()}, {labels.max()}]; expected [0, {num_classes}) "
                      "(set config.num_classes?)")


# ---------------------------------------------------------------------------------------------
# Evaluation records


def evaluation(logits: Mapping[str, np.ndarray], labels: np.ndarray, fusion: str | None) -> dict[str, float]:
  """Top-1 of every stream's logits and, with 2+ streams, of the fused probabilities."""
  out = {m: top1(v, labels) for m, v in logits.items()}
  if fusion:
    out[fusion] = top1(fused_probabilities(logits), labels)
  return out


def summarize_curve(curve: list[dict[str, Any]], names: Sequence[str]) -> dict[str, dict[str, Any]]:
  """Per name: ``final_top1`` (the last evaluation, after the last epoch), ``best_of_evals_top1``
  and its epoch, and the curve ``[{"epoch", "top1"}]``."""
  out = {}
  for name in names:
    points = [{"epoch": int(c["epoch"]), "top1": float(c[name])} for c in curve]
    best = max(points, key=lambda p: p["top1"])  # the first epoch reaching the best
    out[name] = {"final_top1": points[-1]["top1"], "best_of_evals_top1": best["top1"], "best_epoch": best["epoch"],
                 "curve": points}
  return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


# ---------------------------------------------------------------------------------------------
# Files


def _is_writer() -> bool:
  return jax.process_index() == 0


def _save_npz(path: str, **arrays) -> None:
  if _is_writer():
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _save_msgpack(path: str, tree) -> None:
  if _is_writer():
    with open(path + ".tmp", "wb") as f:
      f.write(flax.serialization.to_bytes(jax.tree.map(np.asarray, tree)))
    os.replace(path + ".tmp", path)


def _save_json(path: str, obj) -> None:
  if _is_writer():
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


def _save_outputs(workdir: str, features: Mapping[str, np.ndarray], logits: Mapping[str, np.ndarray] | None,
                  labels: np.ndarray, fusion: str | None, predictions: Mapping[str, np.ndarray] | None = None,
                  num_classes: int | None = None) -> None:
  """``features_<stream>.npz`` and ``predictions_<stream>.npz`` (+ the fusion's predictions)."""
  for m, f in features.items():
    _save_npz(os.path.join(workdir, f"features_{m}.npz"), features=np.asarray(f, np.float32), labels=labels)
  if logits is not None:
    for m, v in logits.items():
      probs = softmax(v).astype(np.float32)
      _save_npz(os.path.join(workdir, f"predictions_{m}.npz"), labels=labels, predictions=np.argmax(probs, -1),
                probabilities=probs)
    if fusion:
      probs = fused_probabilities(logits).astype(np.float32)
      _save_npz(os.path.join(workdir, f"predictions_{fusion}.npz"), labels=labels, predictions=np.argmax(probs, -1),
                probabilities=probs)
  if predictions is not None:  # kNN: hard predictions, one-hot "probabilities"
    for m, p in predictions.items():
      onehot = np.eye(num_classes, dtype=np.float32)[p]
      _save_npz(os.path.join(workdir, f"predictions_{m}.npz"), labels=labels, predictions=p, probabilities=onehot)


def _print_table(results: dict[str, Any]) -> None:
  if not _is_writer():
    return
  protocol = results["protocol"]
  lines = [f"{protocol} on {results['dataset']}/{results['benchmark']} ({results['num_classes']} classes, "
           f"{results['num_train']} train / {results['num_test']} test), from {results['init_from']} "
           f"({'random init' if results['random_init'] else 'pretraining step ' + str(results['pretrain_step'])})"]
  rows = list(results["streams"].items())
  fusion = results.get("fusion_name")
  if fusion:
    rows.append((fusion, results[fusion]))
  if protocol == "knn":
    lines.append(f"{'stream':14s} {'1-NN top-1':>12s}")
    lines += [f"{name:14s} {100 * r['final_top1']:11.2f}%" for name, r in rows]
  else:
    seeds = protocol in FINETUNE_PROTOCOLS and len(results["seeds"]) > 1
    head = f"{'stream':14s} {'final top-1':>16s} {'best-of-evals top-1 *':>24s}"
    lines.append(head + ("   (mean +- std over seeds " + ", ".join(map(str, results["seeds"])) + ")" if seeds else ""))
    for name, r in rows:
      if seeds:
        lines.append(f"{name:14s} {100 * r['final_top1']:8.2f} +- {100 * r['final_top1_std']:4.2f}% "
                     f"{100 * r['best_of_evals_top1']:15.2f} +- {100 * r['best_of_evals_top1_std']:4.2f}%")
      else:
        best_epoch = r["best_epoch"] if "best_epoch" in r else r["per_seed"][0]["best_epoch"]
        lines.append(f"{name:14s} {100 * r['final_top1']:15.2f}% {100 * r['best_of_evals_top1']:16.2f}% "
                     f"(epoch {best_epoch})")
    lines.append("* the reference's number: the best test accuracy over evaluations every "
                 f"{results['eval_every_epochs']} epochs (model selection on the test set)")
  weighted = results.get("weighted_logit_fusion")
  if weighted:
    lines.append(f"HiCLR's weighted-logit ensemble (each stream at its best epoch, the better weight set on the test "
                 f"set *): {100 * weighted['best_of_sets_top1']:.2f}% with {weighted['best_weights']}")
  if results.get("reference_top1"):
    lines.append(f"reference: {results['reference_top1']} % ({results.get('reference_note', '')})")
  print("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Protocols


def _setup(config, workdir, protocol):
  """Checks, the pretrained encoders, the splits; everything a protocol starts from."""
  mesh = sharding.make_mesh(int(config.mesh.data))
  streams = _validate(config, protocol, mesh)
  if os.path.abspath(workdir) in [os.path.abspath(p.strip()) for p in str(config.init_from).split(",")]:
    raise ConfigError(f"--workdir {workdir} is the pretraining workdir (init_from); expected another folder "
                      "for the downstream run's results")
  pre = pretrained_lib.load_pretrained_streams(config.init_from,
                                               None if int(config.init_step) < 0 else int(config.init_step),
                                               random_init=bool(config.random_init), mesh=mesh)
  pretrained_lib.check_compatible(pre, config.data, streams)
  check_settings_fit(config, pre)
  data_config = data.with_variant(config.data, pre.variant)  # the pretraining's variant unless one is named
  data.ensure_prepared(data_config)
  train_source, test_source = data.open_split(data_config, "train"), data.open_split(data_config, "val")
  num_classes = num_classes_of(config, train_source)
  os.makedirs(workdir, exist_ok=True)
  if _is_writer():
    _remove_stale_logs(workdir)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
  return mesh, streams, pre, train_source, test_source, num_classes


def _remove_stale_logs(workdir: str) -> None:
  """A protocol run starts from scratch (nothing resumes), so the ``metrics.jsonl`` and
  TensorBoard events of an earlier run in ``workdir`` (killed, or with other inputs) are
  removed, not appended to; a folder holding checkpoints (a pretraining's) is left alone."""
  if checkpoint.saved_steps(workdir):
    return
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    os.remove(os.path.join(workdir, "metrics.jsonl"))
  shutil.rmtree(os.path.join(workdir, "tensorboard"), ignore_errors=True)


def check_settings_fit(config, pre: pretrained_lib.Pretrained) -> None:
  """A protocol config carrying one method's settings (``expected_method``) or written for one
  encoder (``expected_encoder``) refuses a pretraining of another: CMD's linear evaluation
  (lr 0.1, crops) is not HiCLR's (lr 3.0, no augmentation). Empty fields accept any."""
  for field, found in (("expected_method", pre.method), ("expected_encoder", pre.model_name)):
    wanted = str(config.get(field, ""))
    if wanted and wanted != found:
      what = "method" if field == "expected_method" else "encoder"
      configs = "configs/<protocol>_hiclr.py" if found in ("hiclr", "stgcn", "dsta") else "configs/<protocol>.py"
      raise ConfigError(f"init_from={pre.workdir} is a {found!r} pretraining ({what}), but this config "
                        f"({config.get('name', '')}) carries the settings for {wanted!r}; expected a {wanted} "
                        f"pretraining, a config for {found} ({configs}), or --config.{field}= to run these "
                        "settings anyway")


def _base_results(config, protocol, pre, streams, train_size, test_size, num_classes) -> dict[str, Any]:
  downstream = f"{config.data.dataset}/{config.data.benchmark}"
  results = {
      "protocol": protocol, "name": config.get("name", ""),
      "init_from": ",".join(pre.workdirs) if pre.workdirs else pre.workdir, "pretrain_step": pre.step,
      "random_init": pre.random_init,
      "pretrain_dataset": pre.dataset, "pretrain_config": pre.config.get("name", ""),
      "pretrain_method": pre.method, "encoder": pre.model_name,
      "dataset": str(config.data.dataset), "benchmark": str(config.data.benchmark), "data_variant": pre.variant,
      "num_classes": num_classes, "num_train": train_size, "num_test": test_size,
      "streams_evaluated": list(streams), "fusion_name": fusion_name(streams),
      "accuracy_unit": "fraction in [0, 1]",
      "reference_top1": float(config.get("reference_top1", 0.0)) or None,
      "reference_note": str(config.get("reference_note", "")),
      "deviations": list(DEVIATIONS) + list(config.get("deviations", ())),
  }
  if pre.dataset != downstream and protocol != "transfer":
    results["note"] = f"pretrained on {pre.dataset}, evaluated on {downstream}"
  return results


def _run_epochs(state, step_fn, source, *, config, mesh, seed: int, evaluate: Callable, writer, bar,
                tag: dict[str, float], log_split: str = "train", eval_split: str = "eval"):
  """The epoch loop: train, log, evaluate every ``eval_every_epochs`` epochs and after the last.
  Returns the final state, the curve of evaluations and the last evaluation's outputs, with
  ``best_logits``: each stream's test logits at its best evaluation (the first to reach it)."""
  epochs, every = int(config.num_epochs), int(config.eval_every_epochs)
  spe = steps_per_epoch(len(source), int(config.batch_size))
  curve, last, best = [], None, {}
  for epoch in range(1, epochs + 1):
    window = []
    for batch in epoch_batches(source, batch_size=int(config.batch_size), seed=seed, epoch=epoch, mesh=mesh,
                               read_threads=int(config.data.read_threads),
                               prefetch_batches=int(config.data.prefetch_batches)):
      state, metrics = step_fn(state, batch)
      window.append(metrics)
      bar.update(1)
    window = jax.device_get(window)
    summary = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
    if not all(math.isfinite(v) for k, v in summary.items() if k.startswith("loss")):
      raise FloatingPointError(f"non-finite loss in epoch {epoch}: {summary}")
    writer.write(epoch * spe, dict(summary, epoch=epoch, **tag), split=log_split)
    bar.set_postfix({k[5:]: f"{v:.3f}" for k, v in summary.items() if k.startswith("loss_")})
    if epoch % every == 0 or epoch == epochs:
      last = evaluate(state)
      accs = evaluation(last["logits"], last["labels"], fusion_name(last["logits"]))
      curve.append(dict(accs, epoch=epoch))
      for m, logits in last["logits"].items():
        if m not in best or accs[m] > best[m][0]:
          best[m] = (accs[m], logits)
      last["best_logits"] = {m: v[1] for m, v in best.items()}
      writer.write(epoch * spe, dict({f"top1_{k}": v for k, v in accs.items()}, epoch=epoch, **tag),
                   split=eval_split)
      if _is_writer():
        bar.write(f"epoch {epoch}: test top-1 " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in accs.items()))
  return state, curve, last


def run_linear(config, workdir: str) -> dict[str, Any]:
  """Linear evaluation (docs/references.md#cmd-linear-evaluation); see the module docstring."""
  mesh, streams, pre, train_source, test_source, num_classes = _setup(config, workdir, "linear")
  view = _train_view_params(config, pre)
  model = pre.model(num_outputs=None)
  frozen = {m: pre.variables(m) for m in streams}
  fusion = fusion_name(streams)
  n_train, batch = len(train_source), int(config.batch_size)
  spe = steps_per_epoch(n_train, batch)
  tx = make_optimizer(config, spe)
  schedule = optim.lr_schedule(config, spe)
  key = jax.random.PRNGKey(int(config.seed))
  head_key, run_key = jax.random.split(key)
  head_init = str(config.get("head_init", "normal_0.01"))
  heads = {m: init_head(jax.random.fold_in(head_key, i), num_classes, pre.feature_dim, head_init)
           for i, m in enumerate(streams)}
  state = DownstreamState(step=jnp.zeros((), jnp.int32), params=heads, batch_stats={}, opt_state=tx.init(heads),
                          rng=run_key)
  state = sharding.put_replicated(state, mesh)
  frozen_device = sharding.put_replicated(frozen, mesh)
  rep = sharding.replicated(mesh)
  step = jax.jit(functools.partial(linear_train_step, model=model, layout=pre.layout, streams=streams, tx=tx,
                                   schedule=schedule, view=view),
                 out_shardings=(rep, rep), donate_argnums=(0,))

  # The encoders are frozen: the test features are computed once.
  extractor = StreamFeatures(model, pre.layout, streams, *_test_view(config, pre), pre.feature_dim)
  test_feats, test_labels = extractor(frozen, test_source, batch_size=int(config.eval_batch_size), mesh=mesh)
  _check_labels(test_labels, num_classes, "the test split")
  logits_fn = jax.jit(lambda heads, feats: {m: head_logits(heads[m], feats[m]) for m in streams})
  test_feats_device = sharding.put_replicated(test_feats, mesh)

  def evaluate(s):
    logits = jax.device_get(logits_fn(s.params, test_feats_device))
    return {"logits": {m: np.asarray(v) for m, v in logits.items()}, "labels": test_labels, "features": test_feats}

  writer = metrics_lib.MetricWriter(workdir)
  bar = tqdm.tqdm(total=spe * int(config.num_epochs), unit="step", desc=config.get("name", "linear"),
                  disable=not _is_writer())
  try:
    state, curve, last = _run_epochs(state, lambda s, b: step(s, frozen_device, b), train_source, config=config,
                                     mesh=mesh, seed=int(config.seed), evaluate=evaluate, writer=writer, bar=bar,
                                     tag={})
  finally:
    bar.close()
    writer.close()

  heads_host = pretrained_lib.to_host(state.params)
  frozen_host = pretrained_lib.to_host(frozen_device)
  _save_msgpack(os.path.join(workdir, "heads.msgpack"), heads_host)
  _save_msgpack(os.path.join(workdir, MODEL_FILE),
                {m: {"params": dict(frozen_host[m]["params"], fc=heads_host[m]),
                     "batch_stats": frozen_host[m]["batch_stats"]} for m in streams})
  _save_outputs(workdir, last["features"], last["logits"], last["labels"], fusion)
  results = _base_results(config, "linear", pre, streams, n_train, len(test_labels), num_classes)
  results.update(epochs=int(config.num_epochs), eval_every_epochs=int(config.eval_every_epochs),
                 notes={"best_of_evals_top1": BEST_NOTE, "fusion": FUSION_NOTE})
  summary = summarize_curve(curve, list(streams) + ([fusion] if fusion else []))
  results["streams"] = {m: summary[m] for m in streams}
  if fusion:
    results[fusion] = dict(summary[fusion], streams=list(streams), method=FUSION_NOTE)
  weight_sets = parse_fusion_weights(config.get("fusion_weights", ""), streams)
  if weight_sets:
    results["weighted_logit_fusion"] = dict(weighted_logit_fusion(last["best_logits"], last["labels"], weight_sets),
                                            note=WEIGHTED_FUSION_NOTE)
  results["files"] = {"heads": "heads.msgpack", "model": MODEL_FILE, "predictions": "predictions_<stream>.npz",
                      "features": "features_<stream>.npz"}
  _save_json(os.path.join(workdir, "results.json"), results)
  _print_table(results)
  return results


def run_knn(config, workdir: str) -> dict[str, Any]:
  """1-NN retrieval (#cmd-knn-retrieval): ``cmd_jax.evaluators.knn`` on the train (bank) and test splits."""
  mesh, streams, pre, train_source, test_source, num_classes = _setup(config, workdir, "knn")
  frames, crop = _test_view(config, pre)
  model = pre.model(num_outputs=None)
  variables = {m: pre.variables(m) for m in streams}
  extractor = StreamFeatures(model, pre.layout, streams, frames, crop, pre.feature_dim)
  batch = int(config.eval_batch_size)
  bank, bank_labels = extractor(variables, train_source, batch_size=batch, mesh=mesh)
  queries, query_labels = extractor(variables, test_source, batch_size=batch, mesh=mesh)
  fusion = fusion_name(streams)
  predictions, accs = {}, {}
  for m in streams:
    nearest = np.asarray(knn.nearest_neighbours(jnp.asarray(bank[m]), jnp.asarray(queries[m]),
                                                chunk=min(1024, len(query_labels))))
    predictions[m] = bank_labels[nearest]
    accs[m] = float(np.mean(predictions[m] == query_labels))
  if fusion:
    predictions[fusion] = bank_labels[fused_knn_neighbours(bank, queries)]
    accs[fusion] = float(np.mean(predictions[fusion] == query_labels))
  writer = metrics_lib.MetricWriter(workdir)
  writer.write(0, {f"knn_top1_{k}": v for k, v in accs.items()}, split="eval")
  writer.close()
  _save_outputs(workdir, queries, None, query_labels, fusion, predictions=predictions,
                num_classes=max(num_classes, int(max(bank_labels.max(), query_labels.max())) + 1))
  results = _base_results(config, "knn", pre, streams, len(bank_labels), len(query_labels), num_classes)
  results.update(frames=frames, crop=crop,
                 notes={"final_top1": "1-NN cosine top-1 on the test split (no training: no best-of-evaluations)",
                        "fusion": KNN_FUSION_NOTE})
  results["streams"] = {m: {"final_top1": accs[m]} for m in streams}
  if fusion:
    results[fusion] = {"final_top1": accs[fusion], "streams": list(streams), "method": KNN_FUSION_NOTE}
  results["files"] = {"predictions": "predictions_<stream>.npz (probabilities: one-hot of the 1-NN label)",
                      "features": "features_<stream>.npz"}
  _save_json(os.path.join(workdir, "results.json"), results)
  _print_table(results)
  return results


def run_finetune(config, workdir: str, protocol: str) -> dict[str, Any]:
  """Semi-supervised (#cmd-semi-supervised), transfer (#cmd-transfer) or full fine-tuning, one run per seed."""
  mesh, streams, pre, train_source, test_source, num_classes = _setup(config, workdir, protocol)
  view = _train_view_params(config, pre)
  dropout = float(config.get("encoder_dropout", -1.0))
  try:
    model = pre.model(num_outputs=num_classes, dropout=None if dropout < 0 else dropout)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  frozen = tuple(n.strip() for n in str(config.get("freeze", "")).split(",") if n.strip())
  fusion = fusion_name(streams)
  labels = split_labels(train_source)
  _check_labels(labels, num_classes, "the training split")
  ratio, seeds = validate_ratio(config.label_ratio), [int(s) for s in config.seeds]
  subsets = {s: labelled_subset(labels, ratio, s, str(config.sampling), num_classes) for s in seeds}
  full_epochs = str(config.get("epoch_length", "subset")) == "full"
  epoch_size = {s: (len(labels) if full_epochs else len(v)) for s, v in subsets.items()}
  batch = int(config.batch_size)
  sizes = {len(v) for v in subsets.values()}
  total_steps = sum(steps_per_epoch(n, batch) for n in epoch_size.values()) * int(config.num_epochs)
  rep = sharding.replicated(mesh)
  extractor = StreamFeatures(model, pre.layout, streams, *_test_view(config, pre), pre.feature_dim)
  logits_fn = jax.jit(lambda params, feats: {m: head_logits(params[m]["fc"], feats[m]) for m in streams})

  def evaluate(s):
    variables = {m: {"params": s.params[m], "batch_stats": s.batch_stats[m]} for m in streams}
    feats, test_labels = extractor(variables, test_source, batch_size=int(config.eval_batch_size), mesh=mesh)
    logits = jax.device_get(logits_fn(s.params, sharding.put_replicated(feats, mesh)))
    return {"logits": {m: np.asarray(v) for m, v in logits.items()}, "labels": test_labels, "features": feats}

  steps = {}  # one jitted step per steps-per-epoch (the optimizer's schedule depends on it)
  writer = metrics_lib.MetricWriter(workdir)
  bar = tqdm.tqdm(total=total_steps, unit="step", desc=config.get("name", protocol), disable=not _is_writer())
  per_seed = []
  try:
    for index, seed in enumerate(seeds):
      subset = SubsetSource(train_source, subsets[seed], epoch_size[seed])
      spe = steps_per_epoch(len(subset), batch)
      if spe not in steps:
        tx = optim.make_optimizer(config, spe, frozen)
        step_fn = functools.partial(finetune_train_step, model=model, layout=pre.layout, streams=streams, tx=tx,
                                    schedule=optim.lr_schedule(config, spe), view=view)
        steps[spe] = (tx, jax.jit(step_fn, out_shardings=(rep, rep), donate_argnums=(0,)))
      tx, step = steps[spe]
      head_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
      params = {m: dict(pre.params[m], fc=init_head(jax.random.fold_in(head_key, i), num_classes, pre.feature_dim,
                                                    str(config.get("head_init", "normal_0.01"))))
                for i, m in enumerate(streams)}
      state = DownstreamState(step=jnp.zeros((), jnp.int32), params=params,
                              batch_stats={m: pre.batch_stats[m] for m in streams}, opt_state=tx.init(params),
                              rng=run_key)
      state = sharding.put_replicated(state, mesh)
      tag = {"seed": seed}
      split = "" if len(seeds) == 1 else f"_seed{seed}"
      bar.set_description(f"{config.get('name', protocol)} seed {seed}")
      state, curve, last = _run_epochs(state, step, subset, config=config, mesh=mesh, seed=seed, evaluate=evaluate,
                                       writer=writer, bar=bar, tag=tag, log_split="train" + split,
                                       eval_split="eval" + split)
      summary = summarize_curve(curve, list(streams) + ([fusion] if fusion else []))
      per_seed.append({"seed": seed, "num_labelled": len(subsets[seed]),
                       "labelled_per_class": np.bincount(labels[subsets[seed]], minlength=num_classes).tolist(),
                       "summary": summary})
      if index == 0:
        host = pretrained_lib.to_host({"params": state.params, "batch_stats": state.batch_stats})
        _save_msgpack(os.path.join(workdir, MODEL_FILE),
                      {m: {"params": host["params"][m], "batch_stats": host["batch_stats"][m]} for m in streams})
        _save_outputs(workdir, last["features"], last["logits"], last["labels"], fusion)
        num_test = len(last["labels"])
  finally:
    bar.close()
    writer.close()

  results = _base_results(config, protocol, pre, streams, len(labels), num_test, num_classes)
  results.update(epochs=int(config.num_epochs), eval_every_epochs=int(config.eval_every_epochs),
                 label_ratio=ratio, sampling=str(config.sampling), seeds=seeds,
                 num_labelled=sorted(sizes)[0] if len(sizes) == 1 else sorted(sizes),
                 notes={"best_of_evals_top1": BEST_NOTE, "fusion": FUSION_NOTE,
                        "std": "sample standard deviation over seeds (ddof=1; 0 for one seed)",
                        "files": f"{MODEL_FILE}, predictions_*.npz and features_*.npz are of the first seed"})

  def aggregate(name):
    finals = [p["summary"][name]["final_top1"] for p in per_seed]
    bests = [p["summary"][name]["best_of_evals_top1"] for p in per_seed]
    final_mean, final_std = _mean_std(finals)
    best_mean, best_std = _mean_std(bests)
    return {"final_top1": final_mean, "final_top1_std": final_std, "best_of_evals_top1": best_mean,
            "best_of_evals_top1_std": best_std,
            "per_seed": [dict(p["summary"][name], seed=p["seed"], num_labelled=p["num_labelled"]) for p in per_seed]}

  results["streams"] = {m: aggregate(m) for m in streams}
  if fusion:
    results[fusion] = dict(aggregate(fusion), streams=list(streams), method=FUSION_NOTE)
  results["labelled_per_class"] = {str(p["seed"]): p["labelled_per_class"] for p in per_seed}
  results["files"] = {"model": MODEL_FILE, "predictions": "predictions_<stream>.npz",
                      "features": "features_<stream>.npz"}
  _save_json(os.path.join(workdir, "results.json"), results)
  _print_table(results)
  return results


def run_inputs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What a protocol run's results depend on: a hash of its config and, per ``init_from``
  workdir, its newest checkpoint step (stored in ``results.json`` as ``inputs``)."""
  text = json.dumps(config.to_dict(), sort_keys=True, default=str)
  steps = {}
  for path in [p.strip() for p in str(config.get("init_from", "")).split(",") if p.strip()]:
    found = checkpoint.saved_steps(path)
    steps[os.path.abspath(path)] = found[-1] if found else None
  return {"config_sha256": hashlib.sha256(text.encode()).hexdigest(), "init_from_steps": steps}


def finished_results(workdir: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
  """The stored results when ``<workdir>/results.json`` was written by a complete run with the
  same ``run_inputs`` (config and pretraining checkpoints); None otherwise (the protocol reruns)."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      stored = json.load(f)
  except (OSError, ValueError):
    return None  # damaged: rerun
  return stored if stored.get("inputs") == inputs else None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
  """Runs the protocol ``config.trainer`` (linear, knn, semi, transfer) in ``workdir``; returns
  the results (also in ``<workdir>/results.json``). A workdir whose ``results.json`` comes from
  the same config and pretraining checkpoints is not recomputed: its results are returned."""
  workdir = os.fspath(workdir)
  protocol = str(config.trainer)
  inputs = run_inputs(config)
  done = finished_results(workdir, inputs)
  if done is not None:
    if _is_writer():
      print(f"{workdir}: already done with this config and pretraining (results.json); skipped. Delete "
            "results.json to recompute it")
    return done
  if protocol == "linear":
    results = run_linear(config, workdir)
  elif protocol == "knn":
    results = run_knn(config, workdir)
  elif protocol in FINETUNE_PROTOCOLS:
    results = run_finetune(config, workdir, protocol)
  else:
    raise ConfigError(f"config.trainer={protocol!r}: expected one of {', '.join(PROTOCOLS)}")
  if config.get("plots", True) and _is_writer():
    # t-SNE of the test features and confusion matrices, as PNG files beside results.json.
    from cmd_jax import plots  # pylint: disable=import-outside-toplevel
    for path in plots.plot_workdir(workdir):
      print(f"wrote {path}")
  results = dict(results, inputs=inputs)  # last: marks the run complete (finished_results)
  _save_json(os.path.join(workdir, "results.json"), results)
  return results
