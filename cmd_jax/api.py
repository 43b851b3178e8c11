"""A small Python API: a pretrained encoder as a function from skeletons to features.

This module owns ``load_encoder`` and ``EncoderHandle``: loading one modality's frozen query
encoder from a pretraining workdir, and computing its features for a numpy array of
skeletons with the same preprocessing and test view as the downstream protocols. Any
pretraining workdir works: any method, any encoder.

Example::

  import numpy as np
  from cmd_jax import api

  encoder = api.load_encoder("workdirs/pretrain_synthetic", modality="joint")
  # raw recordings [N, 3, T, V, M] (NTU: V=25, M=2), zero where a person/frame is absent;
  # lengths [N] when the clips are zero-padded to a common T
  x = np.load("my_clips.npy").astype(np.float32)
  feats = encoder.features(x, num_frames=lengths)    # [N, encoder.feature_dim]
  # already normalised clips (e.g. the records of a converted dataset), as stored:
  feats = encoder.features(records, num_frames=record_lengths, preprocess=False)
  # the T frames as given: no crop, no resize
  feats = encoder.features(x[:, :, :64], crop=None, preprocess=False)

What ``features`` computes, in order:

1. ``preprocess=True`` (the default, for raw recordings): what the dataset converter does to
   every sample (``data_prep.convert``): sample ``i`` keeps its first ``num_frames[i]``
   frames, zero-padded or truncated to 300, then the conversion of the data variant the
   encoder was pretrained on: CMD's ``pre_normalization`` (loop-padding of null frames,
   centring, the two rotations; with ``crop=None`` the clip is normalised as given, no
   padding to 300) or, for a 50-frame (HiCLR) pretraining, ``data_prep.frame50`` (centring,
   the linear resize of the valid frames to 50, the per-frame rotation). So a raw recording
   gives the same features as its record in the converted dataset.
2. ``crop="center"``: the protocols' test view (linear-evaluation test set, kNN on both
   splits): for CMD, frames ``[int(0.025 F), F - int(0.025 F))`` of the ``F = min(num_frames,
   300)`` valid frames, linearly resized to the pretraining's ``config.augment.frames``; for a
   50-frame pretraining, the clip as it is. A float ``crop`` is a centre crop of that ratio.
   ``crop=None`` feeds all T frames as given.
3. The modality (joint, motion or bone) of the clip through the encoder in eval mode
   (BatchNorm running statistics, no dropout) with ``features_only``: the pooled feature
   before any head (CMD's GRU: the ``2H``-d last-step output, the reference's
   ``knn_eval=True``; ST-GCN and DSTA-Net: the 256-d pooled feature, HiCLR's
   ``return_feat``). With ``crop=None, preprocess=False`` this is exactly the encoder on x.

Batches of ``batch_size`` (rounded up to a multiple of the device count) are sharded over
all devices (a 1-D ``data`` mesh); the last batch is zero-padded and the padding dropped,
so the result does not depend on ``batch_size``. In a multi-process run every process must
pass the same ``x``; every process gets all the features.

Errors (bad path, no checkpoint, unknown or not-pretrained modality, an array of the wrong
shape for the layout) raise ``FileNotFoundError`` or ``ValueError`` saying what was found
and what was expected.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np

from cmd_jax import modalities, sharding
from cmd_jax.evaluators import knn

MAX_FRAMES = 300  # the converter's stored length (data_prep.datasets.MAX_FRAMES)


def _load_workdir(path: str, modality: str, step: int | None, mesh):
  """The ``Pretrained`` encoders of a pretraining workdir (``cmd_jax.pretrained.load_pretrained``,
  the protocols' loader) and ``modality``'s variables placed on ``mesh``."""
  from cmd_jax import pretrained  # pylint: disable=import-outside-toplevel

  pre = pretrained.load_pretrained(path, step, mesh=mesh)
  if modality not in pre.params:
    raise ValueError(f"load_encoder: modality {modality!r} was not pretrained in {path} (pretrained: "
                     f"{', '.join(pre.params)}); expected one of them")
  return pre, sharding.put_replicated(pre.variables(modality), mesh)


# ----------------------------------------------------------------------------------------
# The handle.
# ----------------------------------------------------------------------------------------

class EncoderHandle:
  """A frozen encoder of one modality and the pipeline that turns skeletons into its features.

  Attributes:
    config: the pretraining ConfigDict (``config.json`` of the workdir).
    layout: the skeleton layout the encoder was trained on (V, M of the inputs).
    modality: ``"joint"``, ``"motion"`` or ``"bone"``.
    frames: ``config.augment.frames``, the clip length the centre crop resizes to.
    feature_dim: D of the features (``2 * hidden_size``).
    step: the checkpoint step loaded.
    path: the workdir.
    model: the Flax ``Encoder``; ``variables``: its ``{"params", "batch_stats"}``.

  Calling the handle is ``features``: ``encoder(x)`` is ``encoder.features(x)``.
  """

  def __init__(self, *, pretrained, modality: str, variables: Any, mesh: jax.sharding.Mesh):
    self.config = pretrained.config
    self.layout = pretrained.layout
    self.modality = modality
    self.variables = variables
    self.step = int(pretrained.step)
    self.path = pretrained.workdir
    self.mesh = mesh
    self.method = pretrained.method
    self.variant = pretrained.variant
    self.model = pretrained.model(num_outputs=None)
    self.frames = pretrained.frames
    self.default_crop = pretrained.eval_crop  # the protocols' test view: a centre-crop ratio, or None (as given)
    self.feature_dim = pretrained.feature_dim
    self._jitted: dict[Any, Callable] = {}

  def __repr__(self) -> str:
    return (f"EncoderHandle(path={self.path!r}, method={self.method!r}, encoder={self.config.model.get('name', 'gru')!r}, "
            f"modality={self.modality!r}, step={self.step}, layout={self.layout.name}, frames={self.frames}, "
            f"feature_dim={self.feature_dim})")

  # -- the feature functions ------------------------------------------------------------

  def _fn(self, ratio: float | None) -> Callable:
    """The jitted ``(variables, skeleton, num_frames) -> features`` for a centre crop of ``ratio``
    (the kNN evaluator's own function) or, for ``None``, the clip as given."""
    if ratio not in self._jitted:
      if ratio is None:
        model, name, layout = self.model, self.modality, self.layout

        def fn(variables, skeleton, num_frames):
          del num_frames
          return model.apply(variables, modalities.modality(skeleton, name, layout), train=False, features_only=True)
      else:
        fn = knn.make_feature_fn(self.model, self.layout, self.modality, self.frames, ratio)
      rep, batch = sharding.replicated(self.mesh), sharding.batch_sharding(self.mesh)
      self._jitted[ratio] = jax.jit(fn, in_shardings=(rep, batch, batch), out_shardings=rep)
    return self._jitted[ratio]

  def _check_input(self, x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
      raise ValueError(f"features: x has dtype {x.dtype}; expected float32 coordinates")
    x = x.astype(np.float32, copy=False)
    v, m = self.layout.num_joints, self.layout.num_persons
    if x.ndim != 5 or x.shape[1] != 3 or x.shape[3] != v or x.shape[4] != m:
      raise ValueError(f"features: x has shape {x.shape}; expected [N, 3, T, V={v}, M={m}] (layout "
                       f"{self.layout.name} of this encoder: {v} joints, {m} person slots)")
    if x.shape[2] < 1:
      raise ValueError(f"features: x has shape {x.shape}: no frames (T = 0)")
    finite = np.isfinite(x)
    if not finite.all():  # a NaN coordinate would make the whole batch's features NaN
      clips = np.flatnonzero(~finite.reshape(x.shape[0], -1).all(axis=1))
      raise ValueError(f"features: x has {int(x.size - finite.sum())} non-finite values (NaN or inf) in "
                       f"{clips.size} clip(s), the first clip {int(clips[0])}; expected finite coordinates "
                       "(absent joints and persons as 0)")
    return x

  @staticmethod
  def _check_frames(num_frames, n: int, t: int, allow_longer: bool) -> np.ndarray:
    if num_frames is None:
      return np.full((n,), t, np.int32)
    frames = np.asarray(num_frames)
    if frames.ndim == 0:
      frames = np.full((n,), frames)
    if (frames.shape != (n,) or frames.dtype.kind not in "iuf"
        or (frames.dtype.kind == "f" and not np.all(frames == np.round(frames)))):
      raise ValueError(f"features: num_frames has shape {frames.shape} (dtype {frames.dtype}); expected {n} "
                       "integers, one per sample (or one for all)")
    frames = frames.astype(np.int64)
    high = np.iinfo(np.int32).max if allow_longer else t
    bad = np.flatnonzero((frames < 1) | (frames > high))
    if bad.size:
      raise ValueError(f"features: num_frames[{bad[0]}] = {frames[bad[0]]}; expected 1 <= num_frames <= T = {t} "
                       "(the valid frames are the first num_frames of each clip)")
    return frames.astype(np.int32)

  def _prepare(self, x: np.ndarray, frames: np.ndarray, crop_ratio: float | None,
               preprocess: bool) -> tuple[np.ndarray, np.ndarray]:
    """One batch as the converter stores it (``preprocess``) or as given."""
    if not preprocess:
      return x, frames
    from data_prep.preprocess import pre_normalization  # pylint: disable=import-outside-toplevel
    if self.variant == "frame50":  # HiCLR's conversion: the first num_frames frames to 50 frames
      from data_prep.frame50 import frame50_normalization  # pylint: disable=import-outside-toplevel
      clips = frame50_normalization(self._fixed_length(x, frames), self.layout)
      return clips, np.full((len(clips),), clips.shape[2], np.int32)
    if crop_ratio is None:  # the clip as given: normalised at its own length
      return pre_normalization(x, self.layout), frames
    return pre_normalization(self._fixed_length(x, frames), self.layout), frames  # num_frames: the original length

  @staticmethod
  def _fixed_length(x: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Sample ``i``'s first ``frames[i]`` frames, zero-padded or truncated to 300, as the
    converter stores a recording (``data_prep.datasets.to_fixed_length`` per sample)."""
    n, c, _, v, m = x.shape
    fixed = np.zeros((n, c, MAX_FRAMES, v, m), np.float32)
    for i, f in enumerate(frames):
      kept = min(int(f), MAX_FRAMES)
      fixed[i, :, :kept] = x[i, :, :kept]
    return fixed

  def features(self, x, num_frames=None, crop: str | float | None = "center", batch_size: int = 256,
               preprocess: bool = True) -> np.ndarray:
    """The encoder's features of skeletons ``x``.

    Args:
      x: float32 ``[N, 3, T, V, M]`` (V, M of ``self.layout``).
      num_frames: the valid length of each clip (an int or ``[N]`` ints in ``[1, T]``; default
        ``T``): frames past it are ignored, as zero padding. With ``preprocess=False`` it may
        exceed T, as a converted record's original length does (the crop uses ``min(num_frames, T)``).
      crop: ``"center"``: the protocols' 95% centre crop resized to ``self.frames``; a float
        in ``(0, 1]``: a centre crop of that ratio, resized; ``None``: all T frames as given
        (no crop, no resize; ``num_frames`` must then be T).
      batch_size: clips per device batch (rounded up to a multiple of the device count).
      preprocess: apply the dataset converter's normalisation first (raw recordings); False
        for clips that are already normalised (e.g. a converted dataset's records).

    Returns:
      float32 numpy ``[N, feature_dim]``.
    """
    x = self._check_input(x)
    n, _, t, _, _ = x.shape
    resized = preprocess and self.variant == "frame50"  # the preprocessing itself resizes to 50 frames
    frames = self._check_frames(num_frames, n, t, allow_longer=not preprocess and crop is not None)
    if crop is None:
      ratio = None
      if np.any(frames != t) and not resized:
        raise ValueError(f"features: crop=None feeds all T = {t} frames as given, but num_frames has values "
                         f"{sorted(set(frames.tolist()))[:5]}; trim x to the frames to use, or pass crop='center'")
    elif isinstance(crop, str):
      if crop != "center":
        raise ValueError(f"features: crop={crop!r}; expected 'center', a ratio in (0, 1], or None")
      ratio = self.default_crop
    else:
      ratio = float(crop)
      if not 0 < ratio <= 1:
        raise ValueError(f"features: crop={crop!r}; expected 'center', a ratio in (0, 1], or None")
    if int(batch_size) < 1:
      raise ValueError(f"features: batch_size={batch_size}; expected a positive integer")
    if n == 0:
      return np.zeros((0, self.feature_dim), np.float32)
    devices = self.mesh.devices.size
    batch = min(int(batch_size), n)
    batch = -(-batch // devices) * devices
    fn = self._fn(ratio)
    sh = sharding.batch_sharding(self.mesh)
    out = []
    for lo in range(0, n, batch):
      xb, fb = self._prepare(x[lo:lo + batch], frames[lo:lo + batch], ratio, preprocess)
      rows = len(xb)
      if rows < batch:  # pad the last batch: one compiled shape
        xb = np.concatenate([xb, np.zeros((batch - rows,) + xb.shape[1:], np.float32)])
        fb = np.concatenate([fb, np.ones((batch - rows,), np.int32)])
      put = [jax.make_array_from_callback(a.shape, sh, lambda idx, a=a: a[idx]) for a in (xb, fb)]
      out.append(np.asarray(jax.device_get(fn(self.variables, *put)))[:rows])
    return np.concatenate(out).astype(np.float32, copy=False)

  __call__ = features


def load_encoder(path: str | os.PathLike, modality: str = "joint", *, step: int | None = None) -> EncoderHandle:
  """The frozen ``modality`` query encoder of a pretraining workdir (latest checkpoint, or ``step``).

  Its parameters and BatchNorm running statistics are restored, replicated on a ``data``
  mesh over all devices; the projection head is not used (``features_only``).

  Raises:
    ValueError: unknown modality, a modality the run did not pretrain, or not a pretraining run.
    FileNotFoundError: no such directory, no config.json, no checkpoint (or not ``step``).
  """
  if modality not in modalities.MODALITIES:
    raise ValueError(f"load_encoder: unknown modality {modality!r}; expected one of {', '.join(modalities.MODALITIES)}")
  path = os.path.abspath(os.fspath(path))
  mesh = sharding.make_mesh()
  pre, variables = _load_workdir(path, modality, step, mesh)
  return EncoderHandle(pretrained=pre, modality=modality, variables=variables, mesh=mesh)


__all__ = ["EncoderHandle", "load_encoder"]
