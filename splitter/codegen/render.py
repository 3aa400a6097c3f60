"""A method's Python source from an fx graph, written as a model's author writes it.

One statement per node, with three liberties that keep the code readable and its memory the
same as fx's own code: attribute reads (`self.cls_token`) are written where they are used; a
value takes the name of an argument that dies with it (`x = self.conv1(x)`), which frees the
old value exactly where fx's `x = None` would; other values that die are deleted on the line
after their last use. Calls read as written (`F.relu`, `x + y`, `x[:, 0]`, `x.shape`), and
submodules are reached by attribute or index (`self.layer1[0].conv1`).
"""

from __future__ import annotations

import keyword
import operator
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch.fx as fx
from torch import nn

from splitter.codegen.callables import GLOBALS, Imports

_BINARY = {
    operator.add: "+", operator.sub: "-", operator.mul: "*", operator.truediv: "/",
    operator.floordiv: "//", operator.mod: "%", operator.pow: "**", operator.matmul: "@",
    operator.and_: "&", operator.or_: "|", operator.xor: "^", operator.lshift: "<<",
    operator.rshift: ">>", operator.eq: "==", operator.ne: "!=", operator.lt: "<",
    operator.le: "<=", operator.gt: ">", operator.ge: ">=", operator.is_: "is",
    operator.is_not: "is not",
}  # fmt: skip
_UNARY = {operator.neg: "-", operator.pos: "+", operator.invert: "~", operator.not_: "not "}
_INPLACE = {
    operator.iadd: "+=", operator.isub: "-=", operator.imul: "*=", operator.itruediv: "/=",
    operator.ifloordiv: "//=", operator.imod: "%=", operator.ipow: "**=",
    operator.imatmul: "@=", operator.iand: "&=", operator.ior: "|=", operator.ixor: "^=",
}  # fmt: skip

Shapes = Callable[[fx.Node], str | None]
"""The shape comment of a node's value (None: none)."""


class Access:
    """How emitted code reaches the model's attributes from `self`: by attribute, by index
    into containers (`self.layer1[0]`), by key into dicts; `self` and the holders that
    `adopt` makes are `Part`s, which take an index too."""

    def __init__(self, model: nn.Module, owned: tuple[str, ...]) -> None:
        self.model, self.owned = model, owned

    def path(self, target: str) -> str:
        text, prefix = "self", ""
        for part in target.split("."):
            text += self._step(prefix, part)
            prefix = f"{prefix}.{part}" if prefix else part
        return text

    def _step(self, prefix: str, part: str) -> str:
        held = not prefix or any(o.startswith(prefix + ".") for o in self.owned)
        parent = None if held else self.model.get_submodule(prefix)
        if part.isidentifier() and not keyword.iskeyword(part):
            return f".{part}"
        if part.isdigit():
            if parent is None:
                return f"[{part}]"
            indexed = isinstance(parent, (nn.Sequential, nn.ModuleList, nn.ParameterList))
            if indexed and list(parent._modules or parent._parameters).index(part) == int(part):
                return f"[{part}]"
        if parent is None or isinstance(parent, (nn.ModuleDict, nn.ParameterDict)):
            return f'["{part}"]'
        return f'.__getattr__("{part}")'


def method(
    graph: fx.Graph,
    name: str,
    access: Access,
    imports: Imports,
    shapes: Shapes,
) -> str:
    """The source of `def name(self, ...)` running `graph`; values with a shape are noted
    with it and typed `torch.Tensor` in the signature."""
    writer = _Writer(graph, access, imports, shapes)
    head = f"def {name}({', '.join(['self', *writer.parameters()])}){writer.returns()}:"
    body = [f"    {line}" for line in writer.lines()]
    return "\n".join([head, *body]) + "\n"


