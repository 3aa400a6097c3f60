"""The spec against the model: every problem with its YAML place and fix; the CLI around it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli.main import app
from schemas import json_schema
from splitter import api
from splitter.analysis.model import analyze
from splitter.errors import SpecError, SplitterError
from splitter.frontend.modelref import ModelOptions
from splitter.transform.verify import verify_plan
from tests.conftest import EXAMPLES

CIFAR = str(EXAMPLES / "resnet_cifar" / "model.py")
SMALL = ModelOptions(model_args={"depth": 8}, batch_size=2)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return str(path)


def spec_with(cuts: str, extra: str = "") -> str:
    return f"version: 1\npartition:\n  cuts: {cuts}\n{extra}"


BAD = {
    "malformed yaml": ("version: 1\npartition: [cuts\n", "line 3", "YAML"),
    "unknown key": ("version: 1\npartiton:\n  cuts: [layer1]\n", "line 2", "`partition`"),
    "wrong type": (spec_with("[layer1]", "training: {epochs: ten}\n"), "line 4", "epochs"),
    "unknown cut": (spec_with("[layer1.0, layr2.0]"), "line 3, column 20", "`layer2.0`"),
    "illegal cut": (
        spec_with("[layer1.0.conv2]"),
        "line 3, column 10",
        "tensors cross it, the outputs of `relu` and `layer1.0.conv2`; the nearest legal cuts "
        "are `relu` and `layer1.0.add`",
    ),
    "out of order": (spec_with("[layer2.0, layer1.0]"), "line 3, column 20", "forward order"),
    "repeated": (spec_with("[layer1, layer1.0]"), "line 3, column 18", "repeats `layer1`"),
    "fits unsplit": (
        "version: 1\npartition:\n  auto: {budget: 1GiB}\n", "line 3", "train it end to end"
    ),
    "aux on last block": (
        spec_with("[layer1.0]", "aux:\n  blocks:\n    1: {kind: conv}\n"),
        "line 6",
        "last block, which trains on the task loss",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_spec_names_value_line_and_fix(cli: CliRunner, tmp_path: Path, case: str) -> None:
    text, place, message = BAD[case]
    spec = write(tmp_path, text)
    before = sorted(os.listdir(tmp_path))
    result = cli.invoke(app, ["verify", CIFAR, spec, "--model-arg", "depth=8"])
    assert result.exit_code == 1, result.stderr
    err = " ".join(result.stderr.split())
    assert place in err and message in err, err
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    """Schema problems and the model's cut problems come in one report, in file order."""
    text = spec_with("[layer2.0, layer1.0, nothing]", "aux:\n  blocks:\n    3: {}\ntrainig: {}\n")
    with pytest.raises(SpecError) as info:
        api.plan(CIFAR, write(tmp_path, text), SMALL)
    problems = info.value.problems
    assert len(problems) == 4
    assert "forward order" in problems[0] and "`nothing`" in problems[1]
    assert "no `kind`" in problems[2] and "`training`" in problems[3]


def test_auto_partition_in_the_spec(tmp_path: Path) -> None:
    spec = write(tmp_path, "version: 1\npartition:\n  auto: {blocks: 4, balance: memory}\n")
    plan = api.plan(CIFAR, spec, SMALL)
    assert len(plan.cuts) == 3 and len(plan.surgery.blocks) == 4
    assert verify_plan(plan).ok


def test_auto_budget_in_the_spec(tmp_path: Path) -> None:
    spec = write(tmp_path, "version: 1\npartition:\n  auto: {budget: 38MiB}\n")
    batch = ModelOptions(model_args={"depth": 8}, batch_size=64)  # e2e 40.7 MiB, K=2 36.0 MiB
    assert len(api.plan(CIFAR, spec, batch).cuts) == 1
    tiny = write(tmp_path, "version: 1\npartition:\n  auto: {budget: 1KiB}\n")
    with pytest.raises(SplitterError, match=r"no partition fits the budget.*best local peak"):
        api.plan(CIFAR, tiny, SMALL)


