"""The base of every spec model, and the error the models raise for a broken spec rule."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

RULE = "spec_rule"
"""The pydantic error type of a broken spec rule; its message is final, written for the user."""


class SpecModel(BaseModel):
    """A section of the split spec: frozen, unknown keys refused, every field documented."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False
    )


def rule(message: str, at: str = "") -> PydanticCustomError:
    """The error for a broken rule; `at` is the dotted key, below the model, that it is about.

    The loader reports the problem at the line of `at`. `message` is used verbatim, so it must
    name the offending value and the fix itself.
    """
    return PydanticCustomError(RULE, message, {"at": at} if at else None)
