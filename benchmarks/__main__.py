"""`python -m benchmarks`: start what the comparisons need, run them all, print one table."""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console

from benchmarks import (
    api_load,
    celery_backends,
    floors,
    memory,
    rollback_under_load,
    rollout_propagation,
    routing,
    soak,
    thread_backend,
)
from benchmarks.context import BenchContext, Sizes
from benchmarks.report import render
from benchmarks.runner import Row
from benchmarks.services import STORES, Services, Store
from execution.logs import configure_logging

COMPARISONS: dict[str, Callable[[BenchContext], list[Row]]] = {
    # Floors first: the other comparisons express their per-task costs in its units.
    "floors": floors.run,
    "routing": routing.run,
    "thread": thread_backend.run,
    "celery": celery_backends.run,
    "api": api_load.run,
    "rollout": rollout_propagation.run,
    "rollback": rollback_under_load.run,
    "memory": memory.run,
    "soak": soak.run,
}

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    quick: Annotated[
        bool, typer.Option(help="Tiny sizes, 2 rounds: checks the suite runs.")
    ] = False,
    full: Annotated[
        bool, typer.Option(help="Larger sizes; the worker runs 100,000 tasks.")
    ] = False,
    only: Annotated[
        list[str] | None, typer.Option(help=f"Run only these: {', '.join(COMPARISONS)}.")
    ] = None,
    authorization: Annotated[
        str | None, typer.Option(help="Authorization header for API requests, e.g. 'Bearer KEY'.")
    ] = None,
    server_env: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE for the Switchyard API server; repeatable.")
    ] = None,
    store: Annotated[
        list[str] | None,
        typer.Option(help=f"Status stores to measure on: {', '.join(STORES)} (default both)."),
    ] = None,
    keep: Annotated[bool, typer.Option(help="Keep the work directory (databases, logs).")] = False,
) -> None:
    """Run every comparison side by side and print the table of ratios."""
    if quick and full:
        raise typer.BadParameter("--quick and --full exclude each other")
    chosen = only or list(COMPARISONS)
    unknown = sorted(set(chosen) - set(COMPARISONS))
    if unknown:
        raise typer.BadParameter(
            f"unknown comparison {', '.join(unknown)}; known: {', '.join(COMPARISONS)}"
        )
    stores = _stores(store)
    preset = "quick" if quick else "full" if full else "default"
    sizes = Sizes.preset(preset)
    extra_env = dict(_key_value(item) for item in server_env or [])

    out = Console(width=None if sys.stdout.isatty() else 240)
    progress = Console(stderr=True)
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    _log_to(workdir / "benchmark.log")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so the servers are stopped on SIGTERM too
    rows: list[Row] = []
    try:
        with Services.for_run(workdir) as services:
            ctx = BenchContext(
                sizes=sizes,
                services=services,
                console=progress,
                authorization=authorization,
                server_env=extra_env,
                stores=stores,
            )
            for name, comparison in COMPARISONS.items():
                if name in chosen:
                    progress.rule(name)
                    with services.scope() as scoped:
                        ctx.services = scoped
                        rows.extend(comparison(ctx))
                    ctx.services = services
    except BaseException:
        progress.print(f"benchmark failed; logs and databases kept in {workdir}")
        raise
    render(rows, console=out, rounds=sizes.rounds, preset=preset)
    if keep:
        progress.print(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def _stores(given: list[str] | None) -> tuple[Store, ...]:
    if not given:
        return STORES
    unknown = sorted(set(given) - set(STORES))
    if unknown:
        raise typer.BadParameter(f"unknown store {', '.join(unknown)}; known: {', '.join(STORES)}")
    return tuple(name for name in STORES if name in given)


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"--server-env wants KEY=VALUE, got {item!r}")
    return key, value


def _log_to(path: Path) -> None:
    # Switchyard runs in this process (dispatcher, thread backend) and logs as in production,
    # at INFO; its lines go to a file so the terminal shows only progress and the table.
    configure_logging(level="INFO", json_output=False)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(path.open("a", encoding="utf-8"))


def _exit_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(143)


if __name__ == "__main__":
    app()
