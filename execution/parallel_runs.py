"""How the executor runs a parallel job: plan, hand the batches over, run each, finalize once.

The job's own attempt plans its batches, writes them with the job detached from its process
(one transaction), hands them to the backend that ran it, and returns: no thread waits for the
batches. Each batch is claimed, leased, retried and fenced like a task. Whoever ends a batch
then tries to claim the finalizer; the database lets exactly one try win, once no batch is
left unfinished, and that process runs `finalize` as an attempt of the job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from execution.batch_records import UNFINISHED, BatchRecord
from execution.dispatch_gate import is_held
from execution.hooks import Failure, Run, storable_text, unstorable_result
from execution.leases import TaskCancelled, TaskNoLongerRunning
from execution.records import TaskRecord
from execution.status import TaskStatus
from execution.time_limits import SoftTimeLimitExceeded
from execution.tools.parallel import (
    BatchContext,
    BatchOutcome,
    OnBatchFailure,
    ParallelJob,
    check_plan,
)
from execution.tools.registry import InvalidPayload, Tool, ToolContext, UnknownTool

if TYPE_CHECKING:
    from execution.executor import TaskExecutor

log = structlog.get_logger(__name__)

HandOver = Callable[[TaskRecord, Sequence[BatchRecord]], None]
"""Puts a job's batches where its backend's workers find them; set by the backend that runs
the executor (its pool, or the Celery worker). Raising leaves them to the sweeps."""


class Waiting:
    """What a job's step returns when its batches are handed over: nothing to store yet."""


WAITING = Waiting()


class JobFailed(Exception):
    """A batch failed for good and the job fails fast: stored as the job's failure, never
    retried (its batches were, each by the tool's policy)."""

    error_code = "BATCH_FAILED"


class BatchCancelled(Exception):
    """The job was cancelled, or failed fast, while this batch ran."""


