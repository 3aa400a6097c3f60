"""How the commands show themselves in `--help`: usage lines written the way a user types them
(`[MODEL] SPEC`), a metavar for each option that takes a value, none for flags."""

from __future__ import annotations

from typing import Any, ClassVar

from typer._click.core import Context, Parameter
from typer._click.utils import echo
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


class _Argument(TyperArgument):
    """An argument shown by its name alone (`MODEL`), without a `<str>` beside it."""

    def display_type_rich(self, ctx: Context) -> str | None:
        return None


def _plain(params: list[Parameter]) -> list[Parameter]:
    """Arguments without a type label; flags (`--force`, `--help`) without `<bool>`."""
    for param in params:
        if type(param) is TyperArgument:
            param.__class__ = _Argument
        elif isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A command whose usage line shows a required argument as `NAME`, an optional one as
    `[NAME]`, or `ARGUMENTS` when set: click fills positionals in order, so a command whose
    first argument is the optional one (`[MODEL] SPEC`) takes both as optional and sorts them
    itself."""

    ARGUMENTS: ClassVar[str | None] = None

    def __init__(self, name: str | None, **settings: Any) -> None:
        super().__init__(name, **settings)
        if self.short_help is None and self.help:  # `splitter --help` lists it on one line
            self.short_help = " ".join(self.help.split("\n\n")[0].split())

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _plain(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        if self.ARGUMENTS is not None:
            return [*pieces, self.ARGUMENTS]
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.display_name_raw
                pieces.append(name if param.required else f"[{name}]")
        return pieces


def usage(arguments: str) -> type[Command]:
    """A `Command` whose usage line shows its arguments as `arguments`, e.g. `[MODEL] SPEC`."""

    class Usage(Command):
        ARGUMENTS = arguments

    return Usage


class Group(TyperGroup):
    """The `splitter` group: alone, it prints its help and exits 0."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _plain(super().get_params(ctx))

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        if not args and not ctx.resilient_parsing:
            echo(ctx.get_help(), color=ctx.color)
            ctx.exit(0)
        return super().parse_args(ctx, args)
