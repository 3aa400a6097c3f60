"""The pydantic models of the split spec and the JSON Schema generated from them."""

from schemas.generate import json_schema
from schemas.loader import LoadedSpec, load_spec, parse_spec
from schemas.size import parse_size
from schemas.spec import SplitSpec

__all__ = ["LoadedSpec", "SplitSpec", "json_schema", "load_spec", "parse_size", "parse_spec"]
