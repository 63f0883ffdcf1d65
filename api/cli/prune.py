"""`switchyard db prune`: old finished tasks deleted by hand, straight on DATABASE_URL."""

from __future__ import annotations

from typing import Annotated

import typer

from api.cli.console import fail, out, settings_or_exit
from api.cli.windows import window_start
from execution import database, retention
from execution.database import SchemaNotCurrent
from execution.logs import configure_logging
from execution.redaction import redact_url
from execution.store import TaskStore


def prune(
    older_than: Annotated[
        str,
        typer.Option(
            help="Delete tasks finished and unchanged for this long: 90s, 15m, 12h, 30d.",
            show_default=False,
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")
    ] = False,
) -> None:
    """Delete COMPLETED, FAILED and CANCELLED tasks older than --older-than, with their events,
    RETENTION_BATCH tasks per transaction: what the periodic job does (RETENTION_DAYS), now."""
    settings = settings_or_exit()
    configure_logging(level=settings.log_level, json_output=settings.log_json)
    before = window_start(older_than, option="--older-than")
    engine = database.make_engine(settings.database_url)
    try:
        database.check_current(engine)
        pruned = retention.prune(
            TaskStore(engine), before=before, batch=settings.retention_batch, dry_run=dry_run
        )
    except SchemaNotCurrent as exc:
        fail(str(exc))
    except Exception as exc:  # a database that cannot be reached, say
        fail(f"prune failed: {type(exc).__name__}: {exc}")
    finally:
        engine.dispose()
    out.print(
        f"{'would delete' if dry_run else 'deleted'} {pruned.tasks} tasks and {pruned.events} "
        f"events finished before {before:%Y-%m-%d %H:%M:%S} UTC in "
        f"{redact_url(settings.database_url)}",
        highlight=False,
        soft_wrap=True,
    )
