"""The `switchyard` app: serve, worker, db and tools here; tasks, keys and rollout joined in."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Annotated

import typer
from rich.table import Table

from api.cli import (
    pause,  # noqa: F401 (registers pause and resume on queue_app)
    prune,
    rollout_checks,  # noqa: F401 (registers compare and advance on rollout_app)
    tasks,
)
from api.cli.bootstrap import KeyFileError, ensure_operator_key
from api.cli.console import err, fail, out, print_table, settings_or_exit
from api.cli.drill import drill
from api.cli.failed import failed_app
from api.cli.keys import keys_app
from api.cli.queue import queue_app
from api.cli.rollout import rollout_app
from api.settings import Settings
from dispatch.rollout.store import EnvironmentApplied, EnvironmentOutcome
from execution.database import SchemaNotCurrent
from execution.logs import configure_logging
from execution.redaction import redact_url
from execution.settings import SettingsError
from execution.tools.registry import Tool, ToolLoadError, load_registry

app = typer.Typer(
    help="Switchyard: move background jobs between threads and Celery, gradually.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema and retention.", no_args_is_help=True)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address.", show_default="the HOST setting")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port.", show_default="the PORT setting")] = None,
) -> None:
    """Run the API and the thread backend (and publish to Celery if USE_CELERY=true)."""
    import uvicorn

    from api.app import create_app
    from api.runtime import Runtime

    settings = settings_or_exit()
    configure_logging(level=settings.log_level, json_output=settings.log_json)
    try:
        runtime = Runtime.build(settings)
        runtime.prepare_database()
        applied = runtime.rollout.apply_environment()
        first_key = ensure_operator_key(runtime.keys, settings.operator_key_file)
    except (ToolLoadError, SchemaNotCurrent, KeyFileError) as exc:
        fail(str(exc))
    except Exception as exc:  # a database that cannot be reached, say
        fail(f"cannot start: {type(exc).__name__}: {exc}")
    if settings.use_celery and not applied.state.policy(use_celery=True).sends_any_to_celery:
        err.print(
            f"[bold yellow]WARNING:[/] USE_CELERY=true but the rollout in force (version "
            f"{applied.state.version}) sends NO task to Celery: 0 % and no tool override; "
            "`switchyard rollout set` moves traffic",
            highlight=False,
            soft_wrap=True,
        )
    err.print(startup_banner(settings, runtime.registry, applied), highlight=False, soft_wrap=True)
    if first_key is not None:
        err.print(
            "No API key existed, so an operator key was created. It is shown this once and kept "
            f"in {settings.operator_key_file} (readable by you only); the CLI uses it from there:"
            f"\n\n    {first_key.token}\n",
            highlight=False,
            soft_wrap=True,
        )
    uvicorn.run(
        create_app(runtime),
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_timeout) + 5,
    )


@app.command()
def worker(
    queues: Annotated[
        str | None,
        typer.Option(help="Comma-separated queues.", show_default="every tool's queue"),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1, help="Processes.", show_default="the CELERY_WORKER_CONCURRENCY setting"
        ),
    ] = None,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, threads or solo.")] = "prefork",
    hostname: Annotated[str, typer.Option(help="Worker node name.")] = "switchyard@%h",
) -> None:
    """Run a Celery worker with Switchyard's app, settings and tools loaded.

    The same as `celery -A api.worker worker -Q <queues> -c <n>`.
    """
    from api.worker import build_worker_app, prepare_worker_database
    from backends.celery_app import queues_of

    settings = settings_or_exit()
    configure_logging(level=settings.log_level, json_output=settings.log_json)
    try:
        registry = load_registry(settings.tool_modules)
        celery_app = build_worker_app(settings, registry=registry)
        prepare_worker_database(settings)
    except (SettingsError, ToolLoadError, SchemaNotCurrent) as exc:
        fail(str(exc))
    except Exception as exc:  # a database that cannot be reached, say
        fail(f"cannot start: {type(exc).__name__}: {exc}")
    celery_app.worker_main(
        [
            # Celery prints its banner straight to the terminal: not a JSON line.
            *(["--quiet"] if settings.log_json else []),
            "worker",
            f"--queues={queues or ','.join(queues_of(registry))}",
            f"--concurrency={concurrency or settings.celery_worker_concurrency}",
            f"--pool={pool}",
            f"--hostname={hostname}",
            f"--loglevel={settings.log_level}",
            "--task-events",
        ]
    )


def startup_banner(
    settings: Settings, tools: Iterable[str], applied: EnvironmentApplied | None = None
) -> str:
    """What this process runs against, with every credential masked, and the rollout in force
    with where it came from (not merely what this process's environment says)."""
    broker = f" broker={redact_url(settings.broker_url)}" if settings.use_celery else ""
    rollout = "" if applied is None else f" rollout={rollout_in_force(applied)}"
    return (
        f"switchyard: database={redact_url(settings.database_url)}{broker} "
        f"use_celery={settings.use_celery}{rollout} "
        f"thread_workers={settings.background_workers} tools={','.join(tools)}"
    )


def rollout_in_force(applied: EnvironmentApplied) -> str:
    """`25% (version 7, set by carol; CELERY_ROLLOUT_PERCENTAGE=5% already applied)` and
    the like."""
    state, env = applied.state, applied.percentage
    made = f"version {state.version}, {state.source} by {state.updated_by}"
    if state.rolled_back and state.restore_point is not None:
        made += f"; rolled back, restore returns to {state.restore_point['percentage']:g}%"
    if applied.outcome is EnvironmentOutcome.SEEDED:
        said = "first start: " + (
            "the default (CELERY_ROLLOUT_PERCENTAGE not set)"
            if env is None
            else f"CELERY_ROLLOUT_PERCENTAGE={env:g}%"
        )
    elif env is None:
        said = "CELERY_ROLLOUT_PERCENTAGE not set"
    else:
        said = f"CELERY_ROLLOUT_PERCENTAGE={env:g}% " + {
            EnvironmentOutcome.ADOPTED: "adopted from this start",
            EnvironmentOutcome.UNCHANGED: "already applied",
            EnvironmentOutcome.STALE: "is an older value, ignored",
        }.get(applied.outcome, str(applied.outcome))
    return f"{state.percentage:g}% ({made}; {said})"


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply schema migrations to DATABASE_URL."""
    from execution import database

    settings = settings_or_exit()
    configure_logging(level=settings.log_level, json_output=settings.log_json)
    try:
        database.migrate(settings.database_url, revision)
    except Exception as exc:
        fail(f"migration failed: {type(exc).__name__}: {exc}")
    out.print(f"database at {revision}: {settings.redacted()['database_url']}", highlight=False)


@app.command()
def tools() -> None:
    """List the tools registered by SWITCHYARD_TOOLS."""
    settings = settings_or_exit()
    try:
        registry = load_registry(settings.tool_modules)
    except ToolLoadError as exc:
        fail(str(exc))
    table = Table("tool_id", "queue", "priority", "soft / hard limit (s)", "description")
    for spec in registry.values():
        limits = time_limits(spec, settings)
        table.add_row(spec.tool_id, spec.queue, str(spec.priority), limits, spec.description)
    print_table(table)


def time_limits(spec: Tool, settings: Settings) -> str:
    """The soft and hard limits a tool's tasks run under, saying which are the settings' default."""
    soft = spec.soft_time_limit or settings.celery_task_soft_time_limit
    hard = spec.time_limit or settings.celery_task_time_limit
    defaulted = [
        name
        for name, own in (("soft", spec.soft_time_limit), ("hard", spec.time_limit))
        if own is None
    ]
    if len(defaulted) == 2:
        return f"{soft} / {hard} (default)"
    if defaulted:
        return f"{soft} / {hard} (default {defaulted[0]})"
    return f"{soft} / {hard}"


# Registered here, in the order `--help` lists them.
app.command()(tasks.submit)
app.command()(tasks.status)
app.command()(tasks.cancel)
app.command()(tasks.retry)
app.command("tasks")(tasks.count_tasks)
db_app.command("prune")(prune.prune)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(rollout_app, name="rollout")
app.add_typer(queue_app, name="queue")
app.add_typer(failed_app, name="failed")
app.command()(drill)


def main() -> None:
    """Run the CLI; Ctrl-C exits 130 without a traceback."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
