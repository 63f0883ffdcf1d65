"""The embedded database: WAL with a busy timeout, and migrations that say when they are missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect

from execution.database import (
    SQLITE_BUSY_TIMEOUT_MS,
    SchemaNotCurrent,
    check_current,
    make_engine,
    upgrade,
)


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(engine: Engine) -> None:
    with engine.connect() as conn:
        journal_mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        busy_timeout = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()

    assert journal_mode == "wal"
    assert busy_timeout == SQLITE_BUSY_TIMEOUT_MS > 0


def test_upgrade_creates_both_tables_and_is_idempotent(engine: Engine) -> None:
    upgrade(engine)

    tables = set(inspect(engine).get_table_names())
    assert {"tasks", "task_events"} <= tables
    check_current(engine)


def test_an_unmigrated_database_is_refused_with_the_fix(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(SchemaNotCurrent, match="switchyard db upgrade"):
            check_current(engine)
    finally:
        engine.dispose()
