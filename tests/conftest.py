"""Shared test fixtures: the real recordings in ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CMD_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
  """A path under the shared recordings; skips the calling test when it is absent."""
  path = SHARED_DATA.joinpath(*parts)
  if not path.exists():
    pytest.skip(f"real recordings not available: {path} is absent (set CMD_JAX_SHARED_DATA to the "
                "folder holding ntu_skeletons/, pku_mmd/, msr_action3d/, ntu_missing/)")
  return path


@pytest.fixture
def ntu_dir() -> Path:
  return shared_path("ntu_skeletons")


@pytest.fixture
def ntu_missing_dir() -> Path:
  return shared_path("ntu_missing")


@pytest.fixture
def pku_dir() -> Path:
  return shared_path("pku_mmd")


@pytest.fixture
def msr_dir() -> Path:
  return shared_path("msr_action3d")
