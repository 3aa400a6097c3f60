"""The pydantic models of the split spec and the JSON Schema generated from them."""
