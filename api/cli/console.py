"""What every CLI command group shares: stdout, stderr, one-line failures, tables, the settings."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from api.settings import Settings, load_settings
from execution.redaction import redact_text
from execution.settings import SettingsError

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, no traceback, a non-zero exit."""
    # soft_wrap: Rich would otherwise break the line at the console width (80 when piped).
    err.print(f"[bold red]error:[/] {redact_text(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_table(table: Table) -> None:
    """Print a table on stdout: fitted to a terminal, but whole rows into a pipe or a file."""
    if out.is_terminal:
        out.print(table)
        return
    # Nobody reads a pipe at 80 columns: a row broken in two defeats grep, awk and copying an
    # id, so the table gets the width its longest row needs.
    natural = Measurement.get(out, out.options.update_width(sys.maxsize), table).maximum
    Console(file=out.file, width=max(natural, 1)).print(table)


def settings_or_exit() -> Settings:
    """The settings, or exit naming the bad one."""
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc))
