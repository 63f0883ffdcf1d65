"""How the hand-written baselines reach a status store: the bare driver, Switchyard's settings.

The baselines that skip SQLAlchemy (the thread backend's floor, the durable Celery path, the
raw-insert endpoint) connect, mark parameters and write times and JSON the same way, from
here: with the settings `execution.database.make_engine` gives its connections, and a time as
the text SQLAlchemy's SQLite dialect stores, so their rows read back as Switchyard's do.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Json
from sqlalchemy.engine import make_url

from execution.database import SQLITE_BUSY_TIMEOUT_MS

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)
"""What `execution.database.make_engine` sets on every SQLite connection."""


@dataclass(frozen=True, slots=True)
class BareStore:
    """A status store as the bare driver sees it: a SQLite file, or a PostgreSQL conninfo."""

    sqlite: bool
    target: str

    @classmethod
    def of(cls, database_url: str) -> BareStore:
        """The store a Switchyard database URL names."""
        url = make_url(database_url)
        if url.get_backend_name() == "sqlite" and url.database:
            return cls(sqlite=True, target=url.database)
        if url.get_backend_name() == "postgresql":
            conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
            return cls(sqlite=False, target=conninfo)
        raise ValueError(f"no bare-driver baseline for {url.get_backend_name()} URLs")

    def connect(self, **sqlite_options: Any) -> Any:
        """A new connection: `sqlite3` with the busy timeout and PRAGMAs (and `sqlite_options`,
        say `isolation_level`), or `psycopg` 3, not autocommit."""
        if not self.sqlite:
            return psycopg.connect(self.target)
        conn = sqlite3.connect(self.target, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, **sqlite_options)
        for pragma in SQLITE_PRAGMAS:
            conn.execute(pragma)
        return conn

    def sql(self, statement: str) -> str:
        """`statement`, written with `?` parameters, as this driver marks them."""
        return statement if self.sqlite else statement.replace("?", "%s")

    def stamp(self, moment: datetime) -> Any:
        """A UTC time as the column takes it: on SQLite, SQLAlchemy's text (no offset)."""
        return f"{moment:%Y-%m-%d %H:%M:%S.%f}" if self.sqlite else moment

    def json(self, value: Any) -> Any:
        """A JSON column's parameter."""
        return json.dumps(value) if self.sqlite else Json(value)
