"""What the CLI prints tables with: fitted to a terminal, whole rows into a pipe."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.table import Table

from api.cli import console

SENTENCE = "a sentence far longer than the forty columns of this narrow console"


def _table() -> Table:
    table = Table("id", "words")
    table.add_row("abc123", SENTENCE)
    return table


def test_a_piped_table_keeps_each_row_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    printed = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=printed, width=40))

    console.print_table(_table())

    (row,) = [line for line in printed.getvalue().splitlines() if "abc123" in line]
    assert SENTENCE in row


def test_a_table_on_a_terminal_fits_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    printed = io.StringIO()
    terminal = Console(file=printed, width=40, force_terminal=True, color_system=None)
    monkeypatch.setattr(console, "out", terminal)

    console.print_table(_table())

    assert all(len(line) <= 40 for line in printed.getvalue().splitlines())
