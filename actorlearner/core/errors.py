"""Errors users see as one line."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key is unknown or its value is not allowed (the message is one line)."""


class PartDiedError(RuntimeError):
    """A part the run cannot go on without died: the learner, the buffer, or a runner out of restarts.

    The message is one line naming the part and how to resume.
    """


class CheckpointError(ConfigError):
    """A checkpoint is missing, incomplete or damaged (the message is one line naming the file)."""
