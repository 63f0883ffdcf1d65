"""TaskExecutor: runs one task, whichever backend invoked it, and writes every status change."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.exc import SQLAlchemyError

from execution.dispatch_gate import DispatchGate, held_message, is_held
from execution.hooks import ExecutorHook, Failure, Run, storable_text, unstorable_result
from execution.leases import LeaseKeeper, TaskCancelled, TaskNoLongerRunning
from execution.models import utcnow
from execution.parallel_runs import WAITING, JobFailed, ParallelRuns
from execution.records import TaskRecord
from execution.status import TaskStatus
from execution.store import TaskStore
from execution.time_limits import SoftTimeLimitExceeded
from execution.tools.registry import (
    InvalidPayload,
    Tool,
    ToolContext,
    ToolRegistry,
    UnknownTool,
)

log = structlog.get_logger(__name__)

_HOST = socket.gethostname()
WORKER_LOST = "WORKER_LOST"
TIME_LIMIT_EXCEEDED = "TIME_LIMIT_EXCEEDED"


class RunOutcome(StrEnum):
    """What one call of `TaskExecutor.run` did."""

    NOT_CLAIMED = "not_claimed"
    """Another copy had it, it ended or waits for its backoff, or it does not exist: nothing ran."""
    COMPLETED = "completed"
    """The tool returned and the result was stored."""
    FAILED = "failed"
    """The tool raised, or could not start; the reason was stored."""
    RETRYING = "retrying"
    """The tool raised and the task is QUEUED again, after its backoff."""
    CANCELLED = "cancelled"
    """A caller cancelled the task while it ran; the tool stopped."""
    ABANDONED = "abandoned"
    """The attempt lost the task while it ran (time limit, cancel, a newer attempt): nothing
    it did afterwards was stored."""
    WAITING = "waiting"
    """A parallel job handed its batches over: the last batch to end finalizes it."""
    HELD = "held"
    """Its tool's dispatch is paused: nothing ran, the task waits QUEUED, never handed over,
    for the resume (a Celery message is consumed as a no-op, a pool slot freed)."""


@dataclass(frozen=True, slots=True)
class ExecutorLimits:
    """Limits that apply when the tool does not set its own, and how attempts are leased."""

    soft_time_limit: float | None = None
    time_limit: float | None = None
    """Hard limit: past it the attempt ends TIME_LIMIT_EXCEEDED (or is retried by policy)."""
    soft_limit_errors: tuple[type[BaseException], ...] = ()
    """What a backend raises inside a tool when the soft limit passes (Celery's own exception);
    recorded exactly as the executor's own, so rows match across backends."""
    progress_min_interval: float = 0.5
    """Seconds between two writes that change only the message, not the whole percent."""
    lease_seconds: float = 30.0
    """How long a claim holds without a heartbeat; past it the attempt counts as lost."""
    heartbeat_seconds: float = 5.0
    lost_retries: int = 2
    """Attempts a task may lose to dying processes beyond its tool's own retries."""


def attempts_allowed(task: TaskRecord, tool: Tool, lost_retries: int) -> int:
    """The most attempts this round of the task may make: once, plus the tool's retries, plus
    what lost attempts may add."""
    return task.attempts_before_retry + 1 + tool.retry.max_retries + lost_retries


def _context(task: TaskRecord) -> dict[str, Any]:
    """What every line about one attempt carries."""
    return {
        "task_id": task.task_id,
        "tool_id": task.tool_id,
        "backend": task.backend,
        "attempt": task.attempts,
    }


def _bound(task: TaskRecord) -> Any:
    """The log with what every line about one attempt carries."""
    return log.bind(**_context(task))


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
        gate: DispatchGate | None = None,
    ) -> None:
        self.store = store
        self.gate = gate
        """Whose tasks must not start now (paused); backends' sweeps ask it too."""
        self.registry = registry
        self.data_dir = data_dir
        self.limits = limits or ExecutorLimits()
        self.leases = LeaseKeeper(
            store,
            lease_seconds=self.limits.lease_seconds,
            heartbeat_seconds=self.limits.heartbeat_seconds,
            on_time_limit=self._time_out,
            on_cancel=self._cancelled,
        )
        self.hooks = (self.leases, *hooks)
        self.soft_limit_errors: tuple[type[BaseException], ...] = (
            SoftTimeLimitExceeded,
            *self.limits.soft_limit_errors,
        )

        self.parallel = ParallelRuns(self)
        """Runs parallel jobs' batches and finalizers; a backend sets its `hand_over`."""

    @staticmethod
    def lease_owner() -> str:
        # Per claim, not per executor: the process may have forked since it was built.
        return f"{_HOST}:{os.getpid()}"

    def run(self, task_id: str, *, recorded_for: str | None = None) -> RunOutcome:
        """Run the task once if it is QUEUED and due, or its last attempt was lost; a second
        copy of the same task does nothing. With `recorded_for`, only if the row still names
        that backend: a copy delivered to a backend the task has since left does nothing.

        Every log line of the call, the tool's and the backend's own included, carries the
        task_id, and once claimed its tool_id, backend and attempt (structlog contextvars,
        unbound when the call returns: a pool thread runs many tasks)."""
        with structlog.contextvars.bound_contextvars(task_id=task_id):
            return self._claim_and_run(task_id, recorded_for)

    def _claim_and_run(self, task_id: str, recorded_for: str | None) -> RunOutcome:
        for hook in self.hooks:
            hook.before_claim(task_id)
        held = self.gate.held_tools() if self.gate is not None else frozenset()
        if held and self._hold(task_id, held, recorded_for):
            return RunOutcome.HELD
        record = self.store.claim(
            task_id,
            owner=self.lease_owner(),
            lease_seconds=self.limits.lease_seconds,
            backend=recorded_for,
        )
        if record is None:
            current = self.store.get(task_id)
            log.info(
                "task.not_claimed",
                task_id=task_id,
                status=current.status if current else None,
                reason="missing" if current is None else "not claimable",
            )
            return RunOutcome.NOT_CLAIMED
        return self.run_claimed(record)

    def run_claimed(self, record: TaskRecord) -> RunOutcome:
        """Run an attempt this process has claimed already (a task, or a parallel job's
        finalizer)."""
        bound = _bound(record)
        # DEBUG: the claim is in task_events already, and on the hot path an INFO line costs
        # about as much as a status write; the task's INFO line is the one saying how it ended.
        bound.debug("task.claimed")
        run = Run(task=record, tool=None, started=time.monotonic(), soft_time_limit=None)
        with structlog.contextvars.bound_contextvars(**_context(record)):
            return self._attempt(run, bound)

    def run_batch(self, task_id: str, batch_no: int, *, recorded_for: str | None = None) -> None:
        """Run one batch of a parallel job once (see `run`), and its finalizer if that batch
        was the last to end. With `recorded_for`, only while the job names that backend."""
        self.parallel.run_batch(task_id, batch_no, backend=recorded_for)

    def _hold(self, task_id: str, held: frozenset[str], recorded_for: str | None) -> bool:
        """Whether the task belongs to a held tool and must not be claimed: a copy handed over
        before the pause took effect. A QUEUED one is marked never handed over, so the resume
        (or a sweep) hands it over again; a lost attempt is left to the recovery sweep, which
        requeues and holds it. Only asked while something is held: one read of the row."""
        current = self.store.get(task_id)
        if current is None or not is_held(held, current.tool_id):
            return False
        now = utcnow()
        if current.status is TaskStatus.QUEUED:
            moved = recorded_for is not None and current.backend != recorded_for
            if moved or (current.run_after is not None and current.run_after > now):
                return False  # the claim refuses this copy anyway (another backend, not due)
            self.store.mark_undispatched(task_id, reason=held_message(current.tool_id))
        elif not (
            current.status is TaskStatus.PROCESSING
            and current.lease_expires_at is not None
            and current.lease_expires_at < now
        ):
            return False  # ended, or running: the claim refuses it as usual
        log.info("task.held", task_id=task_id, tool_id=current.tool_id, status=current.status)
        return True

    def _attempt(self, run: Run, bound: Any) -> RunOutcome:
        try:
            return self._run_claimed(run, bound)
        except Exception as exc:  # the store or a hook failed mid-run: record it if we still can
            bound.exception("task.executor_error")
            # A database error's text quotes SQL and parameters: the log has it, the row not.
            detail = "database error (see the log)" if isinstance(exc, SQLAlchemyError) else exc
            failure = Failure("ExecutorError", f"{type(exc).__name__}: {detail}")
            return self._fail(run, failure, bound)
        finally:
            for hook in self.hooks:
                hook.on_finish(run)

    def _run_claimed(self, run: Run, bound: Any) -> RunOutcome:
        try:
            spec = self.registry[run.task.tool_id]
            payload = spec.validate_payload(run.task.payload)
        except (UnknownTool, InvalidPayload) as exc:
            return self._fail(run, Failure(type(exc).__name__, str(exc)), bound)
        run = replace(
            run,
            tool=spec,
            soft_time_limit=spec.soft_time_limit or self.limits.soft_time_limit,
            time_limit=spec.time_limit or self.limits.time_limit,
        )
        allowed = attempts_allowed(run.task, spec, self.limits.lost_retries)
        if run.attempt > allowed:
            message = f"attempt {run.attempt - 1} was lost with its worker and no attempts are left"
            return self._fail(run, Failure(WORKER_LOST, message), bound)
        for hook in self.hooks:
            hook.after_claim(run)
        context = ToolContext(
            task_id=run.task.task_id,
            attempt=run.attempt,
            payload=payload,
            progress=_ProgressWriter(
                store=self.store, run=run, hooks=self.hooks, limits=self.limits
            ),
            data_dir=self.data_dir,
            stop_requested=run.stop,
        )
        try:
            if spec.parallel is not None:
                result = self.parallel.step(run, spec.parallel, context)
                if result is WAITING:
                    bound.info("job.waiting_for_batches")
                    return RunOutcome.WAITING
            else:
                result = spec.handler(context)
        except JobFailed as exc:
            return self._fail(run, Failure(JobFailed.error_code, str(exc)), bound)
        except TaskNoLongerRunning:
            bound.info("task.abandoned")
            return RunOutcome.ABANDONED
        except TaskCancelled:
            return self._cancel(run, bound)
        except self.soft_limit_errors:
            if self._cancel_requested(run):  # Celery interrupts a cancelled task this way too
                return self._cancel(run, bound)
            limit = f"{run.soft_time_limit:g}s " if run.soft_time_limit else ""
            failure = Failure(SoftTimeLimitExceeded.__name__, f"soft time limit {limit}exceeded")
            return self._end_failed(run, failure, bound, retryable=True)
        except Exception as exc:
            retryable = isinstance(exc, spec.retry.retry_on)
            bound.warning("task.tool_raised", error=f"{type(exc).__name__}: {exc}")
            return self._end_failed(
                run, Failure(type(exc).__name__, str(exc)), bound, retryable=retryable
            )
        if (unstorable := unstorable_result(result)) is not None:
            return self._fail(run, unstorable, bound)
        if not self.store.complete(run.task.task_id, attempt=run.attempt, result=result):
            bound.warning("task.complete_skipped", reason="the attempt no longer holds the task")
            return RunOutcome.ABANDONED
        for hook in self.hooks:
            hook.on_success(run, result)
        bound.info("task.completed", seconds=round(time.monotonic() - run.started, 6))
        return RunOutcome.COMPLETED

    def _end_failed(self, run: Run, failure: Failure, bound: Any, *, retryable: bool) -> RunOutcome:
        """Retry the task if its tool's policy allows, else store the failure."""
        assert run.tool is not None
        policy = run.tool.retry
        retry = run.attempt - run.task.attempts_before_retry  # the retry this would be
        if not retryable or retry > policy.max_retries:
            return self._fail(run, failure, bound)
        delay = policy.delay(retry)
        stored = Failure(failure.error_code, storable_text(failure.message))
        message = (
            f"retry {retry} of {policy.max_retries} in {delay:.1f}s after "
            f"{stored.error_code}: {stored.message}"
        )[:4000]
        requeued = self.store.retry_later(
            run.task.task_id,
            attempt=run.attempt,
            delay=delay,
            error_code=stored.error_code,
            error_message=stored.message,
            message=message,
        )
        if requeued is None:
            return RunOutcome.ABANDONED
        for hook in self.hooks:
            hook.on_retry(run, stored, delay)
        bound.info("task.retrying", error_code=stored.error_code, delay=round(delay, 3))
        return RunOutcome.RETRYING

    def _fail(self, run: Run, failure: Failure, bound: Any) -> RunOutcome:
        stored = Failure(failure.error_code, storable_text(failure.message))
        record = self.store.fail(
            run.task.task_id,
            attempt=run.attempt,
            error_code=stored.error_code,
            error_message=stored.message,
        )
        if record is None:
            bound.info("task.fail_skipped", reason="the attempt no longer holds the task")
            return RunOutcome.ABANDONED
        for hook in self.hooks:
            hook.on_failure(run, stored)
        bound.info("task.failed", error_code=stored.error_code)
        return RunOutcome.FAILED

    def _cancel(self, run: Run, bound: Any) -> RunOutcome:
        reason = "cancelled while running"
        if self.store.cancel_running(run.task.task_id, attempt=run.attempt, reason=reason) is None:
            return RunOutcome.ABANDONED
        for hook in self.hooks:
            hook.on_cancelled(run)
        bound.info("task.cancelled")
        return RunOutcome.CANCELLED

    def _cancel_requested(self, run: Run) -> bool:
        current = self.store.get(run.task.task_id)
        return current is not None and current.cancel_requested_at is not None

    # -- called by the lease keeper, from its thread ------------------------------------------

    def _time_out(self, run: Run) -> None:
        if run.batch is not None:
            limit = f"{run.time_limit:g}s" if run.time_limit else ""
            failure = Failure(TIME_LIMIT_EXCEEDED, f"hard time limit {limit} exceeded")
            self.parallel.failed(run, failure, retryable=True)
            return
        bound = _bound(run.task)
        limit = f"{run.time_limit:g}s" if run.time_limit else ""
        failure = Failure(TIME_LIMIT_EXCEEDED, f"hard time limit {limit} exceeded")
        with structlog.contextvars.bound_contextvars(**_context(run.task)):
            self._end_failed(run, failure, bound, retryable=True)

    def _cancelled(self, run: Run) -> None:
        if run.batch is not None:
            self.parallel.cancelled(run)
            return
        with structlog.contextvars.bound_contextvars(**_context(run.task)):
            self._cancel(run, _bound(run.task))


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
        stored_message = storable_text(message) if message is not None else None
        record = self._store.record_progress(
            task_id, attempt=self._run.attempt, progress=whole, message=stored_message
        )
        if record is None:
            raise TaskNoLongerRunning(task_id)
        if record.cancel_requested_at is not None:
            raise TaskCancelled(task_id)
        self._last_percent, self._last_message, self._last_write = whole, message, now
