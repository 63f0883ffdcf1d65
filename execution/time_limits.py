"""The soft time limit on every backend: a tool that reports progress past it is stopped.

Celery also interrupts a tool that stays silent (its own SoftTimeLimitExceeded, which the
executor records identically); on the thread backend the progress call is the one place a tool
can be stopped safely.
"""

from __future__ import annotations

import time

from execution.hooks import ExecutorHook, Run


class SoftTimeLimitExceeded(Exception):  # same name as Celery's, so rows match
    """The tool reported progress after its soft time limit."""


class SoftTimeLimit(ExecutorHook):
    """Raises SoftTimeLimitExceeded in the tool's progress call once the run's limit passed."""

    def on_progress(self, run: Run, percent: int, message: str | None) -> None:
        """Stop the tool if its soft time limit has passed."""
        limit = run.soft_time_limit
        if limit is not None and time.monotonic() - run.started > limit:
            raise SoftTimeLimitExceeded("soft time limit exceeded")
