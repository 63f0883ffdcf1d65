"""One Alembic history for every room's tables: the migrations build exactly what the code says."""

from __future__ import annotations

import json

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text

from dispatch.rollout.store import EnvironmentOutcome, RolloutStore
from execution import database
from execution.database import make_engine
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
        "rollout_environment",
        "api_keys",
        "job_leases",
        "task_batches",
    }


def test_a_database_seeded_before_0005_keeps_its_rollout_at_the_next_start(
    database_url: str,
) -> None:
    """Upgrading must not read the unchanged environment as new values and adopt them."""
    engine = make_engine(database_url)
    database.upgrade(engine, "0004")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO rollout_state VALUES "
                "(1, 2, 40.0, '{}', 'task_id', 's', NULL, '2026-01-01 00:00:00', 'carol')"
            )
        )
        for version, action, after in ((1, "seed", 5.0), (2, "set", 40.0)):
            conn.execute(
                text(
                    "INSERT INTO rollout_events (version, action, actor, reason, before, after, "
                    "at) VALUES (:v, :a, 'x', 'r', NULL, :after, '2026-01-01 00:00:00')"
                ),
                {"v": version, "a": action, "after": json.dumps({"percentage": after})},
            )
    database.upgrade(engine)
    restart = RolloutStore(engine).apply_environment(percentage=5, salt="s")
    assert restart.outcome is EnvironmentOutcome.UNCHANGED
    assert restart.state.percentage == 40
    engine.dispose()
