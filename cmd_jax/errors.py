"""Errors the library raises for bad user input (as opposed to bugs)."""

from __future__ import annotations


class ConfigError(ValueError):
  """A config asks for something impossible; raised before anything is compiled."""
