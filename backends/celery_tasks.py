"""The worker side: the one Celery task, which runs the TaskExecutor for a task_id."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import structlog
from celery import Celery
from celery.signals import setup_logging

from backends.celery_app import RUN_TASK, make_celery_app
from execution import database
from execution.executor import TaskExecutor
from execution.logs import configure_logging
from execution.settings import Settings
from execution.tools.registry import ToolRegistry, load_registry
from execution.wiring import build_executor

log = structlog.get_logger(__name__)


class PerProcessExecutor:
    """Builds the executor lazily in each worker process: DB connections must not cross fork()."""

    def __init__(self, factory: Callable[[], TaskExecutor]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._executor: TaskExecutor | None = None

    def get(self) -> TaskExecutor:
        """This process's executor."""
        with self._lock:
            if self._executor is None or self._pid != os.getpid():
                self._executor = self._factory()
                self._pid = os.getpid()
            return self._executor


def register_run_task(app: Celery, executors: PerProcessExecutor) -> None:
    """Register `switchyard.run_task`: it takes only the task_id; the row holds the rest."""

    @app.task(name=RUN_TASK, ignore_result=True)
    def run_task(task_id: str) -> str:
        return executors.get().run(task_id).value


def build_worker_app(settings: Settings, *, registry: ToolRegistry | None = None) -> Celery:
    """A Celery app with the run task registered, ready for `worker_main`."""
    registry = registry or load_registry(settings.tool_modules)
    app = make_celery_app(settings, registry)
    register_run_task(app, PerProcessExecutor(lambda: build_executor(settings, registry=registry)))

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
