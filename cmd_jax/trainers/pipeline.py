"""The default pipeline (configs/default.py): pretrain, then kNN and linear evaluation, one table.

Each stage is its own trainer in its own sub-workdir (``pretrain/``, ``knn/``, ``linear/``,
and ``knn_random_init/``, ``linear_random_init/`` for the baselines), so every stage resumes
or is skipped on a rerun as that trainer does; the combined results go to
``<workdir>/results.json`` and a printed table. A method that pretrains one stream per run
(HiCLR) sets ``config.pretrain_streams = "joint,motion,bone"``: one pretraining per stream,
in ``pretrain_<stream>/``, and the protocols read all of them (``init_from`` lists them).
The table has a row per stream and the three-stream fusion, and, where the linear config
asks for them, CrosSCLR's mean-logit probe (``joint_probe``) and HiCLR's / AimCLR's
weighted logit ensemble (``fusion_weights``; each stream at its best test evaluation, so
only in the best-of-evaluations column).
Every stage draws its confusion matrices; the t-SNE maps of the test features are drawn by the
kNN stages only (the linear stages' features are the same, and t-SNE is most of the plots' time).
The pipeline holds the lock of its workdir (``cmd_jax.workdir_lock``), each stage that of its own.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections

from cmd_jax import trainers, workdir_lock
from cmd_jax.protocols import heads


def _stage_config(config: ml_collections.ConfigDict, init_from: str, random_init: bool,
                  tsne: bool) -> ml_collections.ConfigDict:
  sub = ml_collections.ConfigDict(config.to_dict())  # an independent, unlocked copy
  sub.init_from = init_from
  sub.random_init = random_init
  sub.tsne = bool(sub.get("tsne", True)) and tsne
  sub.lock()
  return sub


def _rows(stage: str, results: dict[str, Any]) -> list[tuple[str, str, float | None, float | None]]:
  """(stage, stream, final top-1, best-of-evaluations top-1) per stream and fusion."""
  rows = []
  for stream, r in results.get("streams", {}).items():
    rows.append((stage, stream, r.get("final_top1"), r.get("best_of_evals_top1")))
  fusion = results.get("three_stream")
  if fusion:
    rows.append((stage, "three-stream", fusion.get("final_top1"), fusion.get("best_of_evals_top1")))
  probe = results.get(heads.MEAN_LOGIT_PROBE)
  if probe:
    rows.append((stage, "mean-logit probe", probe.get("final_top1"), probe.get("best_of_evals_top1")))
  ensemble = results.get("weighted_logit_fusion")
  if ensemble:  # each stream at its best test evaluation: a best-of-evaluations number only
    rows.append((stage, "logit ensemble", None, ensemble.get("best_of_sets_top1")))
  return rows


def format_table(rows) -> str:
  fmt = lambda v: "" if v is None else f"{100 * v:.1f}"  # pylint: disable=unnecessary-lambda-assignment
  lines = [f"{'stage':24s} {'stream':14s} {'final top-1 %':>14s} {'best of evals %':>16s}"]
  lines += [f"{stage:24s} {stream:14s} {fmt(final):>14s} {fmt(best):>16s}" for stage, stream, final, best in rows]
  return "\n".join(lines)


def pretrain_stages(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, ml_collections.ConfigDict]]:
  """``[(sub-workdir, pretraining config)]``: one, or one per stream of ``pretrain_streams``."""
  streams = [s.strip() for s in str(config.get("pretrain_streams", "")).split(",") if s.strip()]
  if not streams:
    return [(os.path.join(workdir, "pretrain"), config.pretrain)]
  stages = []
  for stream in streams:
    sub = ml_collections.ConfigDict(config.pretrain.to_dict())
    sub.stream = stream
    sub.name = f"{config.pretrain.name}_{stream}"
    sub.lock()
    stages.append((os.path.join(workdir, f"pretrain_{stream}"), sub))
  return stages


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
  """Every stage in its sub-workdir (each holding its own lock), under the lock of ``workdir``."""
  workdir = os.fspath(workdir)
  with workdir_lock.hold_across_processes(workdir, "the pipeline"):
    return _run_stages(config, workdir)


def _run_stages(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  pretrain_dirs = []
  for pretrain_dir, pretrain_config in pretrain_stages(config, workdir):
    trainers.get_trainer(pretrain_config.trainer)(pretrain_config, pretrain_dir)
    pretrain_dirs.append(pretrain_dir)
  pretrain_dir = ",".join(pretrain_dirs)
  stages = [("knn", config.knn, False), ("linear", config.linear, False)]
  if config.random_init_baselines:
    stages += [("knn_random_init", config.knn, True), ("linear_random_init", config.linear, True)]
  results, rows = {}, []
  for stage, sub, random_init in stages:
    # The t-SNE maps in the kNN stages only: a linear stage's test features are those of the
    # kNN stage before it (the same frozen encoders on the same clips).
    stage_config = _stage_config(sub, pretrain_dir, random_init, tsne=not stage.startswith("linear"))
    results[stage] = trainers.get_trainer(stage_config.trainer)(stage_config, os.path.join(workdir, stage))
    rows += _rows(stage, results[stage])
  table = format_table(rows)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
      json.dump({"stages": results, "table": table.splitlines()}, f, indent=2, default=str)
    data = config.linear.data
    print(f"\n{config.get('name', 'pipeline')}: top-1 accuracy on the {data.dataset} {data.benchmark} test split "
          "(final epoch; the reference's best-of-evaluations in the last column)\n" + table)
  return results
