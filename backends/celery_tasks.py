"""The worker side: the one Celery task, which runs the TaskExecutor for a task_id."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import setup_logging

from backends.celery_app import RUN_TASK, make_celery_app
from execution import database
from execution.executor import TaskExecutor
from execution.logs import configure_logging
from execution.rollout import BACKEND_WHEN_SWITCHED_OFF
from execution.rollout_store import RolloutStore
from execution.rollout_watch import RolloutWatcher
from execution.settings import Settings
from execution.status import BackendName
from execution.tools.registry import ToolRegistry, load_registry
from execution.wiring import build_executor

log = structlog.get_logger(__name__)


@dataclass
class WorkerServices:
    """What a worker process needs to run tasks: the executor and the rollout it honours."""

    executor: TaskExecutor
    rollout: RolloutWatcher

    def run(self, task_id: str, tool_id: str | None) -> str:
        """Run the task, unless Celery is now switched off for its tool: then hand it back."""
        if tool_id is None:  # a message from a publisher that did not set the header
            record = self.executor.store.get(task_id)
            tool_id = record.tool_id if record else None
        if tool_id is not None and self.rollout.current().celery_switched_off_for(tool_id):
            moved = self.executor.store.move_backend(
                task_id,
                from_backend=BackendName.CELERY,
                to_backend=BACKEND_WHEN_SWITCHED_OFF,
                reason="celery switched off for this tool",
            )
            log.info("task.handed_back", task_id=task_id, tool_id=tool_id, moved=bool(moved))
            return "handed_back"
        return self.executor.run(task_id).value


def build_worker_services(settings: Settings, registry: ToolRegistry) -> WorkerServices:
    """Executor and rollout watcher on DATABASE_URL, for one worker process."""
    executor = build_executor(
        settings, registry=registry, soft_limit_errors=(SoftTimeLimitExceeded,)
    )
    # Workers honour the stored rollout only: USE_CELERY is the switch of the processes that
    # create tasks, and a worker without it set must not hand every task back.
    rollout = RolloutWatcher(
        RolloutStore(executor.store.engine),
        use_celery=True,
        seed_percentage=settings.celery_rollout_percentage,
        salt=settings.rollout_salt,
        interval=settings.rollout_refresh_seconds,
    )
    rollout.start()
    return WorkerServices(executor=executor, rollout=rollout)


class PerProcess:
    """Builds the worker services lazily in each process: connections and threads do not
    survive fork()."""

    def __init__(self, factory: Callable[[], WorkerServices]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._services: WorkerServices | None = None

    def get(self) -> WorkerServices:
        """This process's services."""
        with self._lock:
            if self._services is None or self._pid != os.getpid():
                self._services = self._factory()
                self._pid = os.getpid()
            return self._services


def register_run_task(app: Celery, services: PerProcess) -> None:
    """Register `switchyard.run_task`: it takes only the task_id; the row holds the rest."""

    @app.task(name=RUN_TASK, ignore_result=True, bind=True)
    def run_task(self: Task, task_id: str) -> str:  # type: ignore[type-arg]
        tool_id = getattr(self.request, "switchyard_tool_id", None)
        return services.get().run(task_id, tool_id)


def build_worker_app(settings: Settings, *, registry: ToolRegistry | None = None) -> Celery:
    """A Celery app with the run task registered, ready for `worker_main`."""
    registry = registry or load_registry(settings.tool_modules)
    app = make_celery_app(settings, registry)
    register_run_task(app, PerProcess(lambda: build_worker_services(settings, registry)))

    def use_our_logging(**_: Any) -> None:
        configure_logging(level=settings.log_level, json_output=settings.log_json)

    # Connecting a receiver tells Celery not to install its own logging handlers.
    setup_logging.connect(use_our_logging, weak=False)
    return app


def prepare_worker_database(settings: Settings) -> None:
    """Migrate the embedded database, or refuse an external one that is behind the code."""
    engine = database.make_engine(settings.database_url)
    try:
        if settings.is_embedded_database:
            database.upgrade(engine)
        else:
            database.check_current(engine)
    finally:
        engine.dispose()
