"""splitter: a compiler for supervised local learning in PyTorch.

`splitter.api` holds one entry point per command; the names below are the everyday ones.
"""

from splitter.analysis import Analysis, analyze
from splitter.api import compile_package, load, partition
from splitter.errors import SplitterError
from splitter.frontend.modelref import ModelOptions
from splitter.partitioning.partitioner import Partition
from splitter.version import __version__

__all__ = [
    "Analysis",
    "ModelOptions",
    "Partition",
    "SplitterError",
    "__version__",
    "analyze",
    "compile_package",
    "load",
    "partition",
]
