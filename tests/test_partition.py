"""The partitioner: exact min-max, the cost model against real blocks, budgets, the CLI."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli.main import app
from schemas import load_spec
from splitter.analysis.sampling import augmented_units
from splitter.analysis.model import analyze
from splitter.api import partition
from splitter.errors import SplitterError
from splitter.frontend.annotate import measure_saved_bytes
from splitter.frontend.modelref import ModelOptions
from splitter.partitioning.partitioner import min_max, partition_blocks, settings_from
from splitter.transform.surgery import split
from tests.conftest import EXAMPLES

CIFAR = str(EXAMPLES / "resnet_cifar" / "model.py")


def brute_force(cost, n: int, blocks: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for inner in itertools.combinations(range(1, n), blocks - 1):
        bounds = [0, *inner, n]
        best = min(best, max(cost(k, bounds[k], bounds[k + 1]) for k in range(blocks)))
    return best


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(0, 1000), min_size=1, max_size=12),
    blocks=st.integers(1, 6),
    k_weight=st.integers(0, 50),
)
def test_min_max_is_optimal_against_brute_force(values: list[int], blocks: int, k_weight: int) -> None:
    n = len(values)
    blocks = min(blocks, n)
    prefix = list(itertools.accumulate(values, initial=0))

    def cost(k: int, i: int, j: int) -> float:  # additive, plus a k-dependent auxiliary term
        return prefix[j] - prefix[i] + k_weight * k * (j < n)

    bounds, value = min_max(cost, n, blocks)
    assert value == brute_force(cost, n, blocks)
    assert bounds[0] == 0 and bounds[-1] == n and bounds == sorted(set(bounds))
    assert max(cost(k, bounds[k], bounds[k + 1]) for k in range(blocks)) == value


def test_ties_go_to_the_later_cut() -> None:
    bounds, _ = min_max(lambda k, i, j: [0, 5, 0, 5][j - 1] if j - i == 1 else 99, 4, 4)
    assert bounds == [0, 1, 2, 3, 4]
    bounds, _ = min_max(lambda k, i, j: float(j - i > 2), 4, 2)
    assert bounds == [0, 2, 4]


def test_augmented_units_follow_the_formula() -> None:
    ends = list(range(10, 20))  # ten feature units ending at boundaries 10..19
    assert augmented_units(ends, 10, 0, 4, 3, 0.5) == [13, 16, 19]  # l=0: round(0 + 9/3*i)
    assert augmented_units(ends, 17, 2, 4, 3, 0.5) == [18, 19]  # fewer left than the depth
    assert augmented_units(ends, 19, 3, 4, 3, 0.5) == []
    # k=2 of 4: d = round(3 * (1 - 0.5) + 0.5) = 2; units round(9 / 2 * i) = 4 (half to even), 9
    assert augmented_units(ends, 10, 2, 4, 3, 0.5) == [14, 19]


@pytest.fixture(scope="module")
def resnet101():  # type: ignore[no-untyped-def]
    return analyze("torchvision:resnet101", ModelOptions(batch_size=32))


def test_resnet101_memory_balance_within_ten_percent(resnet101) -> None:  # type: ignore[no-untyped-def]
    part = partition_blocks(resnet101, 4, settings_from(None, None, None))
    variable = [b.variable_bytes for b in part.blocks]
    assert max(variable) <= 1.10 * sum(variable) / len(variable)
    assert part.local_peak_bytes < 0.5 * part.e2e_peak_bytes


def test_memory_balance_beats_units_and_params(resnet101) -> None:  # type: ignore[no-untyped-def]
    chosen = settings_from(None, None, None)
    largest = {
        balance: max(b.variable_bytes for b in partition_blocks(resnet101, 4, chosen, balance).blocks)
        for balance in ("memory", "units", "params")
    }
    assert largest["memory"] < largest["units"] and largest["memory"] < largest["params"]


@pytest.mark.parametrize(("ref", "batch"), [("torchvision:resnet50", 4), ("torchvision:vit_b_16", 2),
                                            (str(EXAMPLES / "tiny_vit" / "model.py"), 8)])
def test_block_activations_equal_a_real_local_step(ref: str, batch: int) -> None:
    """Each block's estimate is what its real forward saves on a detached input, plus its
    output when nothing saved it (it stays alive for the next block)."""
    analysis = analyze(ref, ModelOptions(batch_size=batch))
    part = partition_blocks(analysis, 4, settings_from(None, "linear", None))
    surgery = split(analysis.traced, part.cuts)
    h = analysis.target_input.batch(batch)
    for block, cost in zip(surgery.blocks, part.blocks, strict=True):
        real = measure_saved_bytes(block, h.detach())
        with torch.no_grad():
            h = block(h)
        out_bytes = h.untyped_storage().nbytes() if block.end != "output" else 0
        assert cost.activation_bytes in (real, real + out_bytes)


def test_budget_gives_the_fewest_blocks_that_fit() -> None:
    analysis = analyze(CIFAR, ModelOptions(batch_size=32))
    chosen = settings_from(None, None, None)
    peaks = {k: partition_blocks(analysis, k, chosen).local_peak_bytes for k in range(1, 8)}
    budget = peaks[4] + 1
    from splitter.partitioning.partitioner import partition_budget

    found = partition_budget(analysis, budget, chosen)
    assert found.local_peak_bytes <= budget
    assert all(peaks[k] > budget for k in range(1, len(found.blocks)))
    with pytest.raises(SplitterError, match=r"no partition fits.*best local peak"):
        partition_budget(analysis, 1024, chosen)


def test_too_many_blocks_give_the_most_possible_and_name_the_limit() -> None:
    found = partition(CIFAR, blocks=40)
    [warning] = found.warnings
    assert "40 blocks are not possible: the model has 18 admissible cuts" in warning
    assert f"; {len(found.blocks)} blocks instead" in warning and len(found.blocks) <= 19


def test_optimizer_and_aux_change_the_fixed_part() -> None:
    sgd = partition(CIFAR, blocks=4, aux="linear")
    adamw = partition(CIFAR, blocks=4, aux="linear", optimizer="adamw")
    momentum = partition(CIFAR, blocks=4)
    params = sum(p.numel() * 4 for p in sgd.analysis.target.parameters())
    assert adamw.fixed_bytes - sgd.fixed_bytes == pytest.approx(params, rel=0.05)
    assert momentum.fixed_bytes > sgd.fixed_bytes


def test_partition_cli_writes_a_spec_that_verifies(cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "spec.yaml"
    result = cli.invoke(app, ["partition", CIFAR, "--blocks", "4", "--aux", "conv", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    text = out.read_text()
    assert text.startswith("# Written by `splitter partition`") and "# block 3:" in text
    spec = load_spec(out).spec
    assert (out.parent / (spec.model.ref or "")).resolve() == Path(CIFAR).resolve()
    assert len(spec.partition.cuts or []) == 3
    assert spec.aux.default.kind == "conv"
    assert cli.invoke(app, ["verify", str(out)]).exit_code == 0
    again = cli.invoke(app, ["partition", CIFAR, "--blocks", "2", "-o", str(out)])
    assert again.exit_code == 2 and "--force" in again.stderr and out.read_text() == text
    forced = cli.invoke(app, ["partition", CIFAR, "--blocks", "2", "-o", str(out), "--force"])
    assert forced.exit_code == 0 and out.read_text() != text


def test_partition_cli_stdout_is_the_spec(cli: CliRunner) -> None:
    result = cli.invoke(app, ["partition", CIFAR, "--blocks", "3"])
    assert result.exit_code == 0
    assert result.stdout.startswith("# Written by") and "local peak" in result.stderr


def test_partition_json_fields(cli: CliRunner) -> None:
    result = cli.invoke(app, ["partition", CIFAR, "--budget", "40MiB", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["local_peak_bytes"] <= 40 * 2**20
    assert report["local_peak_bytes"] == report["fixed_bytes"] + max(
        b["variable_bytes"] for b in report["blocks"]
    )
    assert report["e2e_peak_bytes"] > report["local_peak_bytes"]


@pytest.mark.parametrize(("args", "message"), [
    (["--blocks", "2", "--budget", "1GiB"], "exactly one of"),
    (["--budget", "lots"], "--budget"),
    (["--blocks", "2", "--balance", "speed"], "--balance `speed`"),
    (["--blocks", "2", "--aux", "mlp"], "--aux `mlp`"),
])
def test_partition_usage_errors(cli: CliRunner, args: list[str], message: str) -> None:
    result = cli.invoke(app, ["partition", CIFAR, *args])
    assert result.exit_code == 2 and message in result.stderr


def test_inspect_with_spec_reports_costs(cli: CliRunner) -> None:
    result = cli.invoke(app, ["inspect", CIFAR, "--spec", str(EXAMPLES / "resnet_cifar" /
                                                             "spec.yaml"), "--format", "json"])
    report = json.loads(result.stdout)
    assert report["local_peak_bytes"] == report["fixed_bytes"] + max(
        b["variable_bytes"] for b in report["blocks"]
    )
    assert report["e2e_peak_bytes"] > report["local_peak_bytes"]


def test_random_costs_never_beat_the_partition() -> None:
    """No random split of the CIFAR ResNet has a smaller largest block than the partitioner's."""
    analysis = analyze(CIFAR, ModelOptions(batch_size=32))
    chosen = settings_from(None, "linear", None)
    best = max(b.variable_bytes for b in partition_blocks(analysis, 4, chosen).blocks)
    from splitter.partitioning.partitioner import evaluate

    rng = random.Random(0)
    for _ in range(30):
        cuts = sorted(rng.sample(list(analysis.cuts.cuts), 3), key=lambda c: c.index)
        assert max(b.variable_bytes for b in evaluate(analysis, cuts, chosen).blocks) >= best


def test_partition_from_a_spec_keeps_its_settings(cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "vit.yaml"
    spec = str(EXAMPLES / "tiny_vit" / "spec.yaml")
    result = cli.invoke(app, ["partition", "--spec", spec, "--blocks", "3", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    written = load_spec(out).spec
    model = EXAMPLES / "tiny_vit" / "model.py"
    assert (out.parent / written.model.ref).resolve() == model.resolve()
    assert written.aux.default.kind == "linear" and written.aux.blocks[0].kind == "conv"
    assert "auxiliary linear" in out.read_text().splitlines()[0]
    assert cli.invoke(app, ["verify", str(out)]).exit_code == 0
