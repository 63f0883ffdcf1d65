"""The statuses a task moves through.

Which moves are legal is written once, in the store: each transition of `execution.store` is a
named operation whose conditional UPDATE names the statuses it may start from.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """Lifecycle of one task; every backend writes exactly these."""

    CREATED = "CREATED"
    """The first event of every task's history: the request was accepted. A row is never
    stored in it: the dispatcher routes first and writes the row QUEUED."""
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
