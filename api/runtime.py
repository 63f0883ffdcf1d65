"""Composition root of the API process: builds every component from one Settings, starts, stops.

The worker process has its own root (api/worker.py); both build their executor with
`build_executor`, so a task writes the same rows whichever backend runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import Engine

from api.keys import KeyStore
from api.settings import Settings
from backends.base import TaskBackend
from backends.registry import build_backend
from dispatch.dispatcher import Dispatcher
from dispatch.health import HealthCheck, HealthCollector
from dispatch.recovery import Recovery
from dispatch.rollout.advance import Thresholds
from dispatch.rollout.control import RolloutControl
from dispatch.rollout.guard import RolloutGuard
from dispatch.rollout.pause import PauseGate
from dispatch.rollout.store import ChangeLimit, RolloutStore
from dispatch.rollout.watch import RolloutWatcher
from execution import database
from execution.dispatch_gate import DispatchGate
from execution.executor import ExecutorLimits, TaskExecutor
from execution.job_leases import JobLeases
from execution.metrics import ExecutorMetrics, Metrics
from execution.retention import RetentionJob
from execution.status import BackendName
from execution.store import TaskStore
from execution.time_limits import SoftTimeLimit
from execution.tools.registry import ToolRegistry, load_registry

log = structlog.get_logger(__name__)


def build_executor(
    settings: Settings,
    *,
    store: TaskStore,
    registry: ToolRegistry,
    metrics: Metrics,
    soft_limit_errors: tuple[type[BaseException], ...] = (),
    gate: DispatchGate | None = None,
) -> TaskExecutor:
    """The executor every process runs tasks with; `soft_limit_errors` is the backend's own,
    `gate` says which tools are paused (the process's rollout)."""
    return TaskExecutor(
        store=store,
        registry=registry,
        data_dir=settings.switchyard_data_dir,
        limits=ExecutorLimits(
            soft_time_limit=settings.celery_task_soft_time_limit,
            time_limit=settings.celery_task_time_limit,
            soft_limit_errors=soft_limit_errors,
            lease_seconds=settings.task_lease_seconds,
            heartbeat_seconds=settings.task_heartbeat_seconds,
            lost_retries=settings.task_lost_retries,
        ),
        hooks=(SoftTimeLimit(), ExecutorMetrics(metrics)),
        gate=gate,
    )


def rollout_watcher(
    settings: Settings, engine: Engine, *, use_celery: bool, seed: bool = True
) -> RolloutWatcher:
    """The stored rollout, kept current in this process (not started); `seed=False` for a
    worker, which follows the state and never writes the first one from its environment."""
    return RolloutWatcher(
        RolloutStore(engine),
        use_celery=use_celery,
        seed_percentage=settings.celery_rollout_percentage,
        salt=settings.rollout_salt,
        interval=settings.rollout_refresh_seconds,
        seed=seed,
        # A value the environment leaves at its default takes no part after the first start.
        percentage_set="celery_rollout_percentage" in settings.model_fields_set,
        salt_set="rollout_salt" in settings.model_fields_set,
    )


def recovery(
    settings: Settings,
    *,
    store: TaskStore,
    registry: ToolRegistry,
    backends: dict[str, TaskBackend],
    rollout: RolloutWatcher,
    metrics: Metrics,
) -> Recovery:
    """The recovery sweep of this process (not started); every process may run one. A rollout
    change made elsewhere wakes it: Celery tasks a rollback left behind move to threads then,
    not at the next interval."""
    sweep = Recovery(
        store=store,
        registry=registry,
        backends=backends,
        rollout=rollout,
        lost_retries=settings.task_lost_retries,
        republish_after=settings.celery_republish_seconds,
        interval=settings.recovery_sweep_seconds,
        metrics=metrics,
    )
    rollout.subscribe(lambda _state: sweep.wake())
    return sweep


def retention_job(settings: Settings, *, store: TaskStore, metrics: Metrics) -> RetentionJob | None:
    """The periodic prune of this process (not started); None when RETENTION_DAYS=0 keeps
    every task. Every process may run one: the job lease lets one prune per interval."""
    if settings.retention_days == 0:
        return None
    return RetentionJob(
        store=store,
        leases=JobLeases(store.engine),
        keep=timedelta(days=settings.retention_days),
        every=settings.retention_sweep_seconds,
        batch=settings.retention_batch,
        metrics=metrics,
    )


@dataclass
class Runtime:
    """Everything the API process runs, wired together."""

    settings: Settings
    engine: Engine
    store: TaskStore
    registry: ToolRegistry
    executor: TaskExecutor
    backends: dict[str, TaskBackend]
    rollout: RolloutWatcher
    dispatcher: Dispatcher
    recovery: Recovery
    rollout_control: RolloutControl
    keys: KeyStore
    metrics: Metrics
    health: HealthCheck
    guard: RolloutGuard | None = None
    """Rolls back by itself on a Celery failure breach; only with ROLLOUT_GUARD=true."""
    retention: RetentionJob | None = None
    """Deletes old finished tasks; None with RETENTION_DAYS=0."""

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        backends: dict[str, TaskBackend] | None = None,
        registry: ToolRegistry | None = None,
    ) -> Runtime:
        """Wire the components; `backends`/`registry` replace the real ones in tests."""
        engine = database.make_engine(settings.database_url)
        store = TaskStore(engine)
        registry = registry or load_registry(settings.tool_modules)
        metrics = Metrics()
        # Before the executor: its tasks (and the pool's sweep) honour the pauses it keeps.
        rollout = rollout_watcher(settings, engine, use_celery=settings.use_celery)
        executor = build_executor(
            settings, store=store, registry=registry, metrics=metrics, gate=PauseGate(rollout)
        )
        if backends is None:
            # Threads always (they also run what a rollback hands back); Celery when switched on.
            names = [BackendName.THREAD, *([BackendName.CELERY] if settings.use_celery else [])]
            backends = {name: build_backend(name, settings, executor) for name in names}
        metrics.expect(backends, registry)
        dispatcher = Dispatcher(
            store=store,
            registry=registry,
            backends=backends,
            rollout=rollout,
            broker_down=settings.celery_unavailable,
            metrics=metrics,
        )
        health = HealthCheck(
            store=store,
            backends=backends,
            rollout=rollout,
            worker_absent_seconds=settings.celery_worker_absent_seconds,
        )
        metrics.registry.register(HealthCollector(health, rollout))
        runtime = cls(
            settings=settings,
            engine=engine,
            store=store,
            registry=registry,
            executor=executor,
            backends=backends,
            rollout=rollout,
            dispatcher=dispatcher,
            recovery=recovery(
                settings,
                store=store,
                registry=registry,
                backends=backends,
                rollout=rollout,
                metrics=metrics,
            ),
            rollout_control=RolloutControl(
                watcher=rollout,
                registry=registry,
                tasks=store,
                limit=ChangeLimit(
                    changes=settings.rollout_change_limit,
                    window_seconds=settings.rollout_change_window_seconds,
                ),
                reclaimer=dispatcher,
                releaser=dispatcher,
            ),
            keys=KeyStore(engine),
            metrics=metrics,
            health=health,
            retention=retention_job(settings, store=store, metrics=metrics),
        )
        if settings.rollout_guard:
            runtime.guard = RolloutGuard(
                control=runtime.rollout_control,
                rollouts=rollout.store,
                engine=engine,
                limits=Thresholds.of(settings),
                interval=settings.rollout_guard_interval_seconds,
            )
        return runtime

    def prepare_database(self) -> None:
        """Migrate the embedded database; refuse to start on an outdated external one."""
        database.prepare(self.engine, migrate=self.settings.is_embedded_database)

    def start(self) -> None:
        """Load (or seed) the rollout, start every backend, then the recovery sweep (and the
        guard and the retention job, if switched on)."""
        self.rollout.start()
        for backend in self.backends.values():
            backend.start()
        self.recovery.start()
        if self.guard is not None:
            self.guard.start()
        if self.retention is not None:
            self.retention.start()

    def stop(self) -> None:
        """Stop backends (running tasks get SHUTDOWN_TIMEOUT seconds) and close connections."""
        if self.retention is not None:
            self.retention.stop()
        if self.guard is not None:
            self.guard.stop()
        self.recovery.stop()
        for backend in self.backends.values():
            backend.shutdown(self.settings.shutdown_timeout)
        self.executor.leases.stop()
        self.rollout.stop()
        self.engine.dispose()
        log.info("runtime.stopped")
