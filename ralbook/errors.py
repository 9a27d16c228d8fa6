"""Errors that reach users as one clear message (the CLI prints them without a traceback)."""
from __future__ import annotations


class RalbookError(Exception):
    """Base class: anything the user can fix (bad path, broken data, mismatched checkpoint)."""


class NonFiniteError(RalbookError, ArithmeticError):
    """A weight, encoding, score or loss is NaN or infinite: no metric may be computed from it."""


class ConfigError(RalbookError, ValueError):
    """A setting has the wrong type, is out of range, or does not fit the other settings."""


class DataError(RalbookError, ValueError):
    """A feature release on disk is missing a file or holds inconsistent data."""


class CheckpointError(RalbookError):
    """A checkpoint file is unreadable, truncated, or does not fit the model."""


def shorten(value: object, limit: int = 80) -> str:
    """``repr(value)`` for a message, cut to about ``limit`` characters.

    Why: messages echo ids and values from user files, and a million-character id (or a list of
    them) must not flood the terminal. ``repr`` keeps quotes and makes control characters visible.
    A cut is marked with '...' and, for strings, the full length.
    """
    shown = repr(value)
    if len(shown) <= limit:
        return shown
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return shown[: max(limit - 3, 1)] + "..." + size
