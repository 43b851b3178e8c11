"""Tests for cmd_jax.pretrained: which arrays a downstream protocol starts from.

Follows docs/references.md#cmd-checkpoint-loading.

The workdirs here are made by hand, without training: a tiny pretraining ``config.json`` and
an orbax checkpoint of ``create_train_state``'s state with every leaf perturbed by known
noise, so the expected encoders (the query encoders' params minus the head, and their BN
running statistics) are known exactly. Bad workdirs (missing, no config.json, no
checkpoint, a checkpoint that does not fit its config) and incompatible downstream setups
(another layout, a stream that was not pretrained) must fail with what was found and what
was expected.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmd_jax import checkpoint, data, pretrained
from cmd_jax.errors import ConfigError
from cmd_jax.trainers import pretrain as cmd_pretrain
from configs import linear, pretrain_cmd
from tests.conftest import damage_checkpoint, folder_digest

TINY = {"model.hidden_size": 8, "model.num_layers": 1, "model.embed_dim": 8, "batch_size": 8,
        "moco.queue_size": 32, "cmd.topk": 8, "augment.frames": 8, "augment.min_length": 8, "evaluator.name": ""}


def set_fields(config, overrides):
  for path, value in overrides.items():
    node = config
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def tiny_pretrain_config(**overrides):
  return set_fields(pretrain_cmd.get_config("synthetic"), {**TINY, **overrides})


def make_workdir(path, steps=(2, 5), **overrides):
  """A pretraining workdir with a perturbed state at each step; returns {step: host state}."""
  config = tiny_pretrain_config(**overrides)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2))
  layout = data.layout_of(config.data)
  base = cmd_pretrain.create_train_state(config, layout, steps_per_epoch=1)
  ckpt = checkpoint.Checkpointer(path)
  states = {}
  rng = np.random.default_rng(0)

  def noisy(x):
    return np.asarray(x) + rng.normal(size=np.shape(x)).astype(np.asarray(x).dtype)

  for step in steps:
    state = base.replace(params=jax.tree.map(noisy, base.params), batch_stats=jax.tree.map(noisy, base.batch_stats),
                         step=jnp.asarray(step, jnp.int32))
    ckpt.save(step, jax.tree.map(jnp.asarray, state), {}, {"step": step})
    states[step] = jax.tree.map(np.asarray, state)
  ckpt.close()
  return states


def leaves_with_paths(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("pretrain"))
  return path, make_workdir(path)


def test_loads_the_query_encoders_without_head_bit_identical(workdir):
  path, states = workdir
  pre = pretrained.load_pretrained(path)
  assert pre.step == 5 and pre.modalities == ("joint", "motion", "bone") and not pre.random_init
  assert pre.layout.name == "ntu25" and pre.feature_dim == 16 and pre.frames == 8
  for m in pre.modalities:
    saved = states[5].params[m]
    assert sorted(saved) == ["fc_0", "fc_2", "gru", "input_norm"]
    expected = {k: v for k, v in saved.items() if not k.startswith("fc")}  # drop the head
    got, want = leaves_with_paths(pre.params[m]), leaves_with_paths(expected)
    assert sorted(got) == sorted(want)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=f"{m}/{k}")
    got, want = leaves_with_paths(pre.batch_stats[m]), leaves_with_paths(states[5].batch_stats[m])
    assert sorted(got) == ["input_norm/mean", "input_norm/var"]
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=f"{m}/{k}")
  # Not the key encoders: they are copies of the *unperturbed* initial params.
  key_encoder = states[5].key_params["joint"]["gru"]["weight_ih_l0"]
  assert not np.array_equal(pre.params["joint"]["gru"]["weight_ih_l0"], key_encoder)


def test_the_encoder_applies_with_the_loaded_variables(workdir):
  pre = pretrained.load_pretrained(workdir[0])
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 8, 150)).astype(np.float32))
  feature = pre.model().apply(pre.variables("bone"), x, train=False)
  assert feature.shape == (3, 16)
  head = pre.model(num_outputs=5)
  variables = head.init(jax.random.PRNGKey(0), x)
  assert variables["params"]["fc"]["weight"].shape == (5, 16)
  assert float(jnp.abs(variables["params"]["fc"]["bias"]).max()) == 0.0  # downstream fc: bias 0
  with pytest.raises(ConfigError, match="'foo' was not pretrained"):
    pre.variables("foo")


def test_an_earlier_step_and_a_missing_step(workdir):
  path, states = workdir
  pre = pretrained.load_pretrained(path, step=2)
  assert pre.step == 2
  np.testing.assert_array_equal(pre.batch_stats["motion"]["input_norm"]["var"],
                                states[2].batch_stats["motion"]["input_norm"]["var"])
  with pytest.raises(FileNotFoundError, match=r"no step 3 \(steps there: 2, 5\)"):
    pretrained.load_pretrained(path, step=3)


@pytest.mark.parametrize("kind", ["metadata", "array_data"])
def test_a_damaged_newest_checkpoint_is_reported_and_the_older_one_read(workdir, tmp_path, capsys, kind):
  """init_from a workdir whose newest checkpoint (5) is damaged: one line names it, step 2 is
  read, and the pretraining's folder is left as it is (a reader moves nothing)."""
  path, states = workdir
  shutil.copytree(path, tmp_path / "w")
  damage_checkpoint(tmp_path / "w" / "checkpoints" / "5", kind)
  before = folder_digest(tmp_path / "w")
  pre = pretrained.load_pretrained(tmp_path / "w")
  assert pre.step == 2
  np.testing.assert_array_equal(pre.batch_stats["motion"]["input_norm"]["var"],
                                states[2].batch_stats["motion"]["input_norm"]["var"])
  out = capsys.readouterr().out
  assert f"checkpoint {tmp_path / 'w' / 'checkpoints' / '5'} is unreadable (" in out, out
  assert folder_digest(tmp_path / "w") == before
  damage_checkpoint(tmp_path / "w" / "checkpoints" / "2", "metadata")
  with pytest.raises(ConfigError, match=r"none of the 2 checkpoints is readable") as err:
    pretrained.load_pretrained(tmp_path / "w")
  assert "\n" not in str(err.value)


