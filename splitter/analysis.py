"""The analysis pipeline: model reference -> traced, annotated graph -> legal cuts."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from splitter.annotate import annotate
from splitter.cuts import CutAnalysis, analyze_cuts
from splitter.errors import AnnotationError
from splitter.modelref import LoadedModel, ModelOptions, load_model
from splitter.trace import TracedModel, trace


@dataclass
class Analysis:
    """Everything known about a model before it is partitioned."""

    model: LoadedModel
    traced: TracedModel
    cuts: CutAnalysis
    total_activation_bytes: int


def analyze(ref: str, options: ModelOptions | None = None) -> Analysis:
    """Load, trace (both modes), annotate the train graph and find the legal cuts."""
    options = options or ModelOptions()
    model = load_model(ref, options)
    leaf_types, functions = _registries(ref)
    traced = trace(
        model.module, options.leaves, leaf_types=leaf_types, autowrap_functions=functions
    )
    try:
        total = annotate(traced.graph("train"), model.input, model.batch_size, model.precision)
    except AnnotationError as e:
        shape = ",".join(map(str, model.input.shape))
        dtype = str(model.input.dtype).removeprefix("torch.")
        raise AnnotationError(f"`{ref}` with input shape {shape} ({dtype}): {e}") from e
    return Analysis(model, traced, analyze_cuts(traced), total)


def _registries(ref: str) -> tuple[tuple[type, ...], tuple[Callable[..., Any], ...]]:
    """timm's own no-trace registries for `timm:` models (DESIGN 1.2)."""
    if not ref.startswith("timm:"):
        return (), ()
    layers: Any = importlib.import_module("timm.layers")
    modules = sorted(layers.get_notrace_modules(), key=_qualified)
    functions = sorted(layers.get_notrace_functions(), key=_qualified)
    return tuple(modules), tuple(functions)


def _qualified(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"
