"""The three input modalities (joint, motion, bone) and the encoder's input flattening.

Follows docs/references.md#cmd-modalities (computed inside the model from the 5-D clip,
after augmentation and temporal resizing) and #cmd-input-layout (the flattening order). All
functions are pure ``jnp`` functions of a skeleton array whose last four axes are ``(C, T, V, M)``; the usual
input is a batch ``[N, C=3, T, V, M]``, but any leading axes (including none) work.

- ``joint(x)``: ``x`` itself.
- ``motion(x)``: ``m[..., t, :, :] = x[..., t+1, :, :] - x[..., t, :, :]`` for ``t < T-1``;
  the last frame is 0 (docs/references.md#cmd-quirks item 8: it is zero, not repeated).
- ``bone(x, layout)``: ``b[..., v, :] = x[..., v, :] - x[..., parent(v), :]`` with the
  parents from ``layout.bone_parents``; the root's bone is 0 (NTU: joint 20, spine shoulder).
- ``flatten(x)``: ``[..., C, T, V, M] -> [..., T, V*C*M]`` in the reference's order:
  permute to ``(T, V, C, M)`` then reshape, so feature ``v*C*M + c*M + m``
  (``v*6 + c*2 + m`` for NTU: per joint, x of both persons, then y, then z).
"""

from __future__ import annotations

import jax.numpy as jnp

from cmd_jax.layouts import SkeletonLayout

MODALITIES = ("joint", "motion", "bone")


def _check_rank(x: jnp.ndarray, what: str) -> None:
  if x.ndim < 4:
    raise ValueError(f"{what}: expected a skeleton array [..., C, T, V, M], got shape {x.shape}")


def joint(x: jnp.ndarray) -> jnp.ndarray:
  """The joint stream: the coordinates unchanged."""
  _check_rank(x, "joint")
  return x


def motion(x: jnp.ndarray) -> jnp.ndarray:
  """Frame differences along T (axis -3); the last frame is zero."""
  _check_rank(x, "motion")
  diff = x[..., 1:, :, :] - x[..., :-1, :, :]
  pad = [(0, 0)] * (x.ndim - 3) + [(0, 1), (0, 0), (0, 0)]
  return jnp.pad(diff, pad)


def bone(x: jnp.ndarray, layout: SkeletonLayout) -> jnp.ndarray:
  """Joint minus its parent joint along V (axis -2); the root's bone is zero."""
  _check_rank(x, "bone")
  if x.shape[-2] != layout.num_joints:
    raise ValueError(f"bone: layout {layout.name} has {layout.num_joints} joints, "
                     f"but the array has V={x.shape[-2]} (shape {x.shape})")
  return x - jnp.take(x, jnp.asarray(layout.bone_parents), axis=-2)


def modality(x: jnp.ndarray, name: str, layout: SkeletonLayout) -> jnp.ndarray:
  """The stream ``name`` (one of ``MODALITIES``) of the skeleton array ``x``."""
  if name == "joint":
    return joint(x)
  if name == "motion":
    return motion(x)
  if name == "bone":
    return bone(x, layout)
  raise ValueError(f"unknown modality {name!r}; expected one of {MODALITIES}")


def flatten(x: jnp.ndarray) -> jnp.ndarray:
  """``[..., C, T, V, M] -> [..., T, V*C*M]``, feature index ``v*C*M + c*M + m``."""
  _check_rank(x, "flatten")
  *lead, c, t, v, m = x.shape
  x = jnp.moveaxis(x, -4, -2)  # [..., T, V, C, M]
  return x.reshape(*lead, t, v * c * m)


def parse_names(value, field: str) -> tuple[str, ...]:
  """A comma-separated list of distinct modality names (a config field) as a tuple.

  Raises ValueError naming ``field`` when it is empty, has an unknown name or a repeat.
  """
  names = tuple(m.strip() for m in str(value).split(",") if m.strip())
  unknown = [m for m in names if m not in MODALITIES]
  if not names or unknown or len(set(names)) != len(names):
    raise ValueError(f"{field}={value!r}: expected distinct names from {', '.join(MODALITIES)}, comma-separated")
  return names
