"""Recovery: no task stays non-terminal with nobody working on it.

Every API process and every worker runs this sweep; they need not agree on anything, because
each step is a conditional write that only one of them can win (the store arbitrates):

- a running task whose lease expired lost its process (killed, OOM, a deploy that did not
  wait): it is QUEUED again on the backend the rollout gives it now, or FAILED with
  `WORKER_LOST` once its attempts are used up, or CANCELLED if a caller asked it to stop;
- a Celery task due but never handed over (a retry after its backoff, a publish that failed)
  is published;
- a Celery task published CELERY_REPUBLISH_SECONDS ago and still unclaimed is published again:
  the broker may have lost it (Redis restarted without persistence, `celery purge`). A
  duplicate message is harmless: the claim runs a task once;
- the batches of parallel jobs are recovered by the same rules (dispatch/batch_recovery.py);
- a Celery task whose tool the stored rollout no longer sends to Celery (a rollback made in
  another process, or a task routed by a process that had not heard of it yet) is moved to
  threads, as a worker receiving it would: with every worker down it still runs.

Nothing of a paused tool is handed over: a lost attempt of one is QUEUED again and held, and
its waiting tasks are neither published nor given to a pool until it is resumed.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace

import structlog

from backends.base import BackendUnavailable, TaskBackend
from dispatch.batch_recovery import BatchRecovery
from dispatch.dispatcher import reclaim_from_celery, route_task
from dispatch.rollout.watch import RolloutSource
from execution.dispatch_gate import ALL_TOOLS, held_message
from execution.executor import WORKER_LOST, attempts_allowed
from execution.metrics import Metrics
from execution.records import TaskRecord
from execution.status import BackendName, TaskStatus
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry

log = structlog.get_logger(__name__)

BATCH = 200
"""Tasks handled per step and round; a backlog larger than this takes several rounds."""

STALLED_AFTER = 10.0
"""Seconds a parallel job may sit with every batch ended before the sweep finalizes it: far
longer than the moment between the last batch's end and its process claiming the finalizer."""


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one round of the sweep did."""

    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    published: int = 0
    handed_back: int = 0
    stalled: int = 0
    """Parallel jobs nobody finalized, handed to the lost-attempt step of the next round."""

    def __bool__(self) -> bool:
        return any(
            (
                self.requeued,
                self.failed,
                self.cancelled,
                self.published,
                self.handed_back,
                self.stalled,
            )
        )


class Recovery:
    """Finds lost and unpublished tasks and hands them over again; safe to run everywhere."""

    def __init__(
        self,
        *,
        store: TaskStore,
        registry: ToolRegistry,
        backends: Mapping[str, TaskBackend],
        rollout: RolloutSource,
        lost_retries: int,
        republish_after: float,
        interval: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._store = store
        self._registry = registry
        self._backends = backends
        self._rollout = rollout
        self._lost_retries = lost_retries
        self._republish_after = republish_after
        self._interval = interval
        self._stopped = threading.Event()
        self._woken = threading.Event()
        self._thread: threading.Thread | None = None
        self._batches = BatchRecovery(
            store=store,
            registry=registry,
            backends=backends,
            lost_retries=lost_retries,
            republish_after=republish_after,
            stalled_after=max(STALLED_AFTER, 2 * interval),
            paused=lambda: self._rollout.current().paused,
        )

    def wake(self) -> None:
        """Sweep now rather than at the next interval (the rollout changed elsewhere)."""
        self._woken.set()

    def start(self) -> None:
        """Sweep every `interval` seconds in a background thread, starting now."""
        if self._thread is not None:
            return
        self._stopped.clear()
        self._thread = threading.Thread(target=self._loop, name="switchyard-recovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sweeping (the round under way finishes)."""
        self._stopped.set()
        self._woken.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def sweep(self) -> SweepReport:
        """One round: recover lost attempts, hand back what Celery should no longer run, then
        publish what Celery should have."""
        requeued = failed = cancelled = 0
        for task in self._store.lost(limit=BATCH):
            outcome = self._recover(task)
            requeued += outcome is TaskStatus.QUEUED
            failed += outcome is TaskStatus.FAILED
            cancelled += outcome is TaskStatus.CANCELLED
        handed_back = self._hand_back()
        published = self._publish_waiting()
        batches = self._batches.sweep()
        report = SweepReport(
            requeued + batches.requeued,
            failed + batches.failed,
            cancelled + batches.cancelled,
            published + batches.published,
            handed_back,
            batches.stalled,
        )
        actions = self._metrics.recoveries
        for action, count in (
            ("requeued", report.requeued),
            ("failed", report.failed),
            ("cancelled", report.cancelled),
            ("handed_back", report.handed_back),
        ):
            if count:
                actions.labels(action).inc(count)
        return report

    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                if report := self.sweep():
                    log.info(
                        "recovery.swept",
                        requeued=report.requeued,
                        failed=report.failed,
                        cancelled=report.cancelled,
                        published=report.published,
                        handed_back=report.handed_back,
                        stalled_jobs=report.stalled,
                    )
            except Exception as exc:  # a database blip: the next round tries again
                log.warning("recovery.sweep_failed", error=str(exc))
            self._woken.wait(self._interval)
            self._woken.clear()

    def _recover(self, task: TaskRecord) -> TaskStatus | None:
        lost = f"attempt {task.attempts} lost its worker ({task.lease_owner}; lease expired)"
        self._metrics.lease_expiries.labels(task.backend or "none").inc()
        if task.cancel_requested_at is not None:
            ended = self._store.end_lost(
                task.task_id,
                attempt=task.attempts,
                status=TaskStatus.CANCELLED,
                error_code=None,
                reason=f"cancelled: {lost}",
            )
            if ended:
                self._ended(task, "cancelled")
            return TaskStatus.CANCELLED if ended else None
        tool = self._registry.get(task.tool_id)
        if tool is None or task.attempts >= attempts_allowed(task, tool, self._lost_retries):
            ended = self._store.end_lost(
                task.task_id,
                attempt=task.attempts,
                status=TaskStatus.FAILED,
                error_code=WORKER_LOST,
                reason=f"{lost}, and no attempts are left",
            )
            if ended:
                self._ended(task, "failed")
                log.warning(
                    "task.worker_lost",
                    task_id=task.task_id,
                    tool_id=task.tool_id,
                    backend=task.backend,
                    attempt=task.attempts,
                )
            return TaskStatus.FAILED if ended else None
        policy = self._rollout.current()
        decision = route_task(
            policy, user_id=task.user_id, task_id=task.task_id, tool_id=task.tool_id
        )
        backend = self._backends.get(decision.backend)
        requeued = self._store.requeue_lost(
            task.task_id,
            attempt=task.attempts,
            backend=decision.backend,
            celery_task_id=backend.external_id(task.task_id) if backend else None,
            reason=f"requeued: {lost}",
        )
        if requeued is None:
            return None  # another sweeper, or a redelivered message, got there first
        log.info(
            "task.recovered",
            task_id=task.task_id,
            tool_id=task.tool_id,
            backend=decision.backend,
            attempt=task.attempts,
        )
        if policy.is_paused(task.tool_id):
            self._store.mark_undispatched(task.task_id, reason=held_message(task.tool_id))
        # Without that backend here (a worker has no thread pool) the row is enough: the
        # processes that run it pick QUEUED rows up.
        elif backend is not None:
            self._hand_over(backend, requeued)
        return TaskStatus.QUEUED

    def _ended(self, task: TaskRecord, outcome: str) -> None:
        """A lost attempt ended the task: it counts as the executor's outcomes do."""
        self._metrics.tasks.labels(task.backend or "none", task.tool_id, outcome).inc()

    def _hand_back(self) -> int:
        policy = self._rollout.current()
        if policy.version == 0:
            return 0  # no stored rollout read yet: 0 % here means nothing
        # The stored routing, whatever this process's USE_CELERY: an API process switched off
        # must not take other processes' Celery tasks.
        stored = replace(policy, use_celery=True)
        waiting = self._store.queued_tools(backend=BackendName.CELERY)
        return sum(
            reclaim_from_celery(
                self._store,
                self._backends,
                tool_id=tool_id,
                reason=f"the rollout (version {policy.version}) sends no {tool_id} task to celery",
                paused=policy.paused,
            )
            for tool_id in sorted(t for t in waiting if stored.share_for(t) == 0)
        )

    def _publish_waiting(self) -> int:
        celery = self._backends.get(BackendName.CELERY)
        paused = self._rollout.current().paused
        if celery is None or ALL_TOOLS in paused:
            return 0
        published = 0
        waiting = self._store.awaiting_dispatch(
            backend=BackendName.CELERY,
            republish_after=self._republish_after,
            limit=BATCH,
            except_tools=paused,
        )
        for task in waiting:
            action = "published" if task.dispatched_at is None else "republished"
            if task.dispatched_at is None:
                reason = "published to celery"
            else:
                reason = (
                    f"published again: no worker claimed it within {self._republish_after:g}s "
                    "(the broker may have lost it)"
                )
            turn = self._store.mark_dispatched(
                task.task_id,
                backend=BackendName.CELERY,
                last_dispatched_at=task.dispatched_at,
                celery_task_id=celery.external_id(task.task_id),
                reason=reason,
            )
            if turn is None:
                continue  # another process took this one
            if not self._hand_over(celery, turn):
                break  # the broker is down: the next round tries again
            self._metrics.recoveries.labels(action).inc()
            published += 1
        return published

    def _hand_over(self, backend: TaskBackend, task: TaskRecord) -> bool:
        try:
            backend.submit(task)
        except BackendUnavailable as exc:
            self._store.mark_undispatched(
                task.task_id, reason=f"waiting for the {backend.name} backend: {exc.reason}"
            )
            log.warning(
                "recovery.handover_failed",
                task_id=task.task_id,
                backend=backend.name,
                reason=exc.reason,
            )
            return False
        return True
