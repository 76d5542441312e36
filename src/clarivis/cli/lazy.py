"""A command group whose commands are imported when they run, so that `clarivis --help` imports
neither torch nor any command's package (0.1 s, against seconds for torch and timm alone).

Each command lives in an area module of clarivis.cli; the group imports that area module the
first time the command is looked up (to run it or show its --help). An area module imports only
cheap modules at the top and calls the package through `clarivis.<name>` (the lazy facade), so
showing a command's help imports no torch either. The top-level help lists every command from the
summary line kept beside its module's name, importing none of them (a test checks each summary
against the command's own help)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, ClassVar

import click
import typer
from typer.core import TyperGroup


@dataclass(frozen=True)
class LazyCommand:
    """Where a command is defined, and what `clarivis --help` says of it."""

    module: str  # an area module of clarivis.cli; its `app` (a typer.Typer) holds the command
    summary: str  # the first sentence of the command's help


def load_command(name: str, entry: LazyCommand) -> click.Command:
    """Import the area module and build the click command `name` from its Typer app."""
    area = importlib.import_module(entry.module)
    command = typer.main.get_group(area.app).commands.get(name)
    if command is None:  # a programming error: the table names a command the module lacks
        raise LookupError(f"{entry.module} defines no command '{name}'")
    return command


class LazyCommands(MutableMapping[str, click.Command]):
    """The group's commands: every name of the table, each imported on first access. Iterating
    gives the names (for listings and "did you mean" suggestions) without importing any."""

    def __init__(self, table: Mapping[str, LazyCommand]) -> None:
        self.table = table
        self.loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self.loaded:
            self.loaded[name] = load_command(name, self.table[name])  # KeyError: no such command
        return self.loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self.loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self.loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter({**self.table, **self.loaded})  # table order: the order of `clarivis --help`

    def __len__(self) -> int:
        return len({**self.table, **self.loaded})


class LazyGroup(TyperGroup):
    """A Typer group over `table` (set by a subclass: Typer builds the group from its class)."""

    table: ClassVar[Mapping[str, LazyCommand]] = {}

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands(self.table)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # names only: TyperGroup's own would import every command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The "Commands" section from the summaries, as click shortens a command's help."""
        listed = [(name, click.Command(name, help=entry.summary)) for name, entry in self.table.items()]
        limit = formatter.width - 6 - max(len(name) for name, _ in listed)  # click's spacing
        with formatter.section("Commands"):
            formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in listed])
