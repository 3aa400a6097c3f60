"""The newcomer's path: tables that fit the terminal, honest usage lines, errors with a fix."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from cli.main import app
from cli.options import BALANCES, OPTIMIZERS
from schemas.auxiliary import AUX_KINDS
from splitter.codegen.writer import write_package
from splitter.errors import ArgumentError
from splitter.frontend.modelref import PRECISIONS
from splitter.report.tables import table
from tests.conftest import EXAMPLES

CIFAR = str(EXAMPLES / "resnet_cifar" / "model.py")
RESNET50 = ["inspect", "torchvision:resnet50", "--input-shape", "3,32,32", "--batch-size", "2"]


def whole(name: str, text: str) -> bool:
    """`name` appears in `text` as a whole name, not cut short or folded."""
    return re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.])", text) is not None


# ---------------------------------------------------------------- tables that fit


@pytest.fixture(scope="module")
def resnet50_cuts() -> list[dict[str, object]]:
    result = CliRunner().invoke(app, [*RESNET50, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    cuts: list[dict[str, object]] = json.loads(result.stdout)["cut_points"]
    return cuts


def test_inspect_at_80_columns_keeps_every_cut_name_whole(
    resnet50_cuts: list[dict[str, object]],
) -> None:
    result = CliRunner().invoke(app, RESNET50, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for cut in resnet50_cuts:
        assert f"│ {cut['name']} " in result.stdout, cut["name"]
        for alias in cut["aliases"]:  # type: ignore[attr-defined]
            assert whole(alias, result.stdout), alias
    assert "…" not in result.stdout
    assert "GFLOPs before hidden to fit 80 columns (--wide shows them)" in result.stdout


def test_wide_shows_every_column(resnet50_cuts: list[dict[str, object]]) -> None:
    result = CliRunner().invoke(app, [*RESNET50, "--wide"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    assert "GFLOPs before" in result.stdout and "hidden" not in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) > 80


def test_piped_output_without_columns_stays_wide() -> None:
    result = CliRunner().invoke(app, RESNET50, env={"COLUMNS": None})
    assert result.exit_code == 0, result.stderr
    assert "GFLOPs before" in result.stdout and "hidden" not in result.stdout


def test_partition_at_80_columns_keeps_block_ends_whole() -> None:
    argv = ["partition", "torchvision:resnet50", "--input-shape", "3,32,32", "--blocks", "4"]
    result = CliRunner().invoke(app, argv, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    table = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert max(len(line) for line in table) <= 80  # warnings are prose the terminal wraps
    cuts = re.findall(r"^    - (\S+)  # block", result.stdout, flags=re.M)
    assert len(cuts) == 3
    for name in cuts:
        assert f"│ {name} " in result.stderr, name
    assert "hidden to fit 80 columns" in result.stderr


def render(width: int, **fit: list[str]) -> str:
    names = [f"encoder.layers.encoder_layer_{i}.self_attention.out_proj" for i in range(3)]
    rows = [[str(i), name, "12,345,678", "3.14", "a, b, c"] for i, name in enumerate(names)]
    columns = [">#", "cut", ">params before", ">GFLOPs before", "aliases"]
    out = io.StringIO()
    Console(file=out, width=width).print(table("Cuts", columns, rows, width, **fit))
    return out.getvalue()


def test_a_narrow_table_hides_columns_in_order_and_never_cuts_a_name() -> None:
    text = render(80, drop=["GFLOPs before", "aliases", "params before"], wrap=["aliases"])
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "encoder.layers.encoder_layer_2.self_attention.out_proj" in text
    assert "3.14" not in text and "12,345,678" in text  # GFLOPs hidden first, params kept
    assert "GFLOPs before, aliases hidden to fit 80 columns" in text
    assert "3.14" in render(160) and "hidden" not in render(160)


# ---------------------------------------------------------------- usage and help


def help_of(*argv: str) -> str:
    result = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    return result.stdout


@pytest.mark.parametrize(("command", "usage"), [
    ("inspect", "splitter inspect [OPTIONS] MODEL"),
    ("verify", "splitter verify [OPTIONS] [MODEL] SPEC"),
    ("partition", "splitter partition [OPTIONS] [MODEL]"),
    ("compile", "splitter compile [OPTIONS] [MODEL] [SPEC]"),
    ("schema", "splitter schema [OPTIONS]"),
])
def test_usage_lines(command: str, usage: str) -> None:
    text = help_of(command)
    assert re.search(rf"Usage: {re.escape(usage)}\s*$", text, flags=re.M), text
    for junk in ("<str>", "<bool>", "<int", "<list", "spec_path", "model_or_spec", "{", "[]"):
        assert junk not in text, (command, junk)


def test_choices_are_listed() -> None:
    partition, compile_, verify = help_of("partition"), help_of("compile"), help_of("verify")
    for text in (partition, compile_):
        assert ", ".join(AUX_KINDS[:-1]) + f" or {AUX_KINDS[-1]}" in text
    assert ", ".join(BALANCES[:-1]) + f" or {BALANCES[-1]}" in partition
    assert " or ".join(OPTIMIZERS) in partition
    assert ", ".join(PRECISIONS[:-1]) + f" or {PRECISIONS[-1]}" in verify
    assert "`table` (rich, stdout) or `json`" in verify
    assert set(AUX_KINDS) == {"linear", "conv", "momentum", "infopro", "augmented", "mlaan"}


def test_splitter_alone_prints_the_help() -> None:
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 0
    assert "Usage: splitter [OPTIONS] COMMAND" in result.stdout and "compile" in result.stdout


@pytest.mark.parametrize(("argv", "message"), [
    (["verify"], "pass `[MODEL] SPEC`"),
    (["verify", CIFAR], "is not a spec file"),
    (["compile"], "pass MODEL, SPEC or both"),
    (["compile", CIFAR, "--aux", "lineer"], "--aux `lineer` is unknown; use one of linear, conv"),
    (["partition", CIFAR, "--balance", "speed"], "use one of memory, flops, params, units"),
])
def test_bad_arguments_are_usage_errors(argv: list[str], message: str) -> None:
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("error:") and message in " ".join(result.stderr.split())


# ---------------------------------------------------------------- the output folder


def refusal(out: Path, force: bool) -> str:
    with pytest.raises(ArgumentError) as caught:
        write_package({}, out, force)
    return caught.value.render({"force": "--force", "out": "-o"})


def test_a_folder_that_is_not_a_package_is_refused_alike_with_and_without_force(
    tmp_path: Path,
) -> None:
    out = tmp_path / "pkg"
    (out / "data").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    message = refusal(out, force=False)
    assert message == refusal(out, force=True)
    assert "holds `data/` and `notes.txt` but no spec.lock.yaml" in message
    assert "--force will not replace it; pass -o a new or empty folder" in message


def test_a_package_is_replaced_only_with_force(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "spec.lock.yaml").write_text("version: 1\n")
    message = refusal(out, force=False)
    assert "holds a splitter package" in message and "pass --force to replace it" in message
    (tmp_path / "file").write_text("x")
    message = refusal(tmp_path / "file", force=True)
    assert "is a file, which --force does not replace; pass -o a folder" in message
