"""One Alembic history for every room's tables: the migrations build exactly what the code says."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from migrations import schema


def test_the_migrated_schema_matches_every_table_the_code_declares(engine: Engine) -> None:
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), schema())

    assert differences == []
    assert set(schema().tables) == {
        "tasks",
        "task_events",
        "rollout_state",
        "rollout_events",
        "api_keys",
    }
