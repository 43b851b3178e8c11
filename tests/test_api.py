"""Tests for cmd_jax.api against independent computations.

A tiny CMD model is pretrained once (one epoch on a tiny synthetic TFDS set). Then:

- raw recordings (``data_prep.synthetic.SPEC.load``) through ``features`` equal the
  features the kNN evaluator computes from the converted TFDS records of the same samples
  (``knn.make_feature_fn`` + ``knn.extract_features`` with the run's own variables): the
  API's preprocessing and centre crop are the converter's and the protocols';
- ``crop=None`` equals ``Encoder.apply`` on the flattened modality of the clip;
- the restored variables are the trained state's, bit for bit;
- the result does not depend on the batch size or the number of devices;
- bad paths, modalities and shapes raise errors that say what was found and expected.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmd_jax import api, data, modalities, sharding
from cmd_jax.evaluators import knn
from cmd_jax.methods import cmd as cmd_method
from cmd_jax.trainers import pretrain as cmd_pretrain
from configs import pretrain_cmd
from data_prep import preprocess, synthetic

REPO = Path(__file__).resolve().parents[1]
MODALITIES = ("joint", "motion", "bone")
SYNTHETIC_OPTIONS = {"synthetic_subjects": 2, "synthetic_repetitions": 1}
TINY = {"model.hidden_size": 8, "model.num_layers": 1, "model.embed_dim": 8, "batch_size": 8,
        "moco.queue_size": 32, "cmd.topk": 8, "augment.frames": 8, "augment.min_length": 8, "num_epochs": 1,
        "evaluator.name": ""}
FRAMES, FEATURE_DIM = 8, 16
# The features are GRU states in (-1, 1). Two computations of them (other batch sizes, padding,
# devices or compiled programs) sum in other orders: T = 8 steps of <= 158-term float32 sums,
# a few u (6e-8) of that O(1) scale each (measured <= 6.5 u). rtol = atol = 1e-5 is ~170 u.


def tiny_config(data_dir: str):
  config = pretrain_cmd.get_config("synthetic")
  config.unlock()
  for path, value in {**TINY, "data.data_dir": data_dir}.items():
    node = config
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_synthetic):
  """(workdir, config, trained state): a one-epoch pretraining on 2 subjects x 1 repetition."""
  data_dir = tiny_synthetic
  workdir = tmp_path_factory.mktemp("pretrain")
  config = tiny_config(str(data_dir))
  result = cmd_pretrain.train_and_evaluate(config, workdir)
  state = jax.tree.map(np.asarray, jax.device_get(result.state))
  return str(workdir), config, state


@pytest.fixture(scope="module")
def val_split(run):
  """The xsub val split twice: the converted TFDS records, and the raw generated recordings
  of the same samples (zero-padded to a common length), in the records' order."""
  _, config, _ = run
  source = data.open_split(config.data, "val")
  records = [source[i] for i in range(len(source))]
  names = [r["name"].decode() if isinstance(r["name"], bytes) else str(r["name"]) for r in records]
  samples = {s.name: s for s in synthetic.list_samples(None, SYNTHETIC_OPTIONS)}
  raws = [synthetic.SPEC.load(samples[n]) for n in names]
  lengths = np.array([r.shape[1] for r in raws])
  raw = np.zeros((len(raws), 3, lengths.max(), 25, 2), np.float32)
  for i, r in enumerate(raws):
    raw[i, :, :r.shape[1]] = r
  assert len(set(lengths)) > 1  # the padding to a common T is exercised
  np.testing.assert_array_equal(lengths, [r["num_frames"] for r in records])
  return source, records, raw, lengths


def run_variables(state, modality):
  return {"params": state.params[modality], "batch_stats": state.batch_stats[modality]}


@pytest.fixture(scope="module")
def encoders(run):
  workdir, _, _ = run
  return {m: api.load_encoder(workdir, m) for m in MODALITIES}


