"""Queue stats: what waits where, for an operator (`GET /queue/stats`, `switchyard queue stats`).

Built on the health report: each backend answers from its cached probe, so a broker that is
down or frozen costs at most a probe's wait (PROBE_WAIT_SECONDS), and the answer then says the
broker is down and why instead of hanging.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from dispatch.health import HealthCheck, HealthReport
from execution.status import BackendName, TaskStatus
from execution.store import TaskStore


@dataclass(frozen=True, slots=True)
class ThreadPoolStats:
    """This process's thread pool now."""

    state: str
    workers: int
    busy: int
    idle: int
    waiting: int
    """Tasks in its in-memory queue."""
    capacity: int
    """THREAD_QUEUE_CAPACITY: past it new thread tasks are refused."""


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """The Celery broker as this process's last probe saw it."""

    state: str
    """ok, no_workers, broker_down, or not_in_this_process (USE_CELERY=false here)."""
    reason: str | None
    """Why it is not ok, for an operator."""
    address: str | None
    queues: dict[str, int] | None
    """Messages waiting per Celery queue; None when the broker did not answer."""
    workers: list[str] = field(default_factory=list)
    """Workers that answered the last ping."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts, the pool, the broker, and the oldest wait, in one answer."""

    database: str
    tasks: dict[str, dict[str, int]]
    """Tasks per status, then per backend."""
    backends: dict[str, dict[str, object]]
    """Per backend: state, queued (its QUEUED rows), oldest_waiting_seconds."""
    thread_pool: ThreadPoolStats | None
    broker: BrokerStats
    paused: list[str]
    """Tools whose dispatch is paused ("*": every tool): their tasks wait QUEUED."""
    reasons: list[str]
    """Why the process reports itself degraded (the health check's reasons)."""


def queue_stats(check: HealthCheck, store: TaskStore, *, paused: Collection[str]) -> QueueStats:
    """Now: one GROUP BY over the tasks plus the health report; `paused` is the rollout's."""
    report = check.report()
    try:
        tally = store.tally()
    except SQLAlchemyError:
        tally = {}  # the report says the database is unreachable, and why
    tasks: dict[str, dict[str, int]] = {status.value: {} for status in TaskStatus}
    for (status, backend, _), count in sorted(tally.items()):
        per_backend = tasks[status.value]
        per_backend[backend] = per_backend.get(backend, 0) + count
    del tasks[TaskStatus.CREATED.value]  # never a row's status
    backends = {
        name: {key: probe.get(key) for key in ("state", "queued", "oldest_waiting_seconds")}
        for name, probe in report.backends.items()
    }
    return QueueStats(
        database=report.database,
        tasks=tasks,
        backends=backends,
        thread_pool=_thread_pool(report),
        broker=_broker(report),
        paused=sorted(paused),
        reasons=report.reasons,
    )


def _thread_pool(report: HealthReport) -> ThreadPoolStats | None:
    probe = report.backends.get(BackendName.THREAD)
    if probe is None or "running" not in probe:
        return None  # no pool in this process
    busy, alive = _int(probe.get("running")), _int(probe.get("alive"))
    return ThreadPoolStats(
        state=str(probe.get("state")),
        workers=_int(probe.get("workers")),
        busy=busy,
        idle=max(0, alive - busy),
        waiting=_int(probe.get("waiting")),
        capacity=_int(probe.get("capacity")),
    )


def _broker(report: HealthReport) -> BrokerStats:
    probe = report.backends.get(BackendName.CELERY, {})
    if "ok" not in probe:  # no Celery backend here: the rows alone
        return BrokerStats(
            state="not_in_this_process",
            reason="this process does not publish to Celery (USE_CELERY=false)",
            address=None,
            queues=None,
        )
    detail = report.detail.get(BackendName.CELERY)
    detail = detail if isinstance(detail, dict) else {}
    address = detail.get("broker")
    state = str(probe.get("state"))
    reason = None
    if state == "broker_down":
        reason = f"the broker at {address} does not answer: {detail.get('error')}"
    elif state == "no_workers":
        reason = f"no Celery worker answered for {probe.get('workers_absent_seconds')} s"
    queues = probe.get("queues")
    return BrokerStats(
        state=state,
        reason=reason,
        address=str(address) if address is not None else None,
        queues={str(q): _int(n) for q, n in queues.items()} if isinstance(queues, dict) else None,
        workers=[str(w) for w in detail.get("workers", ())],
    )


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0
