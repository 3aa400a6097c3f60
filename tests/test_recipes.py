"""Training recipes by name: each paper's CIFAR settings, every key still overridable."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from schemas import parse_spec
from schemas.recipes import RECIPES
from splitter.package import load_package
from splitter.runtime import data, optim
from tests.conftest import example_package, train_steps


def training(text: str) -> dict[str, object]:
    spec = parse_spec(f"version: 1\npartition: {{cuts: [layer1.2]}}\ntraining: {text}\n").spec
    return spec.training.model_dump()


def test_a_recipe_sets_the_papers_values() -> None:
    man = training("{recipe: man-cifar}")
    assert man["optimizer"] == {
        "name": "sgd", "lr": 0.8, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4,
        "betas": (0.9, 0.999),
    }  # fmt: skip
    assert man["schedule"]["warmup_epochs"] == 10 and man["schedule"]["warmup_start_lr"] == 0.01
    assert (man["epochs"], man["batch_size"], man["optimizer_scope"]) == (400, 1024, "global")
    assert man["data"]["padding"] == "reflect"
    assert training("{recipe: infopro-cifar}")["epochs"] == 160
    dgl = training("{recipe: dgl-cifar}")
    assert dgl["schedule"] == {
        "name": "step", "warmup_epochs": 0, "warmup_start_lr": 0.0, "step_size": 15, "gamma": 0.2,
    }  # fmt: skip
    assert not dgl["optimizer"]["nesterov"] and dgl["optimizer"]["weight_decay"] == 5e-4
    assert training("{}") == training("{recipe: default}")


def test_every_key_the_spec_sets_wins_over_the_recipe() -> None:
    found = training("{recipe: man-cifar, optimizer: {lr: 0.1}, epochs: 5, data: {flip: false}}")
    assert found["optimizer"]["lr"] == 0.1 and found["optimizer"]["weight_decay"] == 1e-4
    assert found["epochs"] == 5 and found["batch_size"] == 1024
    assert found["data"] == {**found["data"], "padding": "reflect", "flip": False}


def test_the_schedules_follow_the_papers() -> None:
    man, dgl = RECIPES["man-cifar"]["schedule"], RECIPES["dgl-cifar"]["schedule"]
    per_epoch, total = 10, 4000

    def lr(schedule: dict[str, object], base: float, step: int) -> float:
        return base * optim.lr_factor(
            {"step_size": 30, "gamma": 0.1, **schedule}, step, total, per_epoch, base
        )

    assert lr(man, 0.8, 0) == pytest.approx(0.01)  # the warm-up starts at 0.01
    assert lr(man, 0.8, 50) == pytest.approx(0.01 + (0.8 - 0.01) * 0.5)
    assert lr(man, 0.8, 100) == pytest.approx(0.8)  # then cosine from the full rate
    assert lr(man, 0.8, 100 + 1950) == pytest.approx(0.4, rel=1e-3)
    assert [lr(dgl, 0.1, e * per_epoch) for e in (0, 14, 15, 30)] == pytest.approx(
        [0.1, 0.1, 0.02, 0.004]
    )
    assert lr({"name": "cosine", "warmup_epochs": 1}, 1.0, 0) == pytest.approx(1 / 11)


@pytest.mark.parametrize(("padding", "flip"), [("reflect", True), ("zero", False)])
def test_cifar_augmentation_pads_and_flips_as_set(padding: str, flip: bool) -> None:
    steps = data._transform("cifar10", 3, 32, 32, True, (0.5,) * 3, (0.5,) * 3, (padding, flip))
    names = [type(t).__name__ for t in steps.transforms]  # type: ignore[attr-defined]
    crop = steps.transforms[0]  # type: ignore[attr-defined]
    assert crop.padding_mode == ("reflect" if padding == "reflect" else "constant")
    assert ("RandomHorizontalFlip" in names) == flip


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_each_recipe_compiles_says_so_and_trains(recipe: str, tmp_path: Path) -> None:
    out = example_package(tmp_path, training=f"{{recipe: {recipe}}}")
    assert f"Training recipe: `{recipe}` (SGD lr" in (out / "README.md").read_text()
    lock = yaml.safe_load((out / "spec.lock.yaml").read_text())
    assert lock["training"]["recipe"] == recipe
    assert lock["training"]["epochs"] == RECIPES[recipe].get("epochs", 10)
    with load_package(out) as train:
        metrics = train_steps(train, tmp_path / "run", 2)
    assert all(math.isfinite(v) for v in metrics["block_losses"])
