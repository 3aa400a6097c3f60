"""The errors splitter raises: each names the offending value and the fix."""

from __future__ import annotations


class SplitterError(Exception):
    """A user-facing failure. The CLI prints the message without a traceback."""

    exit_code = 1


class UsageError(SplitterError):
    """A malformed command-line value (exit code 2, like other usage errors)."""

    exit_code = 2


class ModelLoadError(SplitterError):
    """The model reference cannot be resolved, imported or built."""


class TraceError(SplitterError):
    """The model cannot be traced, even with automatic leafing."""


class AnnotationError(SplitterError):
    """The traced graph does not run on the example input."""
