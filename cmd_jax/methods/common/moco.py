"""MoCo v2 with one query and one momentum key encoder, as the SkeletonCLR family computes it.

This module owns the pieces of a step that SkeletonCLR, AimCLR and HiCLR (and every stream of
CrosSCLR) share (docs/references.md#hiclr-pretraining-step):

- ``init_encoder_pair``: the query and the key encoder, initialised INDEPENDENTLY: the
  references build the key encoder as a copy of the query encoder, then their processor's
  ``weights_init`` re-initialises the whole model (a quirk, kept);
- ``embed``: one encoder forward in train mode (batch statistics, running statistics
  updated, dropout on), the output (optionally through a projection given by the method)
  L2-normalised (``F.normalize``);
- ``momentum_update``: ``theta_k <- m theta_k + (1 - m) theta_q`` over the parameters only
  (not the BatchNorm statistics), with the query parameters before this step's SGD update;
- ``branch_logits``: ``[x . k, x . queue] / T`` of one query branch (length ``1 + K``,
  against the queue before this step's enqueue) and its raw similarities to the queue;
- ``info_nce``: the cross-entropy of such logits with target 0 (MoCo's InfoNCE).

Pure functions of arrays and Flax modules; gradients reach only the query side (keys and the
queue are ``stop_gradient``-ed, as the references compute them under ``no_grad``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from cmd_jax import models
from cmd_jax.losses import _float, l2_normalize, similarities
from cmd_jax.layouts import SkeletonLayout


def dummy_clip(layout: SkeletonLayout, frames: int) -> jax.Array:
  """A zero batch ``[2, 3, frames, V, M]`` to initialise an encoder with."""
  return jnp.zeros((2, 3, frames, layout.num_joints, layout.num_persons), jnp.float32)


def init_encoder_pair(model, query_key: jax.Array, key_key: jax.Array, x: jax.Array) -> tuple[dict, dict]:
  """``(query, key)`` variables ``{"params", "batch_stats"}`` of ``model``, drawn independently."""
  return models.init_variables(model, query_key, x), models.init_variables(model, key_key, x)


def embed(model, params, batch_stats, x: jax.Array, dropout_key: jax.Array, *, project=None,
          **kwargs) -> tuple[Any, Any]:
  """``(L2-normalised output, updated batch statistics)`` of a train-mode forward of ``x``.

  ``kwargs`` go to the model's call; an encoder call that returns a tuple of outputs (AimCLR's
  extreme pass with its dropped copy) gets each of them normalised. ``project`` (a function of
  the model's output, e.g. CrosSCLR's projection heads kept outside the encoder) is applied to
  each output before the normalisation."""
  out, updated = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"],
                             rngs={"dropout": dropout_key}, **kwargs)
  project = project or (lambda o: o)
  out = tuple(l2_normalize(project(o)) for o in out) if isinstance(out, tuple) else l2_normalize(project(out))
  return out, updated["batch_stats"]


def momentum_update(key_params, query_params, momentum: float | jax.Array):
  """``m * key + (1 - m) * sg(query)``, leaf by leaf (the parameters only)."""
  return jax.tree.map(lambda k, q: momentum * k + (1.0 - momentum) * q, key_params,
                      jax.lax.stop_gradient(query_params))


def branch_logits(x: jax.Array, k: jax.Array, queue: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
  """``(logits [N, 1 + K], l_neg [N, K])`` of one query branch ``x [N, D]`` against the key
  ``k [N, D]`` and the queue ``[K, D]``: ``logits = [x . k, x @ queue.T] / T``."""
  k = jax.lax.stop_gradient(k)
  l_pos = jnp.sum(_float(x) * _float(k), axis=-1, keepdims=True)
  l_neg = similarities(x, queue)
  return jnp.concatenate([l_pos, l_neg], axis=1) / temperature, l_neg


def info_nce(logits: jax.Array) -> jax.Array:
  """``mean_n [logsumexp(logits_n) - logits_n0]``: cross-entropy with the key (column 0) as target."""
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])


def top1(logits: jax.Array) -> jax.Array:
  """The fraction of rows whose largest logit is the key's (column 0)."""
  return jnp.mean((jnp.argmax(logits, axis=-1) == 0).astype(jnp.float32))
