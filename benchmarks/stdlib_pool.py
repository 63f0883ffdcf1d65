"""The thread backend's floor: its exact transactions, written by hand on the bare driver.

What it is: a `concurrent.futures.ThreadPoolExecutor` with the backend's worker count, one DB-API
connection per thread (the standard library's `sqlite3`, or `psycopg` 3 on PostgreSQL), and
hand-written SQL strings; SQLAlchemy is only used to build the schema and to check the rows
after a round, never while a round is timed. For a `noop` task it makes the three transactions
Switchyard's thread backend makes (traced from the SQL the backend emits), each one commit:

1. submit, in the caller's thread: INSERT the task row QUEUED (same 29 columns, same values:
   backend, dispatched_at, queued_at, a rollout bucket...) and its CREATED and QUEUED events;
2. claim, in a pool thread: a conditional UPDATE to PROCESSING (attempts + 1, lease owner and
   expiry, dispatched_at, processing_started_at), so a task runs once, and its event;
3. finish: UPDATE to COMPLETED with the result as JSON, fenced on the attempt, and its event.

Why it is a fair floor: same schema (`execution.database.upgrade`), same rows and values, same
transactions and commits, same driver and connection settings (the PRAGMAs and busy timeout of
`execution.database.make_engine` on SQLite; the same psycopg on PostgreSQL), same threads, in
the same process. On SQLite the threads take turns on a lock for each write transaction, as
Switchyard's store does: SQLite admits one writer at a time and its busy handler makes the
others sleep and poll, which a floor must not pay. What it leaves out is what only a general
engine needs: reading the whole row back after each change (RETURNING), looking up the next
event number (it knows it), the lease-expiry and due-time arms of the claim's condition, and
building statements and converting values through SQLAlchemy.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from benchmarks.bare_driver import BareStore

LEASE = timedelta(seconds=30)
"""Switchyard's default lease (`ExecutorLimits.lease_seconds`): the expiry it writes on a claim."""
BUCKETS = 10_000
"""The rollout's bucket range: the floor writes a bucket like the dispatcher's, unrouted."""
ATTEMPT = 1
"""Each task here is claimed once, so its running attempt is the first: the finish is fenced
on it as Switchyard fences on the attempt it claimed."""
INSERT_TASK = """
INSERT INTO tasks (
    task_id, user_id, tool_id, status, progress, message, priority, payload, result,
    error_code, error_message, backend, celery_task_id, attempts, attempts_before_retry,
    lease_owner, lease_expires_at, run_after, dispatched_at, cancel_requested_at,
    idempotency_key, rollout_bucket, rollout_percentage, created_at, queued_at,
    processing_started_at, completed_at, failed_at, updated_at
) VALUES (
    ?, ?, ?, 'QUEUED', 0, 'queued', 0, ?, 'null',
    NULL, NULL, 'thread', NULL, 0, 0,
    NULL, NULL, NULL, ?, NULL,
    NULL, ?, 0.0, ?, ?,
    NULL, NULL, NULL, ?
)"""
INSERT_FIRST_EVENTS = """
INSERT INTO task_events (task_id, seq, status, progress, message, at)
VALUES (?, 1, 'CREATED', 0, 'created', ?), (?, 2, 'QUEUED', 0, 'queued', ?)"""
CLAIM = """
UPDATE tasks SET status = 'PROCESSING', progress = 0, message = 'started',
    attempts = attempts + 1, lease_owner = ?, lease_expires_at = ?, run_after = NULL,
    dispatched_at = ?, processing_started_at = ?, updated_at = ?
WHERE task_id = ? AND status = 'QUEUED' AND backend = 'thread'"""
CLAIMED_EVENT = """
INSERT INTO task_events (task_id, seq, status, progress, message, at)
VALUES (?, 3, 'PROCESSING', 0, 'started', ?)"""
COMPLETE = """
UPDATE tasks SET status = 'COMPLETED', progress = 100, message = 'completed', result = ?,
    error_code = NULL, error_message = NULL, lease_owner = NULL, lease_expires_at = NULL,
    completed_at = ?, updated_at = ?
WHERE task_id = ? AND status = 'PROCESSING' AND attempts = ?"""
COMPLETED_EVENT = """
INSERT INTO task_events (task_id, seq, status, progress, message, at)
VALUES (?, 4, 'COMPLETED', 100, 'completed', ?)"""


