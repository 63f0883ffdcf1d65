"""Composition root of a Celery worker process: `switchyard worker`, `celery -A api.worker ...`.

`celery -A api.worker worker|inspect|flower` reads `app` from here: it is built from the
environment on first access (never at import), so importing this module has no side effects.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import setup_logging, worker_init, worker_ready, worker_shutdown
from sqlalchemy import Engine

from api.runtime import build_executor, recovery, retention_job, rollout_watcher
from api.settings import Settings, load_settings
from api.worker_metrics import WorkerMetricsServer
from backends.celery_app import celery_task_fields, make_celery_app, redirect_stdouts
from backends.celery_tasks import PerProcess, WorkerServices, register_run_task
from backends.registry import celery_publisher
from dispatch.recovery import Recovery
from dispatch.rollout.pause import PauseGate
from dispatch.rollout.watch import RolloutWatcher
from execution import database
from execution.logs import configure_logging
from execution.metrics import Metrics
from execution.retention import RetentionJob
from execution.settings import SettingsError
from execution.status import BackendName
from execution.store import TaskStore
from execution.tools.registry import ToolLoadError, ToolRegistry, load_registry


def worker_services(settings: Settings, registry: ToolRegistry, app: Celery) -> WorkerServices:
    """One worker process's executor, and the rollout deciding which tasks it hands back and
    which it holds (paused). A parallel job it runs publishes its batches through `app`."""
    engine = database.make_engine(settings.database_url)
    # Workers honour the stored rollout only: USE_CELERY is the switch of the processes that
    # create tasks, and a worker without it set must not hand every task back.
    rollout = rollout_watcher(settings, engine, use_celery=True, seed=False)
    rollout.start()
    executor = build_executor(
        settings,
        store=TaskStore(engine),
        registry=registry,
        # Built here, in the child after the fork: in multiprocess mode its values go to this
        # process's own files (see api/worker_metrics.py).
        metrics=Metrics(),
        soft_limit_errors=(SoftTimeLimitExceeded,),
        gate=PauseGate(rollout),
    )
    executor.parallel.hand_over = celery_publisher(settings, app, registry).enqueue_batches

    def hand_back_to(tool_id: str) -> str | None:
        # No stored rollout yet (no API process ever started): nothing to hand back to.
        return rollout.current().hand_back_to(tool_id) if rollout.state() else None

    return WorkerServices(executor=executor, hand_back_to=hand_back_to)


class WorkerRecovery:
    """The recovery sweep in a worker's main process, so lost tasks are found even when no
    API process runs (and the retention job: its lease makes it once per deployment). Prefork
    children are forked from this process: they must not use (or close) its database
    connections."""

    def __init__(self, settings: Settings, app: Celery, registry: ToolRegistry) -> None:
        self._settings, self._app, self._registry = settings, app, registry
        self._recovery: Recovery | None = None
        self._engine: Engine | None = None
        self._rollout: RolloutWatcher | None = None
        self._retention: RetentionJob | None = None

    def start(self, **_: Any) -> None:
        """`worker_ready`: the consumer runs; begin sweeping."""
        engine = self._engine = database.make_engine(self._settings.database_url)
        os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
        # Workers honour the stored rollout only (see worker_services).
        self._rollout = rollout_watcher(self._settings, engine, use_celery=True, seed=False)
        self._rollout.start()
        celery = celery_publisher(self._settings, self._app, self._registry)
        store = TaskStore(engine)
        # Every tool's series at 0 from the start, even before a child has run one
        metrics = Metrics().expect([BackendName.CELERY], self._registry)
        self._recovery = recovery(
            self._settings,
            store=store,
            registry=self._registry,
            backends={BackendName.CELERY: celery},
            rollout=self._rollout,
            metrics=metrics,
        )
        self._recovery.start()
        self._retention = retention_job(self._settings, store=store, metrics=metrics)
        if self._retention is not None:
            self._retention.start()

    def stop(self, **_: Any) -> None:
        """`worker_shutdown`."""
        if self._retention is not None:
            self._retention.stop()
        if self._recovery is not None:
            self._recovery.stop()
        if self._rollout is not None:
            self._rollout.stop()
        if self._engine is not None:
            self._engine.dispose()


def build_worker_app(settings: Settings, *, registry: ToolRegistry | None = None) -> Celery:
    """A Celery app with the run task registered, ready for `worker_main`."""
    tools = registry or load_registry(settings.tool_modules)
    app = make_celery_app(settings, tools)
    register_run_task(app, PerProcess(lambda: worker_services(settings, tools, app)), tools)
    sweep = WorkerRecovery(settings, app, tools)
    worker_ready.connect(sweep.start, weak=False)
    worker_shutdown.connect(sweep.stop, weak=False)
    metrics = WorkerMetricsServer(settings)
    worker_init.connect(metrics.prepare, weak=False)
    worker_ready.connect(metrics.start, weak=False)
    worker_shutdown.connect(metrics.stop, weak=False)

    def use_our_logging(**_: Any) -> None:
        configure_logging(
            level=settings.log_level,
            json_output=settings.log_json,
            foreign_processors=(celery_task_fields,),
        )
        redirect_stdouts(app)

    # Connecting a receiver tells Celery not to install its own logging handlers.
    setup_logging.connect(use_our_logging, weak=False)
    return app


def prepare_worker_database(settings: Settings) -> None:
    """Migrate the embedded database, or refuse an external one that is behind the code."""
    engine = database.make_engine(settings.database_url)
    try:
        database.prepare(engine, migrate=settings.is_embedded_database)
    finally:
        engine.dispose()


_app: Celery | None = None


def __getattr__(name: str) -> Celery:
    """`app` for Celery's own CLI, built from the environment the first time it is asked for."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        try:
            _app = build_worker_app(load_settings())
        except (SettingsError, ToolLoadError) as exc:  # one line for the operator
            sys.stderr.write(f"error: {exc}\n")
            raise SystemExit(2) from None
    return _app
