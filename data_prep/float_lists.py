"""Writing float32 tensor features the fast way, byte for byte what TFDS writes.

TFDS serializes a float tensor feature (our ``skeleton``) as a protobuf ``FloatList`` built
from ``array.flat``: protobuf then reads the array one numpy scalar at a time, ~18 ms for one
standard clip (``3 x 300 x 25 x 2`` = 45,000 values), which made this the largest part of a
build (10 of the 15 s of the small synthetic set on a 2-core AMD EPYC, 2026-12-06). The same
``FloatList`` built from ``array.ravel().tolist()`` holds the same float32 values (float32 ->
Python float -> float32 is exact, NaN payloads, signed zeros and subnormals included), takes
~2.5 ms and serializes to the same bytes (a whole example with its other features: 18.2 ms
against 3.2 ms, ``bench/bench_conversion.py``). The shards then hold the same examples in the
same order (``tests/test_builders.py`` checks both against TFDS's own function). (The shard
files themselves are not byte-reproducible even with TFDS alone: protobuf writes an
``Example``'s feature map in an order that changes from process to process.)

``fast_float_lists()`` swaps TFDS's per-feature function for that one while a build writes
(``data_prep.build``); any other feature type goes to TFDS's function unchanged. A TFDS
version without that function is left alone (the build is then only slower).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def fast_float_lists() -> Iterator[bool]:
  """Within the block, TFDS writes float32 tensor features through ``float32_feature``.
  Yields whether the swap is in place (False: this TFDS has no such function)."""
  from tensorflow_datasets.core import example_serializer  # pylint: disable=import-outside-toplevel

  original = getattr(example_serializer, "_item_to_tf_feature", None)
  to_array = getattr(example_serializer, "_item_to_np_array", None)
  if original is None or to_array is None or getattr(original, "_fast_float_lists", False):
    yield getattr(original, "_fast_float_lists", False)
    return

  def item_to_tf_feature(item, tensor_info):
    if np.dtype(tensor_info.np_dtype) != np.float32:
      return original(item, tensor_info)
    values = to_array(item, shape=tensor_info.shape, dtype=tensor_info.np_dtype)  # TFDS's checks
    return float32_feature(values, example_serializer.tf_feature_pb2)

  item_to_tf_feature._fast_float_lists = True  # pylint: disable=protected-access
  example_serializer._item_to_tf_feature = item_to_tf_feature  # pylint: disable=protected-access
  try:
    yield True
  finally:
    example_serializer._item_to_tf_feature = original  # pylint: disable=protected-access


def float32_feature(values: np.ndarray, feature_pb2):
  """The ``Feature`` proto of a float32 array: its values in C order as a ``FloatList``."""
  return feature_pb2.Feature(float_list=feature_pb2.FloatList(value=np.ravel(values).tolist()))
