"""Cohorts: how each backend (and each tool on it) did over the tasks that finished lately.

What counts, and how:

- A task counts once it has finished (its `updated_at`, the moment it ended, is in the range).
  COMPLETED and FAILED tasks are the **samples**: the failure rate is FAILED / (COMPLETED +
  FAILED). CANCELLED tasks are counted (`cancelled`) but are no sample: a cancel is a caller's
  decision, or a broker that refused the task before any backend ran it, not the backend failing.
- Queue wait is `processing_started_at - queued_at` (queued_at is the creation time, or the last
  manual retry's), so the backoff and earlier attempts of an automatic retry count as waiting.
  Run time is the end (`completed_at` / `failed_at`) minus `processing_started_at`: the last
  attempt. A task without those stamps is a sample for the failure rate only.
- Percentiles are `statistics.quantiles(method="inclusive")`: linear interpolation between the
  closest ranks (numpy's default), over every sample read; one sample is its own p50 and p95.
- At most `ROW_CAP` tasks are read, the most recently finished; `capped` says the range held more.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from execution.records import TASKS
from execution.status import BackendName, TaskStatus

ROW_CAP = 50_000
"""Finished tasks read per query at most (the newest): bounds the cost of one comparison."""

_FINISHED = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class Cohort:
    """What one backend (or one tool on one backend) did in the range."""

    backend: str
    tool_id: str | None
    """None: every tool on the backend."""
    completed: int
    failed: int
    cancelled: int
    failure_rate: float | None
    """Percent of samples that FAILED; None without samples."""
    queue_wait_p50: float | None
    queue_wait_p95: float | None
    run_time_p50: float | None
    run_time_p95: float | None
    """Seconds; None when no sample has the stamps."""
    enough: bool
    """At least the minimum number of samples to be judged."""

    @property
    def tasks(self) -> int:
        """Every finished task, cancelled ones included."""
        return self.completed + self.failed + self.cancelled

    @property
    def samples(self) -> int:
        """COMPLETED and FAILED tasks: what the failure rate and `enough` count."""
        return self.completed + self.failed


@dataclass(frozen=True, slots=True)
class CohortReport:
    """The cohorts of one range, per backend and per (backend, tool)."""

    since: datetime
    until: datetime | None
    tool_id: str | None
    min_samples: int
    rows_read: int
    capped: bool
    """More tasks finished in the range than were read (the oldest were left out)."""
    backends: Sequence[Cohort]
    tools: Sequence[Cohort]

    def backend(self, name: str) -> Cohort:
        """The cohort of `name`, empty if none of its tasks finished in the range."""
        for cohort in self.backends:
            if cohort.backend == name:
                return cohort
        return _summarise(name, None, [], min_samples=self.min_samples)


@dataclass(frozen=True, slots=True)
class _Finished:
    status: TaskStatus
    queue_wait: float | None
    run_time: float | None


def read_cohorts(
    engine: Engine,
    *,
    since: datetime,
    until: datetime | None = None,
    tool_id: str | None = None,
    min_samples: int,
    cap: int = ROW_CAP,
) -> CohortReport:
    """The cohorts of tasks that finished in [since, until) (until: now), of one tool or all."""
    c = TASKS.c
    query = (
        select(
            c.backend,
            c.tool_id,
            c.status,
            c.queued_at,
            c.created_at,
            c.processing_started_at,
            c.completed_at,
            c.failed_at,
        )
        .where(c.status.in_(_FINISHED), c.updated_at >= since, c.backend.is_not(None))
        .order_by(c.updated_at.desc())
        .limit(cap + 1)  # one more says whether the range held more than the cap
    )
    if until is not None:
        query = query.where(c.updated_at < until)
    if tool_id is not None:
        query = query.where(c.tool_id == tool_id)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    capped = len(rows) > cap
    per_backend: dict[str, list[_Finished]] = defaultdict(list)
    per_tool: dict[tuple[str, str], list[_Finished]] = defaultdict(list)
    for row in rows[:cap]:
        status = TaskStatus(row.status)
        started = row.processing_started_at
        ended = row.completed_at if status is TaskStatus.COMPLETED else row.failed_at
        queued = row.queued_at or row.created_at
        finished = _Finished(
            status=status,
            queue_wait=_seconds(queued, started),
            run_time=_seconds(started, ended),
        )
        per_backend[row.backend].append(finished)
        per_tool[(row.backend, row.tool_id)].append(finished)
    return CohortReport(
        since=since,
        until=until,
        tool_id=tool_id,
        min_samples=min_samples,
        rows_read=min(len(rows), cap),
        capped=capped,
        backends=[
            _summarise(name, None, found, min_samples=min_samples)
            for name, found in sorted(per_backend.items(), key=lambda item: _order(item[0]))
        ],
        tools=[
            _summarise(name, tool, found, min_samples=min_samples)
            for (name, tool), found in sorted(
                per_tool.items(), key=lambda item: (_order(item[0][0]), item[0][1])
            )
        ],
    )


def percentiles(values: Iterable[float]) -> tuple[float | None, float | None]:
    """p50 and p95 of `values` (inclusive method, interpolated); None for no values."""
    data = sorted(values)
    if not data:
        return None, None
    if len(data) == 1:
        return data[0], data[0]
    cuts = statistics.quantiles(data, n=100, method="inclusive")
    return cuts[49], cuts[94]


def _summarise(
    backend: str, tool_id: str | None, found: Sequence[_Finished], *, min_samples: int
) -> Cohort:
    counts = {status: 0 for status in _FINISHED}
    for task in found:
        counts[task.status] += 1
    samples = [task for task in found if task.status is not TaskStatus.CANCELLED]
    wait_p50, wait_p95 = percentiles(t.queue_wait for t in samples if t.queue_wait is not None)
    run_p50, run_p95 = percentiles(t.run_time for t in samples if t.run_time is not None)
    failed = counts[TaskStatus.FAILED]
    return Cohort(
        backend=backend,
        tool_id=tool_id,
        completed=counts[TaskStatus.COMPLETED],
        failed=failed,
        cancelled=counts[TaskStatus.CANCELLED],
        failure_rate=100 * failed / len(samples) if samples else None,
        queue_wait_p50=wait_p50,
        queue_wait_p95=wait_p95,
        run_time_p50=run_p50,
        run_time_p95=run_p95,
        enough=len(samples) >= min_samples,
    )


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def _order(backend: str) -> tuple[int, str]:
    # Threads first, then Celery: the baseline before the candidate, whatever else exists.
    known: list[str] = [BackendName.THREAD, BackendName.CELERY]
    return (known.index(backend) if backend in known else len(known), backend)
