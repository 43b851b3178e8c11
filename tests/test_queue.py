"""Tests for cmd_jax.queue against a numpy ring buffer (docs/references.md#cmd-model-and-queues,
#cmd-step-order step 6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmd_jax import queue as queue_lib

MODALITIES = ("joint", "motion", "bone")


class NumpyRingBuffer:
  """The reference's enqueue, written independently: (D, K) buffer, columns = samples."""

  def __init__(self, initial_rows: np.ndarray):
    self.buf = np.array(initial_rows, np.float64).T.copy()  # (D, K), as in the reference
    self.ptr = 0

  def enqueue(self, keys: np.ndarray) -> None:
    n = keys.shape[0]
    k = self.buf.shape[1]
    assert k % n == 0
    self.buf[:, self.ptr:self.ptr + n] = keys.T
    self.ptr = (self.ptr + n) % k

  def rows(self) -> np.ndarray:
    return self.buf.T


def test_init_shapes_dtypes_and_pointer():
  queues, ptr = queue_lib.init_queues(jax.random.key(0), MODALITIES, dim=16, size=32)
  assert list(queues) == list(MODALITIES)
  for q in queues.values():
    assert q.shape == (32, 16) and q.dtype == jnp.float32
  assert ptr.shape == () and ptr.dtype == jnp.int32 and int(ptr) == 0


def test_init_is_unit_norm_per_sample_and_distinct_per_modality():
  queues, _ = queue_lib.init_queues(jax.random.key(1), MODALITIES, dim=128, size=256)
  arrays = {m: np.asarray(q, np.float64) for m, q in queues.items()}
  for a in arrays.values():
    # float32 x / |x| over D = 128: <= (D / 2 + 2) u = 4e-6 off norm 1 in any summation order.
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=4e-6)
    # A normalised Gaussian: coordinates have mean ~0 (20 standard errors) and variance 1/D.
    assert abs(a.mean()) < 0.01
    np.testing.assert_allclose(a.var(), 1.0 / 128, rtol=0.05)
  assert not np.allclose(arrays["joint"], arrays["motion"])
  assert not np.allclose(arrays["motion"], arrays["bone"])


def test_init_is_deterministic_in_the_key():
  a, _ = queue_lib.init_queues(jax.random.key(3), MODALITIES, dim=8, size=16)
  b, _ = queue_lib.init_queues(jax.random.key(3), MODALITIES, dim=8, size=16)
  c, _ = queue_lib.init_queues(jax.random.key(4), MODALITIES, dim=8, size=16)
  for m in MODALITIES:
    np.testing.assert_array_equal(a[m], b[m])
    assert not np.allclose(a[m], c[m])


def test_enqueue_wraps_around_like_a_ring_buffer():
  size, dim, batch, steps = 12, 5, 4, 8  # 8 steps = 2 2/3 laps around the queue
  queues, ptr = queue_lib.init_queues(jax.random.key(0), MODALITIES, dim=dim, size=size)
  refs = {m: NumpyRingBuffer(np.asarray(queues[m])) for m in MODALITIES}
  step = jax.jit(queue_lib.enqueue)
  rng = np.random.default_rng(0)
  for i in range(steps):
    keys = {m: rng.standard_normal((batch, dim)).astype(np.float32) for m in MODALITIES}
    queues, ptr = step(queues, ptr, {m: jnp.asarray(v) for m, v in keys.items()})
    for m in MODALITIES:
      refs[m].enqueue(keys[m])
      np.testing.assert_array_equal(np.asarray(queues[m]), refs[m].rows().astype(np.float32))
    assert int(ptr) == refs["joint"].ptr == (i + 1) * batch % size
    assert ptr.dtype == jnp.int32


def test_pointer_arithmetic():
  queues, ptr = queue_lib.init_queues(jax.random.key(0), ["joint"], dim=3, size=16)
  seen = []
  for _ in range(6):
    queues, ptr = queue_lib.enqueue(queues, ptr, {"joint": jnp.ones((4, 3))})
    seen.append(int(ptr))
  assert seen == [4, 8, 12, 0, 4, 8]
  # A batch equal to the queue size replaces everything and leaves the pointer at 0.
  full = jnp.arange(48, dtype=jnp.float32).reshape(16, 3)
  new, new_ptr = queue_lib.enqueue(queues, jnp.int32(0), {"joint": full})
  np.testing.assert_array_equal(new["joint"], full)
  assert int(new_ptr) == 0
  # A Python int pointer is accepted.
  _, p = queue_lib.enqueue(queues, 12, {"joint": jnp.ones((4, 3))})
  assert int(p) == 0


