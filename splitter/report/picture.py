"""What a picture of a split shows: the graph collapsed to units (runs of alike units folded),
its legal cuts and skip connections, the blocks with their auxiliaries, and the memory of each.

`picture(analysis, partition)` computes it; `splitter.report.plot` draws it. Nothing here draws."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import networkx as nx
import torch
import torch.fx as fx
from torch import nn

from schemas.auxiliary import AugmentedAux, MlaanAux, MomentumAux
from splitter.analysis.costs import AuxCost, CostModel
from splitter.analysis.cuts import CONTAINERS, Unit, data_graph, units
from splitter.analysis.model import Analysis
from splitter.analysis.sampling import augmented_units
from splitter.frontend.annotate import node_cost
from splitter.partitioning.partitioner import Partition

ADDS = {operator.add, operator.iadd, torch.add, "add", "add_"}
CATS = {torch.cat, torch.concat, "cat", "concat"}


@dataclass(frozen=True)
class Row:
    """One drawn unit, or a run of `count` alike consecutive units of one block."""

    first: str
    """The (first) unit's name: the modules it holds, else its last cut."""
    last: str
    count: int
    """Alike units folded into this row (drawn as `x count`)."""
    units: int
    """Units between legal cuts that one element of the row holds (a folded row repeats it
    `count` times); `skips` are per element too, the other sizes and counts are totals."""
    modules: tuple[str, ...]
    """The outermost modules wholly inside the (first) unit."""
    kind: str
    params: int
    saved_bytes: int
    shape: tuple[int, ...] | None
    skips: tuple[str, ...]
    """The skip connections merging inside each unit: `add` (residual) or `cat`."""
    end_cut: str | None
    """The legal cut below the row; None for the model's output."""
    inner_cuts: int
    """Legal cuts inside the row (between folded units, and inside each unit)."""
    block: int
    lo: int
    """The node index before the row's first node (-1 at the input)."""
    hi: int
    """The node index of the row's last node."""

    @property
    def label(self) -> str:
        return self.first if self.count == 1 else f"{self.first} … {self.last}"


@dataclass(frozen=True)
class AuxDrawing:
    kind: str
    lines: tuple[str, ...]
    cost: AuxCost
    sources: tuple[int, ...] = ()
    """Rows the auxiliary keeps an EMA of (momentum, MLAAN)."""


@dataclass(frozen=True)
class BlockView:
    index: int
    first_row: int
    rows: int
    params: int
    activation_bytes: int
    aux_activation_bytes: int
    grad_bytes: int
    aux: AuxDrawing | None

    @property
    def variable_bytes(self) -> int:
        return self.activation_bytes + self.aux_activation_bytes + self.grad_bytes


@dataclass(frozen=True)
class Picture:
    title: str
    rows: tuple[Row, ...]
    blocks: tuple[BlockView, ...]
    """Empty when no split was given: then the rows are the whole model."""
    cuts: tuple[str, ...]
    """The chosen cuts, in order."""
    fixed_bytes: int
    e2e_peak_bytes: int
    local_peak_bytes: int
    total_activation_bytes: int
    batch_size: int


def picture(analysis: Analysis, partition: Partition | None = None) -> Picture:
    """The picture of `analysis`, split as `partition` says (else unsplit)."""
    gm = analysis.traced.graph("train")
    cuts = partition.cuts if partition else []
    unit_list = units(gm, analysis.cuts.cuts, [c.name for c in cuts])
    ends = [c.index for c in cuts]
    graph = Graph(list(gm.graph.nodes), data_graph(gm.graph), _module_spans(gm))
    rows = []
    for unit in unit_list:
        lo, hi = _pos(analysis, gm, unit.start), _pos(analysis, gm, unit.end)
        rows.append(_row(analysis, graph, unit, lo, hi, sum(1 for e in ends if e < hi)))
    spans = graph.spans
    blocks = _blocks(analysis, partition, rows) if partition else ()
    root = analysis.target
    merge = partial(_merged, root)
    rows, blocks = _regroup(rows, blocks, _by_parent(root, spans, rows), merge)
    pinned = {s for b in blocks if b.aux for s in b.aux.sources}
    rows, blocks = _regroup(rows, blocks, _alike_runs(rows, pinned), _folded)
    title = analysis.model.ref + (f" ({analysis.root})" if analysis.root else "")
    return Picture(
        title=title,
        rows=tuple(rows),
        blocks=blocks,
        cuts=tuple(c.name for c in cuts),
        fixed_bytes=partition.fixed_bytes if partition else 0,
        e2e_peak_bytes=partition.e2e_peak_bytes if partition else 0,
        local_peak_bytes=partition.local_peak_bytes if partition else 0,
        total_activation_bytes=analysis.total_activation_bytes,
        batch_size=analysis.model.batch_size,
    )


def _pos(analysis: Analysis, gm: fx.GraphModule, name: str) -> int:
    """The node index a unit boundary names: -1 for the input, the last node for the output."""
    if name == "input":
        return -1
    if name == "output":
        return len(gm.graph.nodes) - 1
    cut = analysis.cuts.find(name)
    assert cut is not None, name
    return cut.index


