"""Tasks ended through the store's own transitions, and aged as if they ended long ago."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from execution.records import TASKS, TaskRecord
from execution.status import TaskStatus
from execution.store import TaskStore
from tests.helpers import claim, queued_task

OLD = timedelta(days=40)
"""Older than the default RETENTION_DAYS."""


def aged(store: TaskStore, record: TaskRecord, by: timedelta = OLD) -> TaskRecord:
    """The task as if its last change were `by` ago."""
    with store.engine.begin() as conn:
        conn.execute(
            update(TASKS)
            .where(TASKS.c.task_id == record.task_id)
            .values(updated_at=datetime.now(UTC) - by)
        )
    return record


def ended(store: TaskStore, status: TaskStatus) -> TaskRecord:
    """A task walked through the store's transitions to `status`."""
    record = queued_task(store)
    if status is TaskStatus.CANCELLED:
        moved = store.cancel(record.task_id, reason="test")
    else:
        assert claim(store, record.task_id) is not None
        if status is TaskStatus.COMPLETED:
            assert store.complete(record.task_id, attempt=1, result={})
            moved = store.get(record.task_id)
        elif status is TaskStatus.FAILED:
            moved = store.fail(record.task_id, attempt=1, error_code="E", error_message="m")
        else:
            moved = store.get(record.task_id)
    assert moved is not None
    assert moved.status is status
    return moved
