"""Errors that reach users as one clear message (the CLI prints them without a traceback)."""


class RalbookError(Exception):
    """Base class: anything the user can fix (bad path, broken data, mismatched checkpoint)."""


class DataError(RalbookError, ValueError):
    """A feature release on disk is missing a file or holds inconsistent data."""


class CheckpointError(RalbookError):
    """A checkpoint file is unreadable, truncated, or does not fit the model."""
