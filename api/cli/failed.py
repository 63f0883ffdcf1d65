"""`switchyard failed ...`: the tasks that failed for good, listed and retried in bulk."""

from __future__ import annotations

import typer

failed_app = typer.Typer(
    help="Failed tasks: list them, retry them in bulk.",
    no_args_is_help=True,
)
