"""The status store: each transition is one named operation writing the row and its event."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    and_,
    case,
    delete,
    func,
    or_,
    select,
    type_coerce,
    update,
)

from execution.batch_store import BatchStore
from execution.models import UTCDateTime, utcnow
from execution.prepared import PreparedStatements
from execution.records import TASK_COLUMNS, TASKS, TaskEvent, TaskRecord
from execution.status import TERMINAL_STATUSES, TaskStatus
from execution.task_statements import (
    ADD_ONE,
    EVENTS,
    INSERT_EVENT,
    INSERT_FIRST_EVENT,
    INSERT_TASK,
    SELECT_TASK,
    AddOne,
    CopyOf,
    Guard,
    event_values,
    update_statement,
)

_PROGRESS_ONLY = ("progress",)
"""What a transition returns when its caller needs no record: its event's progress."""
_NO_LEASE = {"lease_owner": None, "lease_expires_at": None}
_NO_ERROR = {"error_code": None, "error_message": None}

CANCEL_BATCH = 500
"""Rows a bulk cancel changes per transaction: other writers get their turn between batches."""


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """What a listing may be narrowed by."""

    status: TaskStatus | None = None
    tool_id: str | None = None
    backend: str | None = None
    user_id: str | None = None
    error_code: str | None = None
    changed_since: datetime | None = None
    """Last changed at or after this (`updated_at`; for a FAILED task, when it failed)."""
    changed_before: datetime | None = None
    """Last changed before this."""


@dataclass(frozen=True, slots=True)
class Pruned:
    """Finished tasks and events deleted (or that would be) by retention."""

    tasks: int = 0
    events: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(self.tasks + other.tasks, self.events + other.events)


@dataclass(frozen=True, slots=True)
class Waiting:
    """The QUEUED tasks of one backend."""

    queued: int
    oldest_due: datetime | None
    """When the longest-waiting due task became due; None if none is due."""

    def oldest_age(self, now: datetime) -> float | None:
        """Seconds the longest-waiting due task has waited."""
        if self.oldest_due is None:
            return None
        return max(0.0, (now - self.oldest_due).total_seconds())


@dataclass(frozen=True, slots=True)
class QueuedTask:
    """A task its dispatcher routed, to be written QUEUED (`TaskStore.create_queued_many`)."""

    task_id: str
    user_id: str
    tool_id: str
    payload: Any
    priority: int
    backend: str
    rollout_bucket: int | None
    rollout_percentage: float | None
    celery_task_id: str | None = None
    idempotency_key: str | None = None
    held: str | None = None
    """Why it is not handed over yet (its tool's dispatch is paused); None: handed at once."""

    def record(self, now: datetime) -> TaskRecord:
        """The row as it is first written: QUEUED since `now`."""
        return TaskRecord(
            task_id=self.task_id,
            user_id=self.user_id,
            tool_id=self.tool_id,
            status=TaskStatus.QUEUED,
            progress=0,
            message=self.held or "queued",
            priority=self.priority,
            payload=self.payload,
            result=None,
            error_code=None,
            error_message=None,
            backend=self.backend,
            celery_task_id=self.celery_task_id,
            attempts=0,
            attempts_before_retry=0,
            lease_owner=None,
            lease_expires_at=None,
            run_after=None,
            dispatched_at=None if self.held else now,
            cancel_requested_at=None,
            idempotency_key=self.idempotency_key,
            rollout_bucket=self.rollout_bucket,
            rollout_percentage=self.rollout_percentage,
            created_at=now,
            queued_at=now,
            processing_started_at=None,
            completed_at=None,
            failed_at=None,
            updated_at=now,
        )


