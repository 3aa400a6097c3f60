"""Submodule calls folded back: a submodule whose whole call lies inside a block is called whole.

Tracing inlines every submodule's forward into one flat graph. Emission reads better (and
like the model's own code) when a call such as `self.layer1[0](x)` stays one statement, so
`folded` copies a block's graph with each complete call replaced by one `call_module` node.
A call is complete in a graph when the graph computes its result from its arguments by the
call's own nodes only, none of those nodes is used elsewhere, and the block holds every
parameter and buffer of the submodule through that call (so calling it whole reads nothing
another block owns). The traced graph is never changed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from splitter.frontend.rewrite import public
from splitter.frontend.trace import CALLS_KEY, ModuleCall, Value
from splitter.transform.surgery import ORIGIN_KEY

CALL_KEY = "splitter_call"
"""Meta of a folded node: the `ModuleCall` it stands for."""


def folded(graph: fx.Graph, model: nn.Module) -> fx.Graph:
    """A copy of `graph` with every complete submodule call made one `call_module` node,
    outermost calls first."""
    nodes = list(graph.nodes)
    by_origin = {str(n.meta.get(ORIGIN_KEY, n.name)): n for n in nodes}
    # outermost first: the larger call, or of two making the same nodes, the shorter path
    calls = sorted(_calls(nodes), key=lambda c: (-len(c.nodes), c.path.count(".")))
    gone: set[fx.Node] = set()
    folds: dict[fx.Node, ModuleCall] = {}
    for call in calls:
        inside = _inside(call, nodes, by_origin, model)
        if inside is not None and not inside & gone:
            gone |= inside
            folds[by_origin[str(call.output)]] = call
    if not folds:
        return _copy(nodes)
    out = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        fold = folds.get(node)
        if fold is not None:
            args, kwargs = _arguments(fold, by_origin, env)
            env[node] = out.create_node("call_module", fold.path, args, kwargs, name=node.name)
            env[node].meta = {**node.meta, CALL_KEY: fold}
        elif node not in gone:
            env[node] = _node_copy(out, node, env)
    return out


def _copy(nodes: Iterable[fx.Node]) -> fx.Graph:
    out = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        env[node] = _node_copy(out, node, env)
    return out


def _node_copy(out: fx.Graph, node: fx.Node, env: dict[fx.Node, fx.Node]) -> fx.Node:
    """`node` copied into `out`, its target under the model's own (`public`) name."""
    copy = out.node_copy(node, lambda n: env[n])
    if copy.op in ("call_module", "get_attr"):
        copy.target = public(str(copy.target))
    return copy


def _calls(nodes: Iterable[fx.Node]) -> list[ModuleCall]:
    found: dict[int, ModuleCall] = {}
    for node in nodes:
        for call in node.meta.get(CALLS_KEY, ()):
            found.setdefault(id(call), call)
    return list(found.values())


def _inside(
    call: ModuleCall, nodes: list[fx.Node], by_origin: dict[str, fx.Node], model: nn.Module
) -> set[fx.Node] | None:
    """The graph's nodes that `call` made, when the call is complete in the graph (else None)."""
    output = by_origin.get(call.output) if call.output else None
    if output is None or output.op == "placeholder" or call.output not in call.nodes:
        return None
    inside = {n for n in nodes if str(n.meta.get(ORIGIN_KEY, n.name)) in call.nodes}
    if any(n.op == "placeholder" for n in inside):
        return None  # the block starts inside the call
    if not _writable((call.args, call.kwargs)):
        return None  # e.g. a tensor the model passes (eva's rotary embedding)
    arguments = [by_origin.get(v.name) for v in _value_args(call)]
    if any(a is None or a in inside for a in arguments):
        return None
    # the result is computed from the arguments by the call's own nodes only
    stack, seen = [output], set(arguments)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node not in inside:
            return None
        stack.extend(node.all_input_nodes)
    if any(u not in inside for n in inside if n is not output for u in n.users):
        return None
    targets = {public(str(n.target)) for n in inside if n.op in ("call_module", "get_attr")}
    return inside if _held(model, call.path, targets) else None


def _held(model: nn.Module, path: str, targets: set[str]) -> bool:
    """Whether the call reached every parameter and buffer of the submodule at `path`."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return False
    for name, _ in [*module.named_parameters(), *module.named_buffers()]:
        parts = f"{path}.{name}".split(".")
        if not any(".".join(parts[:i]) in targets for i in range(1, len(parts) + 1)):
            return False
    return True


_SCALARS: tuple[type, ...] = (Value, type(None), bool, int, float, str, complex, slice)
_SCALARS += (type(Ellipsis), torch.dtype, torch.device, torch.memory_format, torch.layout)
_SCALARS += (enum.Enum, type)


def _writable(arguments: Any) -> bool:
    """Whether emitted code can write `arguments` out (graph values and plain constants)."""
    if isinstance(arguments, (tuple, list)):
        return all(_writable(a) for a in arguments)
    if isinstance(arguments, dict):
        return all(_writable(k) and _writable(v) for k, v in arguments.items())
    if isinstance(arguments, slice):
        return all(_writable(a) for a in (arguments.start, arguments.stop, arguments.step))
    return isinstance(arguments, _SCALARS)


def _value_args(call: ModuleCall) -> list[Value]:
    found: list[Value] = []

    def note(a: Any) -> Any:
        if isinstance(a, Value):
            found.append(a)
        return a

    fx.node.map_aggregate((call.args, call.kwargs), note)
    return found


def _arguments(
    call: ModuleCall, by_origin: dict[str, fx.Node], env: dict[fx.Node, fx.Node]
) -> tuple[Any, Any]:
    """The call's arguments with each `Value` the copy's node for it."""

    def node(a: Any) -> Any:
        return env[by_origin[a.name]] if isinstance(a, Value) else a

    return fx.node.map_aggregate(call.args, node), fx.node.map_aggregate(call.kwargs, node)
