"""torch.fx tracing in train and eval mode, with automatic leafing of what does not trace."""

from __future__ import annotations

import importlib
import inspect
import traceback
import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch.fx as fx
from torch import nn

from splitter.errors import TraceError, UsageError
from splitter.frontend.rewrite import renamed, sink_side_inputs

Mode = Literal["train", "eval"]
MODES: tuple[Mode, ...] = ("train", "eval")
MAX_ATTEMPTS = 64
CALLS_KEY = "splitter_calls"
"""Node meta: the `ModuleCall`s (innermost first) whose forward made the node."""


@dataclass(frozen=True)
class Leafed:
    """A submodule kept opaque, or a free function wrapped, and why."""

    fqn: str
    kind: Literal["module", "function"]
    reason: str


@dataclass
class TracedModel:
    """A model's train-mode and eval-mode graphs over the same leaves."""

    root: nn.Module
    graphs: dict[Mode, fx.GraphModule]
    leaf_fqns: frozenset[str]
    leafed: list[Leafed] = field(default_factory=list)

    def graph(self, mode: Mode = "train") -> fx.GraphModule:
        return self.graphs[mode]

    def is_leafed(self, fqn: str) -> bool:
        """True for modules splitter or the user made leaves (not torch.nn's default leaves)."""
        return fqn in self.leaf_fqns


@dataclass(frozen=True)
class Value:
    """A graph value in a recorded call's arguments: the node that computed it, by name."""

    name: str


@dataclass(frozen=True, eq=False)
class ModuleCall:
    """One call of a submodule that tracing went through (not a leaf): its path, the
    arguments it got (graph values as `Value`s), the node it returned (None when it returned
    something else than one graph value) and the names of every node its forward made."""

    path: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: str | None
    nodes: frozenset[str]


class SplitterTracer(fx.Tracer):
    """An fx tracer with user and automatic leaves that remembers where tracing failed."""

    def __init__(
        self,
        leaf_fqns: frozenset[str],
        leaf_types: tuple[type, ...],
        autowrap_functions: tuple[Callable[..., Any], ...],
    ) -> None:
        super().__init__(autowrap_functions=autowrap_functions)
        self.leaf_fqns = leaf_fqns
        self.leaf_types = leaf_types
        self.leaf_hits: set[str] = set()
        self.failed_in: str | None = None
        self.created: list[fx.Node] = []

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        self.created.append(node)
        return node

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_fqns or isinstance(m, self.leaf_types):
            self.leaf_hits.add(module_qualified_name)
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        start = len(self.created)
        try:
            out = super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.path_of_module(m)
            raise
        made = self.created[start:]
        if not (len(made) == 1 and made[0].op == "call_module"):  # a leaf: one node already
            self._record(m, args, kwargs, out, made)
        return out

    def _record(self, m: nn.Module, args: Any, kwargs: Any, out: Any, made: list[fx.Node]) -> None:
        """Note on every node the call made that it did (emission calls such modules whole)."""
        try:
            path = self.path_of_module(m)
        except NameError:
            return  # a module outside the traced hierarchy
        call = ModuleCall(
            path,
            _values(tuple(args)),
            _values(dict(kwargs)),
            out.node.name if isinstance(out, fx.Proxy) else None,
            frozenset(n.name for n in made),
        )
        for node in made:
            node.meta.setdefault(CALLS_KEY, []).append(call)


def _values(arguments: Any) -> Any:
    """`arguments` with each graph value (a Proxy) replaced by its `Value`."""
    return fx.node.map_aggregate(
        arguments, lambda a: Value(a.node.name) if isinstance(a, fx.Proxy) else a
    )


