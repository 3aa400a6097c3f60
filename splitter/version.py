"""The version of splitter, written into every package it emits."""

__version__ = "0.1.0"
