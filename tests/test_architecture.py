"""The shape of the house: layers, no import cycle, small modules, one list of runtime files."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import networkx as nx
import pytest

from splitter import runtime
from splitter.codegen.modelsource import RESERVED

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "splitter", "cli")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its file (function bodies included),
    relative and package-level imports resolved; a runtime module's top-level imports of its
    siblings (`import pipeline`) count as imports of `splitter.runtime.<sibling>`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if package == "splitter.runtime" and f"splitter.runtime.{target}" in known:
                target = f"splitter.runtime.{target}"
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> nx.DiGraph:
    files = sources()
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for name, path in files.items():
        graph.add_edges_from((name, target) for target in imported(name, path, set(files)))
    return graph


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert graph.has_edge("splitter.codegen.emit", "splitter.runtime")  # the graph sees imports
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles}"


def test_an_import_cycle_is_caught(tmp_path: Path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("def f():\n    from b import g\n")
    b.write_text("from a import f\n")
    graph = nx.DiGraph()
    for name, path in (("a", a), ("b", b)):
        graph.add_edges_from((name, t) for t in imported(name, path, {"a", "b"}))
    assert [sorted(c) for c in nx.simple_cycles(graph)] == [["a", "b"]]


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [("schemas", ("splitter", "cli")), ("splitter", ("cli",))],
)
def test_layers_import_only_downwards(layer: str, forbidden: tuple[str, ...]) -> None:
    graph = import_graph()
    inside = [n for n in graph if n == layer or n.startswith(f"{layer}.")]
    wrong = [
        (n, t) for n in inside for t in graph.successors(n) if t.split(".")[0] in forbidden
    ]
    assert not wrong


def test_runtime_modules_import_nothing_of_the_library_but_each_other() -> None:
    graph = import_graph()
    for name in [n for n in graph if n.startswith("splitter.runtime.")]:
        outside = [t for t in graph.successors(name) if not t.startswith("splitter.runtime")]
        assert not outside, f"{name} imports {outside}; a package carries the runtime alone"


def test_no_module_is_over_the_line_budget() -> None:
    long = {
        name: n
        for name, path in sources().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_runtime_file_list_is_the_runtime_folder() -> None:
    on_disk = sorted(p.name for p in runtime.FOLDER.glob("*.py") if p.name != "__init__.py")
    assert list(runtime.FILES) == on_disk and "train.py" in on_disk


def test_reserved_names_cover_every_file_a_package_writes() -> None:
    assert {"blocks", "model", *runtime.MODULES} <= set(RESERVED)


def test_the_tool_settings_know_every_package_module() -> None:
    """mypy and ruff see `import pipeline` in the runtime as the package's own modules."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]
    local = set(settings["ruff"]["lint"]["isort"]["known-local-folder"])
    overrides = settings["mypy"]["overrides"]
    typed = {m for o in overrides if o.get("ignore_missing_imports") for m in o["module"]}
    package = {"blocks", "model", *runtime.MODULES} - {"train"}
    assert package <= local and package <= typed