def trace(
    root: nn.Module,
    leaves: Iterable[str] = (),
    *,
    leaf_types: tuple[type, ...] = (),
    autowrap_functions: tuple[Callable[..., Any], ...] = (),
    auto_leaf: bool = True,
    inputs: int = 1,
) -> TracedModel:
    """Trace `root` in both modes; on failure leaf the smallest failing submodule (or wrap the
    failing free function) and retry, recording why (DESIGN 1.2)."""
    user_fqns, user_types = resolve_leaves(root, leaves)
    state = _TraceState(
        frozenset(user_fqns), leaf_types + user_types, autowrap_functions, inputs=inputs
    )
    for _ in range(MAX_ATTEMPTS):
        try:
            graphs, hits = state.trace_both(root)
        except _TraceFailure as failure:
            if not auto_leaf:
                raise TraceError(f"{failure.message}; {_LEAF_FIX}") from None
            state.apply(failure, root)
            continue
        return TracedModel(root, graphs, frozenset(hits), state.leafed)
    raise TraceError(f"tracing still fails after {MAX_ATTEMPTS} automatic leaves; {_LEAF_FIX}")


_LEAF_FIX = (
    "mark the failing submodule as a leaf with `--leaf FQN` (or `trace.leaf_modules` in the "
    "spec), or split a traceable submodule with `model.root`"
)


class _TraceFailure(Exception):
    def __init__(self, message: str, fqn: str, function: Callable[..., Any] | None) -> None:
        super().__init__(message)
        self.message, self.fqn, self.function = message, fqn, function


@dataclass
class _TraceState:
    leaf_fqns: frozenset[str]
    leaf_types: tuple[type, ...]
    autowrap: tuple[Callable[..., Any], ...]
    leafed: list[Leafed] = field(default_factory=list)
    inputs: int = 1

    def trace_both(self, root: nn.Module) -> tuple[dict[Mode, fx.GraphModule], set[str]]:
        graphs: dict[Mode, fx.GraphModule] = {}
        hits: set[str] = set()
        for mode in MODES:
            tracer = SplitterTracer(self.leaf_fqns, self.leaf_types, self.autowrap)
            with _in_mode(root, mode):
                try:
                    graph = tracer.trace(root, concrete_args=optional_args(root, self.inputs))
                except Exception as e:
                    raise _diagnose(e, tracer, root, mode) from e
            sink_side_inputs(graph)
            graphs[mode] = fx.GraphModule(renamed(root, graph), graph, type(root).__name__)
            hits |= tracer.leaf_hits
        return graphs, hits

    def apply(self, failure: _TraceFailure, root: nn.Module) -> None:
        """Leaf the failing module or wrap the failing function; refuse what cannot be fixed."""
        function = failure.function
        if function is not None and function not in self.autowrap:
            self.autowrap = (*self.autowrap, function)
            name = f"{function.__module__}.{function.__qualname__}"
            self.leafed.append(Leafed(name, "function", failure.message))
        elif failure.fqn and failure.fqn not in self.leaf_fqns:
            self.leaf_fqns = self.leaf_fqns | {failure.fqn}
            self.leafed.append(Leafed(failure.fqn, "module", failure.message))
        else:
            raise TraceError(_root_failure(failure, root))


