"""Errors a user can cause and fix, and how a thread reports the error that stopped it.

Anything derived from `CharlesError` is printed by the CLI as one line (the message only, no
traceback) followed by a non-zero exit status. Messages name the problem and the fix. Every
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import threading


class CharlesError(Exception):
    """A problem the user can fix; `str(error)` is the whole message."""

    exit_status = 1
    end_at_once = False
    """After the message, end the process without Python's clean-up: for a runtime left in a
    broken state (a training cluster whose collectives were aborted), whose finalizers would
    print tracebacks or wait on peers that are gone."""


class ConfigError(CharlesError):
    """config.toml (or a CLI override of one of its keys) is missing, malformed or invalid."""

    exit_status = 2


class ModelError(CharlesError):
    """An unknown model line, unusable pretrained weights or a bad checkpoint."""


class DependencyError(CharlesError):
    """A package or driver Charles needs is not installed on this machine."""


def log_failure(
    logger: logging.Logger, what: str, error: BaseException, cause: BaseException | None = None
) -> None:
    """Log that `what` stopped on `error`: one line for a user problem (a CharlesError such as
    a lost display), with its traceback for anything else, which is a bug. `cause` is the
    error to judge by when `error` wraps it."""
    user_problem = isinstance(cause or error, CharlesError)
    logger.error("%s: %s", what, error, exc_info=not user_problem)


_warned: set[str] = set()
_warned_lock = threading.Lock()
_WARNED_LIMIT = 1000


def warn_once(logger: logging.Logger, message: str) -> None:
    """Log `message` as a warning once per process: a watcher that polls the same damaged
    file or folder again and again must not flood the log (after 1,000 different messages
    the memory of them starts afresh)."""
    with _warned_lock:
        if message in _warned:
            return
        if len(_warned) >= _WARNED_LIMIT:
            _warned.clear()
        _warned.add(message)
    logger.warning("%s", message)


def one_line(text: object, limit: int = 120) -> str:
    """Prose (an OS or library error) made safe for a one-line user message: whitespace runs
    become one space, other unprintable characters "?", at most `limit` characters."""
    flat = " ".join(str(text).split())
    flat = "".join(c if c.isprintable() else "?" for c in flat)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def verbatim(text: str, limit: int = 60) -> str:
    """A name the user gave (a path, a config key, a flag's text), for a one-line message:
    exactly as given, control characters escaped rather than dropped, so the user recognises
    what they typed; a long one is cut to about `limit` and says its length."""
    if not text.isprintable():
        text = repr(text)[1:-1]
    if len(text) <= limit:
        return text
    return f"{text[: limit - 3]}... ({len(text)} characters)"


def quoted(value: object, limit: int = 40) -> str:
    """A value read from a file or the command line, as Python writes it ('fast', [1, 2]), for
    a one-line message; a long one is cut to about `limit` and says its size, so a hostile
    file never turns into a huge error line."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's int-to-str digit limit: say so instead
        return "a number with too many digits"
    # The repr of a str, number, list or dict is printable; only an odd object lands here.
    if not text.isprintable():
        return verbatim(text, limit)
    if len(text) <= limit:
        return text
    if isinstance(value, (list, dict)):
        size = f"{len(value)} items"
    elif isinstance(value, int):
        size = f"{len(text.lstrip('-'))} digits"
    else:
        size = f"{len(value) if isinstance(value, str) else len(text)} characters"
    return f"{text[: limit - 3]}... ({size})"
