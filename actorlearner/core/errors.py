"""Errors users see as one line."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key is unknown or its value is not allowed (the message is one line)."""


class CheckpointError(ConfigError):
    """A checkpoint is missing, incomplete or damaged (the message is one line naming the file)."""
