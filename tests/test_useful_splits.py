"""Automatic splits worth training: every block holds a whole unit and 1% of the FLOPs, the
classifier stays in the last block, cuts serve their auxiliary, fewer blocks than asked come
with the binding rule named, and a split that saves nothing says so with the numbers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from schemas import show_size
from splitter.analysis.costs import CostModel, Settings
from splitter.analysis.cuts import CutPoint
from splitter.analysis.model import Analysis, analyze
from splitter.api import compile_package, partition
from splitter.errors import SpecError
from splitter.frontend.modelref import ModelOptions
from splitter.partitioning.partitioner import Rules, evaluate, partition_blocks, settings_from
from tests.conftest import EXAMPLES

FIXTURES = Path(__file__).parent / "fixtures"
CIFAR = str(EXAMPLES / "resnet_cifar" / "model.py")
SMALL = ModelOptions(input_shape=(3, 32, 32), batch_size=8)


def assert_worth_training(analysis: Analysis, cuts: Sequence[CutPoint], asked: int) -> None:
    """The default rules hold for this split; fewer blocks than `asked` were warned about."""
    model = CostModel(analysis, Settings())
    part = evaluate(analysis, cuts, Settings())
    total = model.flops(0, model.boundaries)
    for k, block in enumerate(part.blocks):
        assert model.units(block.start, block.end) >= 1, (k, [c.name for c in cuts])
        assert block.flops >= 0.01 * total, (k, block.flops / total, [c.name for c in cuts])
    assert all(j < model.tail_start for j in part.bounds[1:-1]), [c.name for c in cuts]
    if len(cuts) < asked - 1:
        assert any(f"{asked} blocks are not possible" in w for w in analysis.model.warnings)


@pytest.mark.parametrize(("shape", "blocks"), [((3, 224, 224), 3), ((3, 32, 32), 4)])
def test_resnet18_blocks_each_hold_a_unit_and_a_share_of_the_flops(
    shape: tuple[int, int, int], blocks: int
) -> None:
    found = partition("torchvision:resnet18", blocks=blocks, options=ModelOptions(input_shape=shape))
    assert len(found.blocks) == blocks
    assert_worth_training(found.analysis, found.cuts, blocks)
    assert not {"layer4.1", "avgpool", "flatten", "fc"} & {c.name for c in found.cuts}


def cut_names(found: object) -> list[str]:
    return [c.name for c in found.cuts]  # type: ignore[attr-defined]


def test_each_rule_binds_where_it_should_and_only_there() -> None:
    """Each default rule changes a split that breaks it, and the split it gives keeps it."""
    small = analyze("torchvision:resnet18", ModelOptions(input_shape=(3, 32, 32), batch_size=8))
    momentum = settings_from(None, "momentum", None)
    free = partition_blocks(small, 8, momentum, rules=Rules().without("tail"))
    assert cut_names(free)[-1] == "flatten"  # the classifier alone (1.4% of the FLOPs)
    kept = partition_blocks(small, 8, momentum)
    assert_worth_training(small, kept.cuts, 8)
    assert not {"layer4.1", "avgpool", "flatten"} & set(cut_names(kept))  # tail and a unit

    cifar = analyze(CIFAR, SMALL)
    free = partition_blocks(cifar, 8, momentum, rules=Rules().without("min_block_flops"))
    assert cut_names(free)[0] == "relu"  # the stem's conv alone: 0.6% of the FLOPs
    kept = partition_blocks(cifar, 8, momentum)
    assert len(kept.blocks) == 8 and kept.warnings == []
    assert_worth_training(cifar, kept.cuts, 8)

    model = CostModel(cifar, Settings())
    three = partition_blocks(cifar, 12, momentum, rules=Rules(min_units=3))
    assert all(model.units(b.start, b.end) >= 3 for b in three.blocks)
    assert len(three.blocks) == model.units(0, model.boundaries) // 3
    [warning] = three.warnings
    assert "12 blocks are not possible" in warning and "partition.auto.min_units" in warning


def test_a_split_that_saves_nothing_says_so_with_the_numbers(cli: CliRunner) -> None:
    args = ["partition", "torchvision:resnet18", "--input-shape", "3,32,32", "--blocks", "4"]
    result = cli.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    found = partition("torchvision:resnet18", blocks=4, options=ModelOptions(input_shape=(3, 32, 32)))
    assert len(found.blocks) == 4 and found.settings.aux.default.kind == "momentum"  # kept
    if found.local_peak_bytes <= found.e2e_peak_bytes:
        return
    [warning] = [w for w in report["warnings"] if "saves no memory" in w]
    assert show_size(found.local_peak_bytes) in warning
    assert show_size(found.e2e_peak_bytes) in warning
    assert "best alternative found: " in warning


def test_few_admissible_cuts_give_the_most_blocks_possible_and_say_why(cli: CliRunner) -> None:
    args = ["partition", str(FIXTURES / "cells.py"), "--blocks", "4", "--aux", "linear"]
    result = cli.invoke(app, [*args, "--input-shape", "3,32,32", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["blocks"]) == 2
    [warning] = [w for w in report["warnings"] if "4 blocks are not possible" in w]
    assert "3 admissible cuts" in warning and "2 blocks instead" in warning
    shown = cli.invoke(app, ["inspect", str(FIXTURES / "cells.py"), "--input-shape", "3,32,32"])
    assert "only 3 admissible cuts" in shown.output and "at most 4 blocks" in shown.output


def test_a_binding_rule_is_named_with_the_key_that_loosens_it(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"version: 1\nmodel: {{ref: {CIFAR}, input_shape: [3, 32, 32]}}\n"
        "partition: {auto: {blocks: 4, min_block_flops: 0.3}}\naux: {default: {kind: linear}}\n"
    )
    found = partition(blocks=4, spec=str(spec))
    assert len(found.blocks) == 3
    [warning] = found.warnings
    assert "30.0% of the model's FLOPs" in warning and "partition.auto.min_block_flops" in warning
    assert all(b.flops >= 0.3 * sum(x.flops for x in found.blocks) for b in found.blocks)


def test_a_spec_whose_rules_leave_one_block_is_refused_with_the_reason(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"version: 1\nmodel: {{ref: {CIFAR}, input_shape: [3, 32, 32]}}\n"
        "partition: {auto: {blocks: 4, min_block_flops: 0.6}}\n"
    )
    with pytest.raises(SpecError, match="1 block: train end to end; there is nothing to compile"):
        compile_package(None, str(spec), ModelOptions(), out=str(tmp_path / "pkg"))
    assert not (tmp_path / "pkg").exists()


def test_auto_with_infopro_on_a_cifar_resnet_compiles(tmp_path: Path) -> None:
    """InfoPro's decoder needs image maps: no cut after the global pooling is a candidate."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"version: 1\nmodel: {{ref: {CIFAR}, input_shape: [3, 32, 32]}}\n"
        "partition: {auto: {blocks: 4, tail: free}}\naux: {default: {kind: infopro}}\n"
    )
    compiled = compile_package(None, str(spec), ModelOptions(), out=str(tmp_path / "pkg"))
    assert len(compiled.plan.cuts) == 3
    assert all(len(c.shape or ()) == 4 for c in compiled.plan.cuts)