def test_a_checkpoint_with_non_finite_weights_is_refused(workdir, tmp_path):
  """A newest checkpoint whose encoder holds a NaN (a diverged run saved before the check, or
  a damaged import) is a one-line error naming the array, not a silent NaN feature; the
  earlier step still loads."""
  path, states = workdir
  shutil.copytree(path, tmp_path / "w")
  state = jax.tree.map(np.array, states[5])
  state.params["motion"]["gru"]["weight_hh_l0"][1, 2] = np.nan
  ckpt = checkpoint.Checkpointer(tmp_path / "w", keep=5)
  ckpt.save(7, jax.tree.map(jnp.asarray, state), {}, {"step": 7})
  ckpt.close()
  with pytest.raises(ConfigError, match=r"checkpoint step 7 holds non-finite encoder weights "
                                        r"\(params/motion/gru/weight_hh_l0 \(1 of \d+\)\).*--config.init_step") as err:
    pretrained.load_pretrained(tmp_path / "w")
  assert "\n" not in str(err.value)
  assert pretrained.load_pretrained(tmp_path / "w", step=5).step == 5


def test_random_init_is_the_pretraining_initial_state(workdir):
  path, _ = workdir
  pre = pretrained.load_pretrained(path, random_init=True)
  config = tiny_pretrain_config()
  init = cmd_pretrain.create_train_state(config, data.layout_of(config.data), 1)
  assert pre.step == 0 and pre.random_init
  np.testing.assert_array_equal(pre.params["joint"]["gru"]["weight_hh_l0"], init.params["joint"]["gru"]["weight_hh_l0"])
  np.testing.assert_array_equal(pre.batch_stats["bone"]["input_norm"]["var"], np.ones(150, np.float32))


def test_missing_workdir_config_or_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist; expected a pretraining workdir"):
    pretrained.load_pretrained(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("x")
  with pytest.raises(FileNotFoundError, match=r"config.json does not exist \(the workdir holds: notes.txt\)"):
    pretrained.load_pretrained(tmp_path / "empty")
  (tmp_path / "nockpt").mkdir()
  (tmp_path / "nockpt" / "config.json").write_text(tiny_pretrain_config().to_json_best_effort())
  with pytest.raises(FileNotFoundError, match="has no checkpoint"):
    pretrained.load_pretrained(tmp_path / "nockpt")


def test_not_a_pretraining_config(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"trainer": "linear", "streams": "joint"}))
  with pytest.raises(ConfigError, match="lacks modalities.*expected a CMD pretraining config"):
    pretrained.load_pretrained(tmp_path)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ConfigError, match="not readable JSON"):
    pretrained.load_pretrained(tmp_path)


@pytest.mark.parametrize("field,value,summary", [
    ("model.hidden_size", 16, "found modalities joint, motion, bone, hidden size 8, 1 layer(s), 150 input features; "
                              "config.json implies modalities joint, motion, bone, hidden size 16, 1 layer(s)"),
    ("modalities", "joint,motion", "config.json implies modalities joint, motion, hidden size 8"),
    ("model.num_layers", 2, "config.json implies modalities joint, motion, bone, hidden size 8, 2 layer(s)"),
])
def test_checkpoint_that_does_not_fit_its_config(workdir, tmp_path, field, value, summary):
  path, _ = workdir
  shutil.copytree(path, tmp_path / "w")
  (tmp_path / "w" / "config.json").write_text(tiny_pretrain_config(**{field: value}).to_json_best_effort())
  with pytest.raises(ConfigError, match="does not match its config.json") as err:
    pretrained.load_pretrained(tmp_path / "w")
  assert summary in str(err.value)
  if field == "model.hidden_size":
    assert "params/bone/gru/bias_hh_l0: found (24,), expected (48,)" in str(err.value)


def downstream_config(**overrides):
  return set_fields(linear.get_config("synthetic"), overrides)


def test_compatible_and_incompatible_downstream_setups(workdir, tmp_path):
  pre = pretrained.load_pretrained(workdir[0])
  pretrained.check_compatible(pre, downstream_config().data, ("joint", "motion", "bone"))
  pretrained.check_compatible(pre, downstream_config(**{"data.dataset": "ntu60"}).data, ("bone",))
  with pytest.raises(ConfigError, match=r"pretrained on synthetic/xsub \(layout ntu25: 25 joints x 2 persons, 150 "
                     r"input features\) but config.data.dataset='msr_action3d' has layout msr20 \(20 joints"):
    pretrained.check_compatible(pre, downstream_config(**{"data.dataset": "msr_action3d"}).data, ("joint",))
  joint_only = tmp_path / "joint_only"
  make_workdir(str(joint_only), steps=(1,), modalities="joint")
  pre_joint = pretrained.load_pretrained(joint_only)
  assert pre_joint.modalities == ("joint",)
  with pytest.raises(ConfigError, match=r"asks for motion, but init_from=.* pretrained only joint"):
    pretrained.check_compatible(pre_joint, downstream_config().data, ("joint", "motion"))