def test_handle_attributes_and_restored_variables(run, encoders):
  workdir, config, state = run
  for m, enc in encoders.items():
    assert enc.modality == m and enc.layout.name == "ntu25" and enc.frames == FRAMES
    assert enc.feature_dim == FEATURE_DIM and enc.step == 4 and enc.path == os.path.abspath(workdir)
    assert enc.config.model.hidden_size == config.model.hidden_size
    got, want = jax.tree.map(np.asarray, enc.variables), run_variables(state, m)
    # The projection head is dropped, as the reference's downstream loading drops ``fc*``.
    want = {"params": {k: v for k, v in want["params"].items() if not k.startswith("fc")},
            "batch_stats": want["batch_stats"]}
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(a, b)
  # the three encoders are different networks
  assert not np.array_equal(encoders["joint"].features(np.ones((1, 3, 5, 25, 2), np.float32)),
                            encoders["bone"].features(np.ones((1, 3, 5, 25, 2), np.float32)))


@pytest.mark.parametrize("modality", MODALITIES)
def test_raw_recordings_give_the_protocols_features(run, val_split, encoders, modality):
  """Raw generation + the API's preprocessing == converted records + the kNN evaluator's features."""
  _, config, state = run
  source, records, raw, lengths = val_split
  fn = knn.make_feature_fn(cmd_method.make_model(config, data.layout_of(config.data)), data.layout_of(config.data),
                           modality, FRAMES,
                           float(config.evaluator.crop_ratio))
  expected, _ = knn.extract_features(fn, run_variables(state, modality), source, batch_size=8,
                                     mesh=sharding.make_mesh())
  enc = encoders[modality]
  got = enc.features(raw, num_frames=lengths)
  assert got.shape == (len(records), FEATURE_DIM) and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # the converted records themselves, without the preprocessing
  stored = np.stack([r["skeleton"] for r in records])
  np.testing.assert_allclose(enc.features(stored, num_frames=lengths, preprocess=False), expected,
                             rtol=1e-5, atol=1e-5)
  # one recording at its own length: num_frames defaults to T
  i = int(np.argmin(lengths))
  np.testing.assert_allclose(enc.features(raw[i:i + 1, :, :lengths[i]]), expected[i:i + 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("modality", MODALITIES)
def test_crop_none_is_the_encoder_on_the_clip(run, encoders, modality):
  _, config, state = run
  layout = data.layout_of(config.data)
  x = np.random.default_rng(1).normal(size=(5, 3, 12, 25, 2)).astype(np.float32)
  model = cmd_method.make_model(config, data.layout_of(config.data))

  def direct(clip):
    flat = modalities.flatten(modalities.modality(jnp.asarray(clip), modality, layout))
    return np.asarray(model.apply(run_variables(state, modality), flat, train=False, features_only=True))

  enc = encoders[modality]
  np.testing.assert_allclose(enc.features(x, crop=None, preprocess=False), direct(x), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(enc.features(x, crop=None), direct(preprocess.pre_normalization(x, layout)),
                             rtol=1e-5, atol=1e-5)


def test_result_does_not_depend_on_the_batch_size(val_split, encoders):
  _, _, raw, lengths = val_split
  raw, lengths = raw[:10], lengths[:10]  # 10 = 3 + 3 + 3 + 1: the last batch is padded
  enc = encoders["joint"]
  np.testing.assert_allclose(enc.features(raw, lengths, batch_size=3), enc.features(raw, lengths, batch_size=256),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(enc.features(raw, lengths, crop=0.5, batch_size=4),
                             enc.features(raw, lengths, crop=0.5, batch_size=10), rtol=1e-5, atol=1e-5)
  assert enc.features(raw[:0], lengths[:0]).shape == (0, FEATURE_DIM)


_TWO_DEVICES = """
import sys
import numpy as np
import jax
from cmd_jax import api
assert jax.device_count() == 2, jax.devices()
raw, lengths = np.load(sys.argv[2]), np.load(sys.argv[3])
np.save(sys.argv[4], api.load_encoder(sys.argv[1], "motion").features(raw, lengths, batch_size=3))
"""


def test_two_devices_give_the_same_features(run, val_split, encoders, tmp_path):
  """The batch sharded over 2 (host) devices: batch 3 becomes 4, the last batch padded."""
  workdir, _, _ = run
  _, _, raw, lengths = val_split
  raw, lengths = raw[:7], lengths[:7]
  np.save(tmp_path / "raw.npy", raw)
  np.save(tmp_path / "lengths.npy", lengths)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
             PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES, workdir, str(tmp_path / "raw.npy"),
                         str(tmp_path / "lengths.npy"), str(tmp_path / "out.npy")],
                        env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / "out.npy"), encoders["motion"].features(raw, lengths),
                             rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Bad input.

def test_load_errors(run, tmp_path):
  workdir, _, _ = run
  with pytest.raises(FileNotFoundError, match="missing does not exist; expected a pretraining workdir"):
    api.load_encoder(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"config.json does not exist \(the workdir holds: nothing\)"):
    api.load_encoder(tmp_path / "empty")
  with pytest.raises(ValueError, match=r"unknown modality 'rgb'; expected one of joint, motion, bone"):
    api.load_encoder(workdir, "rgb")
  with pytest.raises(FileNotFoundError, match=r"has no step 999 \(steps there: 4\)"):
    api.load_encoder(workdir, step=999)

  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  no_ckpt = tmp_path / "no_ckpt"
  no_ckpt.mkdir()
  (no_ckpt / "config.json").write_text(json.dumps(config))
  with pytest.raises(FileNotFoundError, match=r"no_ckpt has no checkpoint \(expected checkpoints/<step>/state\)"):
    api.load_encoder(no_ckpt)
  (no_ckpt / "checkpoints").mkdir()
  with pytest.raises(FileNotFoundError, match=r"no_ckpt has no checkpoint"):
    api.load_encoder(no_ckpt)

  joint_only = tmp_path / "joint_only"
  shutil.copytree(workdir, joint_only)
  (joint_only / "config.json").write_text(json.dumps(dict(config, modalities="joint")))
  # config.json and the checkpoint disagree (the checkpoint holds three encoders)
  with pytest.raises(ValueError, match=r"does not match its config.json"):
    api.load_encoder(joint_only, "bone")
  (joint_only / "config.json").write_text(json.dumps(dict(config, trainer="linear")))
  with pytest.raises(ValueError, match="is the config of a 'linear' run; expected a pretraining workdir"):
    api.load_encoder(joint_only)


@pytest.mark.parametrize("shape,kwargs,match", [
    ((2, 3, 10, 20, 2), {}, r"x has shape \(2, 3, 10, 20, 2\); expected \[N, 3, T, V=25, M=2\]"),
    ((2, 3, 10, 25, 1), {}, r"expected \[N, 3, T, V=25, M=2\] \(layout ntu25"),
    ((3, 10, 25, 2), {}, r"expected \[N, 3, T, V=25, M=2\]"),
    ((2, 2, 10, 25, 2), {}, r"expected \[N, 3, T, V=25, M=2\]"),
    ((2, 3, 10, 25, 2), {"num_frames": [10, 11]}, r"num_frames\[1\] = 11; expected 1 <= num_frames <= T = 10"),
    ((2, 3, 10, 25, 2), {"num_frames": [10, 0]}, r"num_frames\[1\] = 0"),
    ((2, 3, 10, 25, 2), {"num_frames": [10]}, r"num_frames has shape \(1,\).*expected 2 integers"),
    ((2, 3, 10, 25, 2), {"crop": "random"}, r"crop='random'; expected 'center', a ratio in \(0, 1\], or None"),
    ((2, 3, 10, 25, 2), {"crop": 1.5}, r"crop=1.5"),
    ((2, 3, 10, 25, 2), {"crop": None, "num_frames": [10, 8]}, r"crop=None feeds all T = 10 frames"),
    ((2, 3, 10, 25, 2), {"batch_size": 0}, r"batch_size=0"),
])
def test_feature_errors(encoders, shape, kwargs, match):
  with pytest.raises(ValueError, match=match):
    encoders["joint"].features(np.zeros(shape, np.float32), **kwargs)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_coordinates_are_an_error_not_nan_features(encoders, bad):
  x = np.zeros((3, 3, 10, 25, 2), np.float32)
  x[2, 1, 4, 7, 0] = bad
  with pytest.raises(ValueError, match=r"x has 1 non-finite values \(NaN or inf\) in 1 clip\(s\), the first clip 2; "
                                       r"expected finite coordinates"):
    encoders["joint"].features(x)


def test_an_all_zero_batch_gives_finite_features(encoders):
  # documented behaviour: absent persons and joints are zeros, so an all-zero clip is a valid
  # (empty) recording; its feature is finite (the preprocessing leaves it at zero)
  features = encoders["joint"].features(np.zeros((2, 3, 10, 25, 2), np.float32))
  assert features.shape[0] == 2 and np.isfinite(features).all()

