"""Submodule and parameter names that are attributes of `fx.GraphModule` (`graph`, `meta`,
`code`): renamed inside the traced graphs only, the model's own names everywhere else."""

from __future__ import annotations

from pathlib import Path

import torch

from splitter import api
from splitter.api import compile_package
from splitter.frontend.modelref import ModelOptions, load_model
from splitter.package import load_package
from tests.conftest import train_steps

MODEL = '''
import torch
from torch import nn


class Clashing(nn.Module):
    """Top-level names that `fx.GraphModule` uses itself."""

    def __init__(self):
        super().__init__()
        self.graph = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.meta = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.code = nn.Parameter(torch.ones(8, 1, 1))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.meta(self.graph(x)) * self.code
        return self.fc(x.mean((2, 3)))


def build_model():
    return Clashing()
'''

OPTIONS = ModelOptions(input_shape=(3, 8, 8), batch_size=2)


def spec(tmp_path: Path) -> str:
    (tmp_path / "clash.py").write_text(MODEL)
    path = tmp_path / "spec.yaml"
    path.write_text("version: 1\npartition: {cuts: [graph]}\naux: {default: {kind: linear}}\n")
    return str(path)


def test_the_cuts_carry_the_models_names(tmp_path: Path) -> None:
    spec(tmp_path)
    analysis = api.load(str(tmp_path / "clash.py"), None, OPTIONS).analysis
    names = {name for cut in analysis.cuts.cuts for name in cut.names}
    assert {"graph", "meta"} <= names
    assert not any("renamed" in name for name in names)


def test_verify_passes_and_every_parameter_trains(tmp_path: Path) -> None:
    plan, checked = api.verify(str(tmp_path / "clash.py"), spec(tmp_path), OPTIONS)
    assert [block.end for block in plan.surgery.blocks] == ["graph", "output"]
    assert checked.ok, checked
    assert checked.untrained == []


def test_it_compiles_trains_and_exports_under_the_models_names(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    compile_package(str(tmp_path / "clash.py"), spec(tmp_path), OPTIONS, out=str(out))
    blocks = (out / "blocks.py").read_text()
    assert "x = self.graph(x)" in blocks and "self.meta(" in blocks and "self.code" in blocks
    assert "renamed" not in blocks
    export = tmp_path / "w.pt"
    with load_package(out) as train:
        train_steps(train, tmp_path / "run", 3, "--export", str(export))
    weights = torch.load(export, weights_only=True)
    model = load_model(str(tmp_path / "clash.py"), OPTIONS).module
    before = model.get_parameter("code").detach().clone()
    model.load_state_dict(weights)  # strict: every key is the model's own
    assert not torch.equal(model.get_parameter("code").detach(), before)
