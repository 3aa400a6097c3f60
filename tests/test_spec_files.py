"""Spec files that work from any folder: the bundled specs, the specs `partition` writes (model
arguments, quoted cut names, refs relative to the spec), `model.ref` found beside the spec, and
the command `compile` without a spec suggests."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from schemas import load_spec
from splitter import api
from splitter.frontend.modelref import ModelOptions
from splitter.partitioning.specwriter import scalar
from tests.conftest import EXAMPLES

CIFAR = EXAMPLES / "resnet_cifar" / "model.py"
SPECS = sorted(EXAMPLES.glob("*/spec.yaml"))
MLP = (
    "from torch import nn\n\n\n"
    "def build_model():\n"
    "    return nn.Sequential(\n"
    "        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)\n"
    "    )\n"
)
"""A model whose cuts are named `1` and `3` (nn.Sequential's children)."""


def parameters(loaded: api.Loaded) -> int:
    return sum(p.numel() for p in loaded.analysis.model.module.parameters())


@pytest.mark.parametrize("spec", SPECS, ids=[s.parent.name for s in SPECS])
def test_bundled_spec_verifies_from_another_folder(
    cli: CliRunner, spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli.invoke(app, ["verify", str(spec), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["ok"]
    assert load_spec(spec).spec.model.ref == "model.py"


def test_partition_spec_keeps_model_args_and_verifies_elsewhere(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--model-arg depth=8` is in the written spec, whose ref is relative to its own folder,
    so the spec rebuilds the same model from another working folder."""
    (tmp_path / "models").mkdir()
    shutil.copy(CIFAR, tmp_path / "models" / "net.py")
    monkeypatch.chdir(tmp_path)
    args = ["partition", "models/net.py", "--blocks", "3", "--model-arg", "depth=8"]
    result = cli.invoke(app, [*args, "-o", "out/spec.yaml"])
    assert result.exit_code == 0, result.stderr
    model = load_spec("out/spec.yaml").spec.model
    assert (model.ref, model.kwargs) == ("../models/net.py", {"depth": 8})
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = cli.invoke(app, ["verify", "../out/spec.yaml", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    rebuilt = api.load(None, "../out/spec.yaml")
    assert parameters(rebuilt) == parameters(api.load(str(CIFAR), None, ModelOptions(
        model_args={"depth": 8})))
    assert parameters(rebuilt) != parameters(api.load(str(CIFAR)))


def test_partition_from_a_spec_keeps_its_kwargs_under_the_command_line(
    cli: CliRunner, tmp_path: Path
) -> None:
    start = tmp_path / "start.yaml"
    start.write_text(f"version: 1\nmodel: {{ref: {CIFAR}, kwargs: {{depth: 8, num_classes: 5}}}}\n"
                     "partition: {auto: {blocks: 2}}\n")
    out = tmp_path / "out.yaml"
    args = ["partition", "--spec", str(start), "--blocks", "2", "--model-arg", "num_classes=7"]
    result = cli.invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert load_spec(out).spec.model.kwargs == {"depth": 8, "num_classes": 7}


@pytest.mark.parametrize("name", ["9", "1.0", "true", "null", "yes", "~", "layer1.2"])
def test_cut_names_yaml_would_retype_are_quoted(name: str) -> None:
    assert yaml.safe_load(f"cuts:\n  - {scalar(name)}  # block 0\n") == {"cuts": [name]}


def test_numeric_cut_names_survive_a_written_spec(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mlp.py").write_text(MLP)
    monkeypatch.chdir(tmp_path)
    args = ["partition", "mlp.py", "--blocks", "2", "--aux", "linear", "--input-shape", "8"]
    result = cli.invoke(app, [*args, "-o", "spec.yaml"])
    assert result.exit_code == 0, result.stderr
    cuts = load_spec("spec.yaml").spec.partition.cuts
    assert cuts in (["1"], ["3"]), cuts
    assert cli.invoke(app, ["verify", "spec.yaml"]).exit_code == 0


def test_a_relative_ref_is_found_beside_the_spec_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `net.py` both beside the spec and in the working folder, the spec's own is taken;
    with only the working folder's, that one is taken with a warning naming the fix."""
    (tmp_path / "sub").mkdir()
    shutil.copy(CIFAR, tmp_path / "sub" / "net.py")
    (tmp_path / "net.py").write_text(MLP)
    spec = tmp_path / "sub" / "spec.yaml"
    spec.write_text("version: 1\nmodel: {ref: net.py, kwargs: {depth: 8}, input_shape: [3, 8, 8]}"
                    "\npartition: {cuts: [layer2]}\n")
    monkeypatch.chdir(tmp_path)
    beside = api.load(None, "sub/spec.yaml")
    assert Path(beside.ref) == Path("sub/net.py")
    assert not [w for w in beside.analysis.model.warnings if "model.ref" in w]
    (tmp_path / "sub" / "net.py").unlink()
    spec.write_text(spec.read_text().replace("kwargs: {depth: 8}, input_shape: [3, 8, 8]",
                                             "input_shape: [8]"))
    here = api.load(None, "sub/spec.yaml")
    assert here.ref == "net.py"
    [note] = [w for w in here.analysis.model.warnings if "model.ref" in w]
    assert str(tmp_path / "net.py") in note and "`ref: ../net.py`" in note


def test_compile_without_a_spec_suggests_a_command_that_runs(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The suggested `splitter partition` writes a spec with the cuts compile chose, and the
    memory was estimated at the batch the package trains at."""
    monkeypatch.chdir(tmp_path)
    args = ["compile", str(CIFAR), "-o", "pkg", "--blocks", "3", "--model-arg", "depth=8"]
    result = cli.invoke(app, [*args, "--batch-size", "16"])
    assert result.exit_code == 0, result.stderr
    assert "memory estimated at batch 16, the batch the package trains at" in result.stderr
    assert "\n  batch_size: 16\n" in (tmp_path / "pkg" / "spec.lock.yaml").read_text()
    found = re.search(r"`splitter (partition [^`]*)`", result.stderr)
    assert found, result.stderr
    suggested = cli.invoke(app, shlex.split(found[1]))
    assert suggested.exit_code == 0, suggested.stderr
    written = load_spec("spec.yaml").spec
    chosen = re.search(r"cut at ([^)]*)\);", result.output)
    assert chosen and ", ".join(written.partition.cuts or []) == chosen[1]
    assert written.model.kwargs == {"depth": 8} and written.training.batch_size == 16


def test_compile_without_a_spec_trains_at_the_estimated_default_batch(tmp_path: Path) -> None:
    compiled = api.compile_package(str(CIFAR), None, ModelOptions(model_args={"depth": 8}),
                                   out=str(tmp_path / "pkg"), blocks=2)
    assert compiled.plan.analysis.model.batch_size == 128
    assert "\n  batch_size: 128\n" in (tmp_path / "pkg" / "spec.lock.yaml").read_text()
    assert "`splitter partition " in compiled.notes[0] and "--batch-size 128" in compiled.notes[0]
