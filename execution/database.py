"""Engines and schema migrations of the status store: SQLite embedded, PostgreSQL in production."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from execution.redaction import redact_url

log = structlog.get_logger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 10_000


class SchemaNotCurrent(Exception):
    """The database is behind the code's migrations; `switchyard db upgrade` fixes it."""


def make_engine(database_url: str) -> Engine:
    """An engine tuned for many short transactions from threads and worker processes."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=16,
            max_overflow=16,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("", "psycopg2"):
        url = url.set(drivername="postgresql+psycopg")  # psycopg 3 is what we ship
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while workers write; the busy timeout makes writers wait their
    # turn instead of failing; NORMAL sync is durable across process crashes in WAL mode.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config(engine: Engine) -> Config:
    """Alembic pointed at the packaged migrations, reusing this engine."""
    config = Config()
    config.set_main_option("script_location", str(files("migrations")))
    config.set_main_option("sqlalchemy.url", redact_url(str(engine.url)))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to `revision`."""
    command.upgrade(alembic_config(engine), revision)
    log.info("db.upgraded", revision=revision, url=redact_url(str(engine.url)))


def prepare(engine: Engine, *, migrate: bool) -> None:
    """Migrate a database Switchyard owns (`migrate`); refuse one that is behind otherwise."""
    if migrate:
        upgrade(engine)
    else:
        check_current(engine)


def check_current(engine: Engine) -> None:
    """Refuse to run against a schema the code does not match."""
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current != head:
        raise SchemaNotCurrent(
            f"database schema is at {current or 'nothing'}, code needs {head}: "
            "run `switchyard db upgrade`"
        )
