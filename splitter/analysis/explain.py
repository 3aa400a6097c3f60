"""Why a requested cut is not a legal cut: an unknown name (with the closest ones), or the
tensors that cross it and the nearest legal cuts before and after."""

from __future__ import annotations

import difflib

import torch.fx as fx

from splitter.analysis.cuts import data_graph, modules_finishing, node_paths
from splitter.analysis.model import Analysis


def explain_cut(analysis: Analysis, name: str) -> str:
    """Why `name` is not a legal cut: unknown (with the closest names), or which tensors
    cross it and the nearest legal cuts before and after."""
    gm = analysis.traced.graph("train")
    position = _position(gm, name)
    if position is None:
        modules = (m for m, _ in analysis.target.named_modules() if m)
        known = list(dict.fromkeys([*analysis.cuts.lookup, *modules]))
        close = difflib.get_close_matches(name, known, n=3)
        hint = (
            f"the closest names are {', '.join(f'`{c}`' for c in close)}"
            if close
            else ("`splitter inspect MODEL` lists the legal cuts")
        )
        return f"cut `{name}` names no module or operation of the model; {hint}"
    crossing = _crossing(gm, position, analysis)
    before = [c.name for c in analysis.cuts.cuts if c.index < position]
    after = [c.name for c in analysis.cuts.cuts if c.index > position]
    nearest = " and ".join(f"`{n}`" for n in (before[-1:] + after[:1])) or "none"
    if not crossing:
        return (
            f"cut `{name}` is not a legal cut (no single tensor flows through it, or it "
            f"is the model's input or output); the nearest legal cuts are {nearest}"
        )
    return (
        f"cut `{name}` is not a legal cut: {len(crossing)} tensors cross it, the outputs of "
        f"{' and '.join(crossing)}; the nearest legal cuts are {nearest}"
    )


def _position(gm: fx.GraphModule, name: str) -> int | None:
    nodes = list(gm.graph.nodes)
    finishing = modules_finishing(gm.graph)
    paths = node_paths(gm.graph)
    for i, node in enumerate(nodes):
        if name in finishing.get(node, ()) or paths[node] == name or node.name == name:
            return i
    return None


def _crossing(gm: fx.GraphModule, position: int, analysis: Analysis) -> list[str]:
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    paths = node_paths(gm.graph)
    by_node = {c.node: c.name for c in analysis.cuts.cuts}
    data = set(data_graph(gm.graph).nodes)
    crossing = []
    for node in nodes[: position + 1]:
        if node not in data or not any(order[u] > position for u in node.users):
            continue
        label = by_node.get(node.name, paths[node])
        crossing.append("the model's input" if node.op == "placeholder" else f"`{label}`")
    return crossing
