"""Engines and schema migrations of the status store: SQLite embedded, PostgreSQL in production."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import Any

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from execution.redaction import redact_url

log = structlog.get_logger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 10_000
# pg_advisory_lock key that serialises migrations across processes ("swyd" in ASCII).
MIGRATION_LOCK_KEY = 0x73777964


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
    """Apply migrations up to `revision`, one process at a time."""
    with migration_lock(engine):
        command.upgrade(alembic_config(engine), revision)
    log.info("db.upgraded", revision=revision, url=redact_url(str(engine.url)))


def migrate(database_url: str, revision: str = "head") -> None:
    """`upgrade` the database at `database_url` through an engine of its own, closed after:
    for a process that migrates a store and then leaves it to others (`switchyard db
    upgrade`)."""
    engine = make_engine(database_url)
    try:
        upgrade(engine, revision)
    finally:
        engine.dispose()


@contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Held while migrating: an API and a worker started together must not both build the schema.

    Alembic reads the version table and then runs DDL, so without a lock two processes on a
    fresh database both see nothing and the second fails on "table already exists".
    """
    if engine.url.get_backend_name() == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                conn.commit()
        return
    database = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or database in (None, "", ":memory:"):
        yield
        return
    # A file beside the database, like SQLite's own -wal and -shm: flock on the database file
    # itself would be unsafe, because closing any descriptor of it drops SQLite's POSIX locks.
    # Closing the lock file releases the flock, even on an exception.
    with open(f"{database}-migrate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


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
