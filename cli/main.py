"""`splitter` commands: each parses options, makes one library call, prints the result."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from cli.options import (
    BatchSize,
    Format,
    InputDtype,
    InputShape,
    Leaf,
    ModelArg,
    ModelRef,
    PrecisionOpt,
    model_options,
)
from splitter.errors import SplitterError, UsageError

app = typer.Typer(
    name="splitter",
    help="Compile any PyTorch model into gradient-isolated local-learning blocks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console(soft_wrap=False)
stderr = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        import splitter

        print(f"splitter {splitter.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Compile any PyTorch model into gradient-isolated local-learning blocks."""


def _run(fn: Callable[[], Any]) -> Any:
    """Call the library; print a SplitterError once, without a traceback, and exit with its code."""
    try:
        return fn()
    except SplitterError as e:
        stderr.print(f"[bold red]error:[/] {e}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None


def _check_format(fmt: str) -> str:
    if fmt not in ("table", "json"):
        raise UsageError(f"--format `{fmt}` is unknown; use `table` or `json`")
    return fmt


@app.command()
def inspect(
    model: ModelRef,
    model_arg: ModelArg = None,
    input_shape: InputShape = None,
    input_dtype: InputDtype = None,
    batch_size: BatchSize = None,
    precision: PrecisionOpt = "fp32",
    leaf: Leaf = None,
    fmt: Format = "table",
) -> None:
    """Trace MODEL, annotate its costs and list its legal cut points and units."""
    from splitter.analysis import analyze
    from splitter.report import inspect_report, render

    def build() -> dict[str, Any]:
        _check_format(fmt)
        options = model_options(model_arg, input_shape, input_dtype, batch_size, precision, leaf)
        return inspect_report(analyze(model, options))

    report = _run(build)
    for note in report["warnings"]:
        stderr.print(f"[yellow]warning:[/] {note}", highlight=False)
    for item in report["leafed"]:
        stderr.print(
            f"[yellow]leafed {item['kind']}[/] `{item['fqn']}`: {item['reason']}",
            highlight=False,
            soft_wrap=True,
        )
    if fmt == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        render(report, stdout)
