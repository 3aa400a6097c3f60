"""Pictures of the block graph: what a picture holds (rows, folds, skips, cuts, blocks,
auxiliaries, memory) and the SVG, PNG and HTML files drawn from it."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from splitter import api
from splitter.analysis.model import analyze
from splitter.api import partition
from splitter.files import umask
from splitter.frontend.modelref import ModelOptions
from splitter.report.picture import Picture, picture
from splitter.report.page import page
from splitter.report.plot import DPI, WIDTH_INCHES, save, svg_text
from splitter.report.tables import plan_partition
from tests.conftest import EXAMPLES

CIFAR_SPEC = EXAMPLES / "resnet_cifar" / "spec.yaml"
VIT_SPEC = EXAMPLES / "tiny_vit" / "spec.yaml"


def example(spec: Path) -> Picture:
    plan = api.plan(None, str(spec), ModelOptions())
    return picture(plan.analysis, plan_partition(plan))


@pytest.fixture(scope="module")
def cifar() -> Picture:
    return example(CIFAR_SPEC)


@pytest.fixture(scope="module")
def vit() -> Picture:
    return example(VIT_SPEC)


def test_rows_account_for_every_parameter_activation_and_cut() -> None:
    plan = api.plan(None, str(CIFAR_SPEC), ModelOptions())
    pic = picture(plan.analysis, plan_partition(plan))
    analysis = plan.analysis
    assert sum(r.params for r in pic.rows) == sum(p.numel() for p in analysis.target.parameters())
    assert sum(r.saved_bytes for r in pic.rows) == analysis.total_activation_bytes
    below = sum(1 for r in pic.rows if r.end_cut is not None)
    assert below + sum(r.inner_cuts for r in pic.rows) == len(analysis.cuts.cuts)
    # Rows tile the graph: each starts where the one before it ends.
    assert pic.rows[0].lo == -1 and pic.rows[-1].hi == len(analysis.traced.graph("train").graph.nodes) - 1
    assert all(a.hi == b.lo for a, b in zip(pic.rows, pic.rows[1:], strict=False))


def test_blocks_cover_the_rows_in_order_and_carry_the_partition_costs(cifar: Picture) -> None:
    spans = [(b.first_row, b.first_row + b.rows) for b in cifar.blocks]
    assert spans[0][0] == 0 and spans[-1][1] == len(cifar.rows)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    for block in cifar.blocks:
        rows = cifar.rows[block.first_row : block.first_row + block.rows]
        assert {r.block for r in rows} == {block.index}
        assert sum(r.params for r in rows) == block.params
    # A chosen cut is the end of its block's last row.
    ends = [cifar.rows[b.first_row + b.rows - 1].end_cut for b in cifar.blocks[:-1]]
    assert ends == list(cifar.cuts) == ["layer1.2", "layer2.1", "layer3.0"]
    assert cifar.local_peak_bytes == cifar.fixed_bytes + max(b.variable_bytes for b in cifar.blocks)
    assert cifar.local_peak_bytes < cifar.e2e_peak_bytes


def test_alike_units_fold_and_residual_units_show_their_skip(cifar: Picture) -> None:
    by_label = {r.label: r for r in cifar.rows}
    run = by_label["layer1.0 … layer1.2"]
    assert (run.count, run.kind, run.skips) == (3, "BasicBlock", ("add",))
    assert run.params == 3 * by_label["layer1.4"].params
    # Units of different shape or parameter count never fold together.
    assert all(r.count == 1 for r in cifar.rows if r.first in ("layer2.0", "layer3.0"))
    stem = cifar.rows[0]  # conv1, bn1 and the ReLU that closes them: one unit
    assert stem.label == "conv1, bn1" and stem.skips == () and "Conv2d" in stem.kind


def test_momentum_auxiliary_points_at_the_next_blocks_first_unit(cifar: Picture) -> None:
    for block in cifar.blocks[:-1]:
        assert block.aux is not None and block.aux.kind == "momentum"
        (source,) = block.aux.sources
        assert source == block.first_row + block.rows  # the next block's first row
        assert cifar.rows[source].count == 1  # an EMA source is never folded away
        assert f"EMA copy of {cifar.rows[source].label}" in block.aux.lines[1]
    assert cifar.blocks[-1].aux is None


def test_transformer_units_merge_into_their_layer(vit: Picture) -> None:
    labels = [r.label for r in vit.rows]
    # Each transformer block holds two units (attention, MLP) with a legal cut between them.
    layers = [r for r in vit.rows if r.kind == "Block"]
    assert layers and all(r.units == 2 and r.skips == ("add", "add") for r in layers)
    assert not any(label.endswith((".attn", ".mlp")) for label in labels)
    assert [b.aux.kind if b.aux else None for b in vit.blocks] == [
        "conv", "momentum", "linear", None,
    ]


def test_svg_has_text_labels_and_is_reproducible(cifar: Picture) -> None:
    svg = svg_text(cifar)
    assert svg.startswith("<?xml") and "<svg" in svg
    for text in ("block 0", "block 3", "cut layer1.2", "cut layer3.0", "layer2.2", "momentum (MAN++)",
                 "task loss", "e2e peak", "local peak"):
        assert text in svg, text
    assert svg_text(cifar) == svg


def test_html_is_one_self_contained_page(vit: Picture) -> None:
    text = page(vit, svg_text(vit))
    assert text.startswith("<!DOCTYPE html>") and text.count("<svg") == 1
    assert "<script" not in text and "src=" not in text and "<link" not in text
    assert "<!DOCTYPE svg" not in text  # the SVG's DTD reference is dropped
    for name in ("block 0", "blocks.1", "blocks.3", "blocks.4", "conv", "momentum"):
        assert name in text, name


def test_png_size_follows_the_rows(cifar: Picture, tmp_path: Path) -> None:
    target = tmp_path / "out" / "cifar.png"
    save(cifar, target)
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width == round(WIDTH_INCHES * DPI)
    rows_inches = len(cifar.rows) * 0.5 + 0.85 + 0.6
    assert height == round(rows_inches * DPI)
    assert not list(target.parent.glob("*.tmp"))
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask()


def test_unsplit_picture_of_a_torchvision_model() -> None:
    analysis = analyze("torchvision:resnet18", ModelOptions(batch_size=2))
    pic = picture(analysis)
    assert pic.blocks == () and pic.cuts == ()
    assert sum(r.saved_bytes for r in pic.rows) == analysis.total_activation_bytes
    svg = svg_text(pic)
    assert "not split" in svg and "layer4.0" in svg and "saved activations per row" in svg


def test_partition_plot_of_a_torchvision_model(cli: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "resnet18.svg"
    result = cli.invoke(app, ["partition", "torchvision:resnet18", "--blocks", "3",
                              "--batch-size", "2", "--plot", str(target)])
    assert result.exit_code == 0, result.stderr
    part = partition("torchvision:resnet18", blocks=3, options=ModelOptions(batch_size=2))
    svg = target.read_text()
    for cut in part.cuts:
        assert f"cut {cut.name}" in svg
    assert "block 2" in svg and f"wrote {target}" in result.stderr


def test_inspect_plot_writes_html_and_keeps_existing_files(cli: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "cifar.html"
    args = ["inspect", str(EXAMPLES / "resnet_cifar" / "model.py"), "--spec", str(CIFAR_SPEC),
            "--plot", str(target)]
    assert cli.invoke(app, args).exit_code == 0
    assert "layer1.2" in target.read_text()
    target.write_text("mine")
    refused = cli.invoke(app, args)
    assert refused.exit_code == 2 and "--force" in refused.stderr
    assert target.read_text() == "mine"
    assert cli.invoke(app, [*args, "--force"]).exit_code == 0
    assert target.read_text().startswith("<!DOCTYPE html>")


def test_unknown_plot_format_is_refused_before_any_work(cli: CliRunner, tmp_path: Path) -> None:
    result = cli.invoke(app, ["inspect", "torchvision:resnet18", "--plot", str(tmp_path / "g.pdf")])
    assert result.exit_code == 2
    assert "g.pdf" in result.stderr and ".svg, .png or .html" in result.stderr
    assert not (tmp_path / "g.pdf").exists()


def test_long_folded_labels_shorten_to_a_range(cifar: Picture) -> None:
    from dataclasses import replace

    from splitter.report.plot import _row_label

    run = replace(cifar.rows[0], first="encoder.layers.encoder_layer_1",
                  last="encoder.layers.encoder_layer_11", count=11)
    assert _row_label(run, 40) == "encoder.layers.encoder_layer_1 … 11"
    run = replace(run, first="layer3.1", last="layer3.17", count=17)
    assert _row_label(run, 40) == "layer3.1 … layer3.17"  # short enough as it is
    assert _row_label(run, 10) == "layer3.1 … 17"
