"""Whether this process can take work, told honestly: one report for /health, the CLI and the
metrics scrape.

A backend's own probe says whether it can take a task now (the thread pool's queue has room,
the broker answers). What only the dispatcher knows is whether anything will *run* what it
sends: with the rollout sending tasks to Celery and no worker answering a ping for
CELERY_WORKER_ABSENT_SECONDS, tasks pile up unseen, so the process reports itself degraded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from backends.base import BackendHealth, TaskBackend
from dispatch.rollout.watch import RolloutSource
from execution.models import utcnow
from execution.status import BackendName
from execution.store import TaskStore, Waiting


@dataclass(frozen=True, slots=True)
class HealthReport:
    """What /health answers; `detail` is for operators only (addresses, error text, names)."""

    status: str
    """ok, or degraded: a load balancer should send new work elsewhere."""
    reasons: list[str]
    database: str
    """ok or unreachable."""
    backends: dict[str, dict[str, object]]
    """Per backend: its state, its own counts, and its QUEUED rows (count, oldest wait)."""
    detail: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether a load balancer should send this process work."""
        return self.status == "ok"


class HealthCheck:
    """Puts the database, every backend's probe and the rollout in force into one report."""

    def __init__(
        self,
        *,
        store: TaskStore,
        backends: Mapping[str, TaskBackend],
        rollout: RolloutSource,
        worker_absent_seconds: float,
    ) -> None:
        self._store = store
        self._backends = backends
        self._rollout = rollout
        self._worker_absent_seconds = worker_absent_seconds

    def report(self) -> HealthReport:
        """Now; each backend answers from its own cache, so this never waits on a dead
        broker for longer than a backend's probe wait."""
        reasons: list[str] = []
        detail: dict[str, object] = {}
        try:
            waiting = self._store.waiting()  # doubles as the database check
            database = "ok"
        except SQLAlchemyError as exc:
            waiting, database = {}, "unreachable"
            reasons.append("the database does not answer")
            detail["database_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        now = utcnow()
        backends: dict[str, dict[str, object]] = {}
        for name, backend in self._backends.items():
            probe = backend.health()
            reasons.extend(self._problems(name, probe))
            rows = waiting.get(name, Waiting(queued=0, oldest_due=None))
            backends[name] = {
                "ok": probe.ok,
                "state": probe.state,
                **probe.counts,
                "queued": rows.queued,
                "oldest_waiting_seconds": _rounded(rows.oldest_age(now)),
            }
            if probe.detail:
                detail[name] = probe.detail
        for name, rows in sorted(waiting.items()):
            if name not in backends:  # tasks recorded for a backend this process lacks
                backends[name] = {
                    "state": "not_in_this_process",
                    "queued": rows.queued,
                    "oldest_waiting_seconds": _rounded(rows.oldest_age(now)),
                }
        return HealthReport(
            status="degraded" if reasons else "ok",
            reasons=reasons,
            database=database,
            backends=backends,
            detail=detail,
        )

    def _problems(self, name: str, probe: BackendHealth) -> list[str]:
        if not probe.ok:
            return [f"the {name} backend cannot take work ({probe.state})"]
        absent = probe.counts.get("workers_absent_seconds")
        if (
            name == BackendName.CELERY
            and isinstance(absent, int | float)
            and absent >= self._worker_absent_seconds
            and self._rollout.current().sends_any_to_celery
        ):
            return [
                f"the rollout sends tasks to Celery and no worker has answered for "
                f"{absent:.0f} s (CELERY_WORKER_ABSENT_SECONDS={self._worker_absent_seconds:g})"
            ]
        return []


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


class HealthCollector(Collector):
    """The health report and the rollout in force as gauges, read at each scrape."""

    def __init__(self, check: HealthCheck, rollout: RolloutSource) -> None:
        self._check = check
        self._rollout = rollout

    def collect(self) -> Iterator[Metric]:
        """One report per scrape; the database is asked once."""
        report = self._check.report()
        yield _gauge("healthy", "1 when /health answers ok, 0 when degraded", int(report.ok))
        queued = GaugeMetricFamily(
            "switchyard_tasks_queued", "QUEUED tasks per backend (queue depth)", labels=["backend"]
        )
        oldest = GaugeMetricFamily(
            "switchyard_oldest_waiting_seconds",
            "Seconds the longest-waiting due QUEUED task of each backend has waited",
            labels=["backend"],
        )
        up = GaugeMetricFamily(
            "switchyard_backend_up", "1 when the backend can take work", labels=["backend"]
        )
        for name, backend in sorted(report.backends.items()):
            queued.add_metric([name], _number(backend.get("queued")))
            oldest.add_metric([name], _number(backend.get("oldest_waiting_seconds")))
            if "ok" in backend:
                up.add_metric([name], float(bool(backend["ok"])))
        yield from (queued, oldest, up)
        thread = report.backends.get(BackendName.THREAD, {})
        for key, help_text in (
            ("running", "Thread-pool workers running a task"),
            ("waiting", "Tasks in the thread pool's in-memory queue"),
            ("capacity", "THREAD_QUEUE_CAPACITY: the in-memory queue's bound"),
            ("workers", "THREAD_POOL_WORKERS: the pool's size"),
        ):
            if key in thread:
                yield _gauge(f"thread_pool_{key}", help_text, _number(thread[key]))
        celery = report.backends.get(BackendName.CELERY, {})
        if "workers" in celery:
            yield _gauge(
                "celery_workers", "Celery workers that answered the last ping", celery["workers"]
            )
            messages = GaugeMetricFamily(
                "switchyard_broker_queue_messages",
                "Messages waiting in each Celery queue on the broker",
                labels=["queue"],
            )
            queues = celery.get("queues")
            for queue, count in sorted(queues.items() if isinstance(queues, dict) else ()):
                messages.add_metric([queue], float(count))
            yield messages
        policy = self._rollout.current()
        yield _gauge(
            "rollout_percentage",
            "Share of new tasks (tools without an override) this process sends to Celery",
            policy.effective_percentage,
        )
        yield _gauge("rollout_version", "Version of the stored rollout in force", policy.version)
        yield _gauge("rollout_use_celery", "USE_CELERY of this process", int(policy.use_celery))
        overrides = GaugeMetricFamily(
            "switchyard_rollout_tool_percentage",
            "Per-tool overrides of the rollout percentage in force",
            labels=["tool"],
        )
        for tool_id in sorted(policy.tool_overrides):
            overrides.add_metric([tool_id], policy.share_for(tool_id))
        yield overrides
        paused = GaugeMetricFamily(
            "switchyard_dispatch_paused",
            'Tools whose dispatch is paused (1 each; tool="*": every tool)',
            labels=["tool"],
        )
        for tool_id in sorted(policy.paused):
            paused.add_metric([tool_id], 1.0)
        yield paused


def _gauge(name: str, help_text: str, value: object) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"switchyard_{name}", help_text, value=_number(value))


def _number(value: object) -> float:
    """A gauge's value; NaN where there is none (no task waiting has no age)."""
    return float(value) if isinstance(value, int | float) else float("nan")
