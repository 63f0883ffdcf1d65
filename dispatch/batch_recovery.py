"""Recovery of parallel jobs' batches: the task sweep's rules, applied to `task_batches`.

- a running batch whose lease expired lost its process: QUEUED again while its attempts last
  (the tool's retries plus TASK_LOST_RETRIES), else FAILED with `WORKER_LOST` (stopping its
  siblings if the tool fails fast), or CANCELLED if its job asked it to stop;
- a Celery batch due but not handed over (a retry after its backoff, a publish that failed), or
  handed over CELERY_REPUBLISH_SECONDS ago and still unclaimed, is published (again);
- a job whose batches all ended without anyone finalizing it (the process ending the last one
  died, or the sweep ended it) is handed to the task sweep as a lost attempt: its next attempt
  goes straight to the finalizer.

Thread batches are handed over by the pool's own sweep, as thread tasks are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from backends.base import BackendUnavailable, TaskBackend
from execution.batch_records import BatchRecord
from execution.dispatch_gate import ALL_TOOLS
from execution.executor import WORKER_LOST
from execution.status import BackendName, TaskStatus
from execution.store import TaskStore
from execution.tools.parallel import OnBatchFailure
from execution.tools.registry import ToolRegistry

log = structlog.get_logger(__name__)

BATCH = 200
"""Batches handled per step and round."""


@dataclass(frozen=True, slots=True)
class BatchSweepReport:
    """What one round did to batches and their jobs."""

    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    published: int = 0
    stalled: int = 0


class BatchRecovery:
    """One round of batch recovery at a time; safe to run in every process."""

    def __init__(
        self,
        *,
        store: TaskStore,
        registry: ToolRegistry,
        backends: Mapping[str, TaskBackend],
        lost_retries: int,
        republish_after: float,
        stalled_after: float,
        paused: Callable[[], frozenset[str]],
    ) -> None:
        self._store = store
        self._registry = registry
        self._backends = backends
        self._lost_retries = lost_retries
        self._republish_after = republish_after
        self._stalled_after = stalled_after
        self._paused = paused

    def sweep(self) -> BatchSweepReport:
        ended: list[TaskStatus | None] = [
            self._recover(batch) for batch in self._store.batches.lost(limit=BATCH)
        ]
        return BatchSweepReport(
            requeued=ended.count(TaskStatus.QUEUED),
            failed=ended.count(TaskStatus.FAILED),
            cancelled=ended.count(TaskStatus.CANCELLED),
            published=self._publish_waiting(),
            stalled=self._store.batches.expire_stalled(
                unchanged_for=self._stalled_after, limit=BATCH
            ),
        )

    def _recover(self, batch: BatchRecord) -> TaskStatus | None:
        batches = self._store.batches
        lost = f"attempt {batch.attempts} lost its worker ({batch.lease_owner}; lease expired)"
        key = (batch.task_id, batch.batch_no)
        if batch.cancel_requested_at is not None:
            stopped = batches.end(
                *key,
                attempt=batch.attempts,
                status=TaskStatus.CANCELLED,
                error_message=f"stopped: {lost}",
                lost=True,
            )
            return TaskStatus.CANCELLED if stopped else None
        job = self._store.get(batch.task_id)
        tool = self._registry.get(job.tool_id) if job is not None else None
        retries = tool.retry.max_retries if tool else 0
        allowed = batch.attempts_before_retry + 1 + self._lost_retries + retries
        if tool is None or batch.attempts >= allowed:
            fails_fast = tool is None or tool.on_batch_failure is not OnBatchFailure.PARTIAL
            stop = f"batch {batch.batch_no} failed: {WORKER_LOST}" if fails_fast else None
            failed = batches.end(
                *key,
                attempt=batch.attempts,
                status=TaskStatus.FAILED,
                error_code=WORKER_LOST,
                error_message=f"{lost}, and no attempts are left",
                stop_siblings=stop,
                lost=True,
            )
            if failed:
                log.warning("batch.worker_lost", task_id=batch.task_id, batch_no=batch.batch_no)
            return TaskStatus.FAILED if failed else None
        requeued = batches.retry_later(
            *key,
            attempt=batch.attempts,
            delay=0,
            error_code=WORKER_LOST,
            error_message=lost,
            lost=True,
        )
        if requeued:
            log.info("batch.recovered", task_id=batch.task_id, batch_no=batch.batch_no)
        return TaskStatus.QUEUED if requeued else None

    def _publish_waiting(self) -> int:
        celery = self._backends.get(BackendName.CELERY)
        paused = self._paused()
        if celery is None or ALL_TOOLS in paused:
            return 0
        published = 0
        waiting = self._store.batches.awaiting_hand_over(
            backend=BackendName.CELERY,
            unchanged_for=self._republish_after,
            limit=BATCH,
            except_tools=paused,
        )
        for batch, job in waiting:
            if not self._store.batches.mark_dispatched(
                batch.task_id, batch.batch_no, last_dispatched_at=batch.dispatched_at
            ):
                continue  # another process took this one
            try:
                celery.enqueue_batches(job, [batch])
            except BackendUnavailable as exc:
                self._store.batches.mark_undispatched(batch.task_id, batch.batch_no)
                log.warning("recovery.batch_handover_failed", reason=exc.reason)
                break  # the broker is down: the next round tries again
            published += 1
        return published
