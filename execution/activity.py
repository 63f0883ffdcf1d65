"""Activity: how many tasks ended COMPLETED or FAILED per minute and backend, and the latest
failures. Read-only; the operator dashboard charts it.

What counts, and how (as the cohorts of dispatch/rollout/cohorts.py count):

- A task counts in the minute it ended: its `updated_at`, the moment it was last written, which
  for a COMPLETED or FAILED task is when it ended. CANCELLED tasks are not counted here.
- Minutes are UTC, aligned on the minute. A window of `minutes` minutes is the current minute
  (still running) and the `minutes - 1` whole minutes before it; every backend gets one bucket
  per minute, zero when nothing ended, oldest first.
- The failure rate is FAILED / (COMPLETED + FAILED) in percent, None when nothing ended.
- Counting happens in the database (one GROUP BY), so a busy window costs no more rows than
  backends x statuses x minutes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, ColumnElement, Engine, Integer, cast, func, select

from execution.records import TASKS
from execution.status import BackendName, TaskStatus

RECENT_FAILURES = 10
"""Failures listed at most, newest first."""
MESSAGE_CHARS = 200
"""An error message is cut to this many characters (an ellipsis marks the cut)."""

_ENDED = (TaskStatus.COMPLETED, TaskStatus.FAILED)


@dataclass(frozen=True, slots=True)
class MinuteCount:
    """Tasks one backend ended in one minute."""

    minute: datetime
    """The minute's start, UTC."""
    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class BackendActivity:
    """One backend over the window: totals and the per-minute series, oldest minute first."""

    backend: str
    completed: int
    failed: int
    failure_rate: float | None
    per_minute: Sequence[MinuteCount]


@dataclass(frozen=True, slots=True)
class RecentFailure:
    """One FAILED task, with its error cut to MESSAGE_CHARS."""

    task_id: str
    tool_id: str
    backend: str | None
    error_code: str | None
    error_message: str | None
    ended_at: datetime


@dataclass(frozen=True, slots=True)
class Activity:
    """What ended in [since, until), per backend, and the latest failures in it."""

    since: datetime
    until: datetime
    minutes: int
    completed: int
    failed: int
    failure_rate: float | None
    backends: Sequence[BackendActivity]
    recent_failures: Sequence[RecentFailure]


def read_activity(
    engine: Engine,
    *,
    now: datetime,
    minutes: int,
    backends: Iterable[str] = (),
    recent: int = RECENT_FAILURES,
) -> Activity:
    """The last `minutes` minutes up to `now` (aware); every backend of `backends` is listed,
    with zeros if none of its tasks ended, and so is any other backend a task ended on."""
    if minutes < 1:
        raise ValueError("minutes must be at least 1")
    current = now.astimezone(UTC).replace(second=0, microsecond=0)
    since = current - timedelta(minutes=minutes - 1)
    until = now.astimezone(UTC)
    c = TASKS.c
    in_window = (
        c.status.in_(_ENDED),
        c.updated_at >= since,
        c.updated_at <= until,
        c.backend.is_not(None),
    )
    minute = _epoch_minute(engine.dialect.name).label("minute")
    counts = (
        select(c.backend, c.status, minute, func.count().label("n"))
        .where(*in_window)
        .group_by(c.backend, c.status, minute)
    )
    failures = (
        select(c.task_id, c.tool_id, c.backend, c.error_code, c.error_message, c.updated_at)
        .where(c.status == TaskStatus.FAILED, c.updated_at >= since, c.updated_at <= until)
        .order_by(c.updated_at.desc(), c.task_id)
        .limit(recent)
    )
    with engine.connect() as conn:
        counted = conn.execute(counts).all()
        failed_rows = conn.execute(failures).all() if recent > 0 else []

    first = int(since.timestamp()) // 60
    per: dict[str, dict[int, list[int]]] = {name: {} for name in backends}
    for row in counted:
        index = int(row.minute) - first
        if not 0 <= index < minutes:
            continue  # a clock edge: stamped in the window, floored outside it
        bucket = per.setdefault(row.backend, {}).setdefault(index, [0, 0])
        bucket[0 if row.status == TaskStatus.COMPLETED else 1] += int(row.n)

    summaries = [
        _summarise(name, per[name], since=since, minutes=minutes)
        for name in sorted(per, key=_order)
    ]
    completed = sum(s.completed for s in summaries)
    failed = sum(s.failed for s in summaries)
    return Activity(
        since=since,
        until=until,
        minutes=minutes,
        completed=completed,
        failed=failed,
        failure_rate=_rate(completed, failed),
        backends=summaries,
        recent_failures=[
            RecentFailure(
                task_id=row.task_id,
                tool_id=row.tool_id,
                backend=row.backend,
                error_code=row.error_code,
                error_message=_cut(row.error_message),
                ended_at=row.updated_at,
            )
            for row in failed_rows
        ],
    )


def _epoch_minute(dialect: str) -> ColumnElement[int]:
    """Minutes since the Unix epoch of a task's `updated_at`, computed by the database."""
    stamp = TASKS.c.updated_at
    if dialect == "sqlite":
        # Stored as UTC text ('2025-01-31 12:34:59.999999'); strftime('%s') reads it as UTC
        # but rounds to the millisecond (12:35:00), so it reads the minute's text only.
        return cast(func.strftime("%s", func.substr(stamp, 1, 16)), Integer) // 60
    if dialect == "postgresql":
        # timestamptz: the epoch is absolute, whatever the session's time zone.
        return cast(func.floor(func.extract("epoch", stamp) / 60), BigInteger)
    raise NotImplementedError(
        f"activity counts are written for SQLite and PostgreSQL, not {dialect}"
    )


def _summarise(
    backend: str, buckets: dict[int, list[int]], *, since: datetime, minutes: int
) -> BackendActivity:
    series = [
        MinuteCount(
            minute=since + timedelta(minutes=i),
            completed=buckets.get(i, [0, 0])[0],
            failed=buckets.get(i, [0, 0])[1],
        )
        for i in range(minutes)
    ]
    completed = sum(m.completed for m in series)
    failed = sum(m.failed for m in series)
    return BackendActivity(
        backend=backend,
        completed=completed,
        failed=failed,
        failure_rate=_rate(completed, failed),
        per_minute=series,
    )


def _rate(completed: int, failed: int) -> float | None:
    total = completed + failed
    return 100 * failed / total if total else None


def _cut(message: str | None) -> str | None:
    if message is None or len(message) <= MESSAGE_CHARS:
        return message
    return message[: MESSAGE_CHARS - 1] + "…"


def _order(backend: str) -> tuple[int, str]:
    # Threads first, then Celery, as the cohorts list them.
    known: list[str] = [BackendName.THREAD, BackendName.CELERY]
    return (known.index(backend) if backend in known else len(known), backend)
