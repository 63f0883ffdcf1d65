"""The thread baseline: what a team writes by hand to get status rows without Switchyard.

A ThreadPoolExecutor and the same four status changes Switchyard records (CREATED, QUEUED,
PROCESSING, COMPLETED, each with its `task_events` row), on the same kind of engine
(`make_engine`: same driver, pool and PRAGMAs, SQLite or PostgreSQL) and the same migrated
schema. It is written the way a careful engineer would: SQLAlchemy Core statements built once
with bound parameters, a conditional claim so a task runs once, and no work it does not need
(it knows each event's seq, so it does not look it up, and it reads no row back). Each change is
its own transaction, so it commits four times per task where Switchyard, which writes CREATED
and QUEUED together, commits three; its lighter rows leave out the lease and routing columns.
The backend's exact transactions on the bare driver are benchmarks/stdlib_pool.py, the floor.
"""

from __future__ import annotations

import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, bindparam, insert, update

from execution.models import TaskEventRow
from execution.records import TASKS

EVENTS = cast(Table, TaskEventRow.__table__)

INSERT_TASK = insert(TASKS).values(
    {
        name: bindparam(name, type_=TASKS.c[name].type)
        for name in (
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
    }
)
INSERT_EVENT = insert(EVENTS).values(
    {
        name: bindparam(name, type_=EVENTS.c[name].type)
        for name in (
            "task_id",
            "seq",
            "status",
            "progress",
            "message",
            "at",
        )
    }
)


def _move(from_status: str, *columns: str) -> Any:
    """UPDATE tasks SET <columns> WHERE task_id = :id AND status = <from_status>."""
    return (
        update(TASKS)
        .where(TASKS.c.task_id == bindparam("id"), TASKS.c.status == from_status)
        .values({name: bindparam(f"new_{name}", type_=TASKS.c[name].type) for name in columns})
    )


MARK_QUEUED = _move("CREATED", "status", "message", "backend", "queued_at", "updated_at")
CLAIM = _move("QUEUED", "status", "message", "attempts", "processing_started_at", "updated_at")
COMPLETE = _move(
    "PROCESSING", "status", "message", "result", "progress", "completed_at", "updated_at"
)


class HandWrittenPool:
    """Runs `noop` tasks on a thread pool, writing each status change and its event."""

    def __init__(self, *, engine: Engine, workers: int) -> None:
        self._engine = engine
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="handwritten")

    def submit(self, payload: dict[str, Any]) -> Future[None]:
        """Record the task as CREATED then QUEUED, and hand it to the pool."""
        task_id, now = str(uuid.uuid4()), datetime.now(UTC)
        with self._engine.begin() as conn:
            conn.execute(
                INSERT_TASK,
                {
                    "task_id": task_id,
                    "user_id": "bench",
                    "tool_id": "noop",
                    "status": "CREATED",
                    "progress": 0,
                    "message": "created",
                    "priority": 0,
                    "payload": payload,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            _event(conn, task_id, 1, "CREATED", 0, "created", now)
        now = datetime.now(UTC)
        with self._engine.begin() as conn:
            changes = {"status": "QUEUED", "message": "queued", "backend": "thread"}
            if _moved(conn, MARK_QUEUED, task_id, {**changes, "queued_at": now}, now):
                _event(conn, task_id, 2, "QUEUED", 0, "queued", now)
        return self._pool.submit(self._run, task_id)

    def shutdown(self) -> None:
        """Wait for every submitted task, then stop the threads."""
        self._pool.shutdown(wait=True)

    def _run(self, task_id: str) -> None:
        now = datetime.now(UTC)
        with self._engine.begin() as conn:
            changes = {"status": "PROCESSING", "message": "started", "attempts": 1}
            if not _moved(conn, CLAIM, task_id, {**changes, "processing_started_at": now}, now):
                return  # another copy has it
            _event(conn, task_id, 3, "PROCESSING", 0, "started", now)
        result = {"ok": True}  # what the noop tool returns
        now = datetime.now(UTC)
        with self._engine.begin() as conn:
            changes = {"status": "COMPLETED", "message": "completed", "result": result}
            if _moved(
                conn, COMPLETE, task_id, {**changes, "progress": 100, "completed_at": now}, now
            ):
                _event(conn, task_id, 4, "COMPLETED", 100, "completed", now)


def _moved(
    conn: Connection, statement: Any, task_id: str, changes: dict[str, Any], now: datetime
) -> bool:
    params = {f"new_{name}": value for name, value in {**changes, "updated_at": now}.items()}
    return bool(conn.execute(statement, {"id": task_id, **params}).rowcount)


def _event(
    conn: Connection, task_id: str, seq: int, status: str, progress: int, message: str, at: datetime
) -> None:
    conn.execute(
        INSERT_EVENT,
        {
            "task_id": task_id,
            "seq": seq,
            "status": status,
            "progress": progress,
            "message": message,
            "at": at,
        },
    )
