"""The traced graph made splittable: the forward's inputs, what only its other inputs compute
moved to where it is used, and top-level names that `fx.GraphModule` uses itself renamed."""

from __future__ import annotations

import functools

import torch.fx as fx
from torch import nn

RENAMED = "_renamed_"
"""Prefix of a top-level submodule, parameter or buffer whose name is an attribute of
`fx.GraphModule` (`graph`, `code`, `meta`, ...): inside traced graphs only; `public` maps back."""


def input_nodes(graph: fx.Graph) -> list[fx.Node]:
    """The forward's inputs: its placeholders without the arguments traced at their default
    (`optional_args`), which fx keeps as placeholders holding the value."""
    return [n for n in graph.nodes if n.op == "placeholder" and not n.args]


def sink_side_inputs(graph: fx.Graph) -> None:
    """Move what only the forward's second and later inputs compute (a metadata MLP) to just
    before its first use, where the block that reads it runs it: costs then count it there."""
    placeholders = input_nodes(graph)
    if len(placeholders) < 2:
        return
    main: set[fx.Node] = {placeholders[0]}
    side: set[fx.Node] = set(placeholders[1:])
    for node in graph.nodes:
        if node.op == "placeholder":
            continue
        if any(a in main for a in node.all_input_nodes):
            main.add(node)
        elif any(a in side for a in node.all_input_nodes):
            side.add(node)
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in reversed(list(graph.nodes)):
        if node in side and node.op != "placeholder" and node.users:
            first_user = min(node.users, key=lambda u: order[u])
            first_user.prepend(node)
            order = {n: i for i, n in enumerate(graph.nodes)}


def public(target: str) -> str:
    """The model's own dotted name for a graph target (`_renamed_meta.0` is `meta.0`)."""
    return target.removeprefix(RENAMED)


def renamed(root: nn.Module, graph: fx.Graph) -> nn.Module:
    """The holder of `graph`'s targets: `root`, or when a top-level name of `root` is an
    attribute of `fx.GraphModule`, a module holding the same objects with such names prefixed
    by `RENAMED` (the graph's targets renamed to match); the user's model is untouched."""
    taken = _graph_module_attributes()
    top = {t.split(".")[0] for t in graph_targets(graph)}
    clashes = sorted(top & taken)
    if not clashes:
        return root
    holder = nn.Module()
    for name in top:
        value = getattr(root, name)
        alias = RENAMED + name if name in clashes else name
        if isinstance(value, nn.Module):
            holder.add_module(alias, value)
        elif name in root._buffers:
            persistent = name not in root._non_persistent_buffers_set
            holder.register_buffer(alias, value, persistent=persistent)
        else:
            setattr(holder, alias, value)
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr") and node.target.split(".")[0] in clashes:
            node.target = RENAMED + node.target
    return holder


@functools.cache
def _graph_module_attributes() -> frozenset[str]:
    return frozenset(dir(fx.GraphModule(nn.Module(), fx.Graph())))


def graph_targets(graph: fx.Graph) -> list[str]:
    """The submodules and attributes the graph reaches (`call_module` and `get_attr` targets)."""
    return [str(n.target) for n in graph.nodes if n.op in ("call_module", "get_attr")]
