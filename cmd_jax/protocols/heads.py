"""The protocols' classifier heads and the arithmetic on their outputs (pure functions).

This module owns the new classifier ``fc`` (its initialisations and logits), the host-side
softmax and top-1, and the multi-stream fusions of logits (docs/references.md#cmd-downstream-model,
#cmd-linear-evaluation; HiCLR's ensemble, #hiclr-downstream-protocols):

- ``init_head``: ``normal_0.01`` (CMD's protocols), ``normal_0.02`` (HiCLR's linear
  evaluation) or ``default`` (PyTorch's Linear default: HiCLR's fine-tuning);
- ``fused_probabilities``: this project's multi-stream fusion, the mean of the streams'
  softmax probabilities (the references' scripts evaluate one stream);
- ``mean_logits``: CrosSCLR's multi-stream linear evaluation (``view='all'``, its "3s"
  number): the MEAN of the streams' heads' logits, trained with one cross-entropy and
  predicted by its arg-max (``config.joint_probe``; CrosSCLR's linear evaluation with
  ``view='all'``, ``net/crossclr_3views.py``);
- ``weighted_logit_fusion``: HiCLR's three-stream ensemble, a weighted sum of raw logits,
  each stream's taken at its own best evaluation, the better weight set chosen on the test
  set; ``parse_fusion_weights`` reads its weight sets from ``config.fusion_weights``;
- ``evaluation``: the top-1 of every stream and of the fusion, one evaluation's record.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cmd_jax import flat_random, modalities
from cmd_jax.errors import ConfigError

HEAD_INITS = ("normal_0.01", "normal_0.02", "default")
THREE_STREAMS = ("joint", "motion", "bone")

FUSION_NOTE = ("mean of the per-stream class probabilities (softmax of each stream's head), arg-max; "
               "not in the reference's scripts")
MEAN_LOGIT_PROBE = "mean_logit_probe"
MEAN_LOGIT_PROBE_NOTE = ("CrosSCLR's multi-stream linear evaluation (view 'all', its 3s number): the streams' heads "
                         "trained jointly with one cross-entropy on the mean of their logits, arg-max of that mean; "
                         "trained beside (not instead of) the per-stream heads, from the same initial heads")
WEIGHTED_FUSION_NOTE = ("HiCLR's ensemble: sum of each stream's raw linear logits, weighted, each stream's logits "
                        "at its own best test evaluation, the better weight set chosen on the test set "
                        "(test-set selection, as the reference reports it)")


def init_head(key: jax.Array, num_classes: int, dim: int, scheme: str = "normal_0.01") -> dict[str, jax.Array]:
  """The downstream ``fc`` (torch layout ``weight [C, dim]``, ``bias [C]``), by ``scheme``:
  ``normal_0.01`` (CMD's protocols: ``N(0, 0.01^2)``, bias 0), ``normal_0.02`` (HiCLR's linear
  evaluation, its ``weights_init``: ``N(0, 0.02^2)``, bias 0) or ``default`` (HiCLR's
  fine-tuning: PyTorch's Linear default, weight and bias ``U(+-1/sqrt(dim))``)."""
  if scheme in ("normal_0.01", "normal_0.02"):
    std = 0.01 if scheme == "normal_0.01" else 0.02
    return {"weight": std * flat_random.normal(key, (num_classes, dim), jnp.float32),
            "bias": jnp.zeros((num_classes,), jnp.float32)}
  if scheme != "default":
    raise ConfigError(f"config.head_init={scheme!r}; expected one of {', '.join(HEAD_INITS)}")
  bound = 1.0 / dim ** 0.5
  w_key, b_key = jax.random.split(key)
  return {"weight": flat_random.uniform(w_key, (num_classes, dim), jnp.float32, -bound, bound),
          "bias": jax.random.uniform(b_key, (num_classes,), jnp.float32, -bound, bound)}


def head_logits(head: Mapping[str, jax.Array], features: jax.Array) -> jax.Array:
  """``features @ weight.T + bias`` (the Encoder's ``TorchLinear``)."""
  return jnp.einsum("...i,oi->...o", features, head["weight"]) + head["bias"]


def mean_logits(head_params: Mapping[str, Mapping[str, jax.Array]], features: Mapping[str, jax.Array]) -> jax.Array:
  """``mean_m head_logits(head_params[m], features[m])`` over the streams of ``head_params``."""
  return sum(head_logits(head_params[m], features[m]) for m in head_params) / len(head_params)


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


def fusion_name(streams: Sequence[str]) -> str | None:
  """``three_stream`` for joint+motion+bone, ``fusion`` for another set of 2+ streams, else None."""
  if len(streams) < 2:
    return None
  return "three_stream" if sorted(streams) == sorted(THREE_STREAMS) else "fusion"


def evaluation(logits: Mapping[str, np.ndarray], labels: np.ndarray, fusion: str | None) -> dict[str, float]:
  """Top-1 of every stream's logits and, with 2+ streams, of the fused probabilities."""
  out = {m: top1(v, labels) for m, v in logits.items()}
  if fusion:
    out[fusion] = top1(fused_probabilities(logits), labels)
  return out


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
