"""`model.root` packages: the blocks split the root, the rest of the model runs around them and
trains on the task loss, and the exported weights are the whole model's."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

from splitter.api import compile_package
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package

MODEL = '''
import torch
import torch.nn.functional as F
from torch import nn


class Segmenter(nn.Module):
    """A backbone at half resolution and a head resized to the input, as torchvision's."""

    def __init__(self, classes=3):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x):
        size = x.shape[-2:]
        features = {"out": self.backbone(2 * x - 1)}  # a normalisation before the root
        return {"out": F.interpolate(self.head(features["out"]), size=size, mode="bilinear")}


def build_model():
    return Segmenter()
'''


def package(tmp_path: Path) -> Path:
    model = tmp_path / "segmenter.py"
    model.write_text(MODEL)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"version: 1\nmodel: {{ref: {model}, root: backbone, input_shape: [3, 16, 16]}}\n"
        "partition: {cuts: ['2', '5']}\naux: {default: {kind: conv}}\n"
        "training: {data: {name: synthetic}, batch_size: 8}\n"
    )
    compile_package(None, str(spec), ModelOptions(), out=str(tmp_path / "pkg"))
    return tmp_path / "pkg"


def segmenter(tmp_path: Path) -> ModuleType:
    found = importlib.util.spec_from_file_location("segmenter", tmp_path / "segmenter.py")
    assert found is not None and found.loader is not None
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    return module


def test_the_root_splits_and_the_rest_trains_on_the_task_loss(tmp_path: Path) -> None:
    pkg = package(tmp_path)
    lock = (pkg / "spec.lock.yaml").read_text()
    assert "root: backbone" in lock and "input_shape: [3, 16, 16]" in lock
    assert "targets: pixel" in lock and "num_classes: 3" in lock
    with load_package(pkg) as train:
        train.train(["--steps", "0", "--export", str(tmp_path / "before.pt")])
        args = ["--steps", "3", "--eval-batches", "1", "--export", str(tmp_path / "after.pt")]
        metrics = train.train([*args, "--out", str(tmp_path / "run")])
        parts = train.build(0)
    assert len(parts.blocks) == 3 and parts.around.path == "backbone"
    assert {id(p) for p in parts.around.rest} == {id(p) for p in parts.model.head.parameters()}
    assert "test_miou" in metrics and len(metrics["block_losses"]) == 3
    before, after = torch.load(tmp_path / "before.pt"), torch.load(tmp_path / "after.pt")
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    for name in ("backbone.0.weight", "backbone.3.weight", "backbone.6.weight", "head.weight"):
        assert name in moved, name  # every block, and the head after the root
    model = segmenter(tmp_path).build_model()
    model.load_state_dict(after, strict=True)  # the whole model's weights


def test_block_zero_gets_what_the_model_gives_its_root(tmp_path: Path) -> None:
    with load_package(package(tmp_path)) as train:
        parts = train.build(0)
        x = torch.rand(2, 3, 16, 16)
        first = parts.around.root_input((x,))
        assert torch.equal(first, 2 * x - 1)
        parts.model.eval()
        with torch.no_grad():
            out = parts.blocks[2](parts.blocks[1](parts.blocks[0](first)))
            whole = parts.around.output((x,), out)["out"]
            assert torch.allclose(whole, parts.model(x)["out"], atol=1e-6)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--mode", "e2e", "--checkpoint"], "--checkpoint recomputes the blocks"),
        (["--device", "cpu", "cpu"], "a split root trains on one device"),
    ],
)
def test_what_a_root_cannot_do_yet_is_refused(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    with load_package(package(tmp_path)) as train:
        with pytest.raises(train.ConfigError, match=message):
            train.train(["--steps", "1", "--out", str(tmp_path / "r"), *flags])


def test_e2e_trains_the_whole_model(tmp_path: Path) -> None:
    with load_package(package(tmp_path)) as train:
        metrics = train.train(["--mode", "e2e", "--steps", "2", "--out", str(tmp_path / "e")])
    assert metrics["mode"] == "e2e" and "test_pixel_accuracy" in metrics


def test_a_models_own_loss_needs_a_detection_model_and_its_root(tmp_path: Path) -> None:
    from splitter.errors import SplitterError
    from tests.conftest import EXAMPLES

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"version: 1\nmodel: {{ref: {EXAMPLES / 'tiny_unet' / 'model.py'}, "
        "input_shape: [3, 16, 16]}\ntask: {loss: model}\npartition: {cuts: [pre]}\n"
    )
    with pytest.raises(SplitterError) as error:
        compile_package(None, str(spec), ModelOptions(), out=str(tmp_path / "pkg"))
    assert "a Linear named `cls_score`" in str(error.value) or "set `model.root`" in str(
        error.value
    )
    assert not (tmp_path / "pkg").exists()


def test_a_global_optimizer_holds_what_runs_after_the_root(tmp_path: Path) -> None:
    """Regression: with `optimizer_scope: global` the head after the root was left out."""
    pkg = package(tmp_path)
    lock = pkg / "spec.lock.yaml"
    lock.write_text(lock.read_text().replace("optimizer_scope: block", "optimizer_scope: global"))
    with load_package(pkg) as train:
        parts = train.build(0)
        [optimizer] = train.make_optimizers(parts, "local")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in parts.model.head.parameters()} <= held
    assert {id(p) for p in parts.model.backbone.parameters()} <= held


def test_modules_with_parameters_before_the_root_are_named(tmp_path: Path) -> None:
    from splitter import api

    model = tmp_path / "stemmed.py"
    model.write_text(MODEL.replace("2 * x - 1", "self.stem(x)").replace(
        "self.head = nn.Conv2d(16, classes, 1)",
        "self.head = nn.Conv2d(16, classes, 1)\n        self.stem = nn.Conv2d(3, 3, 1)",
    ))  # fmt: skip
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"version: 1\nmodel: {{ref: {model}, root: backbone, input_shape: [3, 16, 16]}}\n"
        "partition: {cuts: ['2']}\naux: {default: {kind: conv}}\n"
    )
    plan = api.plan(None, str(spec), ModelOptions())
    assert plan.analysis.before_root == ("stem",)
    assert any("`stem` run before `model.root: backbone`" in w for w in plan.analysis.model.warnings)
