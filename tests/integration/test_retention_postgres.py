"""Retention on a real PostgreSQL, where writers do not queue on one file lock as SQLite's do:
the job lease's take is one atomic UPDATE among racing processes, and a prune skips the rows
another transaction holds (a retry under way) instead of deleting them under it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, update

from execution.job_leases import JobLeases
from execution.records import TASKS
from execution.retention import prune
from execution.status import TaskStatus
from execution.store import Pruned, TaskStore
from tests.dispatch.rollout.cohort_rows import Clock
from tests.execution.aged_tasks import aged, ended
from tests.execution.lease_race import EVERY, race
from tests.helpers import queued_task
from tests.integration.conftest import postgres_engines
from tests.integration.servers import PostgresServer

pytestmark = pytest.mark.integration

PROCESSES = 8


@pytest.fixture
def engines(postgres_server: PostgresServer) -> Iterator[list[Engine]]:
    """A fresh migrated database, and one engine per simulated process."""
    with postgres_engines(postgres_server, PROCESSES) as engines:
        yield engines


def test_processes_racing_for_the_retention_lease_run_it_once_per_interval(
    engines: list[Engine],
) -> None:
    clock = Clock(datetime.now(UTC))
    contenders = [JobLeases(engine, clock=clock) for engine in engines]

    first = race(contenders)
    second = race(contenders)
    clock.advance(EVERY)
    third = race(contenders)

    assert (len(first), second, len(third)) == (1, [], 1)


def test_a_prune_deletes_old_finished_rows_and_skips_one_a_retry_holds(
    engines: list[Engine],
) -> None:
    store = TaskStore(engines[0])
    old = [aged(store, ended(store, TaskStatus.COMPLETED)) for _ in range(3)]
    held = aged(store, ended(store, TaskStatus.FAILED))
    waiting = aged(store, queued_task(store))
    cutoff = datetime.now(UTC)

    # Another process retrying `held`: its UPDATE locks the row until it commits. Without
    # SKIP LOCKED the prune would wait for it, and this test would hang instead of passing.
    with engines[1].begin() as retrying:
        retrying.execute(
            update(TASKS)
            .where(TASKS.c.task_id == held.task_id)
            .values(status=TaskStatus.QUEUED, updated_at=datetime.now(UTC))
        )
        pruned = prune(store, before=cutoff, batch=2)

    assert pruned.tasks == 3
    assert all(store.get(task.task_id) is None for task in old)
    assert store.events(old[0].task_id) == []
    survivor = store.get(held.task_id)
    assert survivor is not None
    assert survivor.status is TaskStatus.QUEUED
    assert len(store.events(held.task_id)) == 4
    assert store.get(waiting.task_id) is not None
    assert store.count_finished(before=cutoff) == Pruned()
