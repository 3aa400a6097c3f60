"""The analysis pipeline: model reference -> traced, annotated graph -> legal cuts."""

from __future__ import annotations

import difflib
import importlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from splitter.analysis.cuts import CutAnalysis, analyze_cuts
from splitter.errors import AnnotationError, SplitterError, UsageError
from splitter.frontend.annotate import annotate
from splitter.frontend.inputs import InputSpec
from splitter.frontend.modelref import LoadedModel, ModelOptions, load_model
from splitter.frontend.rewrite import input_nodes
from splitter.frontend.trace import TracedModel, trace


@dataclass
class Analysis:
    """Everything known about a model (or its `root` submodule) before it is partitioned."""

    model: LoadedModel
    traced: TracedModel
    cuts: CutAnalysis
    total_activation_bytes: int
    root: str | None = None
    inputs: tuple[InputSpec, ...] | None = None
    """The `root` submodule's inputs, as the model calls it (None: the model's)."""
    output_shape: tuple[int, ...] | None = None
    """With `root`: the shape of the whole model's (first) output, batch included."""
    before_root: tuple[str, ...] = ()
    """With `root`: the modules with parameters of their own that run before it (local
    training gives them no gradient)."""

    @property
    def target(self) -> nn.Module:
        """The module being split: the model, or its `root` submodule."""
        return self.traced.root

    @property
    def target_inputs(self) -> tuple[InputSpec, ...]:
        return self.inputs or self.model.inputs

    @property
    def target_input(self) -> InputSpec:
        """The input blocks carry (the first)."""
        return self.target_inputs[0]


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
    target, inputs = model.module, model.inputs
    output: tuple[int, ...] | None = None
    before: tuple[str, ...] = ()
    if root:
        target = _submodule(model.module, root)
        inputs, output, before = _captured_inputs(model, target, root)
    leaf_types, functions = _registries(ref)
    traced = trace(
        target,
        options.leaves,
        leaf_types=leaf_types,
        autowrap_functions=functions,
        auto_leaf=auto_leaf,
        inputs=len(inputs),
    )
    _check_inputs(traced, inputs, ref, root)
    try:
        total = annotate(traced.graph("train"), inputs, model.batch_size, model.precision)
    except AnnotationError as e:
        shapes = " and ".join(
            f"{','.join(map(str, i.shape))} ({str(i.dtype).removeprefix('torch.')})" for i in inputs
        )
        raise AnnotationError(f"`{ref}` with input shape {shapes}: {e}") from e
    found = Analysis(model, traced, analyze_cuts(traced), total, root, inputs if root else None)
    found.output_shape, found.before_root = output, before
    return found


def _check_inputs(
    traced: TracedModel, inputs: tuple[InputSpec, ...], ref: str, root: str | None
) -> None:
    """A forward that takes more tensors than were described: say which and how to add them."""
    names = [n.target for n in input_nodes(traced.graph("train").graph)]
    if len(names) <= len(inputs) or root:
        return
    listed = ", ".join(f"`{n}`" for n in names)
    raise UsageError(
        f"the forward of `{ref}` takes {len(names)} inputs ({listed}) but {len(inputs)} "
        f"{'is' if len(inputs) == 1 else 'are'} described; give --input-shape once per input "
        "(in order), `model.inputs` in the spec, or return a tuple from example_inputs()"
    )


def _submodule(model: nn.Module, fqn: str) -> nn.Module:
    modules: dict[str, nn.Module] = dict(model.named_modules())
    if fqn not in modules or not fqn:
        close = difflib.get_close_matches(fqn, [m for m in modules if m], n=3)
        hint = f"; did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
        raise SplitterError(f"model.root `{fqn}` is not a submodule of the model{hint}")
    return modules[fqn]


def _captured_inputs(
    model: LoadedModel, target: nn.Module, fqn: str
) -> tuple[tuple[InputSpec, ...], tuple[int, ...] | None, tuple[str, ...]]:
    """The tensors the model passes to `target` (its leading tensor arguments), captured on a
    real eval-mode forward, the shape of the model's first output tensor, and the modules with
    parameters of their own that ran before it."""
    seen: list[tuple[torch.Tensor, ...]] = []

    def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
        if not seen:
            leading = itertools.takewhile(lambda a: isinstance(a, torch.Tensor), args)
            seen.append(tuple(a.detach().clone() for a in leading))

    handle = target.register_forward_pre_hook(hook)
    names = {
        id(m): n
        for n, m in model.module.named_modules()
        if any(p is not None for p in m._parameters.values())
    }
    before: list[str] = []

    def called(module: nn.Module, _: object) -> None:
        if not seen and id(module) in names and names[id(module)] not in before:
            before.append(names[id(module)])

    every = torch.nn.modules.module.register_module_forward_pre_hook(called)
    was_training = model.module.training
    try:
        with torch.no_grad():
            out = model.module.eval()(*(i.batch(2) for i in model.inputs))
    except Exception as error:  # the model's own failure, on the inputs as described
        shapes = " and ".join(",".join(map(str, i.shape)) for i in model.inputs)
        raise SplitterError(
            f"running `{model.ref}` on input shape {shapes} to find what it gives model.root "
            f"`{fqn}` failed ({type(error).__name__}: {str(error).strip()[:200]}); describe "
            "every input of its forward (--input-shape once per input, or `model.inputs`)"
        ) from error
    finally:
        handle.remove()
        every.remove()
        model.module.train(was_training)
    if not seen or not seen[0]:
        raise SplitterError(
            f"model.root `{fqn}` was not called with a tensor when the model ran; "
            "choose a submodule that takes tensors (see `splitter inspect`)"
        )
    found = tuple(InputSpec(tuple(t.shape[1:]), t.dtype, t) for t in seen[0])
    return found, _first_shape(out), tuple(before)


def _first_shape(out: object) -> tuple[int, ...] | None:
    """The shape of the first tensor in an output (through tuples, lists and dicts)."""
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    values = out.values() if isinstance(out, dict) else out if isinstance(out, tuple | list) else []
    return next((s for v in values if (s := _first_shape(v)) is not None), None)


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
