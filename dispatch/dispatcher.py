"""The dispatcher: validates a new task, routes it, records it, then hands it to its backend."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError

from backends.base import BackendFull, BackendUnavailable, TaskBackend
from dispatch.rollout.policy import RolloutPolicy, RoutingDecision, Stickiness, route
from dispatch.rollout.watch import RolloutSource
from dispatch.settings import BrokerDown
from execution.dispatch_gate import held_message, is_held
from execution.metrics import Metrics
from execution.records import TaskRecord
from execution.status import BackendName, TaskStatus
from execution.store import QueuedTask, TaskStore
from execution.tools.registry import InvalidPayload, Tool, ToolRegistry, UnknownTool

log = structlog.get_logger(__name__)

RELEASE_LIMIT = 5_000
"""Held tasks one resume hands over at once; the sweeps take any beyond it."""

REJECTED = "REJECTED"
"""The error_code of a task its backend refused after its row was written (it ends CANCELLED)."""


@dataclass(frozen=True, slots=True)
class NewTask:
    """A request to run a tool."""

    tool_id: str
    payload: Any
    user_id: str
    priority: int | None = None
    idempotency_key: str | None = None
    """The same key with the same request returns the task it created; see `submit_once`."""


class TaskRejected(BackendUnavailable):
    """The task's row was written but its backend refused it; the row says so (CANCELLED)."""

    def __init__(self, task_id: str, cause: BackendUnavailable) -> None:
        super().__init__(cause.reason, retry_after=cause.retry_after)
        self.task_id = task_id


class IdempotencyConflict(ValueError):
    """The Idempotency-Key was used before for a different request."""


class PriorityOutOfRange(ValueError):
    """A task's priority is outside 0-9."""


@dataclass(frozen=True, slots=True)
class ItemProblem:
    """Why one item of a batch cannot be created."""

    index: int
    field: str
    """tool_id, payload or priority"""
    reason: str


class BatchInvalid(ValueError):
    """Items of a batch do not fit; none of the batch was created."""

    def __init__(self, problems: Sequence[ItemProblem]) -> None:
        self.problems = list(problems)
        shown = "; ".join(f"item {p.index}: {p.reason}" for p in self.problems[:3])
        more = len(self.problems) - 3
        super().__init__(
            f"invalid batch, nothing created: {shown}" + (f" (and {more} more)" if more > 0 else "")
        )


def _as_json(*values: Any) -> str:
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


def route_task(
    policy: RolloutPolicy, *, user_id: str, task_id: str, tool_id: str
) -> RoutingDecision:
    """Where `policy` sends this task: its bucket is computed from its id, or from its user's
    under user stickiness."""
    key = user_id if policy.stickiness is Stickiness.USER_ID else task_id
    return route(policy, key, tool_id)


def reclaim_from_celery(
    store: TaskStore,
    backends: Mapping[str, TaskBackend],
    *,
    tool_id: str | None,
    reason: str,
    paused: frozenset[str] = frozenset(),
) -> int:
    """Move the tasks QUEUED on Celery (of `tool_id`, or all) to threads, and give them to the
    thread pool if this process has one; how many moved. Where the pool is full or absent (a
    worker), the pools' own sweeps take them from the rows; those of a `paused` tool wait for
    the resume."""
    moved = store.move_queued(
        from_backend=BackendName.CELERY,
        to_backend=BackendName.THREAD,
        tool_id=tool_id,
        reason=reason,
    )
    threads = backends.get(BackendName.THREAD)
    if threads is not None:
        for record in moved:
            if is_held(paused, record.tool_id):
                continue
            try:
                threads.submit(record)
            except BackendUnavailable:
                break
    return len(moved)


