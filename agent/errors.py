"""Errors a user can cause and fix.

Anything derived from `CharlesError` is printed by the CLI as one line (the message only, no
traceback) followed by a non-zero exit status. Messages name the problem and the fix. Every
other exception is a bug and keeps its traceback.
"""


class CharlesError(Exception):
    """A problem the user can fix; `str(error)` is the whole message."""

    exit_status = 1


class ConfigError(CharlesError):
    """config.toml (or a CLI override of one of its keys) is missing, malformed or invalid."""

    exit_status = 2


class ModelError(CharlesError):
    """An unknown model line, unusable pretrained weights or a bad checkpoint."""


class DependencyError(CharlesError):
    """A package or driver Charles needs is not installed on this machine."""
