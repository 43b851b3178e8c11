"""``python -m cmd_jax.torch_import``: the PyTorch checkpoint import/export command.

The conversion is ``cmd_jax.interop`` (the command line: ``cmd_jax.interop.cli``; the
functions: ``cmd_jax.interop.convert``); docs/pytorch_interop.md describes both.
"""

from __future__ import annotations

import sys

from cmd_jax.disk_full import quiet_write_failures
from cmd_jax.interop.cli import main

if __name__ == "__main__":
  quiet_write_failures()  # a full disk: the command's one error line, not the writer threads' tracebacks
  sys.exit(main())
