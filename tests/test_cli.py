"""The `splitter` command line: output streams, exit codes, one-paragraph errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import EXAMPLES, FIXTURES

CIFAR = str(EXAMPLES / "resnet_cifar" / "model.py")


def test_inspect_json_stdout_is_only_the_object(cli: CliRunner) -> None:
    result = cli.invoke(app, ["inspect", str(FIXTURES / "branchy.py"), "--format", "json",
                              "--batch-size", "4"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("model", "batch_size", "precision", "nodes", "parameters",
                "total_activation_bytes", "leafed", "cut_points", "units", "blocks"):
        assert key in report
    assert report["batch_size"] == 4
    assert {x["fqn"] for x in report["leafed"] if x["kind"] == "module"} == {"gate"}
    assert "leafed module" in result.stderr and "gate" in result.stderr
    assert report["measured_nodes"] == ["gate"]
    cut = report["cut_points"][0]
    assert set(cut) >= {"name", "aliases", "node", "shape", "activation_bytes_before"}
    assert cut["shape"][0] == 4
    befores = [c["activation_bytes_before"] for c in report["cut_points"]]
    assert befores == sorted(befores) and befores[-1] <= report["total_activation_bytes"]
    block = report["blocks"][0]
    assert (block["start"], block["end"], block["out_shape"]) == ("input", "output", [4, 10])
    assert block["params"] == report["parameters"]


def test_inspect_table(cli: CliRunner) -> None:
    result = cli.invoke(app, ["inspect", CIFAR, "--model-arg", "depth=20"])
    assert result.exit_code == 0, result.stderr
    assert "Legal cut points" in result.stdout and "layer3.2" in result.stdout
    assert "Units" in result.stdout and "Summary" in result.stdout


def test_inspect_torchvision_any_rank_input(cli: CliRunner) -> None:
    result = cli.invoke(app, ["inspect", "torchvision:resnet18", "--input-shape", "3,32,32",
                              "--batch-size", "2", "--format", "json", "--precision", "bf16"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["inputs"] == [{"shape": [2, 3, 32, 32], "dtype": "float32"}]
    assert report["precision"] == "bf16"


def _bad_files(tmp: Path) -> dict[str, Path]:
    syntax = tmp / "syntax.py"
    syntax.write_text("def build_model(:\n    pass\n")
    nobuild = tmp / "nobuild.py"
    nobuild.write_text("x = 1\n")
    return {"syntax": syntax, "nobuild": nobuild}


@pytest.mark.parametrize(("case", "args", "code", "message"), [
    ("missing", ["does/not/exist.py"], 1, "does not exist"),
    ("syntax", ["{syntax}"], 1, "line 1: syntax error"),
    ("nobuild", ["{nobuild}"], 1, "no callable `build_model`"),
    ("shape-format", ["torchvision:resnet18", "--input-shape", "3,x"], 2, "--input-shape `3,x`"),
    ("shape-value", ["torchvision:resnet18", "--input-shape", "1,28,28"], 1, "input shape 1,28,28"),
    ("unknown", ["torchvision:resnet5"], 1, "did you mean `torchvision:resnet50`"),
    ("precision", [CIFAR, "--precision", "fp8"], 2, "--precision `fp8`"),
    ("format", [CIFAR, "--format", "yaml"], 2, "--format `yaml`"),
    ("model-arg", [CIFAR, "--model-arg", "depth"], 2, "--model-arg `depth`"),
])
def test_errors_are_one_paragraph_without_traceback(
    cli: CliRunner, tmp_path: Path, case: str, args: list[str], code: int, message: str
) -> None:
    files = _bad_files(tmp_path)
    argv = ["inspect", *(a.format(**files) for a in args)]
    result = cli.invoke(app, argv)
    assert result.exit_code == code, (case, result.stdout, result.stderr)
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.startswith("error:")


def test_detection_model_suggests_a_root(cli: CliRunner) -> None:
    result = cli.invoke(app, ["inspect", "torchvision:fasterrcnn_mobilenet_v3_large_fpn"])
    assert result.exit_code == 1
    assert "model.root" in result.stderr and "backbone.body" in result.stderr


SURFACE = {
    "inspect": ["--spec", "--format", "--wide"],
    "verify": ["--format", "--wide"],
    "partition": ["--blocks", "--budget", "--balance", "--aux", "--optimizer", "--spec",
                  "--output", "--force", "--format", "--wide"],
    "compile": ["--output", "--force", "--blocks", "--aux"],
    "schema": [],
    "plot-run": ["--output", "--force"],
}
MODEL_OPTIONS = ["--model-arg", "--input-shape", "--input-dtype", "--batch-size", "--precision",
                 "--leaf"]


@pytest.mark.parametrize("command", list(SURFACE))
def test_cli_surface(command: str) -> None:
    """Freezes the commands, their options and the shared model options."""
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    shared = MODEL_OPTIONS if command not in ("schema", "plot-run") else []
    for option in [*SURFACE[command], *shared]:
        assert option in result.stdout, (command, option)


def test_version() -> None:
    assert CliRunner().invoke(app, ["--version"]).stdout.startswith("splitter ")


def test_messages_with_brackets_print_verbatim(cli: CliRunner, tmp_path: Path) -> None:
    """Regression: rich read `[...]` in a message as markup and dropped it."""
    model = tmp_path / "net.py"
    model.write_text("def build_model():\n    raise ValueError('widths [16, 32] need [bold] care')\n")
    result = cli.invoke(app, ["inspect", str(model)])
    assert result.exit_code == 1
    assert "widths [16, 32] need [bold] care" in " ".join(result.stderr.split())
