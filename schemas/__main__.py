"""`python -m schemas`: regenerate `schemas/split-spec.schema.json` from the models."""

from schemas.generate import write_schema

if __name__ == "__main__":
    print(f"wrote {write_schema()}")
