"""The hand-written durable Celery path, for `celery -A benchmarks.durable_celery_app`.

What a team would write by hand to get status rows out of plain Celery, so the Celery backend is
measured against durable rows rather than against none:

- the publisher commits the task's row (QUEUED) and its CREATED and QUEUED events in one
  transaction, then publishes the task id;
- the task, in the worker child, claims the row (a conditional UPDATE QUEUED -> PROCESSING and
  its event, one transaction; a message whose row is not QUEUED does nothing) and completes it
  (UPDATE -> COMPLETED with the result and its event, one transaction).

The rows are Switchyard's (`tasks`, `task_events`, as its migrations create them), so both paths
write comparable rows; the SQL is written out here and runs through the standard library's
`sqlite3` (with the PRAGMAs Switchyard's engine sets) or `psycopg` 3: no SQLAlchemy and no
Switchyard code on the measured path. The transport settings are `plain_celery_app`'s, and
there is no result backend.

The worker finds its database in the environment (`BENCH_DATABASE_URL`, a URL as
`Services.database_url` gives it); each worker child opens one connection on its first task.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from celery.signals import worker_process_shutdown

from benchmarks.bare_driver import BareStore
from benchmarks.plain_celery_app import QUEUE
from benchmarks.plain_celery_app import make_app as make_plain_app

DURABLE = "bench.durable_noop"
DATABASE_ENV = "BENCH_DATABASE_URL"
TOOL_ID = "noop"
USER_ID = "bench"
BACKEND = "celery"
RESULT = {"ok": True}
LEASE_SECONDS = 300
# Written with `?` placeholders; BareStore.sql marks them for the driver.
INSERT_TASK = (
    "INSERT INTO tasks (task_id, user_id, tool_id, status, progress, message, priority, payload,"
    " backend, celery_task_id, attempts, attempts_before_retry, dispatched_at, created_at,"
    " queued_at, updated_at)"
    " VALUES (?, ?, ?, 'QUEUED', 0, 'queued', 0, ?, ?, ?, 0, 0, ?, ?, ?, ?)"
)
INSERT_FIRST_EVENTS = (
    "INSERT INTO task_events (task_id, seq, status, progress, message, at)"
    " VALUES (?, 1, 'CREATED', 0, 'created', ?), (?, 2, 'QUEUED', 0, 'queued', ?)"
)
CLAIM = (
    "UPDATE tasks SET status = 'PROCESSING', message = 'started', attempts = attempts + 1,"
    " progress = 0, lease_owner = ?, lease_expires_at = ?, run_after = NULL,"
    " dispatched_at = ?, processing_started_at = ?, updated_at = ?"
    " WHERE task_id = ? AND status = 'QUEUED' AND backend = ?"
    " RETURNING attempts"
)
COMPLETE = (
    "UPDATE tasks SET status = 'COMPLETED', message = 'completed', result = ?, progress = 100,"
    " error_code = NULL, error_message = NULL, lease_owner = NULL, lease_expires_at = NULL,"
    " completed_at = ?, updated_at = ?"
    " WHERE task_id = ? AND status = 'PROCESSING' AND attempts = ?"
)
INSERT_EVENT = (
    "INSERT INTO task_events (task_id, seq, status, progress, message, at)"
    " VALUES (?, (SELECT coalesce(max(seq), 0) + 1 FROM task_events WHERE task_id = ?),"
    " ?, ?, ?, ?)"
)


class Rows:
    """One connection to the status store and the three transactions of a task, by hand."""

    def __init__(self, database_url: str) -> None:
        self.pid = os.getpid()
        self.owner = f"{socket.gethostname()}:{self.pid}"
        """Whom a claim leases the row to: this process."""
        self._store = store = BareStore.of(database_url)
        # SQLite: default transaction handling, BEGIN (deferred) before the first INSERT or
        # UPDATE, as SQLAlchemy's pysqlite dialect leaves it.
        self._conn = store.connect()
        self._insert_task = store.sql(INSERT_TASK)
        self._insert_first_events = store.sql(INSERT_FIRST_EVENTS)
        self._claim = store.sql(CLAIM)
        self._complete = store.sql(COMPLETE)
        self._insert_event = store.sql(INSERT_EVENT)

    def create(self, task_id: str) -> None:
        """Commit a new QUEUED row and its CREATED and QUEUED events."""
        now = self._store.stamp(_now())
        self._conn.execute(
            self._insert_task,
            (task_id, USER_ID, TOOL_ID, self._store.json({}), BACKEND, task_id, now, now, now, now),
        )
        self._conn.execute(self._insert_first_events, (task_id, now, task_id, now))
        self._conn.commit()

    def claim(self, task_id: str) -> int | None:
        """Take a QUEUED row for this attempt; its number, or None if it was not QUEUED."""
        moment = _now()
        now = self._store.stamp(moment)
        expires = self._store.stamp(moment + timedelta(seconds=LEASE_SECONDS))
        claimed = self._conn.execute(
            self._claim, (self.owner, expires, now, now, now, task_id, BACKEND)
        ).fetchall()
        if not claimed:
            self._conn.rollback()
            return None
        self._event(task_id, "PROCESSING", 0, "started", now)
        self._conn.commit()
        return int(claimed[0][0])

    def complete(self, task_id: str, attempt: int, result: Any) -> bool:
        """PROCESSING -> COMPLETED with `result`, if `attempt` is still the running one."""
        now = self._store.stamp(_now())
        done = self._conn.execute(
            self._complete, (self._store.json(result), now, now, task_id, attempt)
        ).rowcount
        if done != 1:
            self._conn.rollback()
            return False
        self._event(task_id, "COMPLETED", 100, "completed", now)
        self._conn.commit()
        return True

    def close(self) -> None:
        """Close the connection (SQLite checkpoints its WAL)."""
        self._conn.close()

    def _event(self, task_id: str, status: str, progress: int, message: str, at: Any) -> None:
        self._conn.execute(self._insert_event, (task_id, task_id, status, progress, message, at))


class Publisher:
    """The benchmark process's side: commit the row, then publish the task id."""

    def __init__(self, *, database_url: str, broker_url: str) -> None:
        self.rows = Rows(database_url)
        self.app = make_app("durable-publisher", broker_url=broker_url)

    def submit(self) -> str:
        """A new durable noop task, committed and then published; its id."""
        task_id = str(uuid.uuid4())
        self.rows.create(task_id)
        self.app.send_task(DURABLE, args=(task_id,), task_id=task_id, queue=QUEUE)
        return task_id

    def close(self) -> None:
        """Close the connection and the publisher's broker pool."""
        self.rows.close()
        self.app.close()


_PER_PROCESS: dict[int, Rows] = {}
"""The worker child's connection, keyed by pid: a forked child never uses its parent's."""


def durable_noop(task_id: str) -> None:
    """Claim the task's row, do nothing, complete it; a row not QUEUED is left alone."""
    rows = _worker_rows()
    attempt = rows.claim(task_id)
    if attempt is not None:
        rows.complete(task_id, attempt, RESULT)


def make_app(name: str, *, broker_url: str | None = None) -> Celery:
    """plain_celery_app's app (same transport settings, no result backend) plus the task."""
    app = make_plain_app(name, tracked=False, broker_url=broker_url)
    app.task(name=DURABLE)(durable_noop)
    return app


def _worker_rows() -> Rows:
    pid = os.getpid()
    rows = _PER_PROCESS.get(pid)
    if rows is None:
        rows = _PER_PROCESS[pid] = Rows(os.environ[DATABASE_ENV])
    return rows


@worker_process_shutdown.connect
def _close_worker_rows(**_: Any) -> None:
    rows = _PER_PROCESS.pop(os.getpid(), None)
    if rows is not None:
        rows.close()


def _now() -> datetime:
    return datetime.now(UTC)


app = make_app("durable")
