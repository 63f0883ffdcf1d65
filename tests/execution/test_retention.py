"""Retention: old finished tasks and their events go, in batches; nothing else is touched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select
from structlog.testing import capture_logs

from execution.job_leases import JobLeases
from execution.metrics import Metrics
from execution.retention import RetentionJob, prune
from execution.status import TaskStatus
from execution.store import Pruned, TaskStore
from execution.task_statements import EVENTS
from tests.dispatch.rollout.cohort_rows import Clock
from tests.execution.aged_tasks import aged, ended
from tests.helpers import queued_task

KEEP = timedelta(days=30)


def event_count(engine: Engine, task_id: str) -> int:
    with engine.connect() as conn:
        query = select(func.count()).select_from(EVENTS).where(EVENTS.c.task_id == task_id)
        return int(conn.execute(query).scalar_one())


def cutoff() -> datetime:
    return datetime.now(UTC) - KEEP


def test_old_finished_tasks_and_their_events_are_deleted_and_nothing_else(
    store: TaskStore, engine: Engine
) -> None:
    doomed = [
        aged(store, ended(store, status))
        for status in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)
    ]
    kept = [
        aged(store, queued_task(store)),
        aged(store, ended(store, TaskStatus.PROCESSING)),
        ended(store, TaskStatus.FAILED),  # finished, but recently
        aged(store, ended(store, TaskStatus.COMPLETED), by=KEEP - timedelta(hours=1)),
    ]
    doomed_events = sum(event_count(engine, task.task_id) for task in doomed)

    pruned = prune(store, before=cutoff(), batch=100)

    assert pruned == Pruned(tasks=3, events=doomed_events)
    for task in doomed:
        assert store.get(task.task_id) is None
        assert event_count(engine, task.task_id) == 0
    for task in kept:
        assert store.get(task.task_id) is not None
        assert event_count(engine, task.task_id) > 0


def test_a_dry_run_counts_what_would_go_and_deletes_nothing(
    store: TaskStore, engine: Engine
) -> None:
    doomed = [aged(store, ended(store, TaskStatus.FAILED)) for _ in range(3)]
    aged(store, queued_task(store))

    counted = prune(store, before=cutoff(), batch=1, dry_run=True)

    assert counted.tasks == 3
    assert counted.events == sum(event_count(engine, task.task_id) for task in doomed)
    assert all(store.get(task.task_id) is not None for task in doomed)
    assert prune(store, before=cutoff(), batch=1) == counted


def test_one_batch_deletes_at_most_its_size_and_the_prune_goes_on_until_none_is_left(
    store: TaskStore,
) -> None:
    for _ in range(5):
        aged(store, ended(store, TaskStatus.COMPLETED))

    assert store.delete_finished(before=cutoff(), limit=2).tasks == 2
    assert prune(store, before=cutoff(), batch=2).tasks == 3
    assert store.count_finished(before=cutoff()) == Pruned()


def test_a_prune_told_to_stop_stops_after_the_batch_under_way(store: TaskStore) -> None:
    for _ in range(5):
        aged(store, ended(store, TaskStatus.COMPLETED))

    assert prune(store, before=cutoff(), batch=2, keep_going=lambda: False).tasks == 2


@pytest.fixture
def clock() -> Clock:
    """The time the job and its lease read."""
    return Clock(datetime.now(UTC))


def job(store: TaskStore, clock: Clock, metrics: Metrics | None = None) -> RetentionJob:
    """A retention job of its own process: its own lease owner."""
    return RetentionJob(
        store=store,
        leases=JobLeases(store.engine, clock=clock),
        keep=KEEP,
        every=3600,
        batch=2,
        metrics=metrics,
        clock=clock,
    )


def test_of_two_processes_one_prunes_per_interval_and_counts_and_logs_it(
    store: TaskStore, clock: Clock
) -> None:
    metrics = Metrics()
    first, second = job(store, clock, metrics), job(store, clock, metrics)
    for _ in range(3):
        aged(store, ended(store, TaskStatus.FAILED))

    with capture_logs() as logs:
        assert first.run_due() == Pruned(tasks=3, events=12)
        assert second.run_due() is None
    assert metrics.registry.get_sample_value("switchyard_pruned_tasks_total") == 3
    assert [(e["event"], e["tasks"], e["events"]) for e in logs] == [("retention.pruned", 3, 12)]

    aged(store, ended(store, TaskStatus.FAILED))
    assert first.run_due() is None
    clock.advance(3600)
    assert second.run_due() == Pruned(tasks=1, events=4)
