"""splitter: a compiler for supervised local learning in PyTorch."""

from splitter.analysis import Analysis, analyze
from splitter.errors import SplitterError
from splitter.modelref import ModelOptions
from splitter.partitioner import Partition, partition

__all__ = ["Analysis", "ModelOptions", "Partition", "SplitterError", "analyze", "partition"]
__version__ = "0.1.0"
