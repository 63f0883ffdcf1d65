"""Immutable values read from the status store; the rest of the code never sees a DB row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping

from execution.status import TaskStatus


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One task as stored; change it with `dataclasses.replace()`, never in place."""

    task_id: str
    user_id: str
    tool_id: str
    status: TaskStatus
    progress: int
    message: str | None
    priority: int
    payload: Any
    result: Any
    error_code: str | None
    error_message: str | None
    backend: str | None
    celery_task_id: str | None
    attempts: int
    rollout_bucket: int | None
    rollout_percentage: float | None
    created_at: datetime
    queued_at: datetime | None
    processing_started_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    updated_at: datetime

    @classmethod
    def from_row(cls, row: RowMapping) -> TaskRecord:
        """The one way a `tasks` row becomes a record."""
        values = dict(row)
        values["status"] = TaskStatus(values["status"])
        return cls(**values)


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
