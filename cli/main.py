"""`splitter` commands: each parses options, makes one library call, prints the result."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import console
from cli.arguments import compile_args, model_and_spec, writable
from cli.options import (
    BALANCES,
    OPTIMIZERS,
    BatchSize,
    Format,
    InputDtype,
    InputShape,
    Leaf,
    ModelArg,
    ModelRef,
    Plot,
    PrecisionOpt,
    Wide,
    check_choices,
    either,
    model_options,
)
from cli.usage import Command, Group, usage
from schemas.auxiliary import AUX_KINDS
from splitter.files import write_atomically

app = typer.Typer(
    cls=Group,
    name="splitter",
    help="Compile any PyTorch model into gradient-isolated local-learning blocks.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        import splitter

        print(f"splitter {splitter.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
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
    return console.run(fn, FLAGS | flags)


@app.command(cls=Command)
def inspect(
    model: ModelRef,
    spec: Annotated[
        str | None,
        typer.Option(metavar="SPEC", help="A split spec: fill `blocks` with its real blocks."),
    ] = None,
    model_arg: ModelArg = None,
    input_shape: InputShape = None,
    input_dtype: InputDtype = None,
    batch_size: BatchSize = None,
    precision: PrecisionOpt = None,
    leaf: Leaf = None,
    fmt: Format = "table",
    wide: Wide = False,
    plot: Plot = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing --plot file.")
    ] = False,
) -> None:
    """Trace MODEL, annotate its costs and list its legal cut points, units and blocks;
    with --plot, draw them."""
    from splitter import api
    from splitter.report.tables import inspect_report, plan_partition, render

    def build() -> dict[str, Any]:
        check_choices(format=fmt)
        target = _plot_target(plot, force)
        options = model_options(model_arg, input_shape, input_dtype, batch_size, precision, leaf)
        if spec is None:
            analysis = api.load(model, None, options).analysis
            _draw(target, lambda: (analysis, None))
            return inspect_report(analysis)
        plan = api.plan(model, spec, options)
        _draw(target, lambda: (plan.analysis, plan_partition(plan)))
        return inspect_report(plan.analysis, plan)

    console.emit(_run(build), fmt, render, wide)
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
        console.say(f"wrote {plot}")


MODEL_OR_SPEC = (
    "`path/model.py[:NAME]`, `torchvision:NAME` or `timm:NAME`; leave it out when SPEC's "
    "`model.ref` names the model."
)
SPEC_HELP = "The split spec, a .yaml file"


@app.command(cls=usage("[MODEL] SPEC"))
def verify(
    model_or_spec: Annotated[
        str | None, typer.Argument(metavar="MODEL", help=MODEL_OR_SPEC, show_default=False)
    ] = None,
    spec_path: Annotated[
        str | None, typer.Argument(metavar="SPEC", help=f"{SPEC_HELP}.", show_default=False)
    ] = None,
    model_arg: ModelArg = None,
    input_shape: InputShape = None,
    input_dtype: InputDtype = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="Samples in the real test batch (default 2)."),
    ] = None,
    precision: PrecisionOpt = None,
    leaf: Leaf = None,
    fmt: Format = "table",
    wide: Wide = False,
) -> None:
    """Check the split on the real model: chained blocks == original, gradient isolation,
    every parameter trained by exactly one block. Exit 0 when all hold, 1 otherwise."""
    from splitter import api
    from splitter.report.tables import render_verification, verification_report

    def build() -> dict[str, Any]:
        check_choices(format=fmt)
        model, spec = model_and_spec(model_or_spec, spec_path)
        options = model_options(model_arg, input_shape, input_dtype, None, precision, leaf)
        return verification_report(*api.verify(model, spec, options, batch_size or 2))

    report = _run(build)
    console.emit(report, fmt, render_verification, wide)
    if not report["ok"]:
        raise typer.Exit(1)


@app.command(cls=Command)
def partition(
    model: Annotated[
        str | None,
        typer.Argument(
            metavar="MODEL", help="The model; optional with a --spec that has model.ref."
        ),
    ] = None,
    blocks: Annotated[
        int | None, typer.Option(min=1, metavar="K", help="Number of blocks K.")
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(
            metavar="SIZE", help="Memory budget (8GiB, 512MiB, 8GB, bytes): fewest blocks."
        ),
    ] = None,
    balance: Annotated[
        str, typer.Option(metavar="MEASURE", help=f"What to balance: {either(BALANCES)}.")
    ] = "memory",
    aux: Annotated[
        str | None,
        typer.Option(
            metavar="KIND",
            help=f"Auxiliary kind for the cost: {either(AUX_KINDS)} (default: the spec's, "
            "else momentum).",
        ),
    ] = None,
    optimizer: Annotated[
        str | None,
        typer.Option(metavar="NAME", help=f"{either(OPTIMIZERS)} (default: the spec's)."),
    ] = None,
    spec: Annotated[
        str | None,
        typer.Option(metavar="SPEC", help="Start from this spec (aux, training, model)."),
    ] = None,
    output: Annotated[
        str | None, typer.Option("-o", "--output", metavar="FILE", help="Write the spec here.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing -o or --plot file.")
    ] = False,
    plot: Plot = None,
    model_arg: ModelArg = None,
    input_shape: InputShape = None,
    input_dtype: InputDtype = None,
    batch_size: BatchSize = None,
    precision: PrecisionOpt = None,
    leaf: Leaf = None,
    fmt: Format = "table",
    wide: Wide = False,
) -> None:
    """Choose the cuts that let local training fit in the least memory; write the spec."""
    from splitter.api import partition as run_partition
    from splitter.partitioning.specwriter import spec_yaml
    from splitter.report.tables import partition_report, render_partition

    def build() -> dict[str, Any]:
        check_choices(format=fmt, balance=balance, aux=aux, optimizer=optimizer)
        options = model_options(model_arg, input_shape, input_dtype, batch_size, precision, leaf)
        target = writable(output, force)
        drawing = _plot_target(plot, force)
        part = run_partition(
            model,
            blocks=blocks,
            budget=budget,
            balance=balance,  # type: ignore[arg-type]  # checked by check_choices
            aux=aux,
            optimizer=optimizer,
            spec=spec,
            options=options,
        )
        if len(part.blocks) == 1:  # the warning says why; there is no split to write
            written = f"; `{target}` is not written" if target else ""
            part.analysis.model.warnings.append(f"one block is end to end: no spec{written}")
            return partition_report(part, "", None)
        text = spec_yaml(
            part, part.spec, aux, optimizer, model_args=options.model_args, path=target
        )
        _draw(drawing, lambda: (part.analysis, part))
        if target is not None:
            write_atomically(target, text)
        return partition_report(part, text, str(target) if target else None)

    report = _run(build, spec="--spec", model_args="--model-arg")
    _say_plotted(plot)
    console.print_notes(report)
    if fmt == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    render_partition(report, console.stderr(wide) if output is None else console.stdout(wide))
    if output is None:
        sys.stdout.write(report["spec_yaml"])


@app.command(name="compile", cls=Command)
def compile_(
    model_or_spec: Annotated[
        str | None, typer.Argument(metavar="MODEL", help=MODEL_OR_SPEC, show_default=False)
    ] = None,
    spec_path: Annotated[
        str | None,
        typer.Argument(
            metavar="SPEC",
            help=f"{SPEC_HELP}; without it, 4 memory-balanced blocks.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "-o", "--output", metavar="FOLDER", help="Package folder (default build/<model name>)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing package folder.")
    ] = False,
    blocks: Annotated[
        int | None,
        typer.Option(min=2, metavar="K", help="Number of blocks K, balanced on memory (auto)."),
    ] = None,
    aux: Annotated[
        str | None,
        typer.Option(
            metavar="KIND",
            help=f"Auxiliary kind of every block: {either(AUX_KINDS)} (default momentum).",
        ),
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
        check_choices(aux=aux)
        model, spec = compile_args(model_or_spec, spec_path)
        options = model_options(model_arg, input_shape, input_dtype, batch_size, precision, leaf)
        return compile_package(
            model, spec, options, out=output, force=force, blocks=blocks, aux=aux
        )

    compiled = _run(build)
    console.print_notes({"warnings": [*compiled.notes, *compiled.plan.analysis.model.warnings]})
    console.say(f"task: {compiled.task.line}")
    cuts = ", ".join(c.name for c in compiled.plan.cuts)
    console.say(
        f"wrote {compiled.out}/ ({len(compiled.plan.cuts) + 1} blocks, cut at {cuts}); "
        f"run: python {compiled.out}/train.py --steps 3"
    )


@app.command(cls=Command)
def schema() -> None:
    """Print the JSON Schema of the split spec."""
    from schemas import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")


@app.command(name="plot-run", cls=usage("RUN_DIR..."))
def plot_run(
    runs: Annotated[
        list[str],
        typer.Argument(
            metavar="RUN_DIR",
            help="Folders train.py wrote (its --out), e.g. a local and an e2e run.",
        ),
    ],
    output: Annotated[
        str, typer.Option("-o", "--output", metavar="FILE", help="A .svg, .png or .html file.")
    ],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Draw each block's training loss and accuracy, and the test accuracy, against the steps
    of one or more runs (local beside e2e)."""
    from splitter.report.curves import plot_runs
    from splitter.report.plot import check_plot_path

    def build() -> None:
        plot_runs([Path(run) for run in runs], check_plot_path(output, force))

    _run(build, plot="-o")
    console.say(f"wrote {output}")
