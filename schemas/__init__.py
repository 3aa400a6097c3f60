"""The pydantic models of the split spec and the JSON Schema generated from them."""

from schemas.errors import SpecError, SplitterError
from schemas.generate import json_schema
from schemas.loader import LoadedSpec, load_spec, parse_spec
from schemas.size import mib, parse_size, show_size
from schemas.spec import SplitSpec

__all__ = [
    "LoadedSpec",
    "SpecError",
    "SplitSpec",
    "SplitterError",
    "json_schema",
    "load_spec",
    "mib",
    "parse_size",
    "parse_spec",
    "show_size",
]