class Dispatcher:
    """Picks the backend for each new task; knows backends only through `TaskBackend`."""

    def __init__(
        self,
        *,
        store: TaskStore,
        registry: ToolRegistry,
        backends: Mapping[str, TaskBackend],
        rollout: RolloutSource,
        broker_down: BrokerDown = BrokerDown.REJECT,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.registry = registry
        self.backends = backends
        self.rollout = rollout
        self.broker_down = broker_down

    def submit(self, request: NewTask) -> TaskRecord:
        """Create the task and hand it to its backend; raise if tool, payload or backend refuse."""
        return self.submit_once(request)[0]

    def submit_once(self, request: NewTask) -> tuple[TaskRecord, bool]:
        """`submit`, and whether the task existed already under the request's idempotency key
        (then it is returned as it is now, and nothing new is created)."""
        spec, payload, priority = self._checked(request)
        if request.idempotency_key is not None:
            existing = self._replay(request, payload, priority)
            if existing is not None:
                return existing, True
        policy = self.rollout.current()
        row, backend = self._routed(policy, request, spec, payload, priority)
        if row.held is None:
            backend.check_capacity()
        try:
            (queued,) = self.store.create_queued_many([row])
        except IntegrityError:
            # The same key raced us in another request: it won, and its task is the answer.
            existing = self._replay(request, payload, priority)
            if existing is None:
                raise
            return existing, True
        # Handed over only now, after the QUEUED row is committed: a worker that picks the
        # task up at once always finds it.
        queued = self._dispatch_new(policy, backend, queued)
        if self.metrics is not None:
            reason = policy.reason_for(spec.tool_id)
            self.metrics.dispatch.labels(row.backend, reason).inc()
        # DEBUG: the row and its QUEUED event record the routing; a task's one INFO line is the
        # executor's, saying how it ended (an INFO line costs about as much as a status write).
        log.debug(
            "task.dispatched",
            task_id=row.task_id,
            tool_id=spec.tool_id,
            backend=row.backend,
            bucket=row.rollout_bucket,
            percentage=row.rollout_percentage,
        )
        return queued, False

    def submit_many(self, requests: Sequence[NewTask]) -> list[TaskRecord]:
        """Create every task in one transaction, each routed on its own, then hand each to its
        backend; the rows in request order.

        All or nothing up to the commit: BatchInvalid (every bad item, by index) if any item
        names an unknown tool or carries a payload or priority that does not fit;
        BackendUnavailable if a backend could not take its share (its queue is full, a broker
        that just failed while CELERY_UNAVAILABLE=reject) or does not run here. Then each
        hand-over is a single submit's: a task its backend refuses is returned as its row says
        (CANCELLED REJECTED, or kept QUEUED under CELERY_UNAVAILABLE=accept or threads), the
        others are unaffected. Items carry no idempotency key.
        """
        checked: list[tuple[Tool, Any, int]] = []
        problems: list[ItemProblem] = []
        for index, request in enumerate(requests):
            if request.idempotency_key is not None:
                raise ValueError("a batch item cannot carry an idempotency key")
            try:
                checked.append(self._checked(request))
            except UnknownTool as exc:
                problems.append(ItemProblem(index, "tool_id", str(exc)))
            except (InvalidPayload, PriorityOutOfRange) as exc:
                field = "payload" if isinstance(exc, InvalidPayload) else "priority"
                problems.append(ItemProblem(index, field, str(exc)))
        if problems:
            raise BatchInvalid(problems)
        policy = self.rollout.current()
        rows: list[QueuedTask] = []
        backends: list[TaskBackend] = []
        for request, (spec, payload, priority) in zip(requests, checked, strict=True):
            row, backend = self._routed(policy, request, spec, payload, priority)
            rows.append(row)
            backends.append(backend)
        self._check_shares(rows)
        created = self.store.create_queued_many(rows)
        # Handed over only after the commit, as a single submit: a worker always finds its row.
        results = [
            self._hand_over_one(policy, backend, queued)
            for backend, queued in zip(backends, created, strict=True)
        ]
        if self.metrics is not None:
            for row in rows:
                self.metrics.dispatch.labels(row.backend, policy.reason_for(row.tool_id)).inc()
        log.info(
            "tasks.batch_dispatched",
            tasks=len(rows),
            backends=dict(Counter(row.backend for row in rows)),
            refused=sum(r.error_code == REJECTED for r in results),
        )
        return results

    def _routed(
        self, policy: RolloutPolicy, request: NewTask, spec: Tool, payload: Any, priority: int
    ) -> tuple[QueuedTask, TaskBackend]:
        """A new task routed by `policy` (held if its tool is paused), and its backend."""
        task_id = str(uuid.uuid4())
        decision = route_task(
            policy, user_id=request.user_id, task_id=task_id, tool_id=spec.tool_id
        )
        backend = self._backend(decision.backend)
        row = QueuedTask(
            task_id=task_id,
            user_id=request.user_id,
            tool_id=spec.tool_id,
            payload=payload,
            priority=priority,
            backend=decision.backend,
            rollout_bucket=decision.bucket,
            rollout_percentage=decision.percentage,
            celery_task_id=backend.external_id(task_id),
            idempotency_key=request.idempotency_key,
            held=held_message(spec.tool_id) if policy.is_paused(spec.tool_id) else None,
        )
        return row, backend

    def _check_shares(self, rows: Sequence[QueuedTask]) -> None:
        """Refuse the batch unless every backend can take its share of the tasks handed over
        now (held ones wait for the resume)."""
        for name, count in Counter(row.backend for row in rows if not row.held).items():
            backend = self._backend(name)
            backend.check_capacity(count)
            if name == BackendName.CELERY and self.broker_down is BrokerDown.REJECT:
                backend.check_open()

    def _hand_over_one(
        self, policy: RolloutPolicy, backend: TaskBackend, queued: TaskRecord
    ) -> TaskRecord:
        """One committed task of a batch to its backend; a refusal ends in the row, not the
        batch."""
        try:
            return self._dispatch_new(policy, backend, queued)
        except TaskRejected:
            return self.store.get(queued.task_id) or queued

    def _checked(self, request: NewTask) -> tuple[Tool, Any, int]:
        """The tool, the payload as it will run, and the priority; UnknownTool, InvalidPayload
        or PriorityOutOfRange if the request does not fit."""
        spec = self.registry[request.tool_id]
        payload = spec.validate_payload(request.payload)
        priority = spec.priority if request.priority is None else request.priority
        if not 0 <= priority <= 9:
            raise PriorityOutOfRange(f"priority {priority} is outside 0-9")
        return spec, payload, priority

    def retry(self, task_id: str, *, actor: str) -> TaskRecord | None:
        """Run a FAILED or CANCELLED task again, on the backend the rollout gives it now; None
        if it is in another state (or a concurrent retry got there first)."""
        current = self.store.get(task_id)
        if current is None or current.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            return None
        policy = self.rollout.current()
        decision = route_task(
            policy, user_id=current.user_id, task_id=task_id, tool_id=current.tool_id
        )
        backend = self._backend(decision.backend)
        if not policy.is_paused(current.tool_id):
            backend.check_capacity()
        # A parallel job runs again only the batches that did not complete (first: a retry
        # that fails between the two writes leaves an ended job, retried again as a whole).
        self.store.batches.requeue_unfinished(task_id)
        queued = self.store.retry_finished(
            task_id,
            backend=decision.backend,
            celery_task_id=backend.external_id(task_id),
            reason=f"retry requested by {actor}",
        )
        if queued is None:
            return None
        return self._dispatch_new(policy, backend, queued)

    def cancel(self, task_id: str, *, actor: str) -> TaskRecord | None:
        """Cancel a QUEUED task at once, or ask a running one to stop (it ends CANCELLED when
        its attempt notices, within a heartbeat). None if it has ended."""
        reason = f"cancelled by {actor}"
        cancelled = self.store.cancel(task_id, reason=reason)
        if cancelled is not None:
            return cancelled
        requested = self.store.request_cancel(task_id, reason=f"cancel requested by {actor}")
        if requested is None:
            return None
        # A parallel job waiting for its batches: those not started end now, the running ones
        # are asked to stop, and with none running the job ends CANCELLED at once.
        job = self.store.batches.cancel_job(task_id, reason=reason)
        if job is not None and job.status is TaskStatus.CANCELLED:
            return job
        backend = self.backends.get(requested.backend or "")
        if backend is not None:
            backend.interrupt(requested)
        return requested

    def reclaim(self, *, tool_id: str | None, reason: str) -> int:
        """Move the tasks still QUEUED on Celery (of one tool, or all) to threads and run them
        here: a rollback must not wait for a worker to hand them back. A Celery message that
        arrives later finds its task on threads and does nothing (the claim checks the backend).
        """
        paused = self.rollout.current().paused
        moved = reclaim_from_celery(
            self.store, self.backends, tool_id=tool_id, reason=reason, paused=paused
        )
        if moved:
            log.info("rollout.reclaimed", tool_id=tool_id, moved=moved)
        return moved

    def release(self, *, tool_id: str | None) -> int:
        """Hand the tasks held while `tool_id` (None: any tool) was paused to their backends
        now, highest priority first, then oldest; how many were handed over. The tasks of a
        tool still paused stay; what a backend cannot take now (the pool is full, the broker
        is down) or this process does not run, the sweeps hand over within their interval."""
        policy = self.rollout.current()
        refused: set[str] = set()
        released = 0
        for task in self.store.undispatched(tool_id=tool_id, limit=RELEASE_LIMIT):
            backend = self.backends.get(task.backend or "")
            if backend is None or backend.name in refused or policy.is_paused(task.tool_id):
                continue
            # The turn is the one conditional write only one process wins: a concurrent
            # sweep or resume elsewhere does not hand the same task over twice.
            turn = self.store.mark_dispatched(
                task.task_id,
                backend=backend.name,
                last_dispatched_at=None,
                celery_task_id=backend.external_id(task.task_id),
                reason=f"released: dispatch of {task.tool_id} resumed",
            )
            if turn is None:
                continue
            try:
                backend.submit(turn)
            except BackendUnavailable as exc:
                self.store.mark_undispatched(
                    task.task_id, reason=f"waiting for the {backend.name} backend: {exc.reason}"
                )
                refused.add(backend.name)
                continue
            released += 1
        log.info("dispatch.released", tool_id=tool_id, released=released, refused=sorted(refused))
        return released

    def _dispatch_new(
        self, policy: RolloutPolicy, backend: TaskBackend, queued: TaskRecord
    ) -> TaskRecord:
        """Hold or hand over a task just written QUEUED: hold it (never handed over, for the
        resume to hand over) if `policy` pauses its tool, else give it to `backend`. Returns
        the row as it now stands."""
        if not policy.is_paused(queued.tool_id):
            return self._hand_over(backend, queued)
        if queued.dispatched_at is None:
            return queued  # written held
        held = self.store.mark_undispatched(queued.task_id, reason=held_message(queued.tool_id))
        return held or self.store.get(queued.task_id) or queued

    def _backend(self, name: str) -> TaskBackend:
        backend = self.backends.get(name)
        if backend is None:
            # Never fall back silently: a task routed to Celery must not run on threads.
            raise BackendUnavailable(
                f"task routed to the {name} backend, which this process does not run"
            )
        return backend

    def _hand_over(self, backend: TaskBackend, queued: TaskRecord) -> TaskRecord:
        """Give the committed task to its backend; returns the row as it now stands."""
        try:
            backend.submit(queued)
            return queued
        except BackendFull as exc:
            refused: BackendUnavailable = exc
        except BackendUnavailable as exc:
            refused = exc
            if backend.name == BackendName.CELERY:
                kept = self._keep_while_broker_down(queued, exc)
                if kept is not None:
                    return kept
        self.store.cancel(
            queued.task_id, reason=f"not accepted: {refused.reason}", error_code=REJECTED
        )
        log.warning(
            "task.rejected", task_id=queued.task_id, backend=backend.name, reason=refused.reason
        )
        raise TaskRejected(queued.task_id, refused) from refused

    def _keep_while_broker_down(
        self, queued: TaskRecord, exc: BackendUnavailable
    ) -> TaskRecord | None:
        """CELERY_UNAVAILABLE=accept or threads: the task is kept instead of refused."""
        task_id = queued.task_id
        if self.broker_down is BrokerDown.ACCEPT:
            kept = self.store.mark_undispatched(
                task_id,
                reason=f"accepted while the broker is down ({exc.reason}); "
                "published when it is back",
            )
        elif self.broker_down is BrokerDown.THREADS and BackendName.THREAD in self.backends:
            kept = self.store.move_backend(
                task_id,
                from_backend=BackendName.CELERY,
                to_backend=BackendName.THREAD,
                reason=f"broker down: {exc.reason}",
            )
            if kept is not None:
                try:
                    self.backends[BackendName.THREAD].submit(kept)
                except BackendUnavailable:
                    return None  # the pool is full too: refused like any other
        else:
            return None
        log.warning("task.kept", task_id=task_id, mode=self.broker_down.value, reason=exc.reason)
        return kept

    def _replay(self, request: NewTask, payload: Any, priority: int) -> TaskRecord | None:
        assert request.idempotency_key is not None
        existing = self.store.by_idempotency_key(
            user_id=request.user_id, key=request.idempotency_key
        )
        if existing is None:
            return None
        # Compared as JSON: in Python True == 1 == 1.0, in a request they are different values.
        if _as_json(existing.tool_id, existing.payload, existing.priority) != _as_json(
            request.tool_id, payload, priority
        ):
            raise IdempotencyConflict(
                f"Idempotency-Key {request.idempotency_key!r} was used for another request "
                f"(task {existing.task_id}); use a new key for a new task"
            )
        if existing.status is TaskStatus.CANCELLED and existing.error_code == REJECTED:
            # Its backend refused it (the client got a 503): sending the key again is the
            # retry the 503 asked for, of the same task.
            return self.retry(existing.task_id, actor=request.user_id) or existing
        return existing
