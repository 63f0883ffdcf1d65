"""Two fakes for unit tests, beside the real backends: one runs inline, one only records."""

from __future__ import annotations

from backends.base import BackendUnavailable, TaskBackend
from execution.executor import TaskExecutor
from execution.records import TaskRecord


class InlineBackend(TaskBackend):
    """Runs each task to the end inside `submit`, under the name of the backend it stands for."""

    def __init__(self, executor: TaskExecutor, *, name: str = "thread") -> None:
        self.name = name
        self._executor = executor

    def enqueue(self, task: TaskRecord) -> None:
        self._executor.run(task.task_id, recorded_for=self.name)


class RecordingBackend(TaskBackend):
    """Remembers what it was given and runs nothing; `unavailable` makes it refuse."""

    def __init__(self, *, name: str = "celery", unavailable: str | None = None) -> None:
        self.name = name
        self.unavailable = unavailable
        self.submitted: list[TaskRecord] = []

    def enqueue(self, task: TaskRecord) -> None:
        if self.unavailable:
            raise BackendUnavailable(self.unavailable)
        self.submitted.append(task)