@pytest.mark.parametrize("blocks", [2, 3, 4, 5])
def test_a_functional_cnn_is_never_cut_between_a_conv_and_its_norm(blocks: int) -> None:
    found = partition(str(FIXTURES / "functional.py"), blocks=blocks, aux="linear", options=SMALL)
    assert all(c.admissible for c in found.cuts)
    assert not [c.name for c in found.cuts if c.name.startswith(("convs.", "norms."))]
    assert_worth_training(found.analysis, found.cuts, blocks)


def test_slack_trades_two_percent_of_memory_for_the_most_even_flops() -> None:
    analysis = analyze("torchvision:resnet50", ModelOptions(batch_size=8))
    settings = settings_from(None, "linear", None)
    exact = partition_blocks(analysis, 4, settings, rules=Rules(slack=0))
    slack = partition_blocks(analysis, 4, settings, rules=Rules(slack=0.02))
    largest = max(b.variable_bytes for b in exact.blocks)
    assert max(b.variable_bytes for b in slack.blocks) <= 1.02 * largest
    assert max(b.flops for b in slack.blocks) < max(b.flops for b in exact.blocks)


def test_a_budget_is_reported_in_the_unit_it_was_written_in(cli: CliRunner) -> None:
    result = cli.invoke(app, ["partition", CIFAR, "--input-shape", "3,32,32", "--budget", "64KiB"])
    assert result.exit_code == 1
    assert "budget of 64.0 KiB" in result.output and "best local peak is" in result.output
    assert "KiB with" in result.output


def test_a_spec_asking_too_many_blocks_plans_the_most_possible(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"version: 1\nmodel: {{ref: {CIFAR}, input_shape: [3, 32, 32], kwargs: {{depth: 8}}}}\n"
        "partition: {auto: {blocks: 99}}\naux: {default: {kind: linear}}\n"
    )
    result = CliRunner().invoke(app, ["verify", str(spec)])
    assert result.exit_code == 0, result.output
    assert "99 blocks are not possible: the model has 6 admissible cuts" in result.output


def test_partition_to_one_block_writes_no_spec_and_says_so(cli: CliRunner, tmp_path: Path) -> None:
    spec = tmp_path / "strict.yaml"
    spec.write_text(
        f"version: 1\nmodel: {{ref: {CIFAR}, input_shape: [3, 32, 32]}}\n"
        "partition: {auto: {blocks: 4, min_block_flops: 0.6}}\n"
    )
    out = tmp_path / "out.yaml"
    result = cli.invoke(app, ["partition", "--spec", str(spec), "--blocks", "4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 block: train end to end" in result.output and "is not written" in result.output
    assert not out.exists()
