"""The dispatcher: validates a new task, routes it, records it, then hands it to its backend."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from backends.base import BackendUnavailable, TaskBackend
from dispatch.rollout.policy import Stickiness, route
from dispatch.rollout.watch import RolloutSource
from execution.records import TaskRecord
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class NewTask:
    """A request to run a tool."""

    tool_id: str
    payload: Any
    user_id: str
    priority: int | None = None


class TaskRejected(BackendUnavailable):
    """The task's row was written but its backend refused it; the row says so (CANCELLED)."""

    def __init__(self, task_id: str, cause: BackendUnavailable) -> None:
        super().__init__(cause.reason, retry_after=cause.retry_after)
        self.task_id = task_id


class Dispatcher:
    """Picks the backend for each new task; knows backends only through `TaskBackend`."""

    def __init__(
        self,
        *,
        store: TaskStore,
        registry: ToolRegistry,
        backends: Mapping[str, TaskBackend],
        rollout: RolloutSource,
    ) -> None:
        self.store = store
        self.registry = registry
        self.backends = backends
        self.rollout = rollout

    def submit(self, request: NewTask) -> TaskRecord:
        """Create the task and hand it to its backend; raise if tool, payload or backend refuse."""
        spec = self.registry[request.tool_id]
        payload = spec.validate_payload(request.payload)
        priority = spec.priority if request.priority is None else request.priority
        if not 0 <= priority <= 9:
            raise ValueError(f"priority {priority} is outside 0-9")
        task_id = str(uuid.uuid4())
        policy = self.rollout.current()
        key = request.user_id if policy.stickiness is Stickiness.USER_ID else task_id
        decision = route(policy, key, spec.tool_id)
        backend = self.backends.get(decision.backend)
        if backend is None:
            # Never fall back silently: a task routed to Celery must not run on threads.
            raise BackendUnavailable(
                f"task routed to the {decision.backend} backend, which this process does not run"
            )
        backend.check_capacity()

        queued = self.store.create_queued(
            task_id=task_id,
            user_id=request.user_id,
            tool_id=spec.tool_id,
            payload=payload,
            priority=priority,
            backend=decision.backend,
            rollout_bucket=decision.bucket,
            rollout_percentage=decision.percentage,
            celery_task_id=backend.external_id(task_id),
        )
        # Handed over only now, after the QUEUED row is committed: a worker that picks the
        # task up at once always finds it.
        try:
            backend.submit(queued)
        except BackendUnavailable as exc:
            self.store.cancel(task_id, reason=f"not accepted: {exc.reason}", error_code="REJECTED")
            log.warning(
                "task.rejected", task_id=task_id, backend=decision.backend, reason=exc.reason
            )
            raise TaskRejected(task_id, exc) from exc
        # DEBUG: the row and its QUEUED event record the routing; a task's one INFO line is the
        # executor's, saying how it ended (an INFO line costs about as much as a status write).
        log.debug(
            "task.dispatched",
            task_id=task_id,
            tool_id=spec.tool_id,
            backend=decision.backend,
            bucket=decision.bucket,
            percentage=decision.percentage,
        )
        return queued
