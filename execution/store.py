"""The status store: each transition is one named operation writing the row and its event."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    func,
    select,
)

from execution.records import TASKS, TaskEvent, TaskRecord
from execution.status import TaskStatus
from execution.task_statements import (
    ADD_ONE,
    EVENTS,
    INSERT_EVENT,
    INSERT_TASK,
    SELECT_TASK,
    update_statement,
)


def utcnow() -> datetime:
    """The one clock every status write uses."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """What a listing may be narrowed by."""

    status: TaskStatus | None = None
    tool_id: str | None = None
    backend: str | None = None
    user_id: str | None = None


class TaskStore:
    """Reads and writes task rows; a transition that does not apply changes nothing."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # SQLite lets one writer in at a time and makes the others poll, sleeping 1 ms or more
        # between tries; threads of this process take turns on a lock instead, which hands the
        # database over at once. Other processes still meet SQLite's own wait.
        self._write_turn: AbstractContextManager[Any] = (
            threading.Lock() if engine.dialect.name == "sqlite" else nullcontext()
        )

    # -- transitions ---------------------------------------------------------------------------

    def create_queued(
        self,
        *,
        task_id: str,
        user_id: str,
        tool_id: str,
        payload: Any,
        priority: int,
        backend: str,
        rollout_bucket: int | None,
        rollout_percentage: float | None,
        celery_task_id: str | None = None,
    ) -> TaskRecord:
        """Insert a task its dispatcher already routed: CREATED then QUEUED in its history, in
        one commit (the dispatcher's hot path)."""
        now = utcnow()
        record = TaskRecord(
            task_id=task_id,
            user_id=user_id,
            tool_id=tool_id,
            status=TaskStatus.QUEUED,
            progress=0,
            message="queued",
            priority=priority,
            payload=payload,
            result=None,
            error_code=None,
            error_message=None,
            backend=backend,
            celery_task_id=celery_task_id,
            attempts=0,
            rollout_bucket=rollout_bucket,
            rollout_percentage=rollout_percentage,
            created_at=now,
            queued_at=now,
            processing_started_at=None,
            completed_at=None,
            failed_at=None,
            updated_at=now,
        )
        with self._write_turn, self.engine.begin() as conn:
            conn.execute(INSERT_TASK, record.as_row())
            self._append_event(conn, task_id, TaskStatus.CREATED, 0, "created", now)
            self._append_event(conn, task_id, TaskStatus.QUEUED, 0, "queued", now)
        return record

    def claim(self, task_id: str) -> TaskRecord | None:
        """QUEUED -> PROCESSING, counting the attempt; None if another copy already has it."""
        return self._transition(
            task_id,
            from_statuses=(TaskStatus.QUEUED,),
            to_status=TaskStatus.PROCESSING,
            message="started",
            values={"attempts": ADD_ONE, "progress": 0},
            stamp="processing_started_at",
        )

    def record_progress(self, task_id: str, *, progress: int, message: str | None) -> bool:
        """Write a progress step of a running task; False if it is no longer running."""
        record = self._transition(
            task_id,
            from_statuses=(TaskStatus.PROCESSING,),
            to_status=TaskStatus.PROCESSING,
            message=message,
            values={"progress": progress},
        )
        return record is not None

    def complete(self, task_id: str, *, result: Any) -> TaskRecord | None:
        """PROCESSING -> COMPLETED with the tool's result."""
        return self._transition(
            task_id,
            from_statuses=(TaskStatus.PROCESSING,),
            to_status=TaskStatus.COMPLETED,
            message="completed",
            values={"result": result, "progress": 100},
            stamp="completed_at",
        )

    def fail(self, task_id: str, *, error_code: str, error_message: str) -> TaskRecord | None:
        """PROCESSING -> FAILED with the reason."""
        return self._transition(
            task_id,
            from_statuses=(TaskStatus.PROCESSING,),
            to_status=TaskStatus.FAILED,
            message="failed",
            values={"error_code": error_code, "error_message": error_message},
            stamp="failed_at",
        )

    def cancel(
        self, task_id: str, *, reason: str, error_code: str | None = None
    ) -> TaskRecord | None:
        """QUEUED -> CANCELLED; a task already running is not touched."""
        return self._transition(
            task_id,
            from_statuses=(TaskStatus.QUEUED,),
            to_status=TaskStatus.CANCELLED,
            message=reason,
            values={"error_code": error_code, "error_message": reason if error_code else None},
        )

    def move_backend(
        self, task_id: str, *, from_backend: str, to_backend: str, reason: str
    ) -> TaskRecord | None:
        """Re-route a QUEUED task (e.g. Celery switched off for it); the move is an event."""
        return self._transition(
            task_id,
            from_statuses=(TaskStatus.QUEUED,),
            to_status=TaskStatus.QUEUED,
            message=f"moved from {from_backend} to {to_backend}: {reason}",
            values={"backend": to_backend},
            only_backend=from_backend,
        )

    # -- reads ---------------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord | None:
        """The task, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(SELECT_TASK, {"task_id": task_id}).one_or_none()
        return TaskRecord.from_row(row._mapping) if row is not None else None

    def find(self, where: TaskFilter, *, limit: int, offset: int) -> list[TaskRecord]:
        """Newest first."""
        query = select(TASKS)
        for column, value in (
            (TASKS.c.status, where.status),
            (TASKS.c.tool_id, where.tool_id),
            (TASKS.c.backend, where.backend),
            (TASKS.c.user_id, where.user_id),
        ):
            if value is not None:
                query = query.where(column == value)
        query = query.order_by(TASKS.c.created_at.desc(), TASKS.c.task_id).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query.offset(offset)).all()
        return [TaskRecord.from_row(row._mapping) for row in rows]

    def events(self, task_id: str) -> list[TaskEvent]:
        """The task's history, oldest first."""
        query = (
            select(
                EVENTS.c.task_id,
                EVENTS.c.seq,
                EVENTS.c.status,
                EVENTS.c.progress,
                EVENTS.c.message,
                EVENTS.c.at,
            )
            .where(EVENTS.c.task_id == task_id)
            .order_by(EVENTS.c.seq)
        )
        with self.engine.connect() as conn:
            return [TaskEvent.from_row(row._mapping) for row in conn.execute(query)]

    def queued(
        self, *, backend: str, unchanged_for: float = 0.0, limit: int | None = None
    ) -> list[tuple[str, int]]:
        """(task_id, priority) of QUEUED tasks recorded for `backend`, oldest first.

        `unchanged_for` skips rows written in the last that many seconds (another process is
        most likely about to run them).
        """
        query = (
            select(TASKS.c.task_id, TASKS.c.priority)
            .where(TASKS.c.status == TaskStatus.QUEUED, TASKS.c.backend == backend)
            .order_by(TASKS.c.created_at)
            .limit(limit)
        )
        if unchanged_for > 0:
            query = query.where(TASKS.c.updated_at <= utcnow() - timedelta(seconds=unchanged_for))
        with self.engine.connect() as conn:
            return [(row.task_id, row.priority) for row in conn.execute(query)]

    def queued_counts(self) -> dict[tuple[str, str], int]:
        """QUEUED tasks per (backend, tool_id)."""
        query = (
            select(TASKS.c.backend, TASKS.c.tool_id, func.count())
            .where(TASKS.c.status == TaskStatus.QUEUED)
            .group_by(TASKS.c.backend, TASKS.c.tool_id)
        )
        with self.engine.connect() as conn:
            return {(str(b), str(t)): int(n) for b, t, n in conn.execute(query)}

    # -- internals -----------------------------------------------------------------------------

    def _transition(
        self,
        task_id: str,
        *,
        from_statuses: Iterable[TaskStatus],
        to_status: TaskStatus,
        message: str | None,
        values: Mapping[str, Any],
        stamp: str | None = None,
        only_backend: str | None = None,
    ) -> TaskRecord | None:
        # The UPDATE comes first so the transaction takes the write lock at once (SQLite) or
        # locks the row (PostgreSQL): concurrent transitions of one task queue up, and the
        # event's seq is computed after the lock, so it cannot collide.
        now = utcnow()
        changes = dict(values, status=to_status, message=message, updated_at=now)
        if stamp is not None:
            changes[stamp] = now
        add_one = tuple(sorted(name for name, value in changes.items() if value is ADD_ONE))
        set_columns = tuple(sorted(name for name in changes if name not in add_one))
        statement = update_statement(
            tuple(from_statuses), set_columns, add_one, only_backend is not None
        )
        params = {f"set_{name}": changes[name] for name in set_columns}
        params["where_task_id"] = task_id
        if only_backend is not None:
            params["where_backend"] = only_backend
        with self._write_turn, self.engine.begin() as conn:
            row = conn.execute(statement, params).one_or_none()
            if row is None:
                return None
            record = TaskRecord.from_row(row._mapping)
            self._append_event(conn, task_id, to_status, record.progress, message, now)
        return record

    @staticmethod
    def _append_event(
        conn: Connection,
        task_id: str,
        status: TaskStatus,
        progress: int,
        message: str | None,
        at: datetime,
    ) -> None:
        conn.execute(
            INSERT_EVENT,
            {
                "task_id": task_id,
                "status": status,
                "progress": progress,
                "message": message,
                "at": at,
            },
        )
