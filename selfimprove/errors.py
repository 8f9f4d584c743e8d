"""Errors the toolkit raises for bad input; the CLI prints them without a traceback."""

from __future__ import annotations


class SelfImproveError(Exception):
    """Base class: a user-facing error with a clear message (what is wrong and where)."""


class ConfigError(SelfImproveError):
    """A config key is unknown, mistyped or out of range (the message names the key path)."""


class InputError(SelfImproveError):
    """An input file or argument is missing or malformed (the message names file and line)."""


class LabelLeakError(SelfImproveError):
    """A gold label reached a label-free path (reward, judge, data builder). Always a bug."""


class BackendError(SelfImproveError):
    """A generation backend failed (server unreachable, engine failed to start, ...)."""
