"""Every output trains or the user is told: a two-output CNN's second head, `task.aux_outputs`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from splitter import api
from splitter.api import compile_package
from splitter.errors import SplitterError
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package
from splitter.transform.verify import verify_plan
from tests.conftest import train_steps

MODEL = '''
import torch
from torch import nn


class TwoHeads(nn.Module):
    """A CNN with an auxiliary classifier on an intermediate map, as inception has."""

    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.late = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, classes)
        self.aux_head = nn.Linear(8, classes)

    def forward(self, x):
        x = self.mid(self.stem(x))
        aux = self.aux_head(x.mean((2, 3)))
        return self.fc(self.late(x).mean((2, 3))), aux


def build_model():
    return TwoHeads()
'''


def spec(tmp_path: Path, task: str = "") -> str:
    (tmp_path / "two.py").write_text(MODEL)
    path = tmp_path / "spec.yaml"
    text = "version: 1\npartition: {cuts: [stem]}\naux: {default: {kind: linear}}\n" + task
    path.write_text(text)
    return str(path)


OPTIONS = ModelOptions(input_shape=(3, 8, 8), batch_size=2)


def trained_aux_head(tmp_path: Path, task: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    out = tmp_path / "pkg"
    compile_package(str(tmp_path / "two.py"), spec(tmp_path, task), OPTIONS, out=str(out))
    with load_package(out) as train:
        before = train.build(0).model.aux_head.weight.detach().clone()
        export = tmp_path / "w.pt"
        train_steps(train, tmp_path / "run", 3, "--export", str(export))
    return before, torch.load(export, weights_only=True)["aux_head.weight"]


def test_the_second_output_trains_at_the_default_weight(tmp_path: Path) -> None:
    before, after = trained_aux_head(tmp_path)
    assert not torch.equal(before, after)
    lock = (tmp_path / "pkg" / "spec.lock.yaml").read_text()
    assert "task:\n  loss: cross_entropy\n  targets: class\n  aux_outputs:\n    1: 0.4\n" in lock


def test_a_zero_weight_leaves_it_untrained_and_says_so(tmp_path: Path) -> None:
    before, after = trained_aux_head(tmp_path, "task: {aux_outputs: {1: 0}}\n")
    assert torch.equal(before, after)
    plan = api.plan(
        str(tmp_path / "two.py"), spec(tmp_path, "task: {aux_outputs: {1: 0}}\n"), OPTIONS
    )
    assert any(
        "output `1` is not trained" in w and "`aux_head.weight`" in w
        for w in plan.analysis.model.warnings
    )
    checked = verify_plan(plan)
    assert "aux_head.weight" in checked.untrained and "aux_head.bias" in checked.untrained
    default = verify_plan(api.plan(str(tmp_path / "two.py"), spec(tmp_path), OPTIONS))
    assert default.untrained == []


def test_the_warning_reaches_verify_and_compile(cli: CliRunner, tmp_path: Path) -> None:
    args = [
        str(tmp_path / "two.py"),
        spec(tmp_path, "task: {aux_outputs: {1: 0}}\n"),
        "--input-shape",
        "3,8,8",
    ]
    for command in (["verify"], ["compile", "-o", str(tmp_path / "pkg")]):
        result = cli.invoke(app, [*command, *args])
        assert "output `1` is not trained" in result.output, result.output


def test_an_output_the_model_does_not_return_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        SplitterError,
        match=r"line 4, column 27: the model returns nothing at `aux`; use one of `0`, `1`",
    ):
        api.plan(
            str(tmp_path / "two.py"), spec(tmp_path, "task: {aux_outputs: {aux: 0.3}}\n"), OPTIONS
        )
