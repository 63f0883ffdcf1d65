"""The status store's SQL, built once with bound parameters.

Building and hashing a statement costs SQLAlchemy several times what SQLite needs to run it, and
every task makes several writes: the store executes these prebuilt statements instead.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    Update,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)

from execution.models import TaskEventRow
from execution.records import TASK_COLUMNS, TASKS
from execution.status import TaskStatus

EVENTS = cast(Table, TaskEventRow.__table__)


def binds(table: Table, names: Iterable[str], prefix: str = "") -> dict[str, Any]:
    """A bound parameter per column, typed as the column."""
    return {name: bindparam(prefix + name, type_=table.c[name].type) for name in names}


INSERT_TASK = insert(TASKS).values(binds(TASKS, TASK_COLUMNS))
NEXT_SEQ = (
    select(func.coalesce(func.max(EVENTS.c.seq), 0) + 1)
    .where(EVENTS.c.task_id == bindparam("task_id"))
    .scalar_subquery()
)
INSERT_EVENT = insert(EVENTS).values(
    {**binds(EVENTS, ("task_id", "status", "progress", "message", "at")), "seq": NEXT_SEQ}
)
INSERT_FIRST_EVENT = insert(EVENTS).values(
    {**binds(EVENTS, ("task_id", "seq", "status", "message", "at")), "progress": 0}
)
"""A new task's first events: their numbers are known (1, 2), so no NEXT_SEQ lookup."""


def event_values(
    task_id: str, status: TaskStatus, progress: int, message: str | None, at: datetime
) -> dict[str, Any]:
    """INSERT_EVENT's parameters: one status change or progress step of a task."""
    return {
        "task_id": task_id,
        "status": status,
        "progress": progress,
        "message": message,
        "at": at,
    }


SELECT_TASK = select(TASKS).where(TASKS.c.task_id == bindparam("task_id"))


class AddOne:
    """A transition value meaning "this column plus one", computed by the UPDATE itself."""


ADD_ONE = AddOne()


@dataclass(frozen=True, slots=True)
class CopyOf:
    """A transition value meaning "the value another column has now"."""

    column: str


class Guard(Enum):
    """Which rows a transition may change; each names the parameters its WHERE binds."""

    QUEUED = "queued"
    """Waiting, on any backend."""
    QUEUED_ON = "queued_on"
    """Waiting on `where_backend`."""
    UNDISPATCHED = "undispatched"
    """Waiting on `where_backend`, last handed over at `where_dispatched_at` (None: never):
    whoever changes it first is the one to hand it over again."""
    CLAIMABLE = "claimable"
    """Waiting and due, or running with a lease that expired before `where_now`."""
    CLAIMABLE_ON = "claimable_on"
    """CLAIMABLE, and recorded for `where_backend`: a Celery message for a task moved back to
    threads (or the reverse) finds nothing to run."""
    ATTEMPT = "attempt"
    """Running attempt number `where_attempt`: a stale attempt matches nothing (fencing)."""
    LOST = "lost"
    """Running attempt `where_attempt` whose lease expired before `where_now`."""
    RUNNING = "running"
    """Running, whichever attempt."""
    FINISHED = "finished"
    """FAILED or CANCELLED: what a manual retry starts from."""


def guard_clause(guard: Guard) -> ColumnElement[bool]:
    """The WHERE condition (beyond the task id) of `guard`."""
    status, now = TASKS.c.status, bindparam("where_now", type_=TASKS.c.updated_at.type)
    attempt = TASKS.c.attempts == bindparam("where_attempt")
    expired = TASKS.c.lease_expires_at < now
    backend = TASKS.c.backend == bindparam("where_backend")
    match guard:
        case Guard.QUEUED:
            return status == TaskStatus.QUEUED
        case Guard.QUEUED_ON:
            return and_(status == TaskStatus.QUEUED, backend)
        case Guard.UNDISPATCHED:
            dispatched = bindparam("where_dispatched_at", type_=TASKS.c.dispatched_at.type)
            return and_(
                status == TaskStatus.QUEUED,
                backend,
                TASKS.c.dispatched_at.is_not_distinct_from(dispatched),
            )
        case Guard.CLAIMABLE:
            due = or_(TASKS.c.run_after.is_(None), TASKS.c.run_after <= now)
            return or_(
                and_(status == TaskStatus.QUEUED, due),
                and_(
                    status == TaskStatus.PROCESSING,
                    expired,
                    TASKS.c.cancel_requested_at.is_(None),
                ),
            )
        case Guard.CLAIMABLE_ON:
            return and_(guard_clause(Guard.CLAIMABLE), backend)
        case Guard.ATTEMPT:
            return and_(status == TaskStatus.PROCESSING, attempt)
        case Guard.LOST:
            return and_(status == TaskStatus.PROCESSING, attempt, expired)
        case Guard.RUNNING:
            return status == TaskStatus.PROCESSING
        case Guard.FINISHED:
            # Not IN (...): its list parameter is rendered per execution (see execution.prepared).
            return or_(status == TaskStatus.FAILED, status == TaskStatus.CANCELLED)


@functools.cache  # one statement per shape of transition: a handful, fixed by the code
def update_statement(
    guard: Guard,
    set_columns: tuple[str, ...],
    computed: tuple[tuple[str, AddOne | CopyOf], ...],
    returning: tuple[str, ...] = TASK_COLUMNS,
) -> Update:
    """UPDATE tasks SET <column> = :set_<column> ... WHERE the guard holds, RETURNING the row
    (or only the columns `returning` names, when the caller needs no record)."""
    values: dict[str, Any] = binds(TASKS, set_columns, prefix="set_")
    for name, how in computed:
        values[name] = TASKS.c[name] + 1 if isinstance(how, AddOne) else TASKS.c[how.column]
    return (
        update(TASKS)
        .where(TASKS.c.task_id == bindparam("where_task_id"), guard_clause(guard))
        .values(values)
        .returning(*(TASKS.c[name] for name in returning))
    )
