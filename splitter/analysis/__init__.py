"""Analysis of a traced model: legal cuts and units, layouts, and the cost of local training."""

from splitter.analysis.model import Analysis, analyze

__all__ = ["Analysis", "analyze"]