class _Cursor(Protocol):
    """What the pool uses of a DB-API cursor (sqlite3's and psycopg's alike)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, query: str, params: Sequence[Any], /) -> Any: ...


class _Connection(Protocol):
    """What the pool uses of a DB-API connection (its cursor is made once, with it)."""

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class _Link:
    """One thread's connection, its cursor, and the commits it made."""

    conn: _Connection
    cursor: _Cursor
    commits: int = 0


class StdlibPool:
    """Runs `noop` tasks on a thread pool with the thread backend's transactions, bare driver."""

    def __init__(self, *, database_url: str, workers: int) -> None:
        self._store = store = BareStore.of(database_url)
        self._sql = {
            name: store.sql(statement)
            for name, statement in (
                ("insert_task", INSERT_TASK),
                ("first_events", INSERT_FIRST_EVENTS),
                ("claim", CLAIM),
                ("claimed", CLAIMED_EVENT),
                ("complete", COMPLETE),
                ("completed", COMPLETED_EVENT),
            )
        }
        # SQLite: one writer at a time, handed over on a lock (see the module docstring).
        self._turn: AbstractContextManager[Any] = (
            threading.Lock() if store.sqlite else nullcontext()
        )
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._local = threading.local()
        self._links: list[_Link] = []
        self._links_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stdlib-floor")

    @property
    def commits(self) -> int:
        """Transactions committed so far, by every thread (read it while the pool is idle)."""
        with self._links_lock:
            return sum(link.commits for link in self._links)

    def submit(self, payload: dict[str, Any]) -> Future[None]:
        """Write the task QUEUED with its first two events, then hand it to the pool."""
        task_id = str(uuid.uuid4())
        now = self._store.stamp(datetime.now(UTC))
        bucket = uuid.uuid4().int % BUCKETS
        task = (task_id, "bench", "noop", self._store.json(payload), now, bucket, now, now, now)
        link = self._link()
        with self._turn:
            self._open(link)
            try:
                link.cursor.execute(self._sql["insert_task"], task)
                link.cursor.execute(self._sql["first_events"], (task_id, now, task_id, now))
            except BaseException:
                link.conn.rollback()
                raise
            self._commit(link)
        return self._pool.submit(self._run, task_id)

    def shutdown(self) -> None:
        """Wait for every submitted task, stop the threads, close every connection."""
        self._pool.shutdown(wait=True)
        with self._links_lock:
            links, self._links = self._links, []
        for link in links:
            link.conn.close()

    def _run(self, task_id: str) -> None:
        link = self._link()
        at = datetime.now(UTC)
        now = self._store.stamp(at)
        with self._turn:
            self._open(link)
            try:
                link.cursor.execute(
                    self._sql["claim"],
                    (self._owner, self._store.stamp(at + LEASE), now, now, now, task_id),
                )
                claimed = link.cursor.rowcount == 1
                if claimed:
                    link.cursor.execute(self._sql["claimed"], (task_id, now))
            except BaseException:
                link.conn.rollback()
                raise
            self._commit(link)
        if not claimed:
            return  # another copy has it: the round's row count then fails the run
        result = {"ok": True}  # what the noop tool returns
        now = self._store.stamp(datetime.now(UTC))
        with self._turn:
            self._open(link)
            try:
                link.cursor.execute(
                    self._sql["complete"], (self._store.json(result), now, now, task_id, ATTEMPT)
                )
                if link.cursor.rowcount == 1:
                    link.cursor.execute(self._sql["completed"], (task_id, now))
            except BaseException:
                link.conn.rollback()
                raise
            self._commit(link)

    def _link(self) -> _Link:
        link: _Link | None = getattr(self._local, "link", None)
        if link is None:
            link = self._connect()
            self._local.link = link
            with self._links_lock:
                self._links.append(link)
        return link

    def _connect(self) -> _Link:
        # SQLite: isolation_level=None, the module never opens a transaction on its own; the
        # pool's BEGIN and commit() bound each one. Closed by the pool from the thread that
        # stops it. PostgreSQL: not autocommit, the first statement opens the transaction.
        if self._store.sqlite:
            conn = self._store.connect(isolation_level=None, check_same_thread=False)
        else:
            conn = self._store.connect()
        return _Link(conn, conn.cursor())

    def _open(self, link: _Link) -> None:
        if self._store.sqlite:
            link.cursor.execute("BEGIN", ())

    @staticmethod
    def _commit(link: _Link) -> None:
        link.conn.commit()
        link.commits += 1