def test_index_alignment_across_modalities():
  """Row j holds the same sample's key in all three queues (what the CMD gather needs)."""
  size, dim, batch = 16, 4, 4
  queues, ptr = queue_lib.init_queues(jax.random.key(0), MODALITIES, dim=dim, size=size)
  offsets = {"joint": 0.0, "motion": 1000.0, "bone": 2000.0}
  sample = 0
  for _ in range(7):  # past one lap, so wrapped writes are checked too
    ids = np.arange(sample, sample + batch, dtype=np.float32)
    sample += batch
    # Encode the sample id in every coordinate, shifted per modality.
    keys = {m: jnp.asarray(np.repeat(ids[:, None], dim, 1) + off) for m, off in offsets.items()}
    queues, ptr = queue_lib.enqueue(queues, ptr, keys)
  ids = {m: np.asarray(queues[m])[:, 0] - off for m, off in offsets.items()}
  np.testing.assert_array_equal(ids["joint"], ids["motion"])
  np.testing.assert_array_equal(ids["joint"], ids["bone"])
  # After 28 samples into 16 rows: rows 0..11 hold samples 16..27, rows 12..15 samples 12..15.
  np.testing.assert_array_equal(ids["joint"], np.r_[np.arange(16, 28), np.arange(12, 16)])


def test_enqueue_is_functional_and_casts_to_queue_dtype():
  queues, ptr = queue_lib.init_queues(jax.random.key(0), ["joint"], dim=2, size=4)
  before = np.asarray(queues["joint"]).copy()
  new, _ = queue_lib.enqueue(queues, ptr, {"joint": jnp.ones((2, 2), jnp.bfloat16)})
  np.testing.assert_array_equal(queues["joint"], before)  # input untouched
  assert new["joint"].dtype == jnp.float32


def test_enqueue_keys_get_no_gradient():
  queues, ptr = queue_lib.init_queues(jax.random.key(0), ["joint"], dim=2, size=4)

  def f(keys):
    new, _ = queue_lib.enqueue(queues, ptr, {"joint": keys})
    return jnp.sum(new["joint"])

  np.testing.assert_array_equal(jax.grad(f)(jnp.ones((2, 2))), 0.0)


@pytest.mark.parametrize("size,batch,topk,match", [
    (100, 64, 10, "not a multiple of the global batch 64"),
    (16384, 64, 16385, "larger than the queue size"),
    (16384, 64, 0, "topk must be positive"),
    (16384, 64, -3, "topk must be positive"),
    (0, 64, 1, "queue size must be positive"),
    (64, 0, 1, "global batch must be positive"),
    (64, 32, 1.5, "topk must be an int"),
])
def test_validate_queue_config_errors(size, batch, topk, match):
  with pytest.raises(ValueError, match=match):
    queue_lib.validate_queue_config(size, batch, topk)


def test_validate_queue_config_accepts_the_reference_setting():
  queue_lib.validate_queue_config(16384, 64, 8192)
  queue_lib.validate_queue_config(np.int64(16384), np.int32(64), np.int64(16384))


def test_enqueue_errors():
  queues, ptr = queue_lib.init_queues(jax.random.key(0), ["joint", "motion"], dim=3, size=10)
  with pytest.raises(ValueError, match="not a multiple of the batch 4"):
    queue_lib.enqueue(queues, ptr, {"joint": jnp.ones((4, 3)), "motion": jnp.ones((4, 3))})
  with pytest.raises(ValueError, match="modalities"):
    queue_lib.enqueue(queues, ptr, {"joint": jnp.ones((5, 3))})
  with pytest.raises(ValueError, match="do not fit"):
    queue_lib.enqueue(queues, ptr, {"joint": jnp.ones((5, 4)), "motion": jnp.ones((5, 4))})
  with pytest.raises(ValueError, match="same batch"):
    queue_lib.enqueue(queues, ptr, {"joint": jnp.ones((5, 3)), "motion": jnp.ones((2, 3))})
  with pytest.raises(ValueError, match="unique"):
    queue_lib.init_queues(jax.random.key(0), ["joint", "joint"], dim=3, size=10)
