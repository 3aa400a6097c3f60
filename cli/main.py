"""`splitter` commands: each parses options, makes one library call, prints the result."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from cli.options import (
    BatchSize,
    Format,
    InputDtype,
    InputShape,
    Leaf,
    ModelArg,
    ModelRef,
    Plot,
    PrecisionOpt,
    model_options,
)
from splitter.errors import ArgumentError, SplitterError, UsageError
from splitter.files import write_atomically

app = typer.Typer(
    name="splitter",
    help="Compile any PyTorch model into gradient-isolated local-learning blocks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (CI logs, `| less`) gets wide tables instead of rich's 80-column default.
stdout = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


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


FLAGS = {
    "model": "MODEL",
    "spec": "SPEC",
    "blocks": "--blocks K",
    "budget": "--budget SIZE",
    "out": "-o",
    "force": "--force",
    "plot": "--plot",
}
"""How the command line names the library's arguments in error messages."""


def _run(fn: Callable[[], Any], **flags: str) -> Any:
    """Call the library; print a SplitterError once, without a traceback, and exit with its code.
    An argument the library names is shown as its flag (`FLAGS`, with `flags` on top)."""
    try:
        return fn()
    except SplitterError as e:
        message = e.render(FLAGS | flags) if isinstance(e, ArgumentError) else str(e)
        stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None


def _check_format(fmt: str) -> str:
    if fmt not in ("table", "json"):
        raise UsageError(f"--format `{fmt}` is unknown; use `table` or `json`")
    return fmt


def _model_and_spec(first: str, second: str | None) -> tuple[str | None, str]:
    """`[MODEL] SPEC`: a lone positional ending in .yaml/.yml is the SPEC."""
    if second is not None:
        return first, second
    if first.endswith((".yaml", ".yml")):
        return None, first
    raise UsageError(f"`{first}` is not a spec file; pass `[MODEL] SPEC` with SPEC a .yaml file")


def _check_choices(**given: str | None) -> None:
    allowed = {
        "balance": ("memory", "flops", "params", "units"),
        "aux": ("linear", "conv", "momentum", "infopro", "augmented", "mlaan"),
        "optimizer": ("sgd", "adamw"),
    }
    for name, value in given.items():
        if value is not None and value not in allowed[name]:
            raise UsageError(
                f"--{name} `{value}` is unknown; use one of {', '.join(allowed[name])}"
            )


def _writable(output: str | None, force: bool) -> Path | None:
    if output is None:
        return None
    path = Path(output)
    if path.exists() and not force:
        raise UsageError(
            f"-o `{output}` exists; pass --force to overwrite it, or choose another file"
        )
    if path.is_dir():
        raise UsageError(f"-o `{output}` is a folder; name a .yaml file")
    return path


def _print_notes(report: dict[str, Any]) -> None:
    for note in report["warnings"]:
        stderr.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
    for item in report.get("leafed", []):
        stderr.print(
            f"[yellow]leafed {item['kind']}[/] `{item['fqn']}`: {escape(item['reason'])}",
            highlight=False,
            soft_wrap=True,
        )


def _emit(
    report: dict[str, Any], fmt: str, render: Callable[[dict[str, Any], Console], None]
) -> None:
    _print_notes(report)
    if fmt == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        render(report, stdout)


@app.command()
def inspect(
    model: ModelRef,
    spec: Annotated[
        str | None, typer.Option(help="A split spec: fill `blocks` with its real blocks.")
    ] = None,
    model_arg: ModelArg = None,
    input_shape: InputShape = None,
    input_dtype: InputDtype = None,
    batch_size: BatchSize = None,
    precision: PrecisionOpt = None,
    leaf: Leaf = None,
    fmt: Format = "table",
    plot: Plot = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing --plot file.")] = False,
) -> None:
    """Trace MODEL, annotate its costs and list its legal cut points, units and blocks;
    with --plot, draw them."""
    from splitter import api
    from splitter.report.tables import inspect_report, plan_partition, render

    def build() -> dict[str, Any]:
        _check_format(fmt)
        target = _plot_target(plot, force)
        options = model_options(model_arg, input_shape, input_dtype, batch_size, precision, leaf)
        if spec is None:
            analysis = api.load(model, None, options).analysis
            _draw(target, lambda: (analysis, None))
            return inspect_report(analysis)
        plan = api.plan(model, spec, options)
        _draw(target, lambda: (plan.analysis, plan_partition(plan)))
        return inspect_report(plan.analysis, plan)

    _emit(_run(build), fmt, render)
    _say_plotted(plot)


def _plot_target(plot: str | None, force: bool) -> Path | None:
    from splitter.report.plot import check_plot_path

    return check_plot_path(plot, force) if plot else None


def _draw(target: Path | None, what: Callable[[], tuple[Any, Any]]) -> None:
    if target is None:
        return
    from splitter.report.picture import picture
    from splitter.report.plot import save

    save(picture(*what()), target)


def _say_plotted(plot: str | None) -> None:
    if plot:
        stderr.print(f"wrote {escape(plot)}", highlight=False, soft_wrap=True)