class TaskStore:
    """Reads and writes task rows; a transition that does not apply changes nothing."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._prepared = PreparedStatements(engine)
        self._write_turn = self._prepared.write_turn
        self.batches = BatchStore(engine, self._write_turn)
        """The batches of parallel jobs."""

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
        idempotency_key: str | None = None,
        held: str | None = None,
    ) -> TaskRecord:
        """Insert a task its dispatcher already routed: CREATED then QUEUED in its history, in
        one commit (the dispatcher's hot path). Raises IntegrityError if the caller already
        used `idempotency_key`. With `held` (why: its tool's dispatch is paused) the task is
        written as never handed over, with that message."""
        task = QueuedTask(
            task_id=task_id,
            user_id=user_id,
            tool_id=tool_id,
            payload=payload,
            priority=priority,
            backend=backend,
            rollout_bucket=rollout_bucket,
            rollout_percentage=rollout_percentage,
            celery_task_id=celery_task_id,
            idempotency_key=idempotency_key,
            held=held,
        )
        return self.create_queued_many([task])[0]

    def create_queued_many(self, tasks: Sequence[QueuedTask]) -> list[TaskRecord]:
        """Insert routed tasks, each as `create_queued` would, all in one transaction: every
        row and its events are written, or (IntegrityError, say) none is."""
        if not tasks:
            return []
        now = utcnow()
        records = [task.record(now) for task in tasks]
        events = [
            {"task_id": r.task_id, "seq": seq, "status": status, "message": message, "at": now}
            for r in records
            for seq, status, message in (
                (1, TaskStatus.CREATED, "created"),
                (2, TaskStatus.QUEUED, r.message),
            )
        ]
        with self._prepared.write() as cursor:
            self._prepared[INSERT_TASK].execute_many(cursor, [r.as_row() for r in records])
            self._prepared[INSERT_FIRST_EVENT].execute_many(cursor, events)
        return records

    def claim(
        self, task_id: str, *, owner: str, lease_seconds: float, backend: str | None = None
    ) -> TaskRecord | None:
        """Start an attempt: take the task if it is QUEUED and due, or if its last attempt's
        lease expired (that process died); count the attempt and lease it to `owner`.
        With `backend`, only a task recorded for that backend. None if it is not claimable
        (another copy has it, it ended, it moved to another backend, or it does not exist)."""
        now = utcnow()
        return _record(
            self._transition(
                task_id,
                Guard.CLAIMABLE if backend is None else Guard.CLAIMABLE_ON,
                backend=backend,
                to_status=TaskStatus.PROCESSING,
                message="started",
                values={
                    "attempts": ADD_ONE,
                    "progress": 0,
                    "lease_owner": owner,
                    "lease_expires_at": now + timedelta(seconds=lease_seconds),
                    "run_after": None,
                    "dispatched_at": now,  # taken: whatever handed it over, it arrived
                },
                stamp="processing_started_at",
                now=now,
            )
        )

    def renew_lease(self, task_id: str, *, attempt: int, lease_seconds: float) -> TaskRecord | None:
        """Extend a running attempt's lease (no history entry); None if the attempt is stale."""
        now = utcnow()
        statement = update_statement(Guard.ATTEMPT, ("lease_expires_at",), ())
        params = {
            "set_lease_expires_at": now + timedelta(seconds=lease_seconds),
            "where_task_id": task_id,
            "where_attempt": attempt,
        }
        with self._write_turn, self.engine.begin() as conn:
            row = conn.execute(statement, params).one_or_none()
        return TaskRecord.from_row(row._mapping) if row is not None else None

    def record_progress(
        self, task_id: str, *, attempt: int, progress: int, message: str | None
    ) -> TaskRecord | None:
        """Write a progress step of a running attempt; None if that attempt is no longer the
        task's running one."""
        return _record(
            self._transition(
                task_id,
                Guard.ATTEMPT,
                attempt=attempt,
                to_status=TaskStatus.PROCESSING,
                message=message,
                values={"progress": progress},
            )
        )

    def complete(self, task_id: str, *, attempt: int, result: Any) -> bool:
        """PROCESSING -> COMPLETED with the tool's result, if `attempt` is still the running one
        (whether it was). Every task's last write: it returns a yes or no, not the row, which
        would cost reading back and converting its 29 columns."""
        row = self._transition(
            task_id,
            Guard.ATTEMPT,
            attempt=attempt,
            to_status=TaskStatus.COMPLETED,
            message="completed",
            values={"result": result, "progress": 100, **_NO_ERROR, **_NO_LEASE},
            stamp="completed_at",
            returning=_PROGRESS_ONLY,
        )
        return row is not None

    def fail(
        self, task_id: str, *, attempt: int, error_code: str, error_message: str
    ) -> TaskRecord | None:
        """PROCESSING -> FAILED with the reason, if `attempt` is still the running one."""
        return _record(
            self._transition(
                task_id,
                Guard.ATTEMPT,
                attempt=attempt,
                to_status=TaskStatus.FAILED,
                message="failed",
                values={"error_code": error_code, "error_message": error_message, **_NO_LEASE},
                stamp="failed_at",
            )
        )

    def retry_later(
        self,
        task_id: str,
        *,
        attempt: int,
        delay: float,
        error_code: str,
        error_message: str,
        message: str,
    ) -> TaskRecord | None:
        """PROCESSING -> QUEUED after a failed attempt with retries left: it waits `delay`
        seconds (`run_after`) and is then handed to its backend again. The failure stays
        visible until an attempt ends."""
        now = utcnow()
        return _record(
            self._transition(
                task_id,
                Guard.ATTEMPT,
                attempt=attempt,
                to_status=TaskStatus.QUEUED,
                message=message,
                values={
                    "error_code": error_code,
                    "error_message": error_message,
                    "run_after": now + timedelta(seconds=delay),
                    "dispatched_at": None,
                    **_NO_LEASE,
                },
                now=now,
            )
        )

    def cancel_running(self, task_id: str, *, attempt: int, reason: str) -> TaskRecord | None:
        """PROCESSING -> CANCELLED: a running attempt stopped on request."""
        return _record(
            self._transition(
                task_id,
                Guard.ATTEMPT,
                attempt=attempt,
                to_status=TaskStatus.CANCELLED,
                message=reason,
                values=_NO_LEASE,
            )
        )

    def request_cancel(self, task_id: str, *, reason: str) -> TaskRecord | None:
        """Ask a running task to stop (it stays PROCESSING until its attempt notices)."""
        now = utcnow()
        return _record(
            self._transition(
                task_id,
                Guard.RUNNING,
                to_status=TaskStatus.PROCESSING,
                message=reason,
                values={"cancel_requested_at": now},
                now=now,
            )
        )

    def expire_lease(self, task_id: str, *, attempt: int) -> TaskRecord | None:
        """Give up a running attempt at once (this process is stopping without it): the
        recovery sweep treats it like any lost attempt, without waiting for the lease."""
        return _record(
            self._transition(
                task_id,
                Guard.ATTEMPT,
                attempt=attempt,
                to_status=TaskStatus.PROCESSING,
                message="released: the process running it is stopping",
                values={"lease_expires_at": utcnow() - timedelta(seconds=1)},
            )
        )

    def requeue_lost(
        self,
        task_id: str,
        *,
        attempt: int,
        backend: str,
        celery_task_id: str | None,
        reason: str,
    ) -> TaskRecord | None:
        """A lost attempt (lease expired) with attempts left: QUEUED again on `backend`."""
        now = utcnow()
        return _record(
            self._transition(
                task_id,
                Guard.LOST,
                attempt=attempt,
                to_status=TaskStatus.QUEUED,
                message=reason,
                values={
                    "backend": backend,
                    "celery_task_id": celery_task_id,
                    "dispatched_at": now,
                    "progress": 0,
                    **_NO_LEASE,
                },
                now=now,
            )
        )

    def end_lost(
        self, task_id: str, *, attempt: int, status: TaskStatus, error_code: str | None, reason: str
    ) -> TaskRecord | None:
        """A lost attempt that must not run again: FAILED (no attempts left) or CANCELLED
        (a cancel was requested)."""
        now = utcnow()
        failed = status is TaskStatus.FAILED
        return _record(
            self._transition(
                task_id,
                Guard.LOST,
                attempt=attempt,
                to_status=status,
                message="failed" if failed else reason,
                values={
                    "error_code": error_code,
                    "error_message": reason if failed else None,
                    **_NO_LEASE,
                },
                stamp="failed_at" if failed else None,
                now=now,
            )
        )

    def retry_finished(
        self, task_id: str, *, backend: str, celery_task_id: str | None, reason: str
    ) -> TaskRecord | None:
        """FAILED/CANCELLED -> QUEUED on `backend`: a manual retry, with the tool's retry policy
        counting afresh. Two concurrent retries make one new attempt."""
        now = utcnow()
        return _record(
            self._transition(
                task_id,
                Guard.FINISHED,
                to_status=TaskStatus.QUEUED,
                message=reason,
                values={
                    "attempts_before_retry": CopyOf("attempts"),
                    "backend": backend,
                    "celery_task_id": celery_task_id,
                    "progress": 0,
                    "result": None,
                    "run_after": None,
                    "dispatched_at": now,
                    "cancel_requested_at": None,
                    "processing_started_at": None,
                    "completed_at": None,
                    "failed_at": None,
                    **_NO_ERROR,
                    **_NO_LEASE,
                },
                stamp="queued_at",
                now=now,
            )
        )

    def cancel(
        self, task_id: str, *, reason: str, error_code: str | None = None
    ) -> TaskRecord | None:
        """QUEUED -> CANCELLED; a task already running is not touched."""
        return _record(
            self._transition(
                task_id,
                Guard.QUEUED,
                to_status=TaskStatus.CANCELLED,
                message=reason,
                values={
                    "error_code": error_code,
                    "error_message": reason if error_code else None,
                    "run_after": None,
                },
            )
        )

    def move_backend(
        self, task_id: str, *, from_backend: str, to_backend: str, reason: str
    ) -> TaskRecord | None:
        """Re-route a QUEUED task (e.g. Celery switched off for it); the move is an event."""
        return _record(
            self._transition(
                task_id,
                Guard.QUEUED_ON,
                backend=from_backend,
                to_status=TaskStatus.QUEUED,
                message=_moved(from_backend, to_backend, reason),
                values={"backend": to_backend},
            )
        )

    def move_queued(
        self, *, from_backend: str, to_backend: str, reason: str, tool_id: str | None = None
    ) -> list[TaskRecord]:
        """Re-route every QUEUED task of `from_backend` (of one tool, if given) in one
        transaction, highest priority first; each move is an event. A rollback's reclaim."""
        now = utcnow()
        message = _moved(from_backend, to_backend, reason)
        query = (
            update(TASKS)
            .where(TASKS.c.status == TaskStatus.QUEUED, TASKS.c.backend == from_backend)
            .values(backend=to_backend, message=message, updated_at=now)
            .returning(*TASKS.c)
        )
        if tool_id is not None:
            query = query.where(TASKS.c.tool_id == tool_id)
        with self._write_turn, self.engine.begin() as conn:
            moved = [TaskRecord.from_row(row._mapping) for row in conn.execute(query)]
            for record in moved:
                conn.execute(
                    INSERT_EVENT,
                    event_values(record.task_id, TaskStatus.QUEUED, record.progress, message, now),
                )
        moved.sort(key=lambda record: (-record.priority, record.created_at))
        return moved

    def cancel_queued(
        self,
        *,
        reason: str,
        tool_ids: Collection[str] | None = None,
        backend: str | None = None,
        batch: int = CANCEL_BATCH,
    ) -> Counter[tuple[str, str]]:
        """QUEUED -> CANCELLED for every task (of `tool_ids`, on `backend`) created before the
        call, `batch` rows per transaction, each with its event; a task running by then is
        not touched, and a copy of a cancelled one handed to a backend finds nothing to claim.
        How many per (backend, tool_id)."""
        cancelled: Counter[tuple[str, str]] = Counter()
        if tool_ids is not None and not tool_ids:
            return cancelled
        started = utcnow()
        chosen = select(TASKS.c.task_id).where(
            TASKS.c.status == TaskStatus.QUEUED, TASKS.c.created_at <= started
        )
        if tool_ids is not None:
            chosen = chosen.where(TASKS.c.tool_id.in_(sorted(tool_ids)))
        if backend is not None:
            chosen = chosen.where(TASKS.c.backend == backend)
        chosen = chosen.order_by(TASKS.c.created_at).limit(batch)
        while True:
            now = utcnow()
            # Tasks created later are not the caller's to cancel; the bound also ends the loop
            # however fast new tasks arrive. The status is checked again on each locked row.
            query = (
                update(TASKS)
                .where(TASKS.c.task_id.in_(chosen), TASKS.c.status == TaskStatus.QUEUED)
                .values(
                    status=TaskStatus.CANCELLED,
                    message=reason,
                    run_after=None,
                    updated_at=now,
                    **_NO_ERROR,
                )
                .returning(TASKS.c.task_id, TASKS.c.backend, TASKS.c.tool_id, TASKS.c.progress)
            )
            with self._write_turn, self.engine.begin() as conn:
                rows = conn.execute(query).all()
                for row in rows:
                    conn.execute(
                        INSERT_EVENT,
                        event_values(row.task_id, TaskStatus.CANCELLED, row.progress, reason, now),
                    )
            cancelled.update((str(row.backend), str(row.tool_id)) for row in rows)
            if not rows and not self._exists(chosen):
                return cancelled  # (PostgreSQL: a batch claimed meanwhile matches nothing)

    def mark_dispatched(
        self,
        task_id: str,
        *,
        backend: str,
        last_dispatched_at: datetime | None,
        celery_task_id: str | None,
        reason: str,
    ) -> TaskRecord | None:
        """Take the turn to hand a waiting task over again; None if another process took it
        (the row changed since it was read)."""
        now = utcnow()
        return _record(
            self._transition(
                task_id,
                Guard.UNDISPATCHED,
                backend=backend,
                dispatched_at=last_dispatched_at,
                to_status=TaskStatus.QUEUED,
                message=reason,
                values={"dispatched_at": now, "celery_task_id": celery_task_id},
                now=now,
                # A first handover (a due retry) is no news, and threads write none for it; a
                # publish of a task the broker may have lost is.
                record_event=last_dispatched_at is not None,
            )
        )

    def mark_undispatched(self, task_id: str, *, reason: str) -> TaskRecord | None:
        """A handover failed (the broker is down): the task waits QUEUED for the next one."""
        return _record(
            self._transition(
                task_id,
                Guard.QUEUED,
                to_status=TaskStatus.QUEUED,
                message=reason,
                values={"dispatched_at": None},
            )
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
            (TASKS.c.error_code, where.error_code),
        ):
            if value is not None:
                query = query.where(column == value)
        if where.changed_since is not None:
            query = query.where(TASKS.c.updated_at >= where.changed_since)
        if where.changed_before is not None:
            query = query.where(TASKS.c.updated_at < where.changed_before)
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
        self,
        *,
        backend: str,
        unchanged_for: float = 0.0,
        limit: int | None = None,
        except_tools: Collection[str] = (),
    ) -> list[tuple[str, int]]:
        """(task_id, priority) of QUEUED tasks recorded for `backend` and due, oldest first.

        `unchanged_for` skips rows written in the last that many seconds (another process is
        most likely about to run them); `except_tools` skips the tasks of those tools (held).
        """
        now = utcnow()
        query = (
            select(TASKS.c.task_id, TASKS.c.priority)
            .where(
                TASKS.c.status == TaskStatus.QUEUED,
                TASKS.c.backend == backend,
                or_(TASKS.c.run_after.is_(None), TASKS.c.run_after <= now),
            )
            .order_by(TASKS.c.created_at)
            .limit(limit)
        )
        if unchanged_for > 0:
            query = query.where(TASKS.c.updated_at <= now - timedelta(seconds=unchanged_for))
        if except_tools:
            query = query.where(TASKS.c.tool_id.not_in(sorted(except_tools)))
        with self.engine.connect() as conn:
            return [(row.task_id, row.priority) for row in conn.execute(query)]

    def lost(self, *, limit: int) -> list[TaskRecord]:
        """Running tasks whose lease expired: the process running them died or stopped."""
        query = (
            select(TASKS)
            .where(TASKS.c.status == TaskStatus.PROCESSING, TASKS.c.lease_expires_at < utcnow())
            .order_by(TASKS.c.lease_expires_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [TaskRecord.from_row(row._mapping) for row in conn.execute(query)]

    def awaiting_dispatch(
        self,
        *,
        backend: str,
        republish_after: float,
        limit: int,
        except_tools: Collection[str] = (),
    ) -> list[TaskRecord]:
        """Due QUEUED tasks of `backend` never handed over (a retry after its backoff, a task
        accepted while the broker was down) or handed over `republish_after` seconds ago and
        still unclaimed (the broker may have lost them); none of `except_tools` (held)."""
        now = utcnow()
        query = (
            select(TASKS)
            .where(
                TASKS.c.status == TaskStatus.QUEUED,
                TASKS.c.backend == backend,
                or_(TASKS.c.run_after.is_(None), TASKS.c.run_after <= now),
                or_(
                    TASKS.c.dispatched_at.is_(None),
                    TASKS.c.dispatched_at < now - timedelta(seconds=republish_after),
                ),
            )
            .order_by(TASKS.c.priority.desc(), TASKS.c.created_at)
            .limit(limit)
        )
        if except_tools:
            query = query.where(TASKS.c.tool_id.not_in(sorted(except_tools)))
        with self.engine.connect() as conn:
            return [TaskRecord.from_row(row._mapping) for row in conn.execute(query)]

    def undispatched(self, *, tool_id: str | None, limit: int) -> list[TaskRecord]:
        """Due QUEUED tasks (of `tool_id`, or of every tool) never handed to their backend
        (held while their tool was paused, say), highest priority first, then oldest."""
        now = utcnow()
        query = (
            select(TASKS)
            .where(
                TASKS.c.status == TaskStatus.QUEUED,
                TASKS.c.dispatched_at.is_(None),
                or_(TASKS.c.run_after.is_(None), TASKS.c.run_after <= now),
            )
            .order_by(TASKS.c.priority.desc(), TASKS.c.created_at)
            .limit(limit)
        )
        if tool_id is not None:
            query = query.where(TASKS.c.tool_id == tool_id)
        with self.engine.connect() as conn:
            return [TaskRecord.from_row(row._mapping) for row in conn.execute(query)]

    def by_idempotency_key(self, *, user_id: str, key: str) -> TaskRecord | None:
        """The caller's task created with `key`, if any."""
        query = select(TASKS).where(TASKS.c.user_id == user_id, TASKS.c.idempotency_key == key)
        with self.engine.connect() as conn:
            row = conn.execute(query).one_or_none()
        return TaskRecord.from_row(row._mapping) if row is not None else None

    def queued_tools(self, *, backend: str) -> set[str]:
        """The tools of the tasks QUEUED on `backend` now."""
        query = (
            select(TASKS.c.tool_id)
            .where(TASKS.c.status == TaskStatus.QUEUED, TASKS.c.backend == backend)
            .distinct()
        )
        with self.engine.connect() as conn:
            return {str(tool_id) for tool_id in conn.execute(query).scalars()}

    def queued_counts(self) -> dict[tuple[str, str], int]:
        """QUEUED tasks per (backend, tool_id)."""
        query = (
            select(TASKS.c.backend, TASKS.c.tool_id, func.count())
            .where(TASKS.c.status == TaskStatus.QUEUED)
            .group_by(TASKS.c.backend, TASKS.c.tool_id)
        )
        with self.engine.connect() as conn:
            return {(str(b), str(t)): int(n) for b, t, n in conn.execute(query)}

    def tally(self, *statuses: TaskStatus) -> dict[tuple[TaskStatus, str, str], int]:
        """Tasks per (status, backend, tool_id), of `statuses` if any are given: one GROUP BY."""
        query = select(TASKS.c.status, TASKS.c.backend, TASKS.c.tool_id, func.count()).group_by(
            TASKS.c.status, TASKS.c.backend, TASKS.c.tool_id
        )
        if statuses:
            query = query.where(TASKS.c.status.in_(statuses))
        with self.engine.connect() as conn:
            return {
                (TaskStatus(status), str(backend), str(tool_id)): int(count)
                for status, backend, tool_id, count in conn.execute(query)
            }

    def waiting(self) -> dict[str, Waiting]:
        """Per backend: its QUEUED tasks, and since when the longest-waiting due one is due
        (a task in its retry backoff is queued but not yet waiting)."""
        now = utcnow()
        due_since = func.coalesce(TASKS.c.run_after, TASKS.c.queued_at, TASKS.c.created_at)
        query = (
            select(
                TASKS.c.backend,
                func.count(),
                type_coerce(func.min(case((due_since <= now, due_since))), UTCDateTime),
            )
            .where(TASKS.c.status == TaskStatus.QUEUED)
            .group_by(TASKS.c.backend)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {
            str(backend): Waiting(queued=int(count), oldest_due=oldest)
            for backend, count, oldest in rows
        }

    # -- retention -----------------------------------------------------------------------------

    def count_finished(self, *, before: datetime) -> Pruned:
        """The finished tasks last changed before `before`, and their events: what
        `delete_finished` would delete."""
        old = _finished_before(before)
        tasks = select(func.count()).select_from(TASKS).where(old)
        events = (
            select(func.count())
            .select_from(EVENTS)
            .where(EVENTS.c.task_id.in_(select(TASKS.c.task_id).where(old)))
        )
        with self.engine.connect() as conn:
            return Pruned(conn.execute(tasks).scalar_one(), conn.execute(events).scalar_one())

    def delete_finished(self, *, before: datetime, limit: int) -> Pruned:
        """Delete up to `limit` finished tasks last changed before `before`, with their events,
        in one short transaction. A task retried meanwhile is no longer finished: it stays."""
        old = _finished_before(before)
        # PostgreSQL: the rows are locked until the commit (a retry waits, then finds nothing),
        # and a concurrent prune skips them. SQLite has no row locks: each DELETE checks again,
        # and from the first one on the transaction holds the only write lock.
        chosen = select(TASKS.c.task_id).where(old).limit(limit).with_for_update(skip_locked=True)
        with self._write_turn, self.engine.begin() as conn:
            ids = list(conn.execute(chosen).scalars())
            if not ids:
                return Pruned()
            still_old = select(TASKS.c.task_id).where(TASKS.c.task_id.in_(ids), old)
            # Events and batches first and explicitly: the foreign keys' cascade is not relied
            # upon.
            events = conn.execute(delete(EVENTS).where(EVENTS.c.task_id.in_(still_old)))
            self.batches.delete_of(conn, still_old)
            tasks = conn.execute(delete(TASKS).where(TASKS.c.task_id.in_(ids), old))
        return Pruned(tasks.rowcount, events.rowcount)

    # -- internals -----------------------------------------------------------------------------

    def _transition(
        self,
        task_id: str,
        guard: Guard,
        *,
        to_status: TaskStatus,
        message: str | None,
        values: Mapping[str, Any],
        stamp: str | None = None,
        attempt: int | None = None,
        backend: str | None = None,
        dispatched_at: datetime | None = None,
        now: datetime | None = None,
        record_event: bool = True,
        returning: tuple[str, ...] = TASK_COLUMNS,
    ) -> dict[str, Any] | None:
        """The `returning` columns of the task after the transition (it needs `progress`, for
        the event), or None if the guard refused it."""
        # The UPDATE comes first so the transaction takes the write lock at once (SQLite) or
        # locks the row (PostgreSQL): concurrent transitions of one task queue up, and the
        # event's seq is computed after the lock, so it cannot collide.
        now = now or utcnow()
        changes = dict(values, status=to_status, message=message, updated_at=now)
        if stamp is not None:
            changes[stamp] = now
        computed = tuple(
            sorted(
                (name, value)
                for name, value in changes.items()
                if isinstance(value, AddOne | CopyOf)
            )
        )
        set_columns = tuple(sorted(name for name in changes if name not in dict(computed)))
        statement = update_statement(guard, set_columns, computed, returning)
        params = {f"set_{name}": changes[name] for name in set_columns}
        params.update(
            where_task_id=task_id,
            where_now=now,
            where_attempt=attempt,
            where_backend=backend,
            where_dispatched_at=dispatched_at,
        )
        prepared = self._prepared[statement]
        with self._prepared.write() as cursor:
            prepared.execute(cursor, params)
            row = prepared.fetch_one(cursor)
            if row is None:
                return None
            if record_event:
                self._prepared[INSERT_EVENT].execute(
                    cursor, event_values(task_id, to_status, row["progress"], message, now)
                )
        return row

    def _exists(self, query: Select[Any]) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(query.limit(1)).first() is not None


def _record(row: dict[str, Any] | None) -> TaskRecord | None:
    """The task a transition returned in full, or None if its guard refused it."""
    return TaskRecord.from_row(row) if row is not None else None


def _finished_before(moment: datetime) -> ColumnElement[bool]:
    """COMPLETED, FAILED or CANCELLED, and unchanged since before `moment`."""
    return and_(TASKS.c.status.in_(sorted(TERMINAL_STATUSES)), TASKS.c.updated_at < moment)


def _moved(from_backend: str, to_backend: str, reason: str) -> str:
    """The history line of a task re-routed while it waited."""
    return f"moved from {from_backend} to {to_backend}: {reason}"
