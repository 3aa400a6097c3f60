"""The analysis pipeline: model reference -> traced, annotated graph -> legal cuts."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from splitter.analysis.cuts import CutAnalysis, analyze_cuts
from splitter.errors import AnnotationError, SplitterError
from splitter.frontend.annotate import annotate
from splitter.frontend.modelref import InputSpec, LoadedModel, ModelOptions, load_model
from splitter.frontend.trace import TracedModel, trace


@dataclass
class Analysis:
    """Everything known about a model (or its `root` submodule) before it is partitioned."""

    model: LoadedModel
    traced: TracedModel
    cuts: CutAnalysis
    total_activation_bytes: int
    root: str | None = None
    input: InputSpec | None = None

    @property
    def target(self) -> nn.Module:
        """The module being split: the model, or its `root` submodule."""
        return self.traced.root

    @property
    def target_input(self) -> InputSpec:
        return self.input or self.model.input


def analyze(
    ref: str,
    options: ModelOptions | None = None,
    *,
    root: str | None = None,
    auto_leaf: bool = True,
) -> Analysis:
    """Load, trace (both modes), annotate the train graph and find the legal cuts. With `root`,
    only that submodule is analysed, on the input the model gives it."""
    options = options or ModelOptions()
    model = load_model(ref, options)
    target, inputs = model.module, model.input
    if root:
        target = _submodule(model.module, root)
        inputs = _captured_input(model, target, root)
    leaf_types, functions = _registries(ref)
    traced = trace(
        target,
        options.leaves,
        leaf_types=leaf_types,
        autowrap_functions=functions,
        auto_leaf=auto_leaf,
    )
    try:
        total = annotate(traced.graph("train"), inputs, model.batch_size, model.precision)
    except AnnotationError as e:
        shape = ",".join(map(str, inputs.shape))
        dtype = str(inputs.dtype).removeprefix("torch.")
        raise AnnotationError(f"`{ref}` with input shape {shape} ({dtype}): {e}") from e
    return Analysis(model, traced, analyze_cuts(traced), total, root, inputs if root else None)


def _submodule(model: nn.Module, fqn: str) -> nn.Module:
    modules: dict[str, nn.Module] = dict(model.named_modules())
    if fqn not in modules or not fqn:
        close = difflib.get_close_matches(fqn, [m for m in modules if m], n=3)
        hint = f"; did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
        raise SplitterError(f"model.root `{fqn}` is not a submodule of the model{hint}")
    return modules[fqn]


def _captured_input(model: LoadedModel, target: nn.Module, fqn: str) -> InputSpec:
    """The tensor the model passes to `target`, captured on a real eval-mode forward."""
    seen: list[torch.Tensor] = []

    def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
        if not seen and args and isinstance(args[0], torch.Tensor):
            seen.append(args[0].detach().clone())

    handle = target.register_forward_pre_hook(hook)
    was_training = model.module.training
    try:
        with torch.no_grad():
            model.module.eval()(model.input.batch(2))
    finally:
        handle.remove()
        model.module.train(was_training)
    if not seen:
        raise SplitterError(
            f"model.root `{fqn}` was not called with a tensor when the model ran; "
            "choose a submodule that takes one tensor (see `splitter inspect`)"
        )
    return InputSpec(tuple(seen[0].shape[1:]), seen[0].dtype, seen[0])


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
