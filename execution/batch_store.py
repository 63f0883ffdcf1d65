"""Reads and writes the batches of parallel jobs, and the job rows' part in them.

Every write is one conditional statement (or one short transaction) that only one process can
win, as for tasks: which attempt of a batch stores its result, which process runs the finalizer
(`claim_finalize`: the job is detached and none of its batches is unfinished), which sweeper
hands a batch over again. A batch that ends locks its job's row first, so the job's progress
counts every batch exactly once, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)

from execution.batch_records import BATCHES, UNFINISHED, BatchRecord
from execution.models import utcnow
from execution.records import TASKS, TaskRecord
from execution.status import TaskStatus
from execution.task_statements import INSERT_EVENT, event_values


def _batch(task_id: str, batch_no: int) -> ColumnElement[bool]:
    return and_(BATCHES.c.task_id == task_id, BATCHES.c.batch_no == batch_no)


def _unfinished_of(task_id: Any) -> ColumnElement[bool]:
    """Some batch of the job has not ended."""
    return exists().where(BATCHES.c.task_id == task_id, BATCHES.c.status.in_(UNFINISHED))


def _has_batches(task_id: Any) -> ColumnElement[bool]:
    return exists().where(BATCHES.c.task_id == task_id)


DETACHED = and_(TASKS.c.status == TaskStatus.PROCESSING, TASKS.c.lease_expires_at.is_(None))
"""A job waiting for its batches: running, with no process holding it."""


class BatchStore:
    """The `task_batches` rows; built by the TaskStore, sharing its engine and write turn."""

    def __init__(self, engine: Engine, write_turn: AbstractContextManager[Any]) -> None:
        self.engine = engine
        self._write_turn = write_turn

    # -- the job -------------------------------------------------------------------------------

    def fan_out(
        self, task_id: str, *, attempt: int, inputs: Sequence[Any] | None, message: str
    ) -> TaskRecord | None:
        """Detach running attempt `attempt` of a job from its process: with `inputs`, its
        batches are written first (QUEUED, never handed over), all in one transaction. None if
        the attempt is no longer the job's running one (nothing is written then)."""
        now = utcnow()
        detach = (
            update(TASKS)
            .where(
                TASKS.c.task_id == task_id,
                TASKS.c.status == TaskStatus.PROCESSING,
                TASKS.c.attempts == attempt,
            )
            .values(lease_owner=None, lease_expires_at=None, message=message, updated_at=now)
            .returning(*TASKS.c)
        )
        with self._write_turn, self.engine.begin() as conn:
            row = conn.execute(detach).one_or_none()
            if row is None:
                return None
            job = TaskRecord.from_row(row._mapping)
            if inputs:
                conn.execute(
                    insert(BATCHES), [_new_batch(task_id, n, i, now) for n, i in enumerate(inputs)]
                )
            _event(conn, job, message, now)
        return job

    def claim_finalize(
        self, task_id: str, *, owner: str, lease_seconds: float
    ) -> TaskRecord | None:
        """Take a detached job whose batches have all ended, to run its finalizer: of every
        process that tries (each batch's last act is to try), exactly one gets it."""
        now = utcnow()
        statement = (
            update(TASKS)
            .where(
                TASKS.c.task_id == task_id,
                DETACHED,
                _has_batches(TASKS.c.task_id),
                ~_unfinished_of(TASKS.c.task_id),
            )
            .values(
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                message="finalizing",
                updated_at=now,
            )
            .returning(*TASKS.c)
        )
        with self._write_turn, self.engine.begin() as conn:
            row = conn.execute(statement).one_or_none()
            if row is None:
                return None
            job = TaskRecord.from_row(row._mapping)
            _event(conn, job, "finalizing", now)
        return job

    def expire_stalled(self, *, unchanged_for: float, limit: int) -> int:
        """Detached jobs whose batches all ended `unchanged_for` seconds ago and which nobody
        finalized (the process that ended the last batch died first): their lease is expired,
        so the recovery sweep requeues them like any lost attempt, and the next attempt goes
        straight to the finalizer."""
        now = utcnow()
        cutoff = now - timedelta(seconds=unchanged_for)
        recent = exists().where(
            BATCHES.c.task_id == TASKS.c.task_id, BATCHES.c.updated_at >= cutoff
        )
        stalled = (
            select(TASKS.c.task_id)
            .where(
                DETACHED,
                TASKS.c.updated_at < cutoff,
                _has_batches(TASKS.c.task_id),
                ~_unfinished_of(TASKS.c.task_id),
                ~recent,
            )
            .limit(limit)
        )
        with self._write_turn, self.engine.begin() as conn:
            ids = list(conn.execute(stalled).scalars())
            if not ids:
                return 0
            expired = conn.execute(
                update(TASKS)
                .where(TASKS.c.task_id.in_(ids), DETACHED)
                .values(lease_expires_at=now - timedelta(seconds=1), updated_at=now)
            )
        return expired.rowcount

    def cancel_job(self, task_id: str, *, reason: str) -> TaskRecord | None:
        """A cancel of a detached job: its waiting batches end CANCELLED, its running ones are
        asked to stop, and with none running the job itself ends CANCELLED now (else the last
        batch to stop finalizes it as cancelled). None if the job is not detached."""
        now = utcnow()
        with self._write_turn, self.engine.begin() as conn:
            locked = conn.execute(
                select(TASKS).where(TASKS.c.task_id == task_id, DETACHED).with_for_update()
            ).one_or_none()
            if locked is None:
                return None
            _stop_siblings(conn, task_id, reason, now)
            if conn.execute(select(_unfinished_of(task_id))).scalar_one():
                return TaskRecord.from_row(locked._mapping)
            row = conn.execute(
                update(TASKS)
                .where(TASKS.c.task_id == task_id, DETACHED)
                .values(status=TaskStatus.CANCELLED, message=reason, updated_at=now)
                .returning(*TASKS.c)
            ).one()
            job = TaskRecord.from_row(row._mapping)
            _event(conn, job, reason, now)
        return job

    def requeue_unfinished(self, task_id: str) -> int:
        """Before a manual retry of an ended job: its batches that did not complete are QUEUED
        again, their retry policy counting afresh; the completed ones keep their results.
        Returns how many."""
        now = utcnow()
        job_ended = exists().where(
            TASKS.c.task_id == task_id,
            TASKS.c.status.in_((TaskStatus.FAILED, TaskStatus.CANCELLED)),
        )
        statement = (
            update(BATCHES)
            .where(
                BATCHES.c.task_id == task_id,
                BATCHES.c.status.in_((TaskStatus.FAILED, TaskStatus.CANCELLED)),
                job_ended,
            )
            .values(
                status=TaskStatus.QUEUED,
                attempts_before_retry=BATCHES.c.attempts,
                progress=0,
                result=None,
                error_code=None,
                error_message=None,
                lease_expires_at=None,
                run_after=None,
                dispatched_at=None,
                cancel_requested_at=None,
                finished_at=None,
                updated_at=now,
            )
        )
        with self._write_turn, self.engine.begin() as conn:
            return conn.execute(statement).rowcount

    # -- one batch -----------------------------------------------------------------------------

    def claim(
        self,
        task_id: str,
        batch_no: int,
        *,
        owner: str,
        lease_seconds: float,
        backend: str | None = None,
    ) -> BatchRecord | None:
        """Start an attempt of a batch that is QUEUED and due, or whose last attempt's lease
        expired, while its job runs (on `backend`, if given). None if another copy has it, it
        ended, or the job did."""
        now = utcnow()
        due = or_(BATCHES.c.run_after.is_(None), BATCHES.c.run_after <= now)
        claimable = or_(
            and_(BATCHES.c.status == TaskStatus.QUEUED, due),
            and_(BATCHES.c.status == TaskStatus.PROCESSING, BATCHES.c.lease_expires_at < now),
        )
        job_running = exists().where(
            TASKS.c.task_id == task_id,
            TASKS.c.status == TaskStatus.PROCESSING,
            TASKS.c.backend == backend if backend is not None else TASKS.c.backend.is_not(None),
        )
        return self._update_one(
            task_id,
            batch_no,
            and_(claimable, BATCHES.c.cancel_requested_at.is_(None), job_running),
            status=TaskStatus.PROCESSING,
            attempts=BATCHES.c.attempts + 1,
            progress=0,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            run_after=None,
            dispatched_at=now,
            started_at=func.coalesce(BATCHES.c.started_at, now),
            updated_at=now,
        )

    def renew(
        self, task_id: str, batch_no: int, *, attempt: int, lease_seconds: float
    ) -> BatchRecord | None:
        """Extend a running attempt's lease; None if the attempt is stale."""
        now = utcnow()
        return self._update_one(
            task_id,
            batch_no,
            _attempt(attempt),
            lease_expires_at=now + timedelta(seconds=lease_seconds),
        )

    def record_progress(
        self, task_id: str, batch_no: int, *, attempt: int, progress: int
    ) -> BatchRecord | None:
        """A progress step of a running attempt; None if that attempt is stale."""
        return self._update_one(
            task_id, batch_no, _attempt(attempt), progress=progress, updated_at=utcnow()
        )

    def end(
        self,
        task_id: str,
        batch_no: int,
        *,
        attempt: int,
        status: TaskStatus,
        result: Any = None,
        error_code: str | None = None,
        error_message: str | None = None,
        stop_siblings: str | None = None,
        lost: bool = False,
    ) -> BatchRecord | None:
        """End a batch's running attempt COMPLETED, FAILED or CANCELLED, and count it in its
        job's progress. With `stop_siblings` (why: it failed for good and its job fails fast),
        the job's other waiting batches end CANCELLED and its running ones are asked to stop.
        With `lost`, only if the attempt's lease expired (a sweeper ends it). None if the
        attempt no longer holds the batch."""
        now = utcnow()
        guard = _attempt(attempt)
        if lost:
            guard = and_(guard, BATCHES.c.lease_expires_at < now)
        with self._write_turn, self.engine.begin() as conn:
            _lock_job(conn, task_id)
            row = conn.execute(
                update(BATCHES)
                .where(_batch(task_id, batch_no), guard)
                .values(
                    status=status,
                    result=result,
                    error_code=error_code,
                    error_message=error_message,
                    progress=100 if status is TaskStatus.COMPLETED else BATCHES.c.progress,
                    lease_expires_at=None,
                    finished_at=now,
                    updated_at=now,
                )
                .returning(*BATCHES.c)
            ).one_or_none()
            if row is None:
                return None
            if stop_siblings is not None:
                _stop_siblings(conn, task_id, stop_siblings, now)
            _count_in_job(conn, task_id, now)
        return BatchRecord.from_row(row._mapping)

    def retry_later(
        self,
        task_id: str,
        batch_no: int,
        *,
        attempt: int,
        delay: float,
        error_code: str,
        error_message: str,
        lost: bool = False,
    ) -> BatchRecord | None:
        """A failed (or, with `lost`, lost) attempt with retries left: QUEUED again, to be
        handed over once `delay` seconds have passed."""
        now = utcnow()
        guard = _attempt(attempt)
        if lost:
            guard = and_(guard, BATCHES.c.lease_expires_at < now)
        return self._update_one(
            task_id,
            batch_no,
            guard,
            status=TaskStatus.QUEUED,
            progress=0,
            error_code=error_code,
            error_message=error_message,
            lease_expires_at=None,
            run_after=now + timedelta(seconds=delay) if delay > 0 else None,
            dispatched_at=None,
            updated_at=now,
        )

    # -- sweeps --------------------------------------------------------------------------------

    def lost(self, *, limit: int) -> list[BatchRecord]:
        """Running batches whose lease expired: their process died."""
        query = (
            select(BATCHES)
            .where(BATCHES.c.status == TaskStatus.PROCESSING, BATCHES.c.lease_expires_at < utcnow())
            .order_by(BATCHES.c.lease_expires_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [BatchRecord.from_row(row._mapping) for row in conn.execute(query)]

    def awaiting_hand_over(
        self,
        *,
        backend: str,
        unchanged_for: float,
        limit: int,
        except_tools: Collection[str] = (),
    ) -> list[tuple[BatchRecord, TaskRecord]]:
        """QUEUED, due batches of running jobs on `backend` that were never handed over, or
        not since `unchanged_for` seconds (the hand-over may have been lost), with their job;
        highest priority first, then oldest."""
        now = utcnow()
        stale = now - timedelta(seconds=unchanged_for)
        query = (
            select(BATCHES, *[column.label(f"job_{column.name}") for column in TASKS.c])
            .join(TASKS, TASKS.c.task_id == BATCHES.c.task_id)
            .where(
                BATCHES.c.status == TaskStatus.QUEUED,
                or_(BATCHES.c.run_after.is_(None), BATCHES.c.run_after <= now),
                or_(BATCHES.c.dispatched_at.is_(None), BATCHES.c.dispatched_at < stale),
                TASKS.c.status == TaskStatus.PROCESSING,
                TASKS.c.backend == backend,
                TASKS.c.tool_id.not_in(sorted(except_tools)),
            )
            .order_by(TASKS.c.priority.desc(), BATCHES.c.created_at, BATCHES.c.batch_no)
            .limit(limit)
        )
        found = []
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                values = row._mapping
                batch = BatchRecord.from_row({c.name: values[c.name] for c in BATCHES.c})
                job = TaskRecord.from_row({c.name: values[f"job_{c.name}"] for c in TASKS.c})
                found.append((batch, job))
        return found

    def mark_dispatched(
        self, task_id: str, batch_no: int, *, last_dispatched_at: datetime | None
    ) -> bool:
        """Take the turn to hand a QUEUED batch over (again): of the sweepers that saw it
        handed over at `last_dispatched_at`, exactly one wins."""
        same = BATCHES.c.dispatched_at.is_not_distinct_from(last_dispatched_at)
        changed = self._update_one(
            task_id,
            batch_no,
            and_(BATCHES.c.status == TaskStatus.QUEUED, same),
            dispatched_at=utcnow(),
        )
        return changed is not None

    def mark_undispatched(self, task_id: str, batch_no: int) -> None:
        """A hand-over failed: the batch waits for the next sweep to hand it over."""
        self._update_one(
            task_id, batch_no, BATCHES.c.status == TaskStatus.QUEUED, dispatched_at=None
        )

    # -- reads ---------------------------------------------------------------------------------

    def get(self, task_id: str, batch_no: int) -> BatchRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(BATCHES).where(_batch(task_id, batch_no))).one_or_none()
        return BatchRecord.from_row(row._mapping) if row is not None else None

    def of(self, task_id: str) -> list[BatchRecord]:
        """The job's batches in order."""
        query = select(BATCHES).where(BATCHES.c.task_id == task_id).order_by(BATCHES.c.batch_no)
        with self.engine.connect() as conn:
            return [BatchRecord.from_row(row._mapping) for row in conn.execute(query)]

    def counts(self, task_ids: Collection[str]) -> dict[str, dict[TaskStatus, int]]:
        """Batches per status, for each of these jobs that has any."""
        query = (
            select(BATCHES.c.task_id, BATCHES.c.status, func.count())
            .where(BATCHES.c.task_id.in_(sorted(task_ids)))
            .group_by(BATCHES.c.task_id, BATCHES.c.status)
        )
        found: dict[str, dict[TaskStatus, int]] = {}
        with self.engine.connect() as conn:
            for task_id, status, count in conn.execute(query):
                found.setdefault(task_id, {})[TaskStatus(status)] = count
        return found

    def delete_of(self, conn: Connection, task_ids: Any) -> int:
        """Delete the batches of these jobs in the caller's transaction (retention)."""
        return conn.execute(delete(BATCHES).where(BATCHES.c.task_id.in_(task_ids))).rowcount

    # -- internals -----------------------------------------------------------------------------

    def _update_one(
        self, task_id: str, batch_no: int, guard: ColumnElement[bool], **values: Any
    ) -> BatchRecord | None:
        statement = (
            update(BATCHES)
            .where(_batch(task_id, batch_no), guard)
            .values(**values)
            .returning(*BATCHES.c)
        )
        with self._write_turn, self.engine.begin() as conn:
            row = conn.execute(statement).one_or_none()
        return BatchRecord.from_row(row._mapping) if row is not None else None


def _attempt(attempt: int) -> ColumnElement[bool]:
    return and_(BATCHES.c.status == TaskStatus.PROCESSING, BATCHES.c.attempts == attempt)


def _new_batch(task_id: str, batch_no: int, batch_input: Any, now: datetime) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "batch_no": batch_no,
        "status": TaskStatus.QUEUED,
        "attempts": 0,
        "attempts_before_retry": 0,
        "progress": 0,
        "input": batch_input,
        "result": None,
        "error_code": None,
        "error_message": None,
        "lease_owner": None,
        "lease_expires_at": None,
        "run_after": None,
        "dispatched_at": None,
        "cancel_requested_at": None,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "updated_at": now,
    }


