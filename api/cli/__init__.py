"""The `switchyard` command: a client of the HTTP API, plus the operator's local commands."""

from __future__ import annotations


def main() -> None:
    """Console-script entry point; imports the commands only when run, so this package is light."""
    from api.cli.app import main as run

    run()
