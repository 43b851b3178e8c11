"""The one entry point: ``python launch.py --config configs/<kind>.py:<name> --workdir <dir>``.

``--config`` takes an ml_collections config file and its argument (default:
``configs/default.py``: on the embedded synthetic set, CMD pretraining then kNN and linear
evaluation, one table); any field is overridden with ``--config.<path>=<value>`` (a
mistyped field is an error). The trainer named by ``config.trainer`` runs
``train_and_evaluate(config, workdir)``; rerunning the same command resumes from the
workdir's latest checkpoint. Kinds: ``pretrain_cmd.py``, ``linear.py``, ``knn.py``,
``semi.py``, ``transfer.py``, ``default.py``.

Multi-process runs (TPU pods, GPU clusters) start one process per host with
``--coordinator_address=HOST:PORT --num_processes=P --process_id=I`` (on TPU pods and
SLURM, ``jax.distributed.initialize()`` finds these itself: pass ``--distributed``). On CPU,
collectives use gloo.

Exit status: 0 when the run is complete; 1 with one ``launch.py: ...`` line for a bad setup,
missing data, a workdir in use by another run or a full disk; 128 + the signal number (143
for SIGTERM, 130 for SIGINT) when a signal stopped the run cleanly (pretraining: after a
checkpoint of the step it stopped at; rerun the same command to continue).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_CONFIG = os.path.join(_HERE, "configs", "default.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, f"Config file[:argument] (default: {_DEFAULT_CONFIG}).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go (default: workdirs/<config name>).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detection.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of a setup error (otherwise one line).")


def _init_distributed() -> None:
  import jax  # pylint: disable=import-outside-toplevel

  if _COORDINATOR.value is None and not _DISTRIBUTED.value:
    return
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if _COORDINATOR.value is None:
    jax.distributed.initialize()
  else:
    if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
      raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
    jax.distributed.initialize(_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  sys.path.insert(0, _HERE)
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and grain log every save at INFO
  _init_distributed()
  import jax  # pylint: disable=import-outside-toplevel
  from cmd_jax import disk_full  # pylint: disable=import-outside-toplevel
  from cmd_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from cmd_jax.preemption import RunStopped  # pylint: disable=import-outside-toplevel
  from cmd_jax.trainers import get_trainer  # pylint: disable=import-outside-toplevel

  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join("workdirs", config.get("name", "run"))
  if not _DEBUG.value:
    disk_full.quiet_write_failures()  # a full disk: the one line below, not the writer threads' tracebacks
  try:
    trainer = get_trainer(config.trainer)
    trainer(config, workdir)
  except RunStopped as err:  # SIGTERM/SIGINT: a clean stop, said in one line (process 0)
    if jax.process_index() == 0:
      print(f"launch.py: {err}", file=sys.stderr, flush=True)
    sys.exit(err.exit_status)
  except KeyboardInterrupt as err:  # a second signal: at once, without the stop's checkpoint
    if _DEBUG.value:
      raise
    print(f"launch.py: {workdir}: stopped at once ({err or 'KeyboardInterrupt'}); the checkpoints and results "
          "written before are intact: run the same command again", file=sys.stderr, flush=True)
    sys.exit(130)
  except (ConfigError, FileNotFoundError, disk_full.DiskFullError) as err:  # setup, missing data, full disk: one line
    if _DEBUG.value:
      raise
    if isinstance(err, disk_full.DiskFullError):
      disk_full.quiet_dropped_writes()
    sys.exit(f"launch.py: {err}")


def _parse_flags(argv):
  """absl's flag parsing (with the default config when none is named), a bad or mistyped
  --config override reported in one line."""
  if not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
    argv = [argv[0], f"--config={_DEFAULT_CONFIG}", *argv[1:]]
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
    lines = [line.strip() for line in str(err).replace("\\n", "\n").splitlines() if line.strip()]
    message = lines[-1] if "Traceback" in str(err) else " ".join(lines)
    message = message.replace("\\'", "").replace("'", "")
    sys.exit(f"launch.py: bad flag or config override: {message}")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
