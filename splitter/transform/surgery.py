"""Block surgery: cut the train and eval graphs at legal cuts into modules that keep the FQNs."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.fx as fx
from torch import nn

from splitter.analysis.cuts import CutPoint, data_graph
from splitter.errors import SurgeryError
from splitter.frontend.rewrite import graph_targets, input_nodes, public
from splitter.frontend.trace import MODES, Mode, TracedModel

ORIGIN_KEY = "splitter_origin"
"""Node meta of a block's input: the name of the model's node whose value it is."""
SharedPolicy = Literal["error", "replicate", "owner", "sync"]


class Block(nn.Module):
    """One gradient-isolated block: exactly the submodules it calls, under their original FQNs,
    with a train-mode and an eval-mode graph chosen by `self.training`."""

    def __init__(
        self, index: int, start: str, end: str, root: nn.Module, graphs: dict[Mode, fx.Graph]
    ) -> None:
        super().__init__()
        self.index, self.start, self.end = index, start, end
        self.extras = extra_inputs(graphs["train"])
        """The model's other inputs this block reads after the one it is given, by name."""
        targets = [t for g in graphs.values() for t in graph_targets(g)]
        for target in dict.fromkeys(targets):
            _copy_attr(root, self, target)
        self.graphs = graphs
        self.inputs: tuple[str, ...] = ()
        """The model's inputs by name, in the forward's order (set by `split`)."""
        self._compiled: dict[Mode, fx.GraphModule] = {}
        self.recompile()

    def recompile(self) -> None:
        """Regenerate the forward code, after the owned attributes were swapped."""
        self._compiled = {
            mode: fx.GraphModule(self, graph, f"Block{self.index}")
            for mode, graph in self.graphs.items()
        }

    def forward(self, *args: Any) -> Any:
        return self._compiled["train" if self.training else "eval"](*args)

    def _apply(self, fn: Any, recurse: bool = True) -> Block:
        # `.to()` and friends replace buffers: regenerate the graphs' references to them.
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        self.recompile()
        return self

    def code(self, mode: Mode = "train") -> str:
        return self._compiled[mode].code

    def extra_repr(self) -> str:
        return f"index={self.index}, start={self.start!r}, end={self.end!r}"


class _Holder(nn.Module):
    """A container made by surgery so that a block's submodules keep their original FQNs."""


class Chain(nn.Module):
    """The blocks run one after the other: the original model, computed block by block."""

    def __init__(self, blocks: Sequence[Block]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, *inputs: Any) -> Any:
        out = inputs[0]
        for block in self.blocks:
            out = feed(cast(Block, block), out, inputs)
        return out


def feed(block: Block, x: Any, inputs: Sequence[Any]) -> Any:
    """Block `block` on `x` and the model inputs it reads besides (`inputs`: all of them,
    in the forward's order)."""
    names = block.inputs
    return block(x, *(inputs[names.index(name)] for name in block.extras))


@dataclass(frozen=True)
class SharedParameter:
    """A parameter that more than one block uses, and what the policy did about it."""

    names: tuple[str, ...]
    blocks: tuple[int, ...]
    policy: SharedPolicy


@dataclass
class Surgery:
    """The blocks of a split, and the parameters they shared."""

    blocks: list[Block]
    shared: list[SharedParameter]

    def chain(self) -> Chain:
        return Chain(self.blocks)


def split(
    traced: TracedModel, cuts: Sequence[CutPoint], shared_params: SharedPolicy = "error"
) -> Surgery:
    """Cut both graphs at `cuts` (in order) into blocks; apply the shared-parameter policy."""
    names = ["input", *(c.name for c in cuts), "output"]
    per_mode = {
        mode: _split_graph(
            traced.graph(mode), [c.node if mode == "train" else c.eval_node for c in cuts]
        )
        for mode in MODES
    }
    inputs = model_inputs(traced.graph("train").graph)
    for k in range(len(cuts) + 1):
        same_inputs([per_mode[m][k] for m in MODES], inputs)
    blocks = [
        Block(k, names[k], names[k + 1], traced.root, {m: per_mode[m][k] for m in MODES})
        for k in range(len(cuts) + 1)
    ]
    for block in blocks:
        block.inputs = inputs
    shared = _apply_policy(traced.root, blocks, shared_params)
    return Surgery(blocks, shared)