class _Writer:
    def __init__(self, graph: fx.Graph, access: Access, imports: Imports, shapes: Shapes) -> None:
        self.nodes = list(graph.nodes)
        self.access, self.imports, self.shapes = access, imports, shapes
        self.heads = {
            n: imports.function(n.target)
            for n in self.nodes
            if n.op == "call_function" and not _special(n.target)
        }
        taken = set(GLOBALS) | {h.split(".")[0].split("(")[0] for h in self.heads.values()}
        self.sizes = _sizes(self.nodes)
        self.skipped = {n for n in self.sizes if not n.users}  # nothing uses them
        self.position = {n: i for i, n in enumerate(self.nodes)}
        self.last = {  # where each value is used last
            n: max(self.position[u] for u in users)
            for n in self.nodes
            if (users := [u for u in n.users if u not in self.skipped])
        }
        self.names = _names(self.nodes, taken, self.sizes, self.last)

    def parameters(self) -> list[str]:
        found = []
        for node in self.nodes:
            if node.op == "placeholder":
                kind = ": torch.Tensor" if self.shapes(node) and not node.args else ""
                default = f" = {self.value(node.args[0])}" if node.args else ""
                found.append(f"{self.names[node]}{kind}{default}")
        return found

    def returns(self) -> str:
        output = self.nodes[-1].args[0] if self.nodes[-1].op == "output" else None
        if isinstance(output, fx.Node) and self.shapes(output):
            return " -> torch.Tensor"
        if isinstance(output, (tuple, list)) and all(
            isinstance(o, fx.Node) and self.shapes(o) for o in output
        ):
            return f" -> tuple[{', '.join(['torch.Tensor'] * len(output))}]"
        return ""

    def lines(self) -> Iterator[str]:
        position, last = self.position, self.last
        for node in self.nodes:
            if node.op == "output":
                yield f"return {self.value(node.args[0])}"
            elif node.op not in ("placeholder", "get_attr") and node not in self.skipped:
                yield from self.statement(node, self.shapes(node))
                dying = [
                    self.names[a]
                    for a in dict.fromkeys(node.all_input_nodes)
                    if a.op != "get_attr" and a not in self.sizes and last.get(a) == position[node]
                ]
                freed = [d for d in dying if d != self.names.get(node)]
                if freed:
                    yield f"del {', '.join(dict.fromkeys(freed))}"

    def statement(self, node: fx.Node, shape: str | None) -> Iterator[str]:
        comment = f"  # {shape}" if shape else ""
        name = self.names.get(node)
        inplace = _INPLACE.get(node.target) if node.op == "call_function" else None  # type: ignore[arg-type]
        left = node.args[0] if inplace else None
        if inplace and isinstance(left, fx.Node) and left.op != "get_attr":
            yield f"{self.names[left]} {inplace} {self.value(node.args[1])}"
            if name is not None and name != self.names[left]:
                yield f"{name} = {self.names[left]}{comment}"
            return
        expression = self.expression(node)
        yield f"{name} = {expression}{comment}" if name is not None else expression

    def expression(self, node: fx.Node) -> str:
        args, kwargs = node.args, node.kwargs
        if node.op == "call_module":
            return f"{self.access.path(str(node.target))}({self.arguments(args, kwargs)})"
        if node.op == "call_method":
            return f"{self.value(args[0])}.{node.target}({self.arguments(args[1:], kwargs)})"
        target = node.target
        symbol = _BINARY.get(target) or _UNARY.get(target)  # type: ignore[arg-type]
        if symbol in _BINARY.values() and len(args) == 2 and not kwargs:
            return f"{self.operand(args[0])} {symbol} {self.operand(args[1])}"
        if symbol in _UNARY.values() and len(args) == 1 and not kwargs:
            return f"{symbol}{self.operand(args[0])}"
        if target is operator.getitem and len(args) == 2 and not kwargs:
            return f"{self.value(args[0])}[{self.index(args[1])}]"
        if target is getattr and len(args) == 2 and _attribute(args[1]):
            return f"{self.value(args[0])}.{args[1]}"
        head = self.heads.get(node) or self.imports.function(target)
        return f"{head}({self.arguments(args, kwargs)})"

    def arguments(self, args: Any, kwargs: Mapping[str, Any]) -> str:
        items = [self.value(a) for a in args]
        items += [f"{k}={self.value(v)}" for k, v in kwargs.items()]
        return ", ".join(items)

    def value(self, a: Any) -> str:
        if isinstance(a, fx.Node):
            return self.access.path(str(a.target)) if a.op == "get_attr" else self.names[a]
        if isinstance(a, tuple):
            inner = ", ".join(self.value(v) for v in a)
            return f"({inner},)" if len(a) == 1 else f"({inner})"
        if isinstance(a, list):
            return f"[{', '.join(self.value(v) for v in a)}]"
        if isinstance(a, dict):
            return "{" + ", ".join(f"{self.value(k)}: {self.value(v)}" for k, v in a.items()) + "}"
        if isinstance(a, slice):
            return f"slice({self.value(a.start)}, {self.value(a.stop)}, {self.value(a.step)})"
        return self.imports.literal(a)

    def operand(self, a: Any) -> str:
        text = self.value(a)
        return f"({text})" if text.startswith("-") else text

    def index(self, a: Any) -> str:
        if isinstance(a, tuple) and a:
            return ", ".join(self._index_item(v) for v in a) + ("," if len(a) == 1 else "")
        return self._index_item(a)

    def _index_item(self, a: Any) -> str:
        if not isinstance(a, slice):
            return self.value(a)
        parts = ["" if v is None else self.value(v) for v in (a.start, a.stop)]
        text = ":".join(parts)
        return f"{text}:{self.value(a.step)}" if a.step is not None else text


