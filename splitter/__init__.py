"""splitter: a compiler for supervised local learning in PyTorch."""

from splitter.analysis import Analysis, analyze
from splitter.errors import SplitterError
from splitter.modelref import ModelOptions

__all__ = ["Analysis", "ModelOptions", "SplitterError", "analyze"]
__version__ = "0.1.0"
