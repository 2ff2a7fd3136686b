"""User-facing errors.

Every error a user can cause (bad path, corrupt file, shape mismatch, unknown method,
bad parameter) is a :class:`WsvizError` whose message names the file / tensor /
parameter and says how to fix it. The CLI prints it without a traceback and exits 2;
the UI shows it as a notification.
"""

from __future__ import annotations


class WsvizError(Exception):
    """Base class for errors caused by user input; ``str(err)`` is the one-line message."""


class CheckpointError(WsvizError):
    """A checkpoint cannot be found, parsed or trusted (names the file)."""


class AlignmentError(WsvizError):
    """A model set does not align; ``report`` holds the :class:`AlignmentReport`."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class NonFiniteError(WsvizError):
    """A tensor holds NaN or Inf values (names the file and tensor)."""


class RecipeError(WsvizError):
    """A recipe / merge configuration is invalid (names the method or parameter)."""


class EvalError(WsvizError):
    """An evaluator failed or returned something that is not a metric."""


class OutputError(WsvizError):
    """An output path is unsafe or cannot be written (names the output and, when it
    collides with one, the input)."""
