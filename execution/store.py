"""The status store: each transition is one named operation writing the row and its event."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    Update,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)

from execution.models import TaskEventRow, TaskRow
from execution.records import TaskEvent, TaskRecord
from execution.status import TaskStatus

_TASKS = cast(Table, TaskRow.__table__)
_EVENTS = cast(Table, TaskEventRow.__table__)

# The hot statements are built once, with bound parameters: building and hashing a statement
# costs SQLAlchemy several times what SQLite needs to run it, and every task makes four writes.
_CREATE_COLUMNS = (
    "task_id",
    "user_id",
    "tool_id",
    "status",
    "progress",
    "message",
    "priority",
    "payload",
    "attempts",
    "created_at",
    "updated_at",
)


def _binds(table: Table, names: Iterable[str], prefix: str = "") -> dict[str, Any]:
    return {name: bindparam(prefix + name, type_=table.c[name].type) for name in names}


_INSERT_TASK = insert(_TASKS).values(_binds(_TASKS, _CREATE_COLUMNS)).returning(*_TASKS.c)
_ROUTED_COLUMNS = (
    *_CREATE_COLUMNS,
    "backend",
    "celery_task_id",
    "rollout_bucket",
    "rollout_percentage",
    "queued_at",
)
_INSERT_ROUTED_TASK = insert(_TASKS).values(_binds(_TASKS, _ROUTED_COLUMNS)).returning(*_TASKS.c)
_NEXT_SEQ = (
    select(func.coalesce(func.max(_EVENTS.c.seq), 0) + 1)
    .where(_EVENTS.c.task_id == bindparam("task_id"))
    .scalar_subquery()
)
_INSERT_EVENT = insert(_EVENTS).values(
    {**_binds(_EVENTS, ("task_id", "status", "progress", "message", "at")), "seq": _NEXT_SEQ}
)
_SELECT_TASK = select(_TASKS).where(_TASKS.c.task_id == bindparam("task_id"))


class _AddOne:
    """A transition value meaning "this column plus one", computed by the UPDATE itself."""


_ADD_ONE = _AddOne()


@functools.cache  # one statement per shape of transition: a handful, fixed by the code
def _update_statement(
    from_statuses: tuple[TaskStatus, ...],
    set_columns: tuple[str, ...],
    add_one: tuple[str, ...],
    only_backend: bool,
) -> Update:
    """UPDATE tasks SET <column> = :set_<column> ... WHERE the row may move, RETURNING it."""
    where = [
        _TASKS.c.task_id == bindparam("where_task_id"),
        or_(*(_TASKS.c.status == status for status in from_statuses)),
    ]
    if only_backend:
        where.append(_TASKS.c.backend == bindparam("where_backend"))
    values = _binds(_TASKS, set_columns, prefix="set_")
    values.update({name: _TASKS.c[name] + 1 for name in add_one})
    return update(_TASKS).where(*where).values(values).returning(*_TASKS.c)


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

    def create(
        self, *, task_id: str, user_id: str, tool_id: str, payload: Any, priority: int
    ) -> TaskRecord:
        """Insert a CREATED row."""
        now = utcnow()
        with self._write_turn, self.engine.begin() as conn:
            row = conn.execute(
                _INSERT_TASK,
                {
                    "task_id": task_id,
                    "user_id": user_id,
                    "tool_id": tool_id,
                    "status": TaskStatus.CREATED,
                    "progress": 0,
                    "message": "created",
                    "priority": priority,
                    "payload": payload,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                },
            ).one()
            self._append_event(conn, task_id, TaskStatus.CREATED, 0, "created", now)
        return TaskRecord.from_row(row._mapping)

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
        one commit (the dispatcher's hot path; `create` + `mark_queued` write the same)."""
        now = utcnow()
        with self._write_turn, self.engine.begin() as conn:
            row = conn.execute(
                _INSERT_ROUTED_TASK,
                {
                    "task_id": task_id,
                    "user_id": user_id,
                    "tool_id": tool_id,
                    "status": TaskStatus.QUEUED,
                    "progress": 0,
                    "message": "queued",
                    "priority": priority,
                    "payload": payload,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                    "backend": backend,
                    "celery_task_id": celery_task_id,
                    "rollout_bucket": rollout_bucket,
                    "rollout_percentage": rollout_percentage,
                    "queued_at": now,
                },
            ).one()
            self._append_event(conn, task_id, TaskStatus.CREATED, 0, "created", now)
            self._append_event(conn, task_id, TaskStatus.QUEUED, 0, "queued", now)
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
            values={"attempts": _ADD_ONE, "progress": 0},
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
            row = conn.execute(_SELECT_TASK, {"task_id": task_id}).one_or_none()
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
        add_one = tuple(sorted(name for name, value in changes.items() if value is _ADD_ONE))
        set_columns = tuple(sorted(name for name in changes if name not in add_one))
        statement = _update_statement(
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
            _INSERT_EVENT,
            {
                "task_id": task_id,
                "status": status,
                "progress": progress,
                "message": message,
                "at": at,
            },
        )
