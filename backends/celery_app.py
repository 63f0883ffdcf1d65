"""The Celery application: Redis broker, no result backend, settings chosen for long jobs."""

from __future__ import annotations

from celery import Celery

from backends.settings import CelerySettings
from execution.settings import SettingsError
from execution.tools.registry import ToolRegistry

RUN_TASK = "switchyard.run_task"
"""The one Celery task: it takes a task_id and runs the TaskExecutor."""

PRIORITY_LEVELS = 10


def redis_priority(priority: int) -> int:
    """Switchyard's 9-is-highest onto Redis's 0-is-highest priority steps."""
    return PRIORITY_LEVELS - 1 - priority


def queues_of(registry: ToolRegistry) -> list[str]:
    """Every queue some tool is routed to; a worker started without --queues consumes them all."""
    return sorted({spec.queue for spec in registry.values()})


def check_time_limits(settings: CelerySettings, registry: ToolRegistry) -> None:
    """Refuse a time limit Redis would cut short by redelivering a still-running task."""
    for spec in registry.values():
        for limit in (spec.time_limit, spec.soft_time_limit):
            visibility = settings.celery_visibility_timeout
            if limit is not None and limit >= visibility:
                raise SettingsError(
                    f"invalid setting: CELERY_VISIBILITY_TIMEOUT ({visibility}) must exceed "
                    f"tool {spec.tool_id!r}'s time limit ({limit})"
                )


def make_celery_app(settings: CelerySettings, registry: ToolRegistry) -> Celery:
    """The app both the publisher (API) and the workers use; they must agree on all of this."""
    check_time_limits(settings, registry)
    app = Celery("switchyard", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        # Status rows in our database are the source of truth: no result backend to run,
        # and nothing stored per task in Redis beyond the message itself.
        result_backend=None,
        task_ignore_result=True,
        # Acknowledge after the task ran, so a worker that dies mid-task leaves the message
        # to be redelivered instead of lost; the executor's claim makes redelivery harmless.
        task_acks_late=True,
        # ...and if the worker *process* is killed (OOM, hard time limit), requeue too.
        task_reject_on_worker_lost=True,
        # Long jobs: a worker takes one message at a time, never hoards a backlog it can't run.
        worker_prefetch_multiplier=1,
        # A running task keeps going on a broker blip; its redelivered copy finds the row
        # already claimed and does nothing.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Redis redelivers an unacknowledged message after this long: it must exceed the
            # longest time limit or a running task would be handed to a second worker.
            "visibility_timeout": settings.celery_visibility_timeout,
            # Ten priority sub-queues per queue; 0 is served first (see redis_priority).
            "priority_steps": list(range(PRIORITY_LEVELS)),
            "socket_connect_timeout": 3,
        },
        # JSON only: a pickle payload from anyone who can write to Redis is code execution.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        # Task events so Flower (and `celery events`) can show workers and tasks.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_time_limit=settings.celery_task_time_limit,
        task_soft_time_limit=settings.celery_task_soft_time_limit,
        task_default_queue="default",
        task_default_priority=redis_priority(0),
        worker_concurrency=settings.celery_worker_concurrency,
        # Our logging config (structlog) stays in charge inside workers.
        worker_hijack_root_logger=False,
    )
    return app