def optional_args(root: nn.Module, inputs: int = 1) -> dict[str, Any]:
    """Forward arguments after the `inputs` first that have defaults (masks, flags) are traced
    at their defaults, as the model is called with its inputs only; otherwise they would reach
    every block."""
    try:
        parameters = list(inspect.signature(root.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    return {
        p.name: p.default
        for p in parameters[inputs:]
        if p.default is not inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _diagnose(
    error: Exception, tracer: SplitterTracer, root: nn.Module, mode: Mode
) -> _TraceFailure:
    fqn = tracer.failed_in or ""
    frames = list(_frames(error))
    where = _user_location(frames)
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    message = f"{type(error).__name__}: {first_line} (at {where}, {mode} mode)"
    module = root.get_submodule(fqn) if fqn else root
    return _TraceFailure(message, fqn, _failing_function(frames, module))


def _frames(error: BaseException) -> Iterator[types.FrameType]:
    tb = error.__traceback__
    while tb is not None:
        yield tb.tb_frame
        tb = tb.tb_next


def _is_library_frame(frame: types.FrameType) -> bool:
    name = frame.f_code.co_filename.replace("\\", "/")
    return "/torch/" in name or "/splitter/trace.py" in name or name.startswith("<")


def _user_location(frames: list[types.FrameType]) -> str:
    user = [f for f in frames if not _is_library_frame(f)] or frames
    if not user:
        return "unknown location"
    frame = user[-1]
    summary = traceback.extract_stack(frame, limit=1)[-1]
    code = f": `{summary.line.strip()}`" if summary.line else ""
    return f"{summary.filename}:{summary.lineno}{code}"


def _failing_function(
    frames: list[types.FrameType], module: nn.Module
) -> Callable[..., Any] | None:
    """The free function that `module.forward` called and that failed, when there is one."""
    forward_at = [
        i
        for i, f in enumerate(frames)
        if f.f_code.co_name == "forward" and f.f_locals.get("self") is module
    ]
    if not forward_at:
        return None
    caller = frames[forward_at[-1]]
    for frame in frames[forward_at[-1] + 1 :]:
        if _is_library_frame(frame):
            continue
        candidate = caller.f_globals.get(frame.f_code.co_name)
        if isinstance(candidate, types.FunctionType) and candidate.__code__ is frame.f_code:
            return candidate
        return None
    return None


def _root_failure(failure: _TraceFailure, root: nn.Module) -> str:
    where = f"submodule `{failure.fqn}`" if failure.fqn else f"the forward of {type(root).__name__}"
    roots = _root_candidates(root)
    hint = (
        f"split a traceable submodule instead with `model.root`, e.g. {', '.join(roots)}"
        if roots
        else "make the model's forward traceable by torch.fx"
    )
    return f"cannot trace {where}: {failure.message}; automatic leafing cannot fix this; {hint}"


def _root_candidates(root: nn.Module, limit: int = 3) -> list[str]:
    """Submodules (largest first, at most two levels deep) that trace on their own."""
    sized = [
        (sum(p.numel() for p in m.parameters()), fqn)
        for fqn, m in root.named_modules()
        if fqn and fqn.count(".") <= 1 and type(m).__module__.split(".")[:2] != ["torch", "nn"]
    ]
    found: list[str] = []
    for _, fqn in sorted(sized, key=lambda s: (-s[0], s[1])):
        try:
            fx.Tracer().trace(root.get_submodule(fqn))
        except Exception:
            continue
        found.append(f"`{fqn}`")
        if len(found) == limit:
            break
    return found


@contextmanager
def _in_mode(root: nn.Module, mode: Mode) -> Iterator[None]:
    saved = [(m, m.training) for m in root.modules()]
    root.train(mode == "train")
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


def resolve_leaves(root: nn.Module, leaves: Iterable[str]) -> tuple[set[str], tuple[type, ...]]:
    """`--leaf` values: module FQNs of `root`, or class paths / class names of its submodules."""
    modules = dict(root.named_modules())
    fqns: set[str] = set()
    types_: list[type] = []
    for leaf in leaves:
        if leaf in modules and leaf:
            fqns.add(leaf)
        else:
            types_.append(_leaf_class(leaf, modules))
    return fqns, tuple(types_)


def _leaf_class(name: str, modules: dict[str, nn.Module]) -> type:
    by_name = {type(m).__name__: type(m) for m in modules.values()}
    by_path = {f"{type(m).__module__}.{type(m).__qualname__}": type(m) for m in modules.values()}
    if name in by_path or name in by_name:
        return by_path.get(name) or by_name[name]
    module_name, _, attr = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attr) if module_name else None
    except ImportError:
        found = None
    if isinstance(found, type) and issubclass(found, nn.Module):
        return found
    import difflib

    close = difflib.get_close_matches(name, [*modules, *by_name], n=3)
    hint = f"; did you mean {', '.join(f'`{c}`' for c in close)}" if close else ""
    raise UsageError(
        f"--leaf `{name}` is neither a submodule FQN of the model nor an nn.Module class{hint}"
    )
