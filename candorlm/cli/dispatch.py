"""From the command table to click commands, one at a time.

`candorlm train ...` imports `candorlm.cli.train` and builds the `train` command alone: the other
commands' modules, and the libraries behind them, are never imported. `candorlm --help` lists the
table from the commands' docstrings, which import no library either.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Union

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from candorlm.cli import extras
from candorlm.cli.options import command_callback

# name -> "module:function" (a command) or (help, {name -> ...}) (a group of commands)
Table = dict[str, Union[str, tuple[str, "Table"]]]


def load(entry: str) -> Callable:
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(f"candorlm.cli.{module}"), name)


def _panel(func: Callable) -> str | None:
    """The heading a command is listed under: its module's PANEL (the area it belongs to)."""
    return getattr(inspect.getmodule(func), "PANEL", None)


def build(func: Callable, name: str) -> Any:
    """The click command for `func`: its own parameters and the options derived from the library."""
    one = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    one.command(name)(command_callback(func))
    command = typer.main.get_command(one)
    command.name = name
    return command


class CommandTable(TyperGroup):
    """A group whose commands are looked up in `table` and built only when asked for."""

    table: Table = {}

    def __init__(self, *, table: Table | None = None, **attrs: Any):
        attrs.setdefault("commands", {})
        super().__init__(**attrs)
        if table is not None:
            self.table = table
        self._listing = False

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(self.table)

    def get_command(self, ctx: typer.Context, name: str) -> Any:
        entry = self.table.get(name)
        if entry is None:
            return None
        if isinstance(entry, tuple):
            help_text, table = entry
            panel = _panel(load(next(iter(table.values())))) if self._listing else None
            return CommandTable(name=name, table=table, help=help_text, no_args_is_help=True,
                                rich_markup_mode=self.rich_markup_mode, rich_help_panel=panel)
        func = load(entry)
        if self._listing:  # a line in the list: the docstring is enough
            summary = " ".join((inspect.getdoc(func) or "").split("\n\n")[0].split())
            return TyperCommand(name, help=escape(summary), rich_help_panel=_panel(func))
        path = f"{ctx.command_path.partition(' ')[2]} {name}".strip()
        extras.check(getattr(func, "__candorlm_needs__", ()), path)
        return build(func, name)

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


def table_group(table: Table) -> type[CommandTable]:
    """A CommandTable class over `table` (typer makes the top-level group from a class)."""
    return type("Commands", (CommandTable,), {"table": table})
