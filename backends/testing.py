"""Two fakes for unit tests, beside the real backends: one runs inline, one only records."""

from __future__ import annotations

from collections.abc import Sequence

from backends.base import BackendUnavailable, TaskBackend
from execution.batch_records import BatchRecord
from execution.executor import TaskExecutor
from execution.records import TaskRecord


class InlineBackend(TaskBackend):
    """Runs each task to the end inside `submit`, under the name of the backend it stands for."""

    def __init__(self, executor: TaskExecutor, *, name: str = "thread") -> None:
        self.name = name
        self._executor = executor
        executor.parallel.hand_over = self.enqueue_batches

    def enqueue(self, task: TaskRecord) -> None:
        self._executor.run(task.task_id, recorded_for=self.name)

    def enqueue_batches(self, job: TaskRecord, batches: Sequence[BatchRecord]) -> None:
        """One after another, inline: the last one runs the job's finalizer."""
        for batch in batches:
            self._executor.run_batch(job.task_id, batch.batch_no, recorded_for=self.name)


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
