"""The status store: each transition is one named operation writing the row and its event."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, func, insert, select, update

from execution.models import TaskEventRow, TaskRow
from execution.records import TaskEvent, TaskRecord
from execution.status import TaskStatus

_TASKS = cast(Table, TaskRow.__table__)
_EVENTS = cast(Table, TaskEventRow.__table__)


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

    # -- transitions ---------------------------------------------------------------------------

    def create(
        self, *, task_id: str, user_id: str, tool_id: str, payload: Any, priority: int
    ) -> TaskRecord:
        """Insert a CREATED row."""
        now = utcnow()
        with self.engine.begin() as conn:
            row = conn.execute(
                insert(_TASKS)
                .values(
                    task_id=task_id,
                    user_id=user_id,
                    tool_id=tool_id,
                    status=TaskStatus.CREATED,
                    progress=0,
                    message="created",
                    priority=priority,
                    payload=payload,
                    attempts=0,
                    created_at=now,
                    updated_at=now,
                )
                .returning(_TASKS)
            ).one()
            self._append_event(conn, task_id, TaskStatus.CREATED, 0, "created", now)
        return TaskRecord.from_row(row._mapping)

    def mark_queued(
        self,
        task_id: str,
        *,
        backend: str,
        rollout_bucket: int | None,
        rollout_percentage: float | None,
        celery_task_id: str | None = None,
    ) -> TaskRecord | None:
        """CREATED -> QUEUED with the routing decision that sent it to `backend`."""
        return self._transition(
            task_id,
            from_statuses=(TaskStatus.CREATED,),
            to_status=TaskStatus.QUEUED,
            message="queued",
            values={
                "backend": backend,
                "celery_task_id": celery_task_id,
                "rollout_bucket": rollout_bucket,
                "rollout_percentage": rollout_percentage,
            },
            stamp="queued_at",
        )

    def claim(self, task_id: str) -> TaskRecord | None:
        """QUEUED -> PROCESSING, counting the attempt; None if another copy already has it."""
        return self._transition(
            task_id,
            from_statuses=(TaskStatus.QUEUED,),
            to_status=TaskStatus.PROCESSING,
            message="started",
            values={"attempts": _TASKS.c.attempts + 1, "progress": 0},
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
        """CREATED/QUEUED -> CANCELLED; a task already running is not touched."""
        return self._transition(
            task_id,
            from_statuses=(TaskStatus.CREATED, TaskStatus.QUEUED),
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
            row = conn.execute(select(_TASKS).where(_TASKS.c.task_id == task_id)).one_or_none()
        return TaskRecord.from_row(row._mapping) if row is not None else None

    def find(self, where: TaskFilter, *, limit: int, offset: int) -> list[TaskRecord]:
        """Newest first."""
        query = select(_TASKS)
        for column, value in (
            (_TASKS.c.status, where.status),
            (_TASKS.c.tool_id, where.tool_id),
            (_TASKS.c.backend, where.backend),
            (_TASKS.c.user_id, where.user_id),
        ):
            if value is not None:
                query = query.where(column == value)
        query = query.order_by(_TASKS.c.created_at.desc(), _TASKS.c.task_id).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query.offset(offset)).all()
        return [TaskRecord.from_row(row._mapping) for row in rows]

    def events(self, task_id: str) -> list[TaskEvent]:
        """The task's history, oldest first."""
        query = (
            select(
                _EVENTS.c.task_id,
                _EVENTS.c.seq,
                _EVENTS.c.status,
                _EVENTS.c.progress,
                _EVENTS.c.message,
                _EVENTS.c.at,
            )
            .where(_EVENTS.c.task_id == task_id)
            .order_by(_EVENTS.c.seq)
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
            select(_TASKS.c.task_id, _TASKS.c.priority)
            .where(_TASKS.c.status == TaskStatus.QUEUED, _TASKS.c.backend == backend)
            .order_by(_TASKS.c.created_at)
            .limit(limit)
        )
        if unchanged_for > 0:
            query = query.where(_TASKS.c.updated_at <= utcnow() - timedelta(seconds=unchanged_for))
        with self.engine.connect() as conn:
            return [(row.task_id, row.priority) for row in conn.execute(query)]

    def queued_counts(self) -> dict[tuple[str, str], int]:
        """QUEUED tasks per (backend, tool_id)."""
        query = (
            select(_TASKS.c.backend, _TASKS.c.tool_id, func.count())
            .where(_TASKS.c.status == TaskStatus.QUEUED)
            .group_by(_TASKS.c.backend, _TASKS.c.tool_id)
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
        where = [_TASKS.c.task_id == task_id, _TASKS.c.status.in_(list(from_statuses))]
        if only_backend is not None:
            where.append(_TASKS.c.backend == only_backend)
        with self.engine.begin() as conn:
            row = conn.execute(
                update(_TASKS).where(*where).values(changes).returning(_TASKS)
            ).one_or_none()
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
        next_seq = (
            select(func.coalesce(func.max(_EVENTS.c.seq), 0) + 1)
            .where(_EVENTS.c.task_id == task_id)
            .scalar_subquery()
        )
        conn.execute(
            insert(_EVENTS).values(
                task_id=task_id,
                seq=next_seq,
                status=status,
                progress=progress,
                message=message,
                at=at,
            )
        )
