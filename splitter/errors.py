"""The errors splitter raises: each names the offending value and the fix."""

from __future__ import annotations

import re
from collections.abc import Mapping

from schemas.errors import SpecError, SplitterError

__all__ = [
    "AnnotationError",
    "ArgumentError",
    "AuxiliaryError",
    "CodegenError",
    "CompileError",
    "ModelCopyError",
    "ModelLoadError",
    "SpecError",
    "SplitterError",
    "SurgeryError",
    "TraceError",
    "UsageError",
]


class UsageError(SplitterError):
    """A malformed command-line value (exit code 2, like other usage errors)."""

    exit_code = 2


class ArgumentError(UsageError):
    """A bad argument of a library call. The message names each of `arguments` as `{name}`: the
    library shows it as `name`, the CLI as its flag (`ArgumentError.render`)."""

    def __init__(self, template: str, *arguments: str) -> None:
        self.template = template
        self.arguments = arguments
        """The arguments the message names, first the one at fault."""
        super().__init__(self.render({}))

    def render(self, names: Mapping[str, str]) -> str:
        """The message with each argument's `{name}` shown as `names[name]`, else `name`."""
        fields = re.compile(r"\{(" + "|".join(map(re.escape, self.arguments)) + r")\}")
        return fields.sub(lambda m: names.get(m[1], f"`{m[1]}`"), self.template)


class ModelLoadError(SplitterError):
    """The model reference cannot be resolved, imported or built."""


class TraceError(SplitterError):
    """The model cannot be traced, even with automatic leafing."""


class AnnotationError(SplitterError):
    """The traced graph does not run on the example input."""


class SurgeryError(SplitterError):
    """The cuts cannot be turned into independent blocks as asked."""


class CodegenError(SplitterError):
    """A graph refers to something the emitted code cannot import or own."""


class ModelCopyError(SplitterError):
    """The model file imports something the package cannot carry."""


class AuxiliaryError(SplitterError):
    """An auxiliary the boundary cannot take."""


class CompileError(SplitterError):
    """The plan asks for something the emitted package cannot do."""