def test_smallest_spec_verifies_as_written(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        "version: 1\npartition:\n  cuts: [layer1.2, layer2.1, layer3.0]     # or: auto\n"
        "aux:\n  default: {kind: linear}\n",
    )
    plan = api.plan(CIFAR, spec, ModelOptions())
    assert [c.name for c in plan.cuts] == ["layer1.2", "layer2.1", "layer3.0"]
    assert verify_plan(plan).ok


def test_spec_supplies_model_and_settings(cli: CliRunner) -> None:
    result = cli.invoke(app, ["verify", str(EXAMPLES / "resnet_cifar" / "spec.yaml"),
                              "--format", "json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and len(report["blocks"]) == 4
    assert all(b["isolated"] and b["eval_equal"] for b in report["blocks"])


def test_inspect_with_spec_fills_blocks(cli: CliRunner) -> None:
    spec = str(EXAMPLES / "tiny_vit" / "spec.yaml")
    result = cli.invoke(app, ["inspect", str(EXAMPLES / "tiny_vit" / "model.py"), "--spec", spec,
                              "--format", "json", "--batch-size", "4"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    blocks = report["blocks"]
    assert [(b["start"], b["end"]) for b in blocks] == [
        ("input", "blocks.1"), ("blocks.1", "blocks.3"), ("blocks.3", "blocks.4"),
        ("blocks.4", "output"),
    ]
    assert [b["aux"] for b in blocks] == ["conv", "momentum", "linear", "task loss"]
    assert sum(b["params"] for b in blocks) == report["parameters"]
    assert sum(b["activation_bytes"] for b in blocks) == report["total_activation_bytes"]
    assert blocks[0]["out_shape"] == [4, 64, 64]


def test_verify_needs_a_yaml_spec(cli: CliRunner) -> None:
    result = cli.invoke(app, ["verify", CIFAR])
    assert result.exit_code == 2 and "SPEC" in result.stderr


def test_schema_command_prints_the_committed_schema(cli: CliRunner) -> None:
    result = cli.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json_schema()


@pytest.fixture(scope="module")
def names() -> list[str]:
    analysis = analyze(CIFAR, SMALL)
    modules = [m for m, _ in analysis.target.named_modules() if m]
    return [*analysis.cuts.lookup, *modules, "nope", "layer4", "conv1.weight"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_cut_lists_verify_or_are_rejected(
    names: list[str], tmp_path: Path, data: st.DataObject
) -> None:
    picked = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=5))
    spec = write(tmp_path, spec_with(json.dumps(picked)))
    try:
        plan = api.plan(CIFAR, spec, SMALL)
    except SpecError as e:
        assert all(", line 3, column " in p for p in e.problems)
        return
    assert [c.name for c in plan.cuts] == sorted(
        (c.name for c in plan.cuts), key=lambda n: plan.analysis.cuts.lookup[n].index
    )
    assert verify_plan(plan).ok


def test_model_output_must_exist(tmp_path: Path) -> None:
    spec = write(tmp_path, "version: 1\nmodel: {output: 2}\npartition:\n  cuts: [layer1]\n")
    with pytest.raises(SpecError, match=r"line 2, column 17: the model returns nothing at `2`"):
        api.plan(CIFAR, spec, SMALL)


def test_model_ref_beside_the_spec(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text((EXAMPLES / "resnet_cifar" / "model.py").read_text())
    spec = write(tmp_path, "version: 1\nmodel: {ref: net.py, kwargs: {depth: 8}}\n"
                           "partition:\n  cuts: [layer2]\n")
    plan = api.plan(None, spec, ModelOptions())
    assert plan.analysis.model.ref == str(tmp_path / "net.py")
    assert [b.end for b in plan.surgery.blocks] == ["layer2.0", "output"]
