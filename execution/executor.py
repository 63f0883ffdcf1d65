"""TaskExecutor: runs one task, whichever backend invoked it, and writes every status change."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from execution.hooks import ExecutorHook, Failure, Run
from execution.store import TaskStore
from execution.time_limits import SoftTimeLimitExceeded
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
        hooks: Sequence[ExecutorHook] = (),
    ) -> None:
        self.store = store
        self.registry = registry
        self.data_dir = data_dir
        self.limits = limits or ExecutorLimits()
        self.hooks = tuple(hooks)
        self._soft_limit_errors: tuple[type[BaseException], ...] = (
            SoftTimeLimitExceeded,
            *self.limits.soft_limit_errors,
        )

    def run(self, task_id: str) -> RunOutcome:
        """Run the task once if it is QUEUED; a second copy of the same task does nothing."""
        for hook in self.hooks:
            hook.before_claim(task_id)
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
        run = Run(task=record, tool=None, started=time.monotonic(), soft_time_limit=None)
        try:
            return self._run_claimed(run, bound)
        except Exception as exc:  # the store or a hook failed mid-run: record it if we still can
            bound.exception("task.executor_error")
            return self._fail(run, Failure("ExecutorError", f"{type(exc).__name__}: {exc}"), bound)

    def _run_claimed(self, run: Run, bound: Any) -> RunOutcome:
        try:
            spec = self.registry[run.task.tool_id]
            payload = spec.validate_payload(run.task.payload)
        except (UnknownTool, InvalidPayload) as exc:
            return self._fail(run, Failure(type(exc).__name__, str(exc)), bound)
        run = replace(
            run, tool=spec, soft_time_limit=spec.soft_time_limit or self.limits.soft_time_limit
        )
        for hook in self.hooks:
            hook.after_claim(run)
        context = ToolContext(
            task_id=run.task.task_id,
            attempt=run.task.attempts,
            payload=payload,
            progress=_ProgressWriter(
                store=self.store, run=run, hooks=self.hooks, limits=self.limits
            ),
            data_dir=self.data_dir,
        )
        try:
            result = spec.handler(context)
        except TaskNoLongerRunning:
            bound.info("task.abandoned")
            return RunOutcome.NOT_CLAIMED
        except self._soft_limit_errors:
            limit = f"{run.soft_time_limit:g}s " if run.soft_time_limit else ""
            failure = Failure(SoftTimeLimitExceeded.__name__, f"soft time limit {limit}exceeded")
            return self._fail(run, failure, bound)
        except Exception as exc:
            bound.error("task.tool_raised", exc_info=True)
            return self._fail(run, Failure(type(exc).__name__, str(exc)), bound)
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return self._fail(run, Failure("ResultNotSerializable", str(exc)), bound)
        if self.store.complete(run.task.task_id, result=result) is None:
            bound.warning("task.complete_skipped", reason="row left PROCESSING")
            return RunOutcome.NOT_CLAIMED
        for hook in self.hooks:
            hook.on_success(run, result)
        bound.info("task.completed", seconds=round(time.monotonic() - run.started, 6))
        return RunOutcome.COMPLETED

    def _fail(self, run: Run, failure: Failure, bound: Any) -> RunOutcome:
        stored = Failure(failure.error_code, failure.message[:4000])
        self.store.fail(
            run.task.task_id, error_code=stored.error_code, error_message=stored.message
        )
        for hook in self.hooks:
            hook.on_failure(run, stored)
        bound.info("task.failed", error_code=stored.error_code)
        return RunOutcome.FAILED


class _ProgressWriter:
    """The `progress(pct, message)` a tool calls; writes only when something visible changed."""

    def __init__(
        self,
        *,
        store: TaskStore,
        run: Run,
        hooks: tuple[ExecutorHook, ...],
        limits: ExecutorLimits,
    ) -> None:
        self._store = store
        self._run = run
        self._hooks = hooks
        self._min_interval = limits.progress_min_interval
        self._last_percent = 0
        self._last_message: str | None = "started"
        self._last_write = 0.0

    def __call__(self, percent: float, message: str | None = None) -> None:
        whole = max(0, min(100, int(percent)))
        for hook in self._hooks:
            hook.on_progress(self._run, whole, message)
        now = time.monotonic()
        percent_moved = whole != self._last_percent
        message_moved = message != self._last_message
        # A write per whole percent keeps histories identical across backends; message-only
        # changes are rate-limited so a chatty tool cannot flood the store.
        if not percent_moved and not (
            message_moved and now - self._last_write >= self._min_interval
        ):
            return
        task_id = self._run.task.task_id
        if not self._store.record_progress(task_id, progress=whole, message=message):
            raise TaskNoLongerRunning(task_id)
        self._last_percent, self._last_message, self._last_write = whole, message, now
