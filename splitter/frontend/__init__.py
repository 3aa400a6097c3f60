"""The front end: model references and their inputs, fx tracing in both modes, per-node costs."""
