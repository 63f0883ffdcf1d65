"""The one interface the dispatcher knows backends by."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from execution.batch_records import BatchRecord
from execution.records import TaskRecord
from execution.status import TaskStatus


class BackendUnavailable(Exception):
    """The backend cannot take the task now; the caller may retry after `retry_after` seconds."""

    def __init__(self, reason: str, *, retry_after: int = 5) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(reason)


class BackendFull(BackendUnavailable):
    """The backend's queue is at capacity."""


@dataclass(frozen=True, slots=True)
class BackendHealth:
    """A backend's own account of whether it can take work."""

    ok: bool
    state: str = "ok"
    """One word for probes and dashboards: ok, saturated, stopped, broker_down, ..."""
    counts: dict[str, object] = field(default_factory=dict)
    """Numbers anyone may see: workers, tasks waiting, queue lengths."""
    detail: dict[str, object] = field(default_factory=dict)
    """What only operators see: addresses, error text, worker names."""


class TaskBackend(ABC):
    """Runs QUEUED tasks through the TaskExecutor somewhere; knows nothing of HTTP."""

    name: str
    """The value written to `tasks.backend`."""

    def submit(self, task: TaskRecord) -> None:
        """Hand over a QUEUED task recorded for this backend."""
        if task.status is not TaskStatus.QUEUED:
            raise ValueError(f"task {task.task_id} is {task.status}, only QUEUED can be submitted")
        if task.backend != self.name:
            raise ValueError(
                f"task {task.task_id} is recorded for {task.backend!r}, not {self.name!r}"
            )
        self.enqueue(task)

    @abstractmethod
    def enqueue(self, task: TaskRecord) -> None:
        """Put the task where a worker will find it; raise BackendUnavailable if it cannot."""

    def enqueue_batches(self, job: TaskRecord, batches: Sequence[BatchRecord]) -> None:
        """Put batches of the parallel job `job` (recorded for this backend) where its workers
        run them; raise BackendUnavailable if it cannot (the sweeps try again)."""
        raise BackendUnavailable(f"the {self.name} backend does not run batches here")

    def external_id(self, task_id: str) -> str | None:
        """The id this backend will know the task by, recorded before submission."""
        return None

    def interrupt(self, task: TaskRecord) -> None:
        """A caller asked the running `task` to stop: interrupt its tool if this backend can.

        Either way its attempt notices the request at its next progress call or heartbeat."""

    def check_capacity(self, tasks: int = 1) -> None:
        """Raise BackendFull before tasks are created if this backend could not take `tasks`
        more."""

    def check_open(self) -> None:
        """Raise BackendUnavailable if a hand-over would be refused now without being tried (a
        broker that failed moments ago): a batch is then refused before any row is written."""

    def start(self) -> None:
        """Begin taking work."""

    def shutdown(self, timeout: float) -> None:
        """Stop taking work; let running tasks finish within `timeout` seconds."""

    def health(self) -> BackendHealth:
        """Whether the backend can take work, with detail for operators."""
        return BackendHealth(ok=True)
