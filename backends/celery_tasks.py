"""The worker side: registers the one Celery task, which runs the TaskExecutor for a task_id."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from celery import Celery, Task

from backends.celery_app import RUN_TASK
from execution.executor import TaskExecutor
from execution.status import BackendName

log = structlog.get_logger(__name__)

HandBack = Callable[[str], str | None]
"""Given a tool id: the backend its Celery tasks must go to instead now, or None to run them.
Whoever composes the worker decides (the rollout); this module only honours the answer."""


@dataclass(frozen=True, slots=True)
class WorkerServices:
    """What a worker process needs to run tasks: the executor, and where to hand tasks back."""

    executor: TaskExecutor
    hand_back_to: HandBack

    def run(self, task_id: str, tool_id: str | None) -> str:
        """Run the task, unless its tool's tasks must leave Celery now: then hand it back."""
        if tool_id is None:  # a message from a publisher that did not set the header
            record = self.executor.store.get(task_id)
            tool_id = record.tool_id if record else None
        target = self.hand_back_to(tool_id) if tool_id is not None else None
        if target is not None:
            moved = self.executor.store.move_backend(
                task_id,
                from_backend=BackendName.CELERY,
                to_backend=target,
                reason="celery switched off for this tool",
            )
            log.info("task.handed_back", task_id=task_id, tool_id=tool_id, moved=bool(moved))
            return "handed_back"
        return self.executor.run(task_id, recorded_for=BackendName.CELERY).value


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
