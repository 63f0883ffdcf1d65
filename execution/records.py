"""Immutable values read from the status store; the rest of the code never sees a DB row.

`TaskRecord` is the one list of a task's columns: the `tasks` table, the store's inserts and
the API's task body are all derived from its fields, so a new column is one field here (with
how it is stored) plus a migration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Annotated, Any

from sqlalchemy import JSON, Float, Index, Integer, RowMapping, String, Text

from execution.models import Stored, UTCDateTime, table_of
from execution.status import TaskStatus


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One task as stored; change it with `dataclasses.replace()`, never in place."""

    task_id: Annotated[str, Stored(String(36), primary_key=True)]
    user_id: Annotated[str, Stored(String(128), index=True)]
    tool_id: Annotated[str, Stored(String(128), index=True)]
    status: Annotated[TaskStatus, Stored(String(16))]
    progress: Annotated[int, Stored(Integer)]
    message: Annotated[str | None, Stored(Text)]
    priority: Annotated[int, Stored(Integer)]
    payload: Annotated[Any, Stored(JSON, nullable=False)]
    result: Annotated[Any, Stored(JSON, nullable=True)]
    error_code: Annotated[str | None, Stored(String(128))]
    error_message: Annotated[str | None, Stored(Text)]
    backend: Annotated[str | None, Stored(String(16), index=True)]
    celery_task_id: Annotated[str | None, Stored(String(64), index=True)]
    attempts: Annotated[int, Stored(Integer)]
    """Attempts claimed so far; every write of an attempt is fenced on its number."""
    attempts_before_retry: Annotated[int, Stored(Integer)]
    """Attempts made before the latest manual retry: the tool's retry policy counts from here."""
    lease_owner: Annotated[str | None, Stored(String(128))]
    """The process running the current attempt; cleared when the task ends."""
    lease_expires_at: Annotated[datetime | None, Stored(UTCDateTime)]
    """A running attempt renews this; past it, the attempt counts as lost and may be re-run."""
    run_after: Annotated[datetime | None, Stored(UTCDateTime)]
    """A QUEUED retry waits until then (its backoff)."""
    dispatched_at: Annotated[datetime | None, Stored(UTCDateTime)]
    """When the task was last handed to its backend (or claimed); None while a handover is
    pending (a retry waiting for its backoff, or a Celery task waiting for the broker)."""
    cancel_requested_at: Annotated[datetime | None, Stored(UTCDateTime)]
    """A caller asked a running task to stop; its next heartbeat (or a progress report that
    writes) stops it."""
    idempotency_key: Annotated[str | None, Stored(String(128))]
    """The caller's Idempotency-Key: the same key and request return this task again."""
    rollout_bucket: Annotated[int | None, Stored(Integer)]
    rollout_percentage: Annotated[float | None, Stored(Float)]
    created_at: Annotated[datetime, Stored(UTCDateTime)]
    queued_at: Annotated[datetime | None, Stored(UTCDateTime)]
    processing_started_at: Annotated[datetime | None, Stored(UTCDateTime)]
    completed_at: Annotated[datetime | None, Stored(UTCDateTime)]
    failed_at: Annotated[datetime | None, Stored(UTCDateTime)]
    updated_at: Annotated[datetime, Stored(UTCDateTime)]

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> TaskRecord:
        """The one way a `tasks` row becomes a record."""
        values = dict(row)
        values["status"] = TaskStatus(values["status"])
        return cls(**values)

    def as_row(self) -> dict[str, Any]:
        """Column name to value, as an INSERT takes it."""
        return {name: getattr(self, name) for name in TASK_COLUMNS}


TASK_COLUMNS = tuple(field.name for field in fields(TaskRecord))
TASKS = table_of(
    TaskRecord,
    "tasks",
    Index("ix_tasks_status_created_at", "status", "created_at"),
    Index("ix_tasks_status_updated_at", "status", "updated_at"),
    Index("uq_tasks_user_id_idempotency_key", "user_id", "idempotency_key", unique=True),
)


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One entry of a task's history."""

    task_id: str
    seq: int
    status: TaskStatus
    progress: int
    message: str | None
    at: datetime

    @classmethod
    def from_row(cls, row: RowMapping) -> TaskEvent:
        """The one way a `task_events` row becomes an event."""
        values = dict(row)
        values["status"] = TaskStatus(values["status"])
        return cls(**values)