def _lock_job(conn: Connection, task_id: str) -> None:
    """Lock the job's row first: batches of one job end one after another (PostgreSQL; SQLite
    has one writer anyway), so each counts the others' ends."""
    conn.execute(select(TASKS.c.task_id).where(TASKS.c.task_id == task_id).with_for_update())


def _stop_siblings(conn: Connection, task_id: str, reason: str, now: datetime) -> None:
    """The job's waiting batches end CANCELLED; its running ones are asked to stop."""
    conn.execute(
        update(BATCHES)
        .where(BATCHES.c.task_id == task_id, BATCHES.c.status == TaskStatus.QUEUED)
        .values(
            status=TaskStatus.CANCELLED,
            error_message=reason,
            run_after=None,
            finished_at=now,
            updated_at=now,
        )
    )
    conn.execute(
        update(BATCHES)
        .where(
            BATCHES.c.task_id == task_id,
            BATCHES.c.status == TaskStatus.PROCESSING,
            BATCHES.c.cancel_requested_at.is_(None),
        )
        .values(cancel_requested_at=now)
    )


def _count_in_job(conn: Connection, task_id: str, now: datetime) -> None:
    """The job's progress: the share of its batches that ended (99 at most: the finalizer
    still has to run), written with an event when the whole percent moves."""
    ended, total = conn.execute(
        select(
            func.count().filter(BATCHES.c.status.not_in(UNFINISHED)),
            func.count(),
        ).where(BATCHES.c.task_id == task_id)
    ).one()
    percent = min(99, 100 * ended // max(1, total))
    message = f"{ended} of {total} batches ended"
    row = conn.execute(
        update(TASKS)
        .where(
            TASKS.c.task_id == task_id,
            TASKS.c.status == TaskStatus.PROCESSING,
            TASKS.c.progress < percent,
        )
        .values(progress=percent, message=message, updated_at=now)
        .returning(*TASKS.c)
    ).one_or_none()
    if row is not None:
        _event(conn, TaskRecord.from_row(row._mapping), message, now)


def _event(conn: Connection, job: TaskRecord, message: str | None, now: datetime) -> None:
    conn.execute(INSERT_EVENT, event_values(job.task_id, job.status, job.progress, message, now))
