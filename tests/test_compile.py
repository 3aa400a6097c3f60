"""`splitter compile`: golden packages, byte-identical output, and safe writing."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from splitter import api
from splitter.api import compile_package
from splitter.codegen import writer
from splitter.codegen.emit import RUNTIME, RUNTIME_FILES
from splitter.errors import SplitterError
from splitter.frontend.modelref import ModelOptions
from tests.conftest import EXAMPLES

GOLDEN = Path(__file__).parent / "golden"
SPECS = sorted(EXAMPLES.glob("*/spec.yaml"))
VERSIONS = re.compile(r"\b(splitter|torch|torchvision|timm)(:? )([0-9][^\s;,]*|null)")


def normalised(text: str) -> str:
    """The file without the versions it records (the generator's and the libraries')."""
    return VERSIONS.sub(r"\1\2<version>", text)


def package_text(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("spec", SPECS, ids=[s.parent.name for s in SPECS])
def test_example_package_matches_golden(
    spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generated files equal the golden ones; the runtime files are the library's own
    sources under the provenance header, and model.py is the example's file.
    Regenerate with `SPLITTER_UPDATE_GOLDEN=1 pytest tests/test_compile.py`."""
    monkeypatch.chdir(EXAMPLES.parent)
    out = tmp_path / "pkg"
    compile_package(None, str(spec.relative_to(EXAMPLES.parent)), ModelOptions(), out=str(out))
    files = {name: normalised(text) for name, text in package_text(out).items()}
    header = files["blocks.py"].split('"""', 1)[0]
    for name in RUNTIME_FILES:
        assert files.pop(name) == header + (RUNTIME / name).read_text(), name
    assert files.pop("model.py") == (spec.parent / "model.py").read_text()
    unnamed = [name for name in RUNTIME_FILES if f"`{name}`" not in files["README.md"]]
    assert not unnamed, f"the package README's file table leaves out {unnamed}"
    golden = GOLDEN / spec.parent.name
    if os.environ.get("SPLITTER_UPDATE_GOLDEN"):
        shutil.rmtree(golden, ignore_errors=True)
        for name, text in files.items():
            (golden / name).parent.mkdir(parents=True, exist_ok=True)
            (golden / name).write_text(text)
    assert files == package_text(golden)


def test_same_inputs_give_byte_identical_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(EXAMPLES.parent)
    spec = "examples/tiny_vit/spec.yaml"
    first, second = tmp_path / "a", tmp_path / "b" / "nested"
    compile_package(None, spec, ModelOptions(), out=str(first))
    compile_package(None, spec, ModelOptions(), out=str(second))
    assert {n: (first / n).read_bytes() for n in package_text(first)} == {
        n: (second / n).read_bytes() for n in package_text(second)
    }
    assert not list(first.rglob("__pycache__")) and not list(first.rglob(".ruff_cache"))
    assert str(tmp_path) not in "".join(package_text(first).values())


def test_compile_without_spec_says_what_it_chose(cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    model = str(EXAMPLES / "resnet_cifar" / "model.py")
    result = cli.invoke(app, ["compile", model, "-o", str(out), "--blocks", "3"])
    assert result.exit_code == 0, result.stderr
    assert "no SPEC: 3 blocks balanced on memory" in result.stderr
    assert "momentum" in result.stderr and (out / "train.py").is_file()
    assert "Momentum(" in (out / "blocks.py").read_text()


def test_default_output_folder_is_named_after_the_model() -> None:
    assert api.default_out("torchvision:resnet18") == "build/resnet18"
    assert api.default_out("examples/resnet_cifar/model.py") == "build/resnet_cifar"
    assert api.default_out("nets/wide.py:build") == "build/wide"


# ---------------------------------------------------------------- safe writing


def test_a_non_empty_output_folder_is_refused_without_force(
    cli: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    model = str(EXAMPLES / "resnet_cifar" / "model.py")
    result = cli.invoke(app, ["compile", model, "-o", str(out)])
    assert result.exit_code == 2 and "not empty; pass --force" in result.stderr
    result = cli.invoke(app, ["compile", model, "-o", str(out), "--force"])
    assert result.exit_code == 2 and "not a splitter package" in result.stderr
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_force_replaces_a_package(cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    model = str(EXAMPLES / "resnet_cifar" / "model.py")
    assert cli.invoke(app, ["compile", model, "-o", str(out), "--blocks", "2"]).exit_code == 0
    (out / "stale.txt").write_text("old")
    result = cli.invoke(app, ["compile", model, "-o", str(out), "--blocks", "3", "--force"])
    assert result.exit_code == 0, result.stderr
    assert not (out / "stale.txt").exists() and "Block2" in (out / "blocks.py").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_a_failure_during_emit_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(folder: Path, names: list[str]) -> None:
        raise SplitterError("formatter exploded")

    monkeypatch.setattr(writer, "format_python", broken)
    model = str(EXAMPLES / "resnet_cifar" / "model.py")
    with pytest.raises(SplitterError, match="formatter exploded"):
        compile_package(model, None, ModelOptions(), out=str(tmp_path / "pkg"))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- what cannot be compiled


def test_an_auxiliary_the_boundary_layout_cannot_take(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "version: 1\npartition: {cuts: [blocks.1]}\naux: {default: {kind: conv, layout: nchw}}\n"
    )
    model = str(EXAMPLES / "tiny_vit" / "model.py")
    with pytest.raises(SplitterError, match=r"`layout: nchw`.*\(B, 64, 64\).*`layout: auto`"):
        compile_package(model, str(spec), ModelOptions(), out=str(tmp_path / "pkg"))
    assert not (tmp_path / "pkg").exists()


def test_a_model_whose_imports_cannot_be_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "faraway.py").write_text("from torch import nn\nLayer = nn.Linear\n")
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "model.py").write_text(
        "from torch import nn\nfrom faraway import Layer\n\n\n"
        "def build_model():\n    return nn.Sequential(Layer(4, 8), nn.ReLU(), Layer(8, 2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    with pytest.raises(SplitterError, match=r"imports `faraway` \(line 2\).*move `faraway` beside"):
        compile_package(
            str(tmp_path / "net" / "model.py"),
            None,
            ModelOptions(input_shape=(4,)),
            out=str(tmp_path / "pkg"),
            blocks=2,
            aux="linear",
        )


def test_sibling_modules_are_copied_with_the_model(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "layers.py").write_text("from torch import nn\nLayer = nn.Linear\n")
    (tmp_path / "net" / "wide.py").write_text(
        "from torch import nn\nfrom layers import Layer\n\n\n"
        "def build():\n    return nn.Sequential(Layer(4, 8), nn.ReLU(), Layer(8, 2))\n"
    )
    out = tmp_path / "pkg"
    ref = f"{tmp_path / 'net' / 'wide.py'}:build"
    compile_package(ref, None, ModelOptions(input_shape=(4,)), out=str(out), blocks=2, aux="linear")
    assert (out / "model.py").read_text() == (tmp_path / "net" / "wide.py").read_text()
    assert (out / "layers.py").read_text() == (tmp_path / "net" / "layers.py").read_text()
    assert "builder: build\n" in (out / "spec.lock.yaml").read_text()


def test_command_line_model_arguments_reach_the_lock(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    options = ModelOptions(model_args={"num_classes": 7})
    compile_package(str(EXAMPLES / "resnet_cifar" / "model.py"), None, options, out=str(out))
    lock = (out / "spec.lock.yaml").read_text()
    assert "kwargs:\n    num_classes: 7\n" in lock and "num_classes: 7\n  fingerprint" in lock
