"""`.enqueue(...)` from application code: the submitter a running Switchyard binds, and handles.

A tool module sits below the dispatcher (execution/ imports nothing above it), so `.enqueue`
cannot reach the dispatcher itself: the process's Switchyard (api/embedded.py) binds a
`TaskSubmitter` here when it starts and unbinds it when it stops. Enqueueing with none bound
is an error that says how to start one, never a silent fallback.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from execution.records import TaskRecord

DEFAULT_USER = "app"
"""Whom a task enqueued from application code belongs to unless `user_id` says otherwise."""

WAIT_FIRST_POLL_SECONDS = 0.01
WAIT_MAX_POLL_SECONDS = 0.25
"""`wait` reads the row after 10 ms, then ever less often, at most every 250 ms: a short task is
seen ending at once, a long one costs a few reads a second (a Celery worker writes its rows from
another process, so there is nothing in this process to be woken by)."""


class TaskSubmitter(Protocol):
    """What `.enqueue` goes through: the dispatcher and store of the running Switchyard."""

    def submit(
        self, tool_id: str, payload: Any, *, user_id: str, priority: int | None
    ) -> TaskRecord:
        """Create the task through the dispatcher (routing, rows, hand-over), as POST /tasks."""
        ...

    def get(self, task_id: str) -> TaskRecord | None:
        """The task's row as it is now."""
        ...

    def cancel(self, task_id: str, *, actor: str) -> TaskRecord | None:
        """Cancel it as POST /tasks/{id}/cancel does; None if it has ended."""
        ...


class NoSwitchyard(RuntimeError):
    """`.enqueue` was called in a process where no Switchyard is running."""


_lock = threading.Lock()
_bound: TaskSubmitter | None = None


def bind(submitter: TaskSubmitter) -> None:
    """Make `submitter` the one `.enqueue` uses in this process (a Switchyard starting)."""
    global _bound
    with _lock:
        if _bound is not None and _bound is not submitter:
            raise RuntimeError(
                "a Switchyard is already running in this process; stop it before starting another"
            )
        _bound = submitter


def unbind(submitter: TaskSubmitter) -> None:
    """Forget `submitter` (its Switchyard stopped); another one's binding is left alone."""
    global _bound
    with _lock:
        if _bound is submitter:
            _bound = None


def bound() -> TaskSubmitter:
    """The submitter of this process's running Switchyard; NoSwitchyard if there is none."""
    submitter = _bound
    if submitter is None:
        raise NoSwitchyard(
            "no Switchyard is running in this process: start one with "
            "`with Switchyard.start(): ...` (from api.embedded import Switchyard), or in a FastAPI "
            "app with `FastAPI(lifespan=Switchyard().lifespan)`"
        )
    return submitter


def enqueue(
    tool_id: str, payload: Any, *, user_id: str = DEFAULT_USER, priority: int | None = None
) -> TaskHandle:
    """Submit a task of `tool_id` through this process's Switchyard; its handle."""
    submitter = bound()
    record = submitter.submit(tool_id, payload, user_id=user_id, priority=priority)
    return TaskHandle(task_id=record.task_id, user_id=user_id, submitter=submitter)


@dataclass(frozen=True, slots=True)
class TaskHandle:
    """A task enqueued from application code: read it, wait for it, cancel it."""

    task_id: str
    user_id: str
    submitter: TaskSubmitter

    def status(self) -> TaskRecord:
        """The task now, read afresh: status, progress, message, result, error."""
        record = self.submitter.get(self.task_id)
        if record is None:
            raise LookupError(f"task {self.task_id} no longer exists")
        return record

    def wait(self, timeout: float | None = None) -> TaskRecord:
        """The task once it has ended (COMPLETED, FAILED or CANCELLED: check `status`);
        TimeoutError if it has not within `timeout` seconds (None: no bound)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = WAIT_FIRST_POLL_SECONDS
        while not (record := self.status()).status.is_terminal:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"task {self.task_id} ({record.tool_id}) did not end within "
                        f"{timeout:g} s; it is {record.status} ({record.progress} %)"
                    )
                pause = min(pause, left)
            time.sleep(pause)
            pause = min(pause * 2, WAIT_MAX_POLL_SECONDS)
        return record

    def cancel(self) -> TaskRecord | None:
        """Cancel the task: a waiting one at once, a running one within a heartbeat; None if
        it has ended."""
        return self.submitter.cancel(self.task_id, actor=self.user_id)