# ---------------------------------------------------------------- graph splitting


def model_inputs(graph: fx.Graph) -> tuple[str, ...]:
    """The forward's inputs by name, in order."""
    return tuple(str(n.target) for n in input_nodes(graph))


def extra_inputs(graph: fx.Graph) -> tuple[str, ...]:
    """The inputs of a block's graph after the first (the value it is given): the model's
    other inputs it reads, by name."""
    return model_inputs(graph)[1:]


def same_inputs(graphs: Sequence[fx.Graph], order: Sequence[str]) -> None:
    """Give the graphs of one block the same inputs (a mode may read an input the other does
    not), first the value the block is given, then the model's other inputs in `order`."""
    wanted = {name for g in graphs for name in extra_inputs(g)}
    for graph in graphs:
        given = next(iter(graph.nodes))
        held = {str(n.target): n for n in input_nodes(graph) if n is not given}
        anchor = given
        for name in [n for n in order if n in wanted]:
            node = held.get(name)
            if node is None:
                with graph.inserting_after(anchor):
                    node = graph.placeholder(name)
            else:
                anchor.append(node)
            anchor = node


def _split_graph(gm: fx.GraphModule, cut_nodes: Sequence[str]) -> list[fx.Graph]:
    nodes = list(gm.graph.nodes)
    position = {n.name: i for i, n in enumerate(nodes)}
    data = set(data_graph(gm.graph).nodes)
    bounds = [-1, *(position[c] for c in cut_nodes), len(nodes) - 1]
    live = _live(nodes)
    return [
        _block_graph(nodes, data, live, bounds[k], bounds[k + 1], last=k == len(cut_nodes))
        for k in range(len(cut_nodes) + 1)
    ]


