"""The model's outputs: which one drives the task loss, and which others train at what weight."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from schemas.spec import SplitSpec

DEFAULT_WEIGHT = 0.4
"""Another output's weight in the task loss when the spec gives none (torchvision's inception
recipe weighs its auxiliary logits so)."""


@dataclass(frozen=True)
class OtherOutput:
    """An output besides the one the task loss uses, with parameters only it reaches."""

    key: int | str
    weight: float
    params: tuple[str, ...]


def returned(graph: fx.Graph) -> list[tuple[int | str, object]]:
    """What the traced forward returns, element by element with its key (a dict's keys, a
    namedtuple's fields, a tuple's indices); one element for a single value."""
    value = list(graph.nodes)[-1].args[0]
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return list(zip(value._fields, value, strict=True))
    if isinstance(value, (tuple, list)):
        return list(enumerate(value))
    return [(0, value)]


def other_outputs(gm: fx.GraphModule, spec: SplitSpec) -> list[OtherOutput]:
    """Every output but `model.output` whose value depends on parameters the selected output
    does not reach, with its weight (`task.aux_outputs`, default 0.4)."""
    elements = returned(gm.graph)
    if len(elements) < 2:
        return []
    chosen = spec.model.output
    main_key = elements[0][0] if chosen is None else chosen
    main = dict(elements).get(main_key)
    used = _params(gm, main) if isinstance(main, fx.Node) else set()
    weights = spec.task.aux_outputs or {}
    found = []
    for key, value in elements:
        if key == main_key or not isinstance(value, fx.Node):
            continue
        own = _params(gm, value) - used
        if own:
            weight = float(weights.get(key, weights.get(str(key), DEFAULT_WEIGHT)))
            found.append(OtherOutput(key, weight, tuple(sorted(own))))
    return found


def _params(gm: fx.GraphModule, node: fx.Node) -> set[str]:
    """The parameter names the value of `node` is computed from."""
    found: set[str] = set()
    for ancestor in _ancestors(node):
        target = str(ancestor.target)
        if ancestor.op == "call_module":
            module = gm.get_submodule(target)
            found |= {f"{target}.{n}" for n, p in module.named_parameters() if p.requires_grad}
        elif ancestor.op == "get_attr" and isinstance(_attr(gm, target), nn.Parameter):
            found.add(target)
    return found


def _attr(gm: fx.GraphModule, target: str) -> object:
    *path, leaf = target.split(".")
    return getattr(gm.get_submodule(".".join(path)), leaf, None)


def _ancestors(node: fx.Node) -> Iterator[fx.Node]:
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        yield current
        stack.extend(current.all_input_nodes)


def unknown_keys(gm: fx.GraphModule, spec: SplitSpec) -> list[str]:
    """Keys of `task.aux_outputs` the model does not return."""
    keys = {k for k, _ in returned(gm.graph)} | {str(k) for k, _ in returned(gm.graph)}
    return [str(k) for k in spec.task.aux_outputs or {} if k not in keys]


def without(out: Any, keys: frozenset[int | str]) -> Any:
    """The model's output without the elements at `keys`."""
    if not keys or isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return {k: v for k, v in out.items() if k not in keys}
    fields = getattr(out, "_fields", None) or range(len(out))
    return [
        v
        for k, i, v in zip(fields, range(len(out)), out, strict=True)
        if k not in keys and i not in keys
    ]
