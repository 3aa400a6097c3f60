"""Runtime sources copied verbatim into every emitted training package."""
