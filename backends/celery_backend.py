"""Celery backend: publishes the task_id to Redis for a worker process to run."""

from __future__ import annotations

import threading
import time
import uuid

import structlog
from celery import Celery
from kombu.exceptions import KombuError, OperationalError
from redis.exceptions import RedisError

from backends.base import BackendHealth, BackendUnavailable, TaskBackend
from backends.celery_app import RUN_TASK, redis_priority
from execution.records import TaskRecord
from execution.redaction import redact_text, redact_url
from execution.tools.registry import ToolRegistry

log = structlog.get_logger(__name__)

HEALTH_CACHE_SECONDS = 2.0


class CeleryBackend(TaskBackend):
    """Publishes `switchyard.run_task(task_id)` to the tool's queue with its priority."""

    name = "celery"

    def __init__(self, *, app: Celery, registry: ToolRegistry, publish_retries: int) -> None:
        self._app = app
        self._registry = registry
        self._retry_policy = {
            "max_retries": publish_retries,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        }
        self._health: tuple[float, BackendHealth] | None = None
        self._health_lock = threading.Lock()

    def external_id(self, task_id: str) -> str | None:
        return str(uuid.uuid4())

    def enqueue(self, task: TaskRecord) -> None:
        spec = self._registry[task.tool_id]
        try:
            self._app.send_task(
                RUN_TASK,
                args=(task.task_id,),
                task_id=task.celery_task_id,
                queue=spec.queue,
                priority=redis_priority(task.priority),
                time_limit=spec.time_limit,
                soft_time_limit=spec.soft_time_limit,
                headers={"switchyard_tool_id": task.tool_id},
                retry=True,
                retry_policy=self._retry_policy,
            )
        except (OperationalError, KombuError, RedisError, OSError) as exc:
            reason = f"celery broker unreachable at {self._broker()}: {redact_text(str(exc))}"
            raise BackendUnavailable(reason, retry_after=5) from exc

    def health(self) -> BackendHealth:
        with self._health_lock:
            if self._health and time.monotonic() - self._health[0] < HEALTH_CACHE_SECONDS:
                return self._health[1]
            report = self._probe()
            self._health = (time.monotonic(), report)
            return report

    def shutdown(self, timeout: float) -> None:
        self._app.close()

    def _probe(self) -> BackendHealth:
        try:
            with self._app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
        except (OperationalError, KombuError, RedisError, OSError) as exc:
            return BackendHealth(
                ok=False, detail={"broker": self._broker(), "error": redact_text(str(exc))}
            )
        return BackendHealth(ok=True, detail={"broker": self._broker()})

    def _broker(self) -> str:
        return redact_url(str(self._app.conf.broker_url))
