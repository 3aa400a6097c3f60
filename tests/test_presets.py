"""Auxiliary presets: each paper's auxiliary by name, under the spec's own keys."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, get_args

import pytest

from schemas import parse_spec
from schemas.presets import Preset
from schemas.recipes import RECIPES
from splitter.package import load_package
from tests.conftest import example_package, train_steps

PRESETS = list(get_args(Preset))
K4 = "{cuts: [layer1.2, layer2.1, layer3.0]}"


def default(aux: str, partition: str = K4) -> dict[str, Any]:
    spec = parse_spec(f"version: 1\npartition: {partition}\naux: {aux}\n").spec
    return spec.aux.default.model_dump()  # type: ignore[no-any-return]


def test_the_presets_expand_to_the_papers_auxiliaries() -> None:
    man = default("{preset: man}")
    assert man["kind"] == "momentum" and not man["learnable_scale"]
    assert man["head"]["classifier"] == "2c2f" and man["head"]["schedule"] == "stage"
    assert default("{preset: infopro+man}") == man
    assert default("{preset: man++}") == {**man, "learnable_scale": True}
    infopro = default("{preset: infopro}")
    assert infopro["loss"] == "supcon" and infopro["classifier"] == "1c2f"
    assert (infopro["lambda1"], infopro["lambda2"]) == ((6.0, 1.0), (0.0, 2.0))  # K = 4
    k16 = default("{preset: infopro}", "{paper: {name: infopro, k: 16}}")
    assert (k16["lambda1"], k16["lambda2"]) == ((5.0, 0.2), (0.05, 0.5))
    assert default("{preset: dgl}")["variant"] == "mlp-sr"
    assert default("{preset: dgl+man++}")["head"]["variant"] == "auxdgl"
    assert default("{preset: auglocal}")["kind"] == "augmented"
    assert default("{preset: mlaan}")["kind"] == "mlaan"


def test_the_specs_own_keys_win() -> None:
    found = default("{preset: infopro, default: {loss: cross_entropy}}")
    assert found["loss"] == "cross_entropy" and found["classifier"] == "1c2f"
    found = default("{preset: man++, default: {head: {classifier: 1c2f}}}")
    assert found["head"]["classifier"] == "1c2f" and found["head"]["schedule"] == "stage"


def compile_and_train(tmp_path: Path, preset: str, recipe: str) -> dict[str, Any]:
    # MLAAN's cascade needs one optimizer (its recipe's scope); the block-scope recipes are
    # told so explicitly
    scope = ", optimizer_scope: global" if preset == "mlaan" else ""
    out = example_package(
        tmp_path, aux=f"{{preset: {preset}}}", training=f"{{recipe: {recipe}{scope}}}"
    )
    lock = (out / "spec.lock.yaml").read_text()
    assert f"preset: {preset}" in lock
    with load_package(out) as train:
        return train_steps(train, tmp_path / "run", 2)


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_compiles_and_trains(preset: str, tmp_path: Path) -> None:
    metrics = compile_and_train(tmp_path, preset, "default")
    assert len(metrics["block_losses"]) == 4


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(set(RECIPES) - {"default"}))
@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_with_each_recipe(preset: str, recipe: str, tmp_path: Path) -> None:
    metrics = compile_and_train(tmp_path, preset, recipe)
    assert all(math.isfinite(v) for v in metrics["block_losses"])
