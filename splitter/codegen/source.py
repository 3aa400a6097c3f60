"""Python source of emitted modules from their fx graphs: one statement per node, shapes noted."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.fx as fx
from torch import nn
from torch.fx.graph import _custom_builtins

from splitter.errors import CodegenError
from splitter.frontend.trace import graph_targets

_STATEMENT = re.compile(r"^(\s*)(\w+) = (.*)$")
_FIRST_LINE = re.compile(r"^def forward\((.*)\):$")


@dataclass(frozen=True)
class ModuleSource:
    """One emitted class: its name, docstring, the model attributes it owns, and its methods."""

    name: str
    doc: str
    owned: tuple[str, ...]
    methods: str
    constants: tuple[str, ...] = ()
    """`__init__` lines that rebuild tensor constants fx recorded while tracing."""


@dataclass
class Imports:
    """The import lines the emitted code needs, and where the user's own modules now live."""

    renamed: Mapping[str, str]  # module name at compile time -> name in the package
    lines: set[str]

    def need(self, name: str, obj: object) -> None:
        """Import `obj` under `name`, as the generated code calls it."""
        builtin = _custom_builtins.get(name)
        if getattr(obj, "__module__", None) == "builtins" and name == obj.__qualname__:  # type: ignore[attr-defined]
            return  # getattr, len: always there
        if builtin is not None:
            self.lines.add(builtin.import_str)
        elif isinstance(obj, ModuleType):
            module = self.renamed.get(obj.__name__, obj.__name__)
            self.lines.add(f"import {module}" + ("" if module == name else f" as {name}"))
        else:
            self.lines.add(self._from(name, obj))

    def _from(self, name: str, obj: object) -> str:
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if not module or not qualname or "<" in qualname or "." in qualname:
            raise CodegenError(
                f"the traced graph calls `{name}` ({obj!r}), which the emitted code cannot "
                "import; make it a module-level function, or a `--leaf` module"
            )
        module = self.renamed.get(module, module)
        suffix = "" if qualname == name else f" as {name}"
        return f"from {module} import {qualname}{suffix}"


def module_source(
    name: str,
    doc: str,
    graphs: Mapping[str, fx.Graph],
    model: nn.Module,
    imports: Imports,
    batch: int,
) -> ModuleSource:
    """An emitted class running `graphs` ("train" and, when it differs, "eval"), built from
    the model in its `__init__`."""
    codes = {mode: _method(graph, imports, batch) for mode, graph in graphs.items()}
    found = [t for graph in graphs.values() for t in graph_targets(graph)]
    targets = [t for t in found if not _is_constant(model, t)]
    constants = tuple(_constant(model, t) for t in dict.fromkeys(found) if _is_constant(model, t))
    train = codes["train"]
    if _plain(codes.get("eval", train)) == _plain(train):
        methods = _rename(train, "forward")
    else:
        params = _FIRST_LINE.match(train.splitlines()[0])
        args = params.group(1).removeprefix("self").strip(", ") if params else "x"
        call = ", ".join(a.split("=")[0].strip() for a in args.split(",") if a.strip())
        dispatch = (
            f"def forward(self, {args}):\n"
            f"    if self.training:\n        return self.forward_train({call})\n"
            f"    return self.forward_eval({call})\n"
        )
        methods = "\n".join(
            [dispatch, _rename(train, "forward_train"), _rename(codes["eval"], "forward_eval")]
        )
    return ModuleSource(name, doc, owned(model, targets), methods, constants)


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


def _plain(code: str) -> str:
    return re.sub(r"  # .*$", "", code, flags=re.MULTILINE)


def _rename(code: str, method: str) -> str:
    return re.sub(r"^def forward\(", f"def {method}(", code, count=1)


def _method(graph: fx.Graph, imports: Imports, batch: int) -> str:
    """The forward of `graph`: fx's code with each node's shape as a comment and the freeing
    of dead values on a line of its own."""
    for node in graph.nodes:
        node.type = None  # annotations in the user's file may be strings fx cannot import
    python = graph.python_code(root_module="self")
    lines = python.src.strip("\n").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("def forward("))
    body = "\n".join(lines[start:])
    for global_name, obj in python.globals.items():
        if re.search(rf"\b{re.escape(global_name)}\b", body):
            imports.need(global_name, obj)
    shapes = {n.name: _shape(n, batch) for n in graph.nodes}
    return "\n".join(_annotated(line, shapes) for line in lines[start:] if line.strip()) + "\n"


def _annotated(line: str, shapes: Mapping[str, str | None]) -> str:
    statement, _, deletes = line.partition(";  ")
    match = _STATEMENT.match(statement)
    shape = shapes.get(match.group(2)) if match else None
    out = f"{statement}  # {shape}" if shape else statement
    if deletes:
        indent = match.group(1) if match else "    "
        out += f"\n{indent}{deletes}"
    return out


def _shape(node: fx.Node, batch: int) -> str | None:
    cost = node.meta.get("splitter")
    shape = getattr(cost, "shape", None) if cost is not None else None
    if shape is None:
        return None
    dims = ["B" if i == 0 and d == batch else str(d) for i, d in enumerate(shape)]
    return f"({', '.join(dims)})" if dims else "scalar"


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
