"""InfoPro's loss weights per block: by the auxiliary's index (InfoPro) or the next unit's stage
(MAN), clamped where the formula gives no loss, shown by `inspect --spec` and the lock, and a
block left with no loss at all refused with the fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from splitter import api
from splitter.analysis.lambdas import for_cuts
from splitter.errors import SpecError
from splitter.frontend.modelref import ModelOptions
from tests.conftest import EXAMPLES

MODEL = EXAMPLES / "resnet_cifar" / "model.py"
K4 = ["layer1.2", "layer2.1", "layer3.0"]
MAN_K16 = [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(5)][:-1]  # 15 blocks
MAN_FLAGS = "lambda1: [5, 0], lambda2: [0.5, 0]"


def spec(tmp_path: Path, cuts: list[str], aux: str, blocks: str = "") -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"version: 1\nmodel: {{ref: {MODEL}}}\npartition: {{cuts: {json.dumps(cuts)}}}\n"
        f"aux:\n  default: {aux}\n{blocks}"
    )
    return str(path)


def resolved(tmp_path: Path, cuts: list[str], aux: str, blocks: str = "") -> list[tuple[float, ...]]:
    plan = api.plan(None, spec(tmp_path, cuts, aux, blocks), ModelOptions(batch_size=2))
    found = for_cuts(plan.analysis, plan.spec.spec, plan.cuts)
    return [(round(w.lambda1, 6), round(w.lambda2, 6), w.clamped) for _, w in sorted(found.items())]


def test_the_index_schedule_is_infopros(tmp_path: Path) -> None:
    """ratio = k / (K - 2): at K = 4 with the defaults [5, 0.5] and [0, 1]."""
    found = resolved(tmp_path, K4, "{kind: infopro}")
    assert found == [(5.0, 0.0, False), (2.75, 0.5, False), (0.5, 1.0, False)]


def test_the_stage_schedule_is_mans_and_follows_the_next_units_stage(tmp_path: Path) -> None:
    """MAN: ratio = stage / (K - 2), the stage (1, 2, 3) of the unit after the block; 15 blocks."""
    aux = f"{{kind: momentum, head: {{kind: infopro, {MAN_FLAGS}, schedule: stage}}}}"
    found = resolved(tmp_path, MAN_K16, aux)
    stages = [1] * 4 + [2] * 5 + [3] * 5  # the unit after layer1.3 is layer1.4; after it, layer2.0
    expected = [(round(5 - 5 * s / 13, 6), round(0.5 - 0.5 * s / 13, 6), False) for s in stages]
    assert found == expected


def test_a_zero_loss_is_clamped_to_the_next_to_last_ratio(tmp_path: Path) -> None:
    """MAN's flags by index give the last auxiliary (0, 0): its ratio becomes (K-3)/(K-2)."""
    found = resolved(tmp_path, MAN_K16, f"{{kind: infopro, {MAN_FLAGS}}}")
    assert found[-1] == (round(5 / 13, 6), round(0.5 / 13, 6), True)
    assert not any(clamped for *_, clamped in found[:-1])


def test_a_negative_weight_is_clamped_too(tmp_path: Path) -> None:
    """By stage at K = 4 the third stage's ratio is 3/2: weights below zero; clamped to 1/2."""
    aux = f"{{kind: infopro, {MAN_FLAGS}, schedule: stage}}"
    assert resolved(tmp_path, K4, aux)[-1] == (2.5, 0.25, True)


def test_per_block_values_are_kept(tmp_path: Path) -> None:
    blocks = "  blocks:\n    1: {kind: infopro, lambda1: 3, lambda2: 0.25}\n"
    assert resolved(tmp_path, K4, "{kind: infopro}", blocks)[1] == (3.0, 0.25, False)


def test_a_block_left_without_a_loss_is_refused_with_the_fix(tmp_path: Path) -> None:
    blocks = "  blocks:\n    1: {kind: infopro, lambda1: 0, lambda2: 0}\n"
    path = spec(tmp_path, K4, "{kind: infopro}", blocks)
    with pytest.raises(SpecError, match=r"line 7.*block 1's infopro loss is identically zero.*"
                       r"`aux: \{blocks: \{1: \{kind: infopro, lambda2: 1\}\}\}`"):
        api.plan(None, path, ModelOptions(batch_size=2))
    result = CliRunner().invoke(app, ["verify", path])
    assert result.exit_code == 1 and "identically zero" in result.stderr


def test_inspect_and_the_lock_show_each_blocks_weights(tmp_path: Path) -> None:
    path = spec(tmp_path, K4, "{kind: infopro}")
    result = CliRunner().invoke(app, ["inspect", str(MODEL), "--spec", path, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["blocks"]
    assert [r.get("loss_weights") for r in rows] == [[5.0, 0.0], [2.75, 0.5], [0.5, 1.0], None]
    table = CliRunner().invoke(app, ["inspect", str(MODEL), "--spec", path, "--wide"])
    assert "infopro (2.75, 0.5)" in table.stdout
    out = tmp_path / "pkg"
    api.compile_package(None, path, ModelOptions(), out=str(out))
    lock = yaml.safe_load((out / "spec.lock.yaml").read_text())
    assert lock["package"]["loss_weights"] == {0: [5.0, 0.0], 1: [2.75, 0.5], 2: [0.5, 1.0]}
    assert re.search(r"lambda1=2.75,\s+lambda2=0.5\b", (out / "blocks.py").read_text())
