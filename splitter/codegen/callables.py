"""What emitted code calls, by the name a model's author writes, and the imports it needs."""

from __future__ import annotations

import builtins
import enum
import functools
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from splitter.errors import CodegenError

FUNCTIONAL_IMPORT = "import torch.nn.functional as F"
GLOBALS = frozenset({"self", "torch", "nn", "F", "math", "operator"})
"""Names the emitted code may use at module level: no variable takes them."""


@dataclass
class Imports:
    """The import lines the emitted code needs, and where the user's own modules now live."""

    renamed: Mapping[str, str]  # module name at compile time -> name in the package
    lines: set[str]

    def function(self, obj: object) -> str:
        """The expression that names the callable `obj`: its public alias (`F.relu`,
        `torch.cat`, `math.sqrt`), a builtin, or the name it is imported under."""
        if getattr(obj, "__module__", None) == "builtins":
            name = getattr(obj, "__name__", "")
            if getattr(builtins, name, None) is obj:
                return name
        public = _public().get(id(obj))
        if public is not None:
            if public.startswith("F."):
                self.lines.add(FUNCTIONAL_IMPORT)
            elif public.split(".")[0] in ("math", "operator"):
                self.lines.add(f"import {public.split('.')[0]}")
            return public
        if isinstance(obj, (torch._ops.OpOverloadPacket, torch._ops.OpOverload)):
            return str(_op_name(obj))
        internal = _torch_path(obj)
        if internal is not None:
            return internal
        return self._imported(obj)

    def literal(self, value: object) -> str:
        """Python source for a constant argument of a graph node."""
        if value is None or isinstance(value, (bool, int, str, complex)):
            return repr(value)
        if isinstance(value, float):
            if math.isinf(value) or math.isnan(value):
                self.lines.add("import math")
                name = "math.inf" if math.isinf(value) else "math.nan"
                return f"-{name}" if value < 0 else name
            return repr(value)
        if value is Ellipsis:
            return "..."
        if isinstance(value, (torch.dtype, torch.memory_format, torch.layout)):
            return str(value)
        if isinstance(value, torch.device):
            return f'torch.device("{value}")'
        if isinstance(value, enum.Enum):
            return f"{self.function(type(value))}.{value.name}"
        if isinstance(value, type):
            return self.function(value)
        raise CodegenError(
            f"the traced graph passes {value!r} ({type(value).__name__}), which the emitted "
            "code cannot write; make the module that uses it a leaf (`--leaf`)"
        )

    def _imported(self, obj: object) -> str:
        module = str(getattr(obj, "__module__", None) or "")
        qualname = str(getattr(obj, "__qualname__", None) or "")
        if not module or not qualname or "<" in qualname or "." in qualname:
            raise CodegenError(
                f"the traced graph calls {obj!r}, which the emitted code cannot import; make "
                "it a module-level function, or a `--leaf` module"
            )
        self.lines.add(f"from {self.renamed.get(module, module)} import {qualname}")
        return qualname


@functools.cache
def _public() -> dict[int, str]:
    """id -> public name of every function in torch.nn.functional (first, so that
    `torch._C._nn.scaled_dot_product_attention` reads `F.scaled_dot_product_attention`),
    torch, math and operator."""
    table: dict[int, str] = {}
    for prefix, module in (("F", F), ("torch", torch), ("math", math), ("operator", operator)):
        for name in sorted(dir(module)):
            obj = getattr(module, name, None)
            if name.startswith("_") or isinstance(obj, (type, ModuleType)) or not callable(obj):
                continue
            table.setdefault(id(obj), f"{prefix}.{name}")
    return table


def _op_name(op: Any) -> str:
    namespace, _, name = op._schema.name.partition("::")
    overload = getattr(op, "_overloadname", None)
    suffix = f".{overload}" if isinstance(op, torch._ops.OpOverload) and overload else ""
    return f"torch.ops.{namespace}.{name}{suffix}"


def _torch_path(obj: object) -> str | None:
    """`torch.a.b.name` for a callable of torch's own modules reachable by attributes."""
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__name__", None)
    if module.split(".")[0] != "torch" or not name:
        return None
    holder: Any = torch
    for part in module.split(".")[1:]:
        holder = getattr(holder, part, None)
    if holder is None or getattr(holder, name, None) is not obj:
        return None
    return f"{module}.{name}"