@dataclass(frozen=True)
class Graph:
    """The train graph's nodes in order, its data-flow DAG and each module's node span."""

    nodes: list[fx.Node]
    dag: nx.DiGraph
    spans: dict[str, tuple[int, int]]


def _row(analysis: Analysis, graph: Graph, unit: Unit, lo: int, hi: int, block: int) -> Row:
    nodes = graph.nodes
    span = nodes[lo + 1 : hi + 1]
    modules = _modules_within(analysis.target, graph.spans, lo, hi)
    name = ", ".join(modules[:2]) + (", …" if len(modules) > 2 else "") if modules else unit.end
    kinds = sorted({type(analysis.target.get_submodule(m)).__name__ for m in modules})
    last = nodes[hi]
    return Row(
        first=name,
        last=name,
        count=1,
        units=1,
        modules=tuple(modules),
        kind="+".join(kinds) if len(kinds) <= 2 else "mixed",
        params=unit.params,
        saved_bytes=sum(node_cost(n).saved_bytes for n in span if "splitter" in n.meta),
        shape=node_cost(last).shape if "splitter" in last.meta else None,
        skips=_skips(graph.dag, span),
        end_cut=None if unit.end == "output" else unit.end,
        inner_cuts=sum(1 for c in analysis.cuts.cuts if lo < c.index < hi),
        block=block,
        lo=lo,
        hi=hi,
    )


def _module_spans(gm: fx.GraphModule) -> dict[str, tuple[int, int]]:
    """Each module's first and last node index in the graph."""
    spans: dict[str, tuple[int, int]] = {}
    for i, node in enumerate(gm.graph.nodes):
        stack = [str(v[0]) for v in (node.meta.get("nn_module_stack") or {}).values()]
        if node.op == "call_module":
            stack.append(str(node.target))
        for fqn in stack:
            if fqn:
                spans[fqn] = (spans[fqn][0] if fqn in spans else i, i)
    return spans


def _modules_within(
    root: nn.Module, spans: dict[str, tuple[int, int]], lo: int, hi: int
) -> list[str]:
    """The outermost modules that lie wholly in nodes lo+1..hi, in graph order: those with
    parameters, else all of them."""
    whole = [f for f, (a, b) in spans.items() if lo < a and b <= hi]
    whole.sort(key=lambda f: spans[f])
    outer = [f for f in whole if not any(f.startswith(o + ".") for o in whole)]
    weighted = [f for f in outer if any(True for _ in root.get_submodule(f).parameters())]
    return weighted or outer


def _skips(dag: nx.DiGraph, span: list[fx.Node]) -> tuple[str, ...]:
    """Additions and concatenations of two or more data paths inside the span."""
    found = []
    for node in span:
        if node not in dag or dag.in_degree(node) < 2:
            continue
        if node.target in ADDS:
            found.append("add")
        elif node.target in CATS:
            found.append("cat")
    return tuple(found)


def _blocks(analysis: Analysis, partition: Partition, rows: list[Row]) -> tuple[BlockView, ...]:
    model = CostModel(analysis, partition.settings)
    count = len(partition.blocks)
    views = []
    for k, cost in enumerate(partition.blocks):
        members = [i for i, r in enumerate(rows) if r.block == k]
        aux = None if k == count - 1 else _aux(model, partition, k, rows)
        views.append(
            BlockView(
                index=k,
                first_row=members[0],
                rows=len(members),
                params=cost.params,
                activation_bytes=cost.activation_bytes,
                aux_activation_bytes=cost.aux_activation_bytes,
                grad_bytes=cost.grad_bytes,
                aux=aux,
            )
        )
    return tuple(views)


def _aux(model: CostModel, partition: Partition, k: int, rows: list[Row]) -> AuxDrawing:
    config = partition.settings.aux.of(k)
    bounds, count = partition.bounds, len(partition.blocks)
    j = bounds[k + 1]
    cost = model.aux_cost(k, j, count)
    if isinstance(config, MomentumAux):
        source = _row_at(rows, model.position[min(model.first_unit_end(j), bounds[k + 2])])
        lines = (
            f"momentum ({'MAN++' if config.learnable_scale else 'MAN'})",
            f"trainable + EMA copy of {rows[source].label}",
            f"{config.head.kind} head",
        )
        return AuxDrawing("momentum", lines, cost, (source,))
    if isinstance(config, (AugmentedAux, MlaanAux)):
        if isinstance(config, MlaanAux):
            depth, tau = MlaanAux.LEAP_DEPTH, MlaanAux.LEAP_TAU
        else:
            depth, tau = config.depth, config.tau
        picked = augmented_units(model.feature_unit_ends, j, k, count, depth, tau)
        copies = f"fresh copies of {len(picked)} later unit{'s' * (len(picked) != 1)}"
        if isinstance(config, AugmentedAux):
            return AuxDrawing("augmented", ("augmented (AugLocal)", copies, "linear head"), cost)
        window = config.cascade(k)
        sources = (_row_at(rows, model.position[picked[0]]),) if picked else ()
        lines = ("mlaan", f"conv head + cascade over {window} blocks", f"{copies}, first EMA")
        return AuxDrawing("mlaan", lines, cost, sources)
    details = {
        "linear": "pool + Linear",
        "conv": "conv layers + pool + Linear",
        "infopro": "decoder (BCE) + InfoPro classifier",
    }
    return AuxDrawing(config.kind, (config.kind, details.get(config.kind, "")), cost)


