"""Choosing the cuts: the spec's cuts checked against the model, or the exact min-max partition."""
