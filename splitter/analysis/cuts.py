"""Legal single-tensor cut points (dominators of the output), their names, and units."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import networkx as nx
import torch.fx as fx
from torch import nn

from splitter.analysis.ops import admissible
from splitter.frontend.annotate import node_cost
from splitter.frontend.rewrite import public
from splitter.frontend.trace import TracedModel

SOURCE = "<source>"
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class CutPoint:
    """A position in the train graph where exactly one tensor crosses."""

    name: str
    aliases: tuple[str, ...]
    node: str
    index: int
    shape: tuple[int, ...] | None
    eval_node: str = ""
    admissible: bool = True
    """Whether the cut keeps every unit whole (`ops.admissible`): automatic plans and units use
    admissible cuts only; a spec may still name the others."""

    @property
    def names(self) -> frozenset[str]:
        return frozenset((self.name, *self.aliases))


@dataclass(frozen=True)
class Unit:
    """The span between two consecutive admissible cuts, with parameter-free spans merged in."""

    index: int
    start: str
    end: str
    params: int


@dataclass(frozen=True)
class CutAnalysis:
    """The interior legal cuts of a model, and the cuts legal in only one mode."""

    cuts: tuple[CutPoint, ...]
    train_only: tuple[str, ...] = ()
    eval_only: tuple[str, ...] = ()
    lookup: dict[str, CutPoint] = field(default_factory=dict, compare=False)

    def find(self, name: str) -> CutPoint | None:
        """A cut by its canonical name or any alias."""
        return self.lookup.get(name)


def analyze_cuts(traced: TracedModel) -> CutAnalysis:
    """Interior cuts legal in both the train and the eval graph (train graph annotated)."""
    train = _named_dominators(traced, "train")
    evals = _named_dominators(traced, "eval")
    both = []
    for cut in train:
        twin = next((e for e in evals if e.names & cut.names), None)
        if twin is not None and _is_tensor(traced.graph("train"), cut):
            both.append(replace(cut, eval_node=twin.node))
    train_names = frozenset().union(*(c.names for c in train))
    eval_names = frozenset().union(*(c.names for c in evals))
    return CutAnalysis(
        cuts=tuple(both),
        train_only=tuple(c.name for c in train if not c.names & eval_names),
        eval_only=tuple(c.name for c in evals if not c.names & train_names),
        lookup={alias: cut for cut in both for alias in cut.names},
    )


def _is_tensor(gm: fx.GraphModule, cut: CutPoint) -> bool:
    node = next(n for n in gm.graph.nodes if n.name == cut.node)
    return node_cost(node).shape is not None if "splitter" in node.meta else True


def _named_dominators(traced: TracedModel, mode: str) -> list[CutPoint]:
    gm = traced.graph("train" if mode == "train" else "eval")
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    paths = node_paths(gm.graph)
    finishing = modules_finishing(gm.graph)
    cuts = []
    for node in interior_dominators(gm.graph):
        name, aliases = _cut_name(traced, finishing.get(node, []), paths[node])
        shape = node_cost(node).shape if "splitter" in node.meta else None
        whole = admissible(node, gm)
        cuts.append(CutPoint(name, aliases, node.name, order[node], shape, admissible=whole))
    return cuts


def data_graph(graph: fx.Graph) -> nx.DiGraph:
    """The DAG of data flow: a virtual source over the first placeholder (the input blocks
    carry); nodes that depend on parameters, constants or the model's other inputs only are
    left out, as a block that reads them computes them itself (the other inputs reach every
    block that reads them)."""
    dag = nx.DiGraph()
    dag.add_node(SOURCE)
    data: set[fx.Node] = set()
    first = True
    for node in graph.nodes:
        inputs = [a for a in node.all_input_nodes if a in data]
        if node.op == "placeholder":
            if not first or node.args:  # another input, or an argument at its default
                continue
            first = False
            inputs_or_source: Iterable[object] = [SOURCE]
        elif inputs:
            inputs_or_source = inputs
        else:
            continue
        data.add(node)
        dag.add_edges_from((src, node) for src in inputs_or_source)
    return dag


def interior_dominators(graph: fx.Graph) -> list[fx.Node]:
    """Dominators of the output in graph order, without the inputs and without the node whose
    cut would leave nothing after it."""
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    dag = data_graph(graph)
    if output not in dag:
        return []
    idom = nx.immediate_dominators(dag, SOURCE)
    chain: list[fx.Node] = []
    node = idom[output]
    while node is not SOURCE:
        chain.append(node)
        node = idom[node]
    chain.reverse()
    direct = {a for a in output.all_input_nodes if a in dag}
    if chain and direct == {chain[-1]}:
        chain.pop()
    return [n for n in chain if n.op != "placeholder"]


def _stack_fqns(node: fx.Node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    return [str(value[0]) for value in stack.values()]


def modules_finishing(graph: fx.Graph) -> dict[fx.Node, list[str]]:
    """For each node, the module FQNs whose last node it is."""
    last: dict[str, fx.Node] = {}
    for node in graph.nodes:
        for fqn in _stack_fqns(node):
            last[fqn] = node
    finishing: dict[fx.Node, list[str]] = {}
    for fqn, node in last.items():
        finishing.setdefault(node, []).append(fqn)
    return finishing


def node_paths(graph: fx.Graph) -> dict[fx.Node, str]:
    """torchvision-style node paths: `<innermost module>.<op>`, `_1`, `_2` for repeats."""
    counts: Counter[str] = Counter()
    paths: dict[fx.Node, str] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            base = public(str(node.target))
        else:
            stack = _stack_fqns(node)
            scope = f"{stack[-1]}." if stack else ""
            base = f"{scope}{_op_name(node)}"
        paths[node] = base if counts[base] == 0 else f"{base}_{counts[base]}"
        counts[base] += 1
    return paths


def _op_name(node: fx.Node) -> str:
    if node.op == "call_function":
        return str(getattr(node.target, "__name__", node.target)).strip("_") or node.name
    return public(str(node.target)) if node.op in ("call_method", "get_attr") else node.name


def _cut_name(
    traced: TracedModel, finishing: Sequence[str], path: str
) -> tuple[str, tuple[str, ...]]:
    """Canonical name (DESIGN 1.4) and the other accepted names."""
    by_depth = sorted(finishing, key=lambda fqn: fqn.count("."), reverse=True)
    preferred = [fqn for fqn in by_depth if not _is_plain_layer(traced, fqn)]
    name = (preferred or by_depth or [path])[0]
    aliases = [a for a in (*by_depth, path) if a != name]
    return name, tuple(dict.fromkeys(aliases))


def _is_plain_layer(traced: TracedModel, fqn: str) -> bool:
    module = traced.root.get_submodule(fqn)
    defined_in_torch_nn = type(module).__module__.startswith("torch.nn.")
    return defined_in_torch_nn and not isinstance(module, CONTAINERS) and not traced.is_leafed(fqn)


def units(
    gm: fx.GraphModule, cuts: Sequence[CutPoint], block_ends: Iterable[str] = ()
) -> list[Unit]:
    """Spans between consecutive admissible cuts (a unit keeps what closes it); a
    parameter-free span joins the unit after it at a block's start and the unit before it
    elsewhere. `block_ends` names the cuts that end blocks (admissible or not)."""
    ends = set(block_ends)
    nodes = list(gm.graph.nodes)
    inner = [(c.name, c.index) for c in cuts if c.admissible or c.name in ends]
    bounds = [("input", -1), *inner, ("output", len(nodes))]
    merged: list[tuple[str, str, int]] = []
    carry: tuple[str, str] | None = None
    at_block_start = True
    for (start, lo), (end, hi) in itertools.pairwise(bounds):
        params = sum(node_cost(n).params for n in nodes[lo + 1 : hi + 1] if "splitter" in n.meta)
        if params == 0 and carry is None and not at_block_start and merged:
            merged[-1] = (merged[-1][0], end, merged[-1][2])
        elif params == 0:
            carry = (carry[0] if carry else start, end)
        else:
            merged.append((carry[0] if carry else start, end, params))
            carry = None
        at_block_start = end in ends
        if carry and (at_block_start or end == "output"):
            merged.append((*carry, 0))
            carry = None
    return [Unit(i, s, e, p) for i, (s, e, p) in enumerate(merged)]


FEW_CUTS = 7
"""Fewer admissible cuts than this (8 blocks impossible) earn `inspect` a warning."""


def few_cuts(cuts: Sequence[CutPoint]) -> list[str]:
    """A warning when a model has few single-tensor cuts that keep its units whole (cells
    that read two earlier tensors, dense or multi-resolution blocks), and what it means for K."""
    admissible = [c.name for c in cuts if c.admissible]
    if len(admissible) >= FEW_CUTS:
        return []
    names = ", ".join(f"`{n}`" for n in admissible) or "none"
    return [
        f"only {len(admissible)} admissible cuts ({names}): elsewhere several tensors are live "
        f"at once, which a cut cannot carry yet, so at most {len(admissible) + 1} blocks"
    ]
