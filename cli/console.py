"""Where the commands print: rich consoles sized to the terminal, errors once, notes on stderr."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import typer
from rich.console import Console
from rich.markup import escape

from splitter.errors import ArgumentError, SplitterError

PIPED_WIDTH = 160
"""Piped output without COLUMNS (CI logs, `| less`) gets wide tables, not rich's 80 columns."""
WIDE = 10_000
"""The width `--wide` renders at: every column shown, however wide the table."""

Render = Callable[[dict[str, Any], Console], None]


def _width(stream: TextIO, wide: bool) -> int | None:
    """`None` lets rich take the terminal's width, or COLUMNS when it is set."""
    if wide:
        return WIDE
    if stream.isatty() or os.environ.get("COLUMNS", "").isdigit():
        return None
    return PIPED_WIDTH


def stdout(wide: bool = False) -> Console:
    """A console on the current stdout (made per call: tests swap the streams and COLUMNS)."""
    return Console(soft_wrap=False, width=_width(sys.stdout, wide))


def stderr(wide: bool = False) -> Console:
    """A console on the current stderr, sized like `stdout`."""
    return Console(stderr=True, width=_width(sys.stderr, wide))


def say(text: str) -> None:
    """One paragraph on stderr, verbatim (no markup), wrapped by the terminal."""
    stderr().print(text, markup=False, highlight=False, soft_wrap=True)


def run(fn: Callable[[], Any], flags: Mapping[str, str]) -> Any:
    """Call the library; print a SplitterError once, without a traceback, and exit with its code.
    An argument the library names is shown as its flag (`flags`)."""
    try:
        return fn()
    except SplitterError as e:
        message = e.render(flags) if isinstance(e, ArgumentError) else str(e)
        stderr().print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None


def print_notes(report: dict[str, Any]) -> None:
    """The report's warnings and leafed modules, on stderr."""
    console = stderr()
    for note in report["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
    for item in report.get("leafed", []):
        console.print(
            f"[yellow]leafed {item['kind']}[/] `{item['fqn']}`: {escape(item['reason'])}",
            highlight=False,
            soft_wrap=True,
        )


def emit(report: dict[str, Any], fmt: str, render: Render, wide: bool) -> None:
    """Notes on stderr, then the report on stdout: JSON only, or tables fit to the console."""
    print_notes(report)
    if fmt == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        render(report, stdout(wide))
