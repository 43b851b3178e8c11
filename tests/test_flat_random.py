"""``cmd_jax.flat_random``: the same numbers as ``jax.random`` bit for bit, in both threefry modes.

Compared exactly: the flat draw and JAX's own draw evaluate the same threefry counters, so any
difference (a counter offset, a transposed layout) is a wrong number, not rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmd_jax import flat_random

SHAPES = [(), (7,), (3, 3), (2, 5, 4), (2, 3, 1, 5, 2)]


def draws(key, shape):
  """(flat draw, jax.random's draw) pairs of every function ``flat_random`` offers."""
  return {
      "uniform": (flat_random.uniform(key, shape), jax.random.uniform(key, shape)),
      "uniform_bounds": (flat_random.uniform(key, shape, jnp.float32, -0.3, 0.7),
                         jax.random.uniform(key, shape, jnp.float32, -0.3, 0.7)),
      "normal": (flat_random.normal(key, shape), jax.random.normal(key, shape)),
      "bernoulli": (flat_random.bernoulli(key, 0.5, shape), jax.random.bernoulli(key, 0.5, shape)),
      "bernoulli_0.9": (flat_random.bernoulli(key, 0.9, shape), jax.random.bernoulli(key, 0.9, shape)),
      "bits": (flat_random.bits(key, shape), jax.random.bits(key, shape, jnp.uint32)),
      "bits8": (flat_random.bits(key, shape, jnp.uint8), jax.random.bits(key, shape, jnp.uint8)),
  }


@pytest.fixture(params=[True, False], ids=["partitionable", "original"])
def threefry_mode(request):
  saved = jax.config.jax_threefry_partitionable
  jax.config.update("jax_threefry_partitionable", request.param)
  yield request.param
  jax.config.update("jax_threefry_partitionable", saved)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_flat_draws_equal_jax_random(shape, threefry_mode):
  for name, (flat, reference) in jax.jit(draws, static_argnums=1)(jax.random.PRNGKey(11), shape).items():
    assert flat.shape == reference.shape == shape and flat.dtype == reference.dtype, name
    np.testing.assert_array_equal(np.asarray(flat), np.asarray(reference), err_msg=f"{name} {shape}")


def test_flat_draws_equal_jax_random_under_jit_with_typed_keys():
  shape = (4, 9, 5, 3)
  flat = jax.jit(lambda k: flat_random.normal(k, shape))(jax.random.key(2))
  np.testing.assert_array_equal(np.asarray(flat), np.asarray(jax.random.normal(jax.random.key(2), shape)))
  # A draw that differs from the reference must be caught: another key gives other numbers.
  assert not np.array_equal(np.asarray(flat), np.asarray(jax.random.normal(jax.random.key(3), shape)))
