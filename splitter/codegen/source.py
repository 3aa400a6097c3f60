"""Python source of emitted modules from their fx graphs, reading like the model's own code."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils.stateless import _reparametrize_module

from splitter.codegen.callables import Imports
from splitter.codegen.folding import folded
from splitter.codegen.render import Access, method
from splitter.errors import CodegenError
from splitter.frontend.inputs import InputSpec
from splitter.frontend.rewrite import graph_targets
from splitter.transform.surgery import ORIGIN_KEY

__all__ = ["Imports", "ModuleSource", "ShapeText", "batch_shapes", "module_source", "owned"]


@dataclass(frozen=True)
class ModuleSource:
    """One emitted class: its name, docstring, the model attributes it owns, and its methods."""

    name: str
    doc: str
    owned: tuple[str, ...]
    methods: str
    constants: tuple[str, ...] = ()
    """`__init__` lines that rebuild tensor constants fx recorded while tracing."""


@dataclass(frozen=True)
class ShapeText:
    """Shape comments: `batch` is the traced batch size; `other` the shape of each node at
    another batch size (by mode and node name), which shows where the batch axis went."""

    batch: int
    other: Mapping[str, Mapping[str, tuple[int, ...]]] = field(default_factory=dict)
    train: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """Shapes by node name in the train graph, for eval graphs (which are not annotated)."""

    def of(self, node: fx.Node, mode: str) -> str | None:
        name = str(node.meta.get(ORIGIN_KEY, node.name))
        shape = getattr(node.meta.get("splitter"), "shape", None) or self.train.get(name)
        if shape is None:
            return None
        other = self.other.get(mode, {}).get(name)
        if other is None or len(other) != len(shape):
            dims = ["B" if i == 0 and d == self.batch else str(d) for i, d in enumerate(shape)]
        else:
            dims = [self._dim(d, e) for d, e in zip(shape, other, strict=True)]
        return f"({', '.join(dims)})" if dims else "scalar"

    def _dim(self, size: int, other: int) -> str:
        if size == other or size % self.batch:
            return str(size)
        per = size // self.batch
        if other != per * (self.batch + 1):
            return str(size)
        return "B" if per == 1 else f"B*{per}"


def batch_shapes(
    gm: fx.GraphModule, inputs: Sequence[InputSpec], batch: int
) -> dict[str, tuple[int, ...]]:
    """Every tensor node's shape at batch size `batch + 1`, on fake tensors ({} when the
    graph cannot run on them)."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    state = {**dict(gm.named_parameters()), **dict(gm.named_buffers())}
    fake: dict[str, torch.Tensor] = {name: mode.from_tensor(t) for name, t in state.items()}
    shapes: dict[str, tuple[int, ...]] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                shapes[n.name] = tuple(int(d) for d in out.shape)
            return out

    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with mode, _reparametrize_module(gm, fake), torch.no_grad():
            Recorder(gm).run(*(torch.empty((batch + 1, *i.shape), dtype=i.dtype) for i in inputs))
    except Exception:
        return {}
    finally:
        logger.setLevel(level)
    return shapes


def module_source(
    name: str,
    doc: str,
    graphs: Mapping[str, fx.Graph],
    model: nn.Module,
    imports: Imports,
    shapes: ShapeText,
) -> ModuleSource:
    """An emitted class running `graphs` ("train" and, when it differs, "eval"), built from
    the model in its `__init__`: submodules called whole where a block holds their whole
    call, one `forward` where both modes read the same."""
    graphs = {mode: folded(graph, model) for mode, graph in graphs.items()}
    found = [t for graph in graphs.values() for t in graph_targets(graph)]
    targets = [t for t in found if not _is_constant(model, t)]
    constants = tuple(_constant(model, t) for t in dict.fromkeys(found) if _is_constant(model, t))
    holds = owned(model, targets)
    access = Access(model, holds)

    def code(mode: str, method_name: str, noted: bool = True) -> str:
        def comment(node: fx.Node) -> str | None:
            return shapes.of(node, mode) if noted else None

        return method(graphs[mode], method_name, access, imports, comment)

    same = "eval" not in graphs or code("train", "f", False) == code("eval", "f", False)
    if same:
        methods = code("train", "forward")
    else:
        train = code("train", "forward_train")
        head = train.splitlines()[0].replace("def forward_train(", "def forward(", 1)
        params = [p.split(":")[0].split("=")[0].strip() for p in _parameters(head)[1:]]
        call = ", ".join(params)
        dispatch = (
            f"{head}\n"
            f"    if self.training:\n        return self.forward_train({call})\n"
            f"    return self.forward_eval({call})\n"
        )
        methods = "\n".join([dispatch, train, code("eval", "forward_eval")])
    return ModuleSource(name, doc, holds, methods, constants)