def _row_at(rows: list[Row], position: int) -> int:
    """The row holding node `position`."""
    return next(i for i, r in enumerate(rows) if r.lo < position <= r.hi)


def _by_parent(
    root: nn.Module, spans: dict[str, tuple[int, int]], rows: list[Row]
) -> list[list[int]]:
    """Consecutive rows of one block that together make up the module all of them are
    directly in (not a container, not the root): a transformer layer's attention and MLP.
    The module may begin with parameter-free operations that the row before holds."""
    inner = [next(iter(_parents(root, r.modules)), None) for r in rows]
    groups: list[list[int]] = []
    i = 0
    while i < len(rows):
        group, parent = [i], inner[i]
        if parent is not None and _starts_at(parent, spans, rows, i):
            j = i
            while (
                j + 1 < len(rows) and inner[j + 1] == parent and rows[j + 1].block == rows[i].block
            ):
                j += 1
            inside = all(
                m == parent or m.startswith(parent + ".")
                for r in rows[i : j + 1]
                for m in r.modules
            )
            if j > i and inside and rows[j].lo < spans[parent][1] <= rows[j].hi:
                group = list(range(i, j + 1))
        groups.append(group)
        i = group[-1] + 1
    return groups


def _starts_at(parent: str, spans: dict[str, tuple[int, int]], rows: list[Row], i: int) -> bool:
    """Whether `parent` begins in row i, or in the row before with none of its modules there."""
    if spans[parent][0] > rows[i].lo:
        return True
    before = rows[i - 1] if i else None
    return (
        before is not None
        and spans[parent][0] > before.lo
        and not any(m == parent or m.startswith(parent + ".") for m in before.modules)
    )


def _parents(root: nn.Module, modules: tuple[str, ...]) -> list[str]:
    """The ancestors of the row's first module, innermost first, that are neither containers
    nor the root."""
    if not modules:
        return []
    parts = modules[0].split(".")
    names = [".".join(parts[:n]) for n in range(len(parts) - 1, 0, -1)]
    return [n for n in names if not isinstance(root.get_submodule(n), CONTAINERS)]


def _merged(root: nn.Module, rows: list[Row]) -> Row:
    name = _parents(root, rows[0].modules)[0]
    return replace(
        rows[0],
        first=name,
        last=name,
        kind=type(root.get_submodule(name)).__name__,
        units=len(rows),
        modules=(name,),
        **_totals(rows),
        skips=sum((r.skips for r in rows), ()),
    )


def _alike_runs(rows: list[Row], pinned: set[int]) -> list[list[int]]:
    """Runs of alike consecutive rows of one block; an EMA source stays its own row."""
    groups: list[list[int]] = []
    for i, row in enumerate(rows):
        prev = rows[groups[-1][0]] if groups else None
        alike = (
            prev is not None
            and i not in pinned
            and groups[-1][-1] not in pinned
            and (prev.block, prev.kind, prev.params, prev.shape, prev.skips, prev.units)
            == (row.block, row.kind, row.params, row.shape, row.skips, row.units)
        )
        if alike:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _folded(rows: list[Row]) -> Row:
    return replace(rows[0], last=rows[-1].last, count=len(rows), **_totals(rows))


def _totals(rows: list[Row]) -> dict[str, Any]:
    """What rows[0] .. rows[-1] drawn as one row hold together: sums, and the last one's end."""
    return {
        "params": sum(r.params for r in rows),
        "saved_bytes": sum(r.saved_bytes for r in rows),
        "end_cut": rows[-1].end_cut,
        "inner_cuts": sum(r.inner_cuts for r in rows) + len(rows) - 1,
        "hi": rows[-1].hi,
        "shape": rows[-1].shape,
    }


def _regroup(
    rows: list[Row],
    blocks: tuple[BlockView, ...],
    groups: list[list[int]],
    combine: Callable[[list[Row]], Row],
) -> tuple[list[Row], tuple[BlockView, ...]]:
    """Rows drawn one per group (`combine` joins a group of several), and the blocks' row
    indices moved to match."""
    new = [rows[g[0]] if len(g) == 1 else combine([rows[i] for i in g]) for g in groups]
    where = {i: n for n, g in enumerate(groups) for i in g}
    moved = []
    for b in blocks:
        first, last = where[b.first_row], where[b.first_row + b.rows - 1]
        aux = b.aux and replace(b.aux, sources=tuple(where[s] for s in b.aux.sources))
        moved.append(replace(b, first_row=first, rows=last - first + 1, aux=aux))
    return new, tuple(moved)