def _block_graph(
    nodes: list[fx.Node], data: set[object], live: set[fx.Node], lo: int, hi: int, *, last: bool
) -> fx.Graph:
    """The nodes in (lo, hi]; block input is the value of node `lo` (or the placeholders).
    A dead node that reads a value from before the cut is dropped; a live one is an error."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    if lo >= 0:
        env[nodes[lo]] = graph.placeholder("x")
        env[nodes[lo]].meta = {**nodes[lo].meta, ORIGIN_KEY: nodes[lo].name}

    def lookup(arg: fx.Node) -> fx.Node:
        if arg not in env:
            if arg in data:
                raise _Crossing(arg)
            env[arg] = graph.node_copy(arg, lookup)  # parameter- or constant-only: recompute
        return env[arg]

    for node in nodes[lo + 1 : hi + 1]:
        if node.op == "placeholder" and lo >= 0:
            continue
        if node not in data and node.op != "output":
            continue  # copied on first use by `lookup`
        try:
            env[node] = graph.node_copy(node, lookup)
        except _Crossing as crossing:
            if node in live:
                raise SurgeryError(
                    f"`{crossing.node.name}` crosses the cut before `{node.name}`; "
                    "only legal cuts (see `splitter inspect`) can be split"
                ) from None
    if not last:
        graph.output(env[nodes[hi]])
    graph.lint()
    return graph


class _Crossing(Exception):
    def __init__(self, node: fx.Node) -> None:
        super().__init__(node.name)
        self.node = node


def _live(nodes: list[fx.Node]) -> set[fx.Node]:
    """Nodes the output depends on."""
    live: set[fx.Node] = set()
    stack = [nodes[-1]]
    while stack:
        node = stack.pop()
        if node not in live:
            live.add(node)
            stack.extend(node.all_input_nodes)
    return live


def _copy_attr(source: nn.Module, dest: nn.Module, target: str) -> None:
    """Make `dest.<target>` the same object as the model `source`'s at the `public` name,
    creating holder modules."""
    *path, name = target.split(".")
    *own_path, own = public(target).split(".")
    for part, own_part in zip(path, own_path, strict=True):
        source = getattr(source, own_part)
        if not hasattr(dest, part):
            dest.add_module(part, _Holder())
        dest = getattr(dest, part)
    value = getattr(source, own)
    if isinstance(value, nn.Module):
        dest.add_module(name, value)
    elif isinstance(value, nn.Parameter):
        dest.register_parameter(name, value)
    elif isinstance(value, torch.Tensor):
        persistent = own not in getattr(source, "_non_persistent_buffers_set", set())
        dest.register_buffer(name, value, persistent=persistent and own in source._buffers)
    else:
        setattr(dest, name, value)


# ---------------------------------------------------------------- shared parameters


def _apply_policy(
    root: nn.Module, blocks: list[Block], policy: SharedPolicy
) -> list[SharedParameter]:
    users: dict[int, list[int]] = {}
    for block in blocks:
        for p in block.parameters():
            users.setdefault(id(p), []).append(block.index)
    shared_ids = {pid: ks for pid, ks in users.items() if len(ks) > 1}
    if not shared_ids:
        return []
    names = _parameter_names(root)
    shared = [
        SharedParameter(tuple(names.get(pid, ["<unnamed>"])), tuple(ks), policy)
        for pid, ks in shared_ids.items()
    ]
    if policy == "error":
        raise SurgeryError(_shared_message(shared))
    if policy != "sync":
        for block in blocks:
            _unshare(
                block,
                {pid for pid, ks in shared_ids.items() if ks[0] != block.index},
                detach=policy == "owner",
            )
    return shared


def _parameter_names(root: nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for name, p in root.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


def _shared_message(shared: list[SharedParameter]) -> str:
    lines = [
        f"parameter `{' = '.join(s.names)}` is used by blocks {', '.join(map(str, s.blocks))}"
        for s in shared
    ]
    return (
        "; ".join(lines)
        + "; move the cuts so one block uses it, or set `partition.shared_params` to "
        "`replicate` (independent copies), `owner` (the first block trains it, later blocks "
        "see it detached) or `sync` (gradients summed; needs `training.optimizer_scope: global`)"
    )


def _unshare(block: Block, foreign: set[int], *, detach: bool) -> None:
    """Give `block` its own copy of every module holding a parameter an earlier block owns;
    with `detach`, the copy reads the owner's values without a gradient."""
    if not foreign:
        return
    for path, module in list(block.named_modules(remove_duplicate=False)):
        if not any(p is not None and id(p) in foreign for p in module._parameters.values()):
            continue
        target = module if isinstance(module, (Block, _Holder)) else _shallow_clone(module)
        for name, p in list(module._parameters.items()):
            if p is None or id(p) not in foreign:
                continue
            del target._parameters[name]
            if detach:
                target.register_buffer(name, p.detach(), persistent=False)
            else:
                target.register_parameter(name, nn.Parameter(p.detach().clone()))
        if target is not module:
            _replace(block, path, target)
    block.recompile()


def _shallow_clone(module: nn.Module) -> nn.Module:
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    return clone


def _replace(block: nn.Module, path: str, module: nn.Module) -> None:
    """Put `module` at `path`, cloning the user's modules on the way so others are untouched."""
    *parents, name = path.split(".")
    holder = block
    for part in parents:
        child = holder._modules[part]
        assert child is not None
        if not isinstance(child, _Holder):
            child = _shallow_clone(child)
            holder._modules[part] = child
        holder = child
    holder._modules[name] = module


def span_graph(gm: fx.GraphModule, start: str | None, end: str | None) -> fx.Graph:
    """The nodes after node `start` up to node `end` (None: from the input, to the output) as
    a graph whose input is the value of `start`: a unit of a block, for auxiliaries to copy."""
    nodes = list(gm.graph.nodes)
    position = {n.name: i for i, n in enumerate(nodes)}
    lo = position[start] if start else -1
    hi = position[end] if end else len(nodes) - 1
    return _block_graph(
        nodes, set(data_graph(gm.graph).nodes), _live(nodes), lo, hi, last=end is None
    )
