"""What every CLI command group shares: stdout, stderr, one-line failures, the settings."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

from execution.redaction import redact_text
from execution.settings import Settings, SettingsError, load_settings

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, no traceback, a non-zero exit."""
    # soft_wrap: Rich would otherwise break the line at the console width (80 when piped).
    err.print(f"[bold red]error:[/] {redact_text(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_or_exit() -> Settings:
    """The settings, or exit naming the bad one."""
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc))
