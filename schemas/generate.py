"""The JSON Schema of the split spec, generated from the models, and the file that holds it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.spec import SplitSpec

SCHEMA_FILE = Path(__file__).with_name("split-spec.schema.json")
"""The committed schema; `python -m schemas` rewrites it and a test catches drift."""


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a split spec, as editors and validators read it."""
    schema = SplitSpec.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "splitter split spec, version 1",
    }


def schema_text() -> str:
    """The schema file's exact text: sorted keys, indented by 2, ending in a newline."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def write_schema(path: Path = SCHEMA_FILE) -> Path:
    """Write the schema to `path` (the committed file by default) and return the path."""
    path.write_text(schema_text(), encoding="utf-8")
    return path
