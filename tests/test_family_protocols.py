"""The protocol settings of SkeletonCLR, CrosSCLR and AimCLR (configs/linear_<method>.py,
configs/finetune_aimclr.py, configs/semi_aimclr.py, configs/knn_aimclr.py) against the
references' values, and the default pipelines of every method (configs/default.py): each
name builds a config the pipeline and every stage accept, and the pipeline's table shows
CrosSCLR's probe and the fixed-weight ensemble. Config checks only: no training."""

from __future__ import annotations

import os

import pytest

from cmd_jax import sharding
from cmd_jax.protocols import common, heads
from cmd_jax.trainers import pipeline, pretrain
from configs import (default, finetune_aimclr, knn_aimclr, linear_aimclr, linear_crossclr, linear_hiclr,
                     linear_skeletonclr, semi_aimclr)

# The references' linear evaluation, written out here from the spec, not read from the configs:
# CrosSCLR config/linear_eval/linear_eval_crossclr_3views_xview.yaml:43-53 (SGD lr 3.0, momentum
# 0.9, nesterov False, weight_decay 0, step [80], 100 epochs, batch 128) and
# processor/processor.py:88-113 (train loader drop_last=True); AimCLR config/*/linear_eval/*.yaml,
# "identical to HiCLR's GCN linear evaluation"; the new fc from weights_init, N(0, 0.02).
LINEAR_SPEC = {"lr": 3.0, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0, "milestones": (80,),
               "gamma": 0.1, "num_epochs": 100, "batch_size": 128, "drop_last": True, "head_init": "normal_0.02",
               "train_view": "none", "eval_every_epochs": 5}
# AimCLR ensemble_ntu_cs.py:14-34: FIXED weights (joint, bone, motion) = (0.6, 0.6, 0.4).
AIMCLR_FUSION = {"joint": 0.6, "bone": 0.6, "motion": 0.4}
LINEAR_MODULES = {"skeletonclr": linear_skeletonclr, "crossclr": linear_crossclr, "aimclr": linear_aimclr}


def linear_settings(c) -> dict:
  o = c.optimizer
  return {"lr": o.lr, "momentum": o.momentum, "nesterov": o.nesterov, "weight_decay": o.weight_decay,
          "milestones": tuple(o.milestones), "gamma": o.gamma, "num_epochs": c.num_epochs,
          "batch_size": c.batch_size, "drop_last": c.drop_last, "head_init": c.head_init,
          "train_view": c.augment.train_view, "eval_every_epochs": c.eval_every_epochs}


@pytest.mark.parametrize("method", sorted(LINEAR_MODULES))
@pytest.mark.parametrize("name", ["ntu60_xsub", "ntu60_xview", "ntu120_xset", "pku_mmd2_xsub"])
def test_linear_configs_carry_the_references_settings(method, name):
  c = LINEAR_MODULES[method].get_config(name)
  assert linear_settings(c) == LINEAR_SPEC
  assert (c.expected_method, c.expected_encoder, c.init_step) == (method, "stgcn", -1)  # the last epoch's checkpoint
  assert c.joint_probe is (method == "crossclr")
  assert bool(c.fusion_weights) is (method == "aimclr")  # the others: no fixed-weight ensemble


def test_reference_numbers_are_the_papers():
  # CrosSCLR README: SkeletonCLR joint 68.3 (xsub) / 76.4 (xview), 3s-CrosSCLR 77.8 / 83.4;
  # AimCLR paper: joint 74.3 / 79.7.
  assert linear_skeletonclr.get_config("ntu60_xsub").reference_top1 == 68.3
  assert linear_skeletonclr.get_config("ntu60_xview").reference_top1 == 76.4
  assert linear_crossclr.get_config("ntu60_xsub").reference_top1 == 77.8
  assert linear_crossclr.get_config("ntu60_xview").reference_top1 == 83.4
  assert linear_aimclr.get_config("ntu60_xsub").reference_top1 == 74.3
  assert linear_aimclr.get_config("ntu60_xview").reference_top1 == 79.7


def test_only_hiclr_runs_200_epochs_on_pku_mmd2():
  assert linear_hiclr.get_config("pku_mmd2_xsub").num_epochs == 200
  assert linear_aimclr.get_config("pku_mmd2_xsub").num_epochs == 100


def test_crossclr_probes_the_mean_logits_of_three_streams_and_aimclr_fuses_with_fixed_weights():
  c = linear_crossclr.get_config("ntu60_xview")
  assert c.joint_probe is True and common.stream_names(c) == ("joint", "motion", "bone")
  weight_sets = heads.parse_fusion_weights(linear_aimclr.get_config("ntu60_xsub").fusion_weights,
                                           ("joint", "motion", "bone"))
  assert weight_sets == [AIMCLR_FUSION]


@pytest.mark.parametrize("module", [linear_skeletonclr, linear_crossclr, linear_aimclr])
def test_cpu_sized_linear_configs_name_their_deviation(module):
  for name in ("synthetic", "msr_action3d"):
    c = module.get_config(name)
    assert (c.num_epochs, tuple(c.optimizer.milestones), c.batch_size, c.drop_last) == (30, (24,), 64, True)
    assert c.expected_encoder == "gru" and len(c.deviations) == 1 and "CPU-sized" in c.deviations[0]


