"""Settings of the two backends: the thread pool's size and the Celery broker and limits."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, model_validator

from execution.settings import SettingsGroup


class ThreadPoolSettings(SettingsGroup):
    """The bounded pool inside the API process."""

    background_workers: Annotated[int, Field(ge=1, le=256)] = 8
    background_queue_size: Annotated[int, Field(ge=1)] = 10_000
    thread_sweep_seconds: Annotated[float, Field(gt=0, le=300)] = 2.0
    shutdown_timeout: Annotated[float, Field(ge=0)] = 30.0


CELERY_KILL_GRACE_SECONDS = 5
"""Celery kills a task's process this long after its hard limit. The executor ends the attempt
at the limit itself (TIME_LIMIT_EXCEEDED, or a retry), exactly as on threads; Celery's kill is
the backstop for a tool that holds its process, and it must not win the race."""


class CelerySettings(SettingsGroup):
    """The broker, the workers and the time limits publisher and workers must agree on."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    celery_broker_url: str | None = None
    celery_worker_concurrency: Annotated[int, Field(ge=1, le=256)] = 2
    celery_task_time_limit: Annotated[int, Field(ge=1)] = 1800
    celery_task_soft_time_limit: Annotated[int, Field(ge=1)] = 1500
    celery_visibility_timeout: Annotated[int, Field(ge=1)] = 3600
    celery_publish_retries: Annotated[int, Field(ge=0, le=10)] = 2
    celery_worker_absent_seconds: Annotated[float, Field(ge=1, le=86_400)] = 30.0
    """While the rollout sends tasks to Celery and no worker has answered a ping for this
    long, /health answers 503 degraded."""
    worker_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9808
    """Where a worker serves /metrics for its processes (on HOST); 0 turns it off."""

    @model_validator(mode="after")
    def _limits_are_consistent(self) -> Self:
        if self.celery_task_soft_time_limit > self.celery_task_time_limit:
            raise ValueError(
                f"CELERY_TASK_SOFT_TIME_LIMIT ({self.celery_task_soft_time_limit}) must not "
                f"exceed CELERY_TASK_TIME_LIMIT ({self.celery_task_time_limit})"
            )
        if (
            self.celery_visibility_timeout
            <= self.celery_task_time_limit + CELERY_KILL_GRACE_SECONDS
        ):
            raise ValueError(
                f"CELERY_VISIBILITY_TIMEOUT ({self.celery_visibility_timeout}) must exceed "
                f"CELERY_TASK_TIME_LIMIT ({self.celery_task_time_limit}) by more than "
                f"{CELERY_KILL_GRACE_SECONDS} s, or Redis redelivers tasks that are still running"
            )
        return self

    @property
    def broker_url(self) -> str:
        """The Celery broker: CELERY_BROKER_URL, falling back to REDIS_URL."""
        return self.celery_broker_url or self.redis_url


class BackendSettings(ThreadPoolSettings, CelerySettings):
    """What building either backend may read."""
