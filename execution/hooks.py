"""Executor hooks: one concern each (time limits, leases, metrics) around a run.

A hook subclasses `ExecutorHook` and overrides the moments it needs; every method here is a
documented no-op. The executor calls its hooks directly, in the order it was given them, and
lets their errors surface: an error in `after_claim` or `on_progress` fails the attempt like a
tool error would, so a hook can stop a tool (the soft time limit does).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from execution.batch_records import BatchRecord
from execution.records import TaskRecord
from execution.tools.registry import Tool


@dataclass(frozen=True, slots=True)
class Run:
    """One attempt of one task, as hooks see it."""

    task: TaskRecord
    """The row as the claim left it: PROCESSING, `attempts` counting this attempt."""
    tool: Tool | None
    """The tool that runs it; None when the tool is unknown or the payload does not fit."""
    started: float
    """`time.monotonic()` at the claim."""
    soft_time_limit: float | None
    """Seconds the tool may run before it is asked to stop (its own, else the default)."""
    time_limit: float | None = None
    """Seconds after which the attempt ends TIME_LIMIT_EXCEEDED whatever the tool does."""
    stop: threading.Event = field(default_factory=threading.Event)
    """Set when the tool should stop (soft limit, cancel, the attempt was taken over); the
    tool sees it as `ToolContext.stop_requested`."""
    batch: BatchRecord | None = None
    """Set when this is an attempt of one batch of the parallel job `task`, as its claim left
    it; the attempt, its lease and its writes are the batch's."""

    @property
    def attempt(self) -> int:
        """This attempt's number: the fence every write of it carries."""
        return self.batch.attempts if self.batch is not None else self.task.attempts

    @property
    def key(self) -> tuple[str, int, int]:
        """Which attempt of what: the task (batch -1) or one of its batches."""
        return (self.task.task_id, self.batch.batch_no if self.batch else -1, self.attempt)


@dataclass(frozen=True, slots=True)
class Failure:
    """How an attempt failed, as it is stored."""

    error_code: str
    message: str


def storable_text(text: str) -> str:
    """PostgreSQL refuses NUL in text; a tool's message must not lose its failure for it."""
    return text.replace("\x00", "\\0")[:4000]


def unstorable_result(result: Any) -> Failure | None:
    """Why a tool's (or batch's) result cannot be stored as JSON, or None if it can: a bug in
    the tool, which no retry mends."""
    try:
        text = json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return Failure("ResultNotSerializable", str(exc))
    if "\\u0000" in text:
        return Failure("ResultNotSerializable", "the result contains a NUL character")
    return None


class ExecutorHook:
    """A concern around each run; override only what it needs."""

    def before_claim(self, task_id: str) -> None:
        """A backend asked to run `task_id`; nothing is known about it yet."""

    def after_claim(self, run: Run) -> None:
        """The claim succeeded; the tool has not started."""

    def on_progress(self, run: Run, percent: int, message: str | None) -> None:
        """The tool reported progress, before the executor decides whether to store it."""

    def on_success(self, run: Run, result: Any) -> None:
        """The result is stored: the task is COMPLETED."""

    def on_failure(self, run: Run, failure: Failure) -> None:
        """The failure is stored: the task is FAILED."""

    def on_retry(self, run: Run, failure: Failure, delay: float) -> None:
        """The attempt failed and the task is QUEUED again, to run after `delay` seconds."""

    def on_cancelled(self, run: Run) -> None:
        """The attempt stopped on request: the task is CANCELLED."""

    def on_finish(self, run: Run) -> None:
        """The attempt is over, however it ended (also when another attempt took over)."""

    def on_batch_end(self, job: TaskRecord, outcome: str) -> None:
        """An attempt of one batch of the parallel job `job` ended: completed, failed,
        retrying or cancelled."""