@app.command()
def verify(
    model_or_spec: Annotated[
        str, typer.Argument(metavar="[MODEL] SPEC", help="MODEL (optional) and SPEC.yaml.")
    ],
    spec_path: Annotated[str | None, typer.Argument(metavar="", show_default=False)] = None,
    model_arg: ModelArg = None,
    input_shape: InputShape = None,
    input_dtype: InputDtype = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Samples in the real test batch (default 2).")
    ] = None,
    precision: PrecisionOpt = None,
    leaf: Leaf = None,
    fmt: Format = "table",
) -> None:
    """Check the split on the real model: chained blocks == original, gradient isolation,
    every parameter trained by exactly one block. Exit 0 when all hold, 1 otherwise."""
    from splitter import api
    from splitter.report.tables import render_verification, verification_report

    def build() -> dict[str, Any]:
        _check_format(fmt)
        model, spec = _model_and_spec(model_or_spec, spec_path)
        options = model_options(model_arg, input_shape, input_dtype, None, precision, leaf)
        return verification_report(*api.verify(model, spec, options, batch_size or 2))

    report = _run(build)
    _emit(report, fmt, render_verification)
    if not report["ok"]:
        raise typer.Exit(1)


@app.command()
def partition(
    model: Annotated[
        str | None, typer.Argument(help="MODEL (optional with --spec that has model.ref).")
    ] = None,
    blocks: Annotated[int | None, typer.Option(min=1, help="Number of blocks K.")] = None,
    budget: Annotated[
        str | None, typer.Option(help="Memory budget (8GiB, 512MiB, 8GB, bytes): fewest blocks.")
    ] = None,
    balance: Annotated[str, typer.Option(help="memory, flops, params or units.")] = "memory",
    aux: Annotated[
        str | None,
        typer.Option(help="Auxiliary kind for the cost (default: the spec's, else momentum)."),
    ] = None,
    optimizer: Annotated[
        str | None, typer.Option(help="sgd or adamw (default: the spec's).")
    ] = None,
    spec: Annotated[
        str | None, typer.Option(help="Start from this spec (aux, training, model).")
    ] = None,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Write the spec here.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing -o or --plot file.")] = False,
    plot: Plot = None,
    model_arg: ModelArg = None,
    input_shape: InputShape = None,
    input_dtype: InputDtype = None,
    batch_size: BatchSize = None,
    precision: PrecisionOpt = None,
    leaf: Leaf = None,
    fmt: Format = "table",
) -> None:
    """Choose the cuts that let local training fit in the least memory; write the spec."""
    from splitter.api import partition as run_partition
    from splitter.partitioning.specwriter import spec_yaml
    from splitter.report.tables import partition_report, render_partition

    def build() -> dict[str, Any]:
        _check_format(fmt)
        _check_choices(balance=balance, aux=aux, optimizer=optimizer)
        options = model_options(model_arg, input_shape, input_dtype, batch_size, precision, leaf)
        target = _writable(output, force)
        drawing = _plot_target(plot, force)
        part = run_partition(
            model,
            blocks=blocks,
            budget=budget,
            balance=balance,  # type: ignore[arg-type]  # checked by _check_choices
            aux=aux,
            optimizer=optimizer,
            spec=spec,
            options=options,
        )
        text = spec_yaml(part, part.spec, aux, optimizer)
        _draw(drawing, lambda: (part.analysis, part))
        if target is not None:
            write_atomically(target, text)
        return partition_report(part, text, str(target) if target else None)

    report = _run(build, spec="--spec")
    _say_plotted(plot)
    _print_notes(report)
    if fmt == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    render_partition(report, stderr if output is None else stdout)
    if output is None:
        sys.stdout.write(report["spec_yaml"])


@app.command(name="compile")
def compile_(
    model_or_spec: Annotated[
        str | None,
        typer.Argument(metavar="[MODEL] [SPEC]", help="MODEL and/or SPEC.yaml (either may go)."),
    ] = None,
    spec_path: Annotated[str | None, typer.Argument(metavar="", show_default=False)] = None,
    output: Annotated[
        str | None,
        typer.Option("-o", "--output", help="Package folder (default build/<model name>)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing package folder.")] = False,
    blocks: Annotated[
        int | None, typer.Option(min=2, help="Number of blocks K, balanced on memory (auto).")
    ] = None,
    aux: Annotated[
        str | None, typer.Option(help="Auxiliary kind of every block (default momentum).")
    ] = None,
    model_arg: ModelArg = None,
    input_shape: InputShape = None,
    input_dtype: InputDtype = None,
    batch_size: BatchSize = None,
    precision: PrecisionOpt = None,
    leaf: Leaf = None,
) -> None:
    """Write a runnable, gradient-isolated training package for MODEL split as SPEC says
    (without SPEC: 4 memory-balanced blocks with momentum auxiliaries)."""
    from splitter.api import compile_package

    def build() -> Any:
        _check_choices(aux=aux)
        model, spec = _compile_args(model_or_spec, spec_path)
        options = model_options(model_arg, input_shape, input_dtype, batch_size, precision, leaf)
        return compile_package(
            model, spec, options, out=output, force=force, blocks=blocks, aux=aux
        )

    compiled = _run(build)
    _print_notes({"warnings": [*compiled.notes, *compiled.plan.analysis.model.warnings]})
    cuts = ", ".join(c.name for c in compiled.plan.cuts)
    stderr.print(
        f"wrote {compiled.out}/ ({len(compiled.plan.cuts) + 1} blocks, cut at {escape(cuts)}); "
        f"run: python {compiled.out}/train.py --steps 3",
        highlight=False,
        soft_wrap=True,
    )


def _compile_args(first: str | None, second: str | None) -> tuple[str | None, str | None]:
    if first is None:
        raise UsageError("pass MODEL, SPEC or both, e.g. `splitter compile model.py spec.yaml`")
    if second is not None or first.endswith((".yaml", ".yml")):
        return _model_and_spec(first, second)
    return first, None


@app.command()
def schema() -> None:
    """Print the JSON Schema of the split spec."""
    from schemas import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