def test_aimclr_finetune_and_semi_follow_its_processors():
  # finetune_evaluation.py:85 self.model.eval() while training; :20-28,38 weights_init on the new
  # fc (N(0, 0.02)); semi_evaluation (pyc): clip_grad_norm_(params, 2); Feeder_semi: round(p *
  # count_c) per class, __len__ = the subset; processor.py:86-111: train loader drop_last.
  for c in (finetune_aimclr.get_config("ntu60_xsub"), semi_aimclr.get_config("ntu60_xsub")):
    assert (c.finetune_mode, c.head_init, c.drop_last, c.optimizer.warmup_epochs) == ("eval", "normal_0.02", True, 0)
    assert c.expected_method == "aimclr" and "assum" in c.notes
  assert finetune_aimclr.get_config("ntu60_xsub").optimizer.clip_grad_norm == 0.0
  semi = semi_aimclr.get_config("ntu60_xsub")
  assert (semi.optimizer.clip_grad_norm, semi.sampling, semi.epoch_length, semi.label_ratio) == (
      2.0, "class_balanced", "subset", 0.1)
  knn = knn_aimclr.get_config("ntu60_xsub")
  assert (knn.knn_k, knn.knn_temperature) == (200, 0.1)  # SimSiam knn_monitor: knn_k=200, knn_t=0.1


@pytest.mark.parametrize("module,protocol", [(finetune_aimclr, "finetune"), (semi_aimclr, "semi"),
                                             (knn_aimclr, "knn")] + [(m, "linear") for m in LINEAR_MODULES.values()])
def test_protocol_configs_pass_the_protocols_checks(module, protocol):
  mesh = sharding.make_mesh(-1)
  for name in ("synthetic", "msr_action3d", "ntu60_xsub"):
    c = module.get_config(name)
    with c.unlocked():
      c.init_from = "pretraining"
    common.validate(c, protocol, mesh)


@pytest.mark.parametrize("name", default.NAMES)
def test_every_default_name_builds_a_pipeline_its_stages_accept(name):
  c = default.get_config(name)
  method, dataset = default.split(name)
  assert c.trainer == "pipeline" and c.pretrain.method == method and c.pretrain.data.dataset == dataset
  stages = pipeline.pretrain_stages(c, "w")
  one_per_stream = method in ("hiclr", "skeletonclr", "aimclr")  # the references pretrain one stream per run
  assert [s.get("stream", "") for _, s in stages] == (["joint", "motion", "bone"] if one_per_stream else [""])
  mesh = sharding.make_mesh(-1)
  for _, sub in stages:
    pretrain.validate_config(sub, num_train=None, num_devices=len(mesh.devices.flat), process_count=1)
  for sub, protocol in ((c.knn, "knn"), (c.linear, "linear")):
    assert sub.expected_method in ("", method)
    assert sub.expected_encoder in ("", c.pretrain.model.name)
    probe = sub.copy_and_resolve_references()
    with probe.unlocked():
      probe.init_from = "pretraining"
    assert common.validate(probe, protocol, mesh) == ("joint", "motion", "bone")
  assert c.linear.joint_probe is (method == "crossclr")
  assert c.knn.knn_k == 1  # one kNN for every method: the results table compares like with like


def test_unknown_default_name_is_a_one_line_error():
  with pytest.raises(ValueError, match=r"configs/default.py: unknown config 'simclr'; expected one of .*aimclr"):
    default.get_config("simclr")


def test_pipeline_table_shows_the_probe_and_the_ensemble():
  results = {"streams": {"joint": {"final_top1": 0.5, "best_of_evals_top1": 0.6}},
             "three_stream": {"final_top1": 0.7, "best_of_evals_top1": 0.7},
             heads.MEAN_LOGIT_PROBE: {"final_top1": 0.75, "best_of_evals_top1": 0.8},
             "weighted_logit_fusion": {"best_of_sets_top1": 0.9}}
  rows = pipeline._rows("linear", results)  # pylint: disable=protected-access
  assert rows == [("linear", "joint", 0.5, 0.6), ("linear", "three-stream", 0.7, 0.7),
                  ("linear", "mean-logit probe", 0.75, 0.8), ("linear", "logit ensemble", None, 0.9)]
  assert "90.0" in pipeline.format_table(rows)


def test_pipeline_draws_the_tsne_maps_in_its_knn_stages_only(tmp_path, monkeypatch):
  """Every stage runs with the protocol's own config, init_from the pretraining workdirs and
  random_init for the baselines; the t-SNE maps only in the kNN stages (the linear stages'
  test features are the same frozen encoders' on the same clips), unless turned off there too."""
  calls = []

  def fake_trainer(config, workdir):
    calls.append((os.path.basename(workdir), config))
    return {"streams": {"joint": {"final_top1": 0.5, "best_of_evals_top1": 0.5}}}

  monkeypatch.setattr(pipeline.trainers, "get_trainer", lambda name: fake_trainer)
  c = default.get_config("skeletonclr")
  pipeline.train_and_evaluate(c, tmp_path / "run")
  stages = {name: config for name, config in calls}
  pretrained = ",".join(os.fspath(tmp_path / "run" / f"pretrain_{s}") for s in ("joint", "motion", "bone"))
  assert list(stages) == ["pretrain_joint", "pretrain_motion", "pretrain_bone", "knn", "linear", "knn_random_init",
                          "linear_random_init"]
  for name in ("knn", "linear", "knn_random_init", "linear_random_init"):
    assert stages[name].init_from == pretrained
    assert stages[name].random_init is name.endswith("random_init")
    assert stages[name].plots is True
    assert stages[name].tsne is name.startswith("knn")
  calls.clear()
  with c.unlocked():
    c.knn.tsne = False
  pipeline.train_and_evaluate(c, tmp_path / "again")
  assert not any(config.tsne for name, config in calls if not name.startswith("pretrain"))
