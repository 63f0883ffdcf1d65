"""TaskExecutor: runs one task, whichever backend invoked it, and writes every status change."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from execution.records import TaskRecord
from execution.store import TaskStore
from execution.tools.registry import InvalidPayload, ToolContext, ToolRegistry, UnknownTool

log = structlog.get_logger(__name__)


class RunOutcome(StrEnum):
    """What one call of `TaskExecutor.run` did."""

    NOT_CLAIMED = "not_claimed"
    """Another copy had it, it was cancelled, or it does not exist: nothing ran."""
    COMPLETED = "completed"
    """The tool returned and the result was stored."""
    FAILED = "failed"
    """The tool raised, or could not start; the reason was stored."""


class SoftTimeLimitExceeded(Exception):  # same name as Celery's, so rows match
    """The tool reported progress after its soft time limit."""


class TaskNoLongerRunning(Exception):
    """The task's row left PROCESSING while the tool ran; the tool should stop."""


@dataclass(frozen=True, slots=True)
class ExecutorLimits:
    """Limits that apply when the tool does not set its own."""

    soft_time_limit: float | None = None
    soft_limit_errors: tuple[type[BaseException], ...] = ()
    """What a backend raises inside a tool when the soft limit passes (Celery's own exception);
    recorded exactly as the executor's own, so rows match across backends."""
    progress_min_interval: float = 0.5
    """Seconds between two writes that change only the message, not the whole percent."""


class TaskExecutor:
    """Claims a task, runs its tool with a progress callback, and stores how it ended."""

    def __init__(
        self,
        *,
        store: TaskStore,
        registry: ToolRegistry,
        data_dir: Path,
        limits: ExecutorLimits | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.data_dir = data_dir
        self.limits = limits or ExecutorLimits()
        self._soft_limit_errors: tuple[type[BaseException], ...] = (
            SoftTimeLimitExceeded,
            *self.limits.soft_limit_errors,
        )

    def run(self, task_id: str) -> RunOutcome:
        """Run the task once if it is QUEUED; a second copy of the same task does nothing."""
        record = self.store.claim(task_id)
        if record is None:
            current = self.store.get(task_id)
            log.info(
                "task.not_claimed",
                task_id=task_id,
                status=current.status if current else None,
                reason="missing" if current is None else "not queued",
            )
            return RunOutcome.NOT_CLAIMED
        bound = log.bind(
            task_id=task_id,
            tool_id=record.tool_id,
            backend=record.backend,
            attempt=record.attempts,
        )
        # DEBUG: the claim is in task_events already, and on the hot path an INFO line costs
        # about as much as a status write; the task's INFO line is the one saying how it ended.
        bound.debug("task.claimed")
        try:
            return self._run_claimed(record, bound)
        except Exception as exc:  # the store itself failed mid-run: record it if we still can
            bound.exception("task.executor_error")
            self._fail(record, "ExecutorError", f"{type(exc).__name__}: {exc}", bound)
            return RunOutcome.FAILED

    def _run_claimed(self, record: TaskRecord, bound: Any) -> RunOutcome:
        try:
            spec = self.registry[record.tool_id]
            payload = spec.validate_payload(record.payload)
        except (UnknownTool, InvalidPayload) as exc:
            return self._fail(record, type(exc).__name__, str(exc), bound)

        soft_limit = spec.soft_time_limit or self.limits.soft_time_limit
        progress = _ProgressWriter(
            store=self.store,
            task_id=record.task_id,
            min_interval=self.limits.progress_min_interval,
            deadline=time.monotonic() + soft_limit if soft_limit else None,
        )
        context = ToolContext(
            task_id=record.task_id,
            attempt=record.attempts,
            payload=payload,
            progress=progress,
            data_dir=self.data_dir,
        )
        started = time.perf_counter()
        try:
            result = spec.handler(context)
        except TaskNoLongerRunning:
            bound.info("task.abandoned")
            return RunOutcome.NOT_CLAIMED
        except self._soft_limit_errors:
            limit = f"{soft_limit:g}s " if soft_limit else ""
            message = f"soft time limit {limit}exceeded"
            return self._fail(record, SoftTimeLimitExceeded.__name__, message, bound)
        except Exception as exc:
            bound.error("task.tool_raised", exc_info=True)
            return self._fail(record, type(exc).__name__, str(exc), bound)
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return self._fail(record, "ResultNotSerializable", str(exc), bound)
        if self.store.complete(record.task_id, result=result) is None:
            bound.warning("task.complete_skipped", reason="row left PROCESSING")
            return RunOutcome.NOT_CLAIMED
        bound.info("task.completed", seconds=round(time.perf_counter() - started, 6))
        return RunOutcome.COMPLETED

    def _fail(self, record: TaskRecord, code: str, message: str, bound: Any) -> RunOutcome:
        self.store.fail(record.task_id, error_code=code, error_message=message[:4000])
        bound.info("task.failed", error_code=code)
        return RunOutcome.FAILED


class _ProgressWriter:
    """The `progress(pct, message)` a tool calls; writes only when something visible changed."""

    def __init__(
        self, *, store: TaskStore, task_id: str, min_interval: float, deadline: float | None
    ) -> None:
        self._store = store
        self._task_id = task_id
        self._min_interval = min_interval
        self._deadline = deadline
        self._last_percent = 0
        self._last_message: str | None = "started"
        self._last_write = 0.0

    def __call__(self, percent: float, message: str | None = None) -> None:
        now = time.monotonic()
        if self._deadline is not None and now > self._deadline:
            raise SoftTimeLimitExceeded("soft time limit exceeded")
        whole = max(0, min(100, int(percent)))
        percent_moved = whole != self._last_percent
        message_moved = message != self._last_message
        # A write per whole percent keeps histories identical across backends; message-only
        # changes are rate-limited so a chatty tool cannot flood the store.
        if not percent_moved and not (
            message_moved and now - self._last_write >= self._min_interval
        ):
            return
        if not self._store.record_progress(self._task_id, progress=whole, message=message):
            raise TaskNoLongerRunning(self._task_id)
        self._last_percent, self._last_message, self._last_write = whole, message, now