def _parameters(head: str) -> list[str]:
    inside = head[head.index("(") + 1 : head.rindex(")")]
    return [p.strip() for p in inside.split(", ") if p.strip()]


def _is_constant(model: nn.Module, target: str) -> bool:
    """A tensor fx stored on the model while tracing (`_tensor_constant0`): neither a
    parameter nor a registered buffer, so a freshly built model lacks it."""
    *path, leaf = target.split(".")
    holder = model.get_submodule(".".join(path))
    value = getattr(holder, leaf, None)
    registered = leaf in holder._parameters or leaf in holder._buffers
    return isinstance(value, torch.Tensor) and not registered


def _constant(model: nn.Module, target: str) -> str:
    """The `__init__` line that rebuilds a tensor constant: a view of the model's buffer or
    parameter that holds its values, else a literal when small."""
    tensor = getattr(model, target, None)
    if "." in target or not isinstance(tensor, torch.Tensor):
        raise CodegenError(f"the traced graph reads `{target}`, which the package cannot rebuild")
    buffers = dict(model.named_buffers())
    held = {**dict(model.named_parameters()), **buffers}
    for name, value in held.items():
        if value.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr():
            get = (
                f'get_buffer("{name}")' if name in buffers else f'get_parameter("{name}").detach()'
            )
            view = f"{tuple(tensor.shape)}, {tensor.stride()}, {tensor.storage_offset()}"
            return _register(target, f"model.{get}.as_strided({view})")
    if tensor.numel() <= 64:
        return _register(target, f"torch.tensor({tensor.tolist()}, dtype={tensor.dtype})")
    raise CodegenError(
        f"the traced graph holds a {tuple(tensor.shape)} {tensor.dtype} tensor `{target}` "
        "computed while tracing, which the package cannot rebuild; make the module computing "
        "it a leaf (`--leaf` or `trace.leaf_modules`)"
    )


def _register(name: str, expression: str) -> str:
    return f'self.register_buffer("{name}", {expression}, persistent=False)'


def owned(model: nn.Module, targets: Iterable[str]) -> tuple[str, ...]:
    """The fewest model attributes covering `targets`: a module whose every parameter and
    buffer is (inside) a target is owned whole (`layer1.0`, not its 12 layers)."""
    wanted = set(targets)
    covered: dict[str, bool] = {}
    chosen: list[str] = []
    for target in sorted(wanted):
        parts = target.split(".")
        prefixes = (".".join(parts[:i]) for i in range(1, len(parts)))
        top = next((p for p in prefixes if _covered(model, p, wanted, covered)), target)
        if top not in chosen:
            chosen.append(top)
    return tuple(c for c in chosen if not any(c.startswith(o + ".") for o in chosen))


def _covered(model: nn.Module, prefix: str, targets: set[str], memo: dict[str, bool]) -> bool:
    """Whether every parameter and buffer of the module at `prefix` is (inside) a target."""
    if prefix not in memo:
        module = model.get_submodule(prefix)
        names = (
            f"{prefix}.{name}" for name, _ in (*module.named_parameters(), *module.named_buffers())
        )
        memo[prefix] = all(_inside(name, targets) for name in names)
    return memo[prefix]


def _inside(path: str, targets: set[str]) -> bool:
    parts = path.split(".")
    return any(".".join(parts[:i]) in targets for i in range(1, len(parts) + 1))
