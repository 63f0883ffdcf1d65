"""Finished tasks for the cohort tests: real rows through TaskStore, on a clock the test moves.

The clock replaces `utcnow` wherever rows, rollout changes and the cohorts route read the time,
so a task's queue wait and run time are exactly what the test says, and a rollout change falls
exactly between the tasks before it and after it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from execution.store import TaskStore
from tests.helpers import claim, queued_task

CLOCK_READERS = (
    "execution.store.utcnow",
    "dispatch.rollout.store.utcnow",
    "api.routes.cohorts.utcnow",
)


class Clock:
    """A UTC clock that moves only when told to."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        """Move on `seconds` and return the new time."""
        self.now += timedelta(seconds=seconds)
        return self.now


def install_clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A clock starting at the real time, read by the store, the rollout store and the route."""
    clock = Clock(datetime.now(UTC))
    for reader in CLOCK_READERS:
        monkeypatch.setattr(reader, clock)
    return clock


def finish(
    store: TaskStore,
    clock: Clock,
    *,
    backend: str,
    tool_id: str = "noop",
    wait: float = 1.0,
    run: float = 1.0,
    failed: bool = False,
) -> None:
    """A task that waited `wait` seconds, ran `run` seconds on `backend`, and then ended."""
    task = queued_task(store, tool_id=tool_id, backend=backend)
    clock.advance(wait)
    attempt = claim(store, task.task_id, lease_seconds=86_400)
    assert attempt is not None
    clock.advance(run)
    if failed:
        ended = store.fail(
            task.task_id, attempt=attempt.attempts, error_code="TOOL_ERROR", error_message="boom"
        )
    else:
        ended = (
            store.get(task.task_id)
            if store.complete(task.task_id, attempt=attempt.attempts, result={})
            else None
        )
    assert ended is not None


def cancelled(store: TaskStore, clock: Clock, *, backend: str, tool_id: str = "noop") -> None:
    """A task cancelled while it waited."""
    task = queued_task(store, tool_id=tool_id, backend=backend)
    clock.advance(1)
    assert store.cancel(task.task_id, reason="cancelled by the test") is not None


def cohort_of(
    store: TaskStore,
    clock: Clock,
    *,
    backend: str,
    completed: int,
    failed: int = 0,
    run: float = 1.0,
) -> None:
    """`completed` and `failed` tasks on `backend`, each running `run` seconds."""
    for _ in range(completed):
        finish(store, clock, backend=backend, run=run)
    for _ in range(failed):
        finish(store, clock, backend=backend, run=run, failed=True)