def _special(target: object) -> bool:
    """Targets written as operators, subscripts or attribute reads rather than calls."""
    try:
        return target in _BINARY or target in _UNARY or target in _INPLACE or target in (
            operator.getitem, getattr
        )  # fmt: skip
    except TypeError:  # unhashable
        return False


def _attribute(name: object) -> bool:
    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)


_SIZE_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"})
_SIZE_METHODS = frozenset({"size", "dim", "numel", "stride", "nelement", "element_size"})


def _sizes(nodes: list[fx.Node]) -> set[fx.Node]:
    """Values that hold no tensor: sizes, dtypes and arithmetic or comparisons on them
    (`x.shape[0] // 16`). They are never freed (they hold no memory), never take a tensor's
    name, and are not written where nothing uses them."""
    found: set[fx.Node] = set()
    for node in nodes:
        target, inputs = node.target, node.all_input_nodes
        function = node.op == "call_function"
        size = (function and target is getattr and node.args[1] in _SIZE_ATTRIBUTES) or (
            node.op == "call_method" and target in _SIZE_METHODS
        )
        derived = function and _special(target) and inputs and all(a in found for a in inputs)
        if size or derived:
            found.add(node)
    return found


def _names(
    nodes: list[fx.Node], taken: set[str], sizes: set[fx.Node], last: dict[fx.Node, int]
) -> dict[fx.Node, str]:
    """A variable per value. A tensor takes over a tensor argument that dies with it,
    preferring the block's input (`x = self.conv1(x)`); a chain of such values that does not
    start at an input is called `h`; a value on its own keeps its node's name (`shape` for
    `x.shape`)."""
    position = {n: i for i, n in enumerate(nodes)}
    head: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        if node.op in ("output", "get_attr") or (node.op != "placeholder" and not node.users):
            continue
        dying = [
            a
            for a in node.all_input_nodes
            if a.op != "get_attr" and last.get(a) == position[node] and a in head
        ]
        if node in sizes or any(a in sizes for a in dying):
            dying = [a for a in dying if a not in sizes] if node not in sizes else []
        if node.op == "placeholder" or not dying:
            head[node] = node
            continue
        inputs = [a for a in dying if head[a].op == "placeholder"]
        head[node] = head[(inputs or dying)[0]]
    length: dict[fx.Node, int] = {}
    for first in head.values():
        length[first] = length.get(first, 0) + 1
    used = set(taken)
    chosen: dict[fx.Node, str] = {}
    for first in dict.fromkeys(head.values()):
        base = str(first.target) if first.op == "placeholder" else first.name  # `input`
        if first.op == "call_function" and first.target is getattr and _attribute(first.args[1]):
            base = str(first.args[1])
        if first.op != "placeholder" and length[first] > 1:
            base = "h"
        name, i = base, 0
        while name in used or keyword.iskeyword(name):
            i += 1
            name = f"{base}_{i}"
        used.add(name)
        chosen[first] = name
    return {node: chosen[first] for node, first in head.items()}
