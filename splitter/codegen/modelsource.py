"""The model's source for an emitted package: the user's file with its sibling modules, or an
import of the torchvision or timm model."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

from splitter import runtime
from splitter.errors import ModelCopyError
from splitter.frontend.modelref import import_model_file, split_file_ref, torchvision_defaults

RESERVED = ("blocks", "model", *runtime.MODULES)
"""Module names the package uses for its own files (generated, and the runtime's)."""


@dataclass
class ModelSource:
    """The files that rebuild the model in the package, and how to call them."""

    files: dict[str, str]
    """Package-relative path -> text (`model.py` and any copied sibling modules)."""
    builder: str
    """The callable in `model.py` that builds the model."""
    renamed: dict[str, str] = field(default_factory=dict)
    """Module name at compile time -> its name in the package."""
    copied: bool = False
    """Whether model.py is a copy of the user's file (not generated)."""


_TORCHVISION = '''"""The model: torchvision's `{name}`, randomly initialised."""

from torch import nn
from torchvision.models import get_model


def build_model(**kwargs: object) -> nn.Module:
    return get_model("{name}", **{{{defaults}**kwargs}})
'''

_TIMM = '''"""The model: timm's `{name}`, randomly initialised."""

import timm
from torch import nn


def build_model(**kwargs: object) -> nn.Module:
    return timm.create_model("{name}", pretrained=False, **kwargs)
'''


def model_source(ref: str) -> ModelSource:
    """How the package rebuilds the model `ref` names (a file, `torchvision:` or `timm:`)."""
    if ref.startswith("torchvision:"):
        name = ref.removeprefix("torchvision:")
        defaults = "".join(f'"{k}": None, ' for k in torchvision_defaults(name))
        return ModelSource(
            {"model.py": _TORCHVISION.format(name=name, defaults=defaults)}, "build_model"
        )
    if ref.startswith("timm:"):
        return ModelSource(
            {"model.py": _TIMM.format(name=ref.removeprefix("timm:"))}, "build_model"
        )
    path_text, builder = split_file_ref(ref)
    path = Path(path_text).resolve()
    files = {"model.py": path.read_text(encoding="utf-8")}
    for sibling in _siblings(path, set()):
        files.update(_copy_module(sibling, path.parent))
    renamed = {import_model_file(path).__name__: "model"}
    return ModelSource(files, builder, renamed, copied=True)


def _siblings(path: Path, seen: set[Path]) -> list[Path]:
    """The modules beside `path` that it imports, and theirs, recursively."""
    found: list[Path] = []
    for name, line in _imports(path):
        sibling = _beside(path.parent, name)
        if sibling is None:
            _check_installed(path, name, line)
        elif sibling not in seen:
            if name in RESERVED:
                raise ModelCopyError(
                    f"`{path.name}` imports its sibling module `{name}` (line {line}), but the "
                    f"package has its own `{name}.py`; rename the sibling (e.g. `{name}_lib.py`)"
                )
            seen.add(sibling)
            found.append(sibling)
            module = sibling / "__init__.py" if sibling.is_dir() else sibling
            found += _siblings(module, seen)
    return found


def _imports(path: Path) -> list[tuple[str, int]]:
    """Top-level names of the modules `path` imports, with the line of each import."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise ModelCopyError(
                    f"`{path}` line {node.lineno} imports relatively (`from "
                    f"{'.' * node.level}{node.module or ''} import ...`); the package copies "
                    "the model file and its sibling modules, so write an absolute import of "
                    "the sibling (e.g. `from layers import Block`)"
                )
            names.append(((node.module or "").split(".")[0], node.lineno))
    return names


def _beside(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.py", folder / name):
        if candidate.is_file() or (candidate / "__init__.py").is_file():
            return candidate
    return None


def _check_installed(path: Path, name: str, line: int) -> None:
    if name in sys.stdlib_module_names or name in _distributions() or name == "__future__":
        return
    spec = importlib.util.find_spec(name)
    where = f"found at `{spec.origin}`" if spec and spec.origin else "not importable"
    raise ModelCopyError(
        f"`{path.name}` imports `{name}` (line {line}), {where}, which is neither a module "
        "beside the model file nor an installed package, so the package cannot carry it; move "
        f"`{name}` beside `{path.name}`, or install it (`pip install -e` its project)"
    )


@functools.cache
def _distributions() -> frozenset[str]:
    return frozenset(importlib.metadata.packages_distributions())


def _copy_module(source: Path, folder: Path) -> dict[str, str]:
    if source.is_file():
        return {source.name: source.read_text(encoding="utf-8")}
    return {
        str(file.relative_to(folder)): file.read_text(encoding="utf-8")
        for file in sorted(source.rglob("*.py"))
        if "__pycache__" not in file.parts
    }
