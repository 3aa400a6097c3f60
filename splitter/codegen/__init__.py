"""Emission: Python source from fx graphs, auxiliaries, the package's files, and writing them."""