class ParallelRuns:
    """The parallel-job part of one TaskExecutor."""

    def __init__(self, executor: TaskExecutor) -> None:
        self._executor = executor
        self.store = executor.store
        self.leases = executor.leases
        self.hand_over: HandOver | None = None

    # -- the job's attempt ---------------------------------------------------------------------

    def step(self, run: Run, job: ParallelJob, ctx: ToolContext) -> Any:
        """The job's attempt: plan and hand over (WAITING), hand over what is left (WAITING),
        or, with every batch ended, finalize and return the job's result."""
        assert run.tool is not None
        task_id = run.task.task_id
        batches = self.store.batches.of(task_id)
        if not batches:
            inputs = check_plan(run.tool.tool_id, job.plan(ctx))
            if not inputs:
                return job.finalize(ctx, [])
            detached = self.store.batches.fan_out(
                task_id,
                attempt=run.attempt,
                inputs=inputs,
                message=f"planned {len(inputs)} batches",
            )
            if detached is None:
                raise TaskNoLongerRunning(task_id)
            self._give(detached, self.store.batches.of(task_id))
            return WAITING
        left = [batch for batch in batches if batch.status in UNFINISHED]
        if left:
            message = f"waiting for {len(left)} of {len(batches)} batches"
            detached = self.store.batches.fan_out(
                task_id, attempt=run.attempt, inputs=None, message=message
            )
            if detached is None:
                raise TaskNoLongerRunning(task_id)
            self._give(detached, [b for b in left if b.status is TaskStatus.QUEUED])
            return WAITING
        if run.task.cancel_requested_at is not None:
            raise TaskCancelled(task_id)
        outcomes = [
            BatchOutcome(b.batch_no, b.input, b.result, b.error_code, b.error_message)
            if b.status is not TaskStatus.COMPLETED
            else BatchOutcome(b.batch_no, b.input, b.result)
            for b in batches
        ]
        failed = [b for b in batches if b.status is not TaskStatus.COMPLETED]
        if failed and run.tool.on_batch_failure is not OnBatchFailure.PARTIAL:
            # The batch that failed, not a sibling it stopped.
            first = next((b for b in failed if b.status is TaskStatus.FAILED), failed[0])
            raise JobFailed(
                f"batch {first.batch_no} of {len(batches)} ended {first.status}: "
                f"{first.error_code}: {first.error_message}"
            )
        return job.finalize(ctx, outcomes)

    def _give(self, job: TaskRecord, batches: Sequence[BatchRecord]) -> None:
        """Hand the batches to the job's backend: each one this process takes the turn for
        (a sweeper elsewhere may have it); what is refused, the sweeps hand over later."""
        if self.hand_over is None or not batches:
            return
        mine = [
            batch
            for batch in batches
            if self.store.batches.mark_dispatched(
                batch.task_id, batch.batch_no, last_dispatched_at=batch.dispatched_at
            )
        ]
        try:
            self.hand_over(job, mine)
        except Exception as exc:  # the broker is down: the sweeps publish them again
            log.warning("job.hand_over_failed", batches=len(mine), error=str(exc))
            for batch in mine:
                self.store.batches.mark_undispatched(batch.task_id, batch.batch_no)

    # -- one batch -----------------------------------------------------------------------------

    def run_batch(self, task_id: str, batch_no: int, *, backend: str | None) -> TaskStatus | None:
        """Run the batch once if it is QUEUED and due, or its last attempt was lost; then, if
        it was the last, run the finalizer. Returns how the batch's attempt left it (None: it
        did not run)."""
        executor = self._executor
        if self._held(task_id, batch_no):
            return None
        with structlog.contextvars.bound_contextvars(task_id=task_id, batch_no=batch_no):
            batch = self.store.batches.claim(
                task_id,
                batch_no,
                owner=executor.lease_owner(),
                lease_seconds=executor.limits.lease_seconds,
                backend=backend,
            )
            ended = self._attempt(batch) if batch is not None else None
        self.try_finalize(task_id)
        return ended

    def _held(self, task_id: str, batch_no: int) -> bool:
        """Whether the job's tool is paused: a waiting batch handed over before the pause is
        then marked never handed over, for the sweeps to hand over after the resume. Only
        asked while something is paused: one read of the job."""
        gate = self._executor.gate
        held = gate.held_tools() if gate is not None else frozenset()
        if not held:
            return False
        job = self.store.get(task_id)
        if job is None or not is_held(held, job.tool_id):
            return False
        self.store.batches.mark_undispatched(task_id, batch_no)
        log.info("batch.held", task_id=task_id, batch_no=batch_no, tool_id=job.tool_id)
        return True

    def _attempt(self, batch: BatchRecord) -> TaskStatus | None:
        executor = self._executor
        job_row = self.store.get(batch.task_id)
        if job_row is None:
            return None
        try:
            tool = executor.registry[job_row.tool_id]
            payload = tool.validate_payload(job_row.payload)
        except (UnknownTool, InvalidPayload) as exc:
            return self._fail(batch, job_row, None, Failure(type(exc).__name__, str(exc)))
        run = Run(
            task=job_row,
            tool=tool,
            started=time.monotonic(),
            soft_time_limit=tool.soft_time_limit or executor.limits.soft_time_limit,
            time_limit=tool.time_limit or executor.limits.time_limit,
            batch=batch,
        )
        bound = log.bind(tool_id=tool.tool_id, backend=job_row.backend, attempt=batch.attempts)
        executor.leases.after_claim(run)
        try:
            return self._run(run, tool, payload, bound)
        finally:
            executor.leases.on_finish(run)

    def _run(self, run: Run, tool: Tool, payload: Any, bound: Any) -> TaskStatus | None:
        assert run.batch is not None
        assert tool.parallel is not None
        batch, executor = run.batch, self._executor
        ctx = BatchContext(
            task_id=batch.task_id,
            batch_no=batch.batch_no,
            attempt=batch.attempts,
            payload=payload,
            batch=batch.input,
            progress=_BatchProgress(self, run),
            data_dir=executor.data_dir,
            stop_requested=run.stop,
        )
        try:
            result = tool.parallel.run_batch(ctx)
        except TaskNoLongerRunning:
            bound.info("batch.abandoned")
            return None
        except BatchCancelled:
            return self.cancelled(run)
        except executor.soft_limit_errors:
            if self.stop_requested(run):
                return self.cancelled(run)
            limit = f"{run.soft_time_limit:g}s " if run.soft_time_limit else ""
            failure = Failure(SoftTimeLimitExceeded.__name__, f"soft time limit {limit}exceeded")
            return self.failed(run, failure, retryable=True)
        except Exception as exc:
            bound.warning("batch.raised", error=f"{type(exc).__name__}: {exc}")
            failure = Failure(type(exc).__name__, str(exc))
            return self.failed(run, failure, retryable=isinstance(exc, tool.retry.retry_on))
        if (unstorable := unstorable_result(result)) is not None:
            return self._fail(batch, run.task, tool, unstorable)
        ended = self.store.batches.end(
            batch.task_id,
            batch.batch_no,
            attempt=batch.attempts,
            status=TaskStatus.COMPLETED,
            result=result,
        )
        if ended is None:
            bound.info("batch.complete_skipped", reason="the attempt no longer holds the batch")
            return None
        bound.info("batch.completed", seconds=round(time.monotonic() - run.started, 6))
        self._count(run.task, "completed")
        return TaskStatus.COMPLETED

    def failed(self, run: Run, failure: Failure, *, retryable: bool) -> TaskStatus | None:
        """Retry the batch by its tool's policy, else end it FAILED (stopping its siblings if
        the tool fails fast). Also what the lease keeper calls past a hard time limit."""
        assert run.batch is not None
        assert run.tool is not None
        batch, policy = run.batch, run.tool.retry
        retry = batch.attempts - batch.attempts_before_retry  # the retry this would be
        if retryable and retry <= policy.max_retries:
            delay = policy.delay(retry)
            again = self.store.batches.retry_later(
                batch.task_id,
                batch.batch_no,
                attempt=batch.attempts,
                delay=delay,
                error_code=failure.error_code,
                error_message=storable_text(failure.message),
            )
            if again is None:
                return None
            log.info("batch.retrying", error_code=failure.error_code, delay=round(delay, 3))
            self._count(run.task, "retrying")
            if delay <= 0:  # due now: hand it over again at once, not at the next sweep
                self._give(run.task, [again])
            return TaskStatus.QUEUED
        return self._fail(batch, run.task, run.tool, failure)

    def _fail(
        self, batch: BatchRecord, job: TaskRecord, tool: Tool | None, failure: Failure
    ) -> TaskStatus | None:
        fails_fast = tool is None or tool.on_batch_failure is not OnBatchFailure.PARTIAL
        stop = f"batch {batch.batch_no} failed: {failure.error_code}" if fails_fast else None
        ended = self.store.batches.end(
            batch.task_id,
            batch.batch_no,
            attempt=batch.attempts,
            status=TaskStatus.FAILED,
            error_code=failure.error_code,
            error_message=storable_text(failure.message),
            stop_siblings=stop,
        )
        if ended is None:
            return None
        log.warning("batch.failed", error_code=failure.error_code, tool_id=job.tool_id)
        self._count(job, "failed")
        return TaskStatus.FAILED

    def cancelled(self, run: Run) -> TaskStatus | None:
        """The job asked the batch to stop: it ends CANCELLED."""
        assert run.batch is not None
        ended = self.store.batches.end(
            run.task.task_id,
            run.batch.batch_no,
            attempt=run.attempt,
            status=TaskStatus.CANCELLED,
            error_message="stopped: its job was cancelled or failed",
        )
        if ended is None:
            return None
        self._count(run.task, "cancelled")
        return TaskStatus.CANCELLED

    def _count(self, job: TaskRecord, outcome: str) -> None:
        for hook in self._executor.hooks:
            hook.on_batch_end(job, outcome)

    def stop_requested(self, run: Run) -> bool:
        assert run.batch is not None
        current = self.store.batches.get(run.task.task_id, run.batch.batch_no)
        return current is not None and current.cancel_requested_at is not None

    # -- the finalizer -------------------------------------------------------------------------

    def try_finalize(self, task_id: str) -> None:
        """Run the job's finalizer here if this process wins the claim for it."""
        executor = self._executor
        job = self.store.batches.claim_finalize(
            task_id, owner=executor.lease_owner(), lease_seconds=executor.limits.lease_seconds
        )
        if job is not None:
            executor.run_claimed(job)


class _BatchProgress:
    """The `progress(pct, message)` of a batch: its row's percent, fenced on its attempt."""

    def __init__(self, runs: ParallelRuns, run: Run) -> None:
        self._runs = runs
        self._run = run
        self._last = 0

    def __call__(self, percent: float, message: str | None = None) -> None:
        run = self._run
        assert run.batch is not None
        whole = max(0, min(100, int(percent)))
        self._runs.leases.on_progress(run, whole, message)  # raises once the lease is lost
        if run.stop.is_set():  # asked to stop: cancelled, or past the soft time limit
            if self._runs.stop_requested(run):
                raise BatchCancelled(run.task.task_id)
            raise SoftTimeLimitExceeded()
        if whole == self._last:
            return
        batch = run.batch
        record = self._runs.store.batches.record_progress(
            batch.task_id, batch.batch_no, attempt=batch.attempts, progress=whole
        )
        if record is None:
            raise TaskNoLongerRunning(batch.task_id)
        if record.cancel_requested_at is not None:
            raise BatchCancelled(batch.task_id)
        self._last = whole
