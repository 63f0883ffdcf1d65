"""The worker side: registers a Celery task per tool (and the older API's one task name), each
running the TaskExecutor for a task_id."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from celery import Celery, Task

from backends.celery_app import BATCH_TASK, RUN_TASK, tool_task_name
from execution.executor import RunOutcome, TaskExecutor
from execution.redaction import redact_text
from execution.status import BackendName
from execution.tools.registry import ToolRegistry

log = structlog.get_logger(__name__)

HandBack = Callable[[str], str | None]
"""Given a tool id: the backend its Celery tasks must go to instead now, or None to run them.
Whoever composes the worker decides (the rollout); this module only honours the answer."""


FAILURE_TEXT_LIMIT = 500
"""Characters of the stored error message a failed Celery task's exception carries."""


class TaskFailed(Exception):
    """The task ended FAILED (its tool raised, its time limit passed, ...): the Celery task ends
    FAILURE with `<ERROR_CODE>: <message>`. Declared in the task's `throws`, so Celery logs it as
    an expected error, one INFO line without a traceback; the executor already logged why."""


@dataclass(frozen=True, slots=True)
class WorkerServices:
    """What a worker process needs to run tasks: the executor, and where to hand tasks back."""

    executor: TaskExecutor
    hand_back_to: HandBack

    def run(self, task_id: str, tool_id: str | None) -> str:
        """Run the task, unless its tool's tasks must leave Celery now: then hand it back.
        Returns how it went (`completed`, `retrying`, `cancelled`, ...); raises TaskFailed if
        the task ended FAILED."""
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
        outcome = self.executor.run(task_id, recorded_for=BackendName.CELERY)
        if outcome is RunOutcome.FAILED:
            raise TaskFailed(self._failure(task_id))
        return outcome.value

    def _failure(self, task_id: str) -> str:
        """`<ERROR_CODE>: <message>` as the row stores it, for Celery's task-failed event."""
        record = self.executor.store.get(task_id)
        if record is None or record.error_code is None:
            return "FAILED"
        text = record.error_code
        if record.error_message:
            text += f": {record.error_message}"
        return redact_text(text[:FAILURE_TEXT_LIMIT])


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


def register_run_task(app: Celery, services: PerProcess, registry: ToolRegistry) -> None:
    """Register `switchyard.tool.<tool_id>` for every tool, and `switchyard.run_task` for the
    messages an older API published: each takes only the task_id; the row holds the rest.
    `switchyard.batch` runs one batch of a parallel job: `(task_id, batch_no)`."""

    def run_task(self: Task, task_id: str) -> str:  # type: ignore[type-arg]
        tool_id = getattr(self.request, "switchyard_tool_id", None)
        return services.get().run(task_id, tool_id)

    for name in [RUN_TASK, *(tool_task_name(tool_id) for tool_id in registry)]:
        app.task(name=name, ignore_result=True, bind=True, throws=(TaskFailed,))(run_task)

    def run_batch(task_id: str, batch_no: int) -> str:
        services.get().executor.run_batch(task_id, batch_no, recorded_for=BackendName.CELERY)
        return "ran"

    app.task(name=BATCH_TASK, ignore_result=True)(run_batch)
