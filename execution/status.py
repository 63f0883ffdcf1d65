"""The statuses a task moves through, and which moves are legal."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """Lifecycle of one task; every backend writes exactly these."""

    CREATED = "CREATED"
    """The row exists; no backend has been chosen yet."""
    QUEUED = "QUEUED"
    """A backend was chosen and the task handed (or about to be handed) to it."""
    PROCESSING = "PROCESSING"
    """A worker claimed the task and its tool is running."""
    COMPLETED = "COMPLETED"
    """The tool returned; `result` holds what it returned."""
    FAILED = "FAILED"
    """The tool raised or could not run; `error_code` and `error_message` say why."""
    CANCELLED = "CANCELLED"
    """Stopped before it started, by a caller or because no backend would take it."""

    @property
    def is_terminal(self) -> bool:
        """True once nothing more will happen to the task."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class BackendName(StrEnum):
    """Where a task runs."""

    THREAD = "thread"
    """The bounded thread pool inside the API process."""
    CELERY = "celery"
    """Celery workers fed through the Redis broker."""
