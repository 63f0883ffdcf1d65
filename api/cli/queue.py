"""`switchyard queue ...`: what waits, and the operations on it, through a running API."""

from __future__ import annotations

import typer

queue_app = typer.Typer(
    help="The queue: stats, pause and resume, purge.",
    no_args_is_help=True,
)
