"""The Celery application: Redis broker, no result backend, settings chosen for long jobs."""

from __future__ import annotations

import ast
from typing import Any

import structlog
from celery import Celery, bootsteps
from kombu.exceptions import KombuError, OperationalError
from redis.exceptions import RedisError

from backends.celery_timers import CancelledTimerSweep
from backends.settings import CELERY_KILL_GRACE_SECONDS, CelerySettings
from execution.redaction import redact_text, redact_url
from execution.settings import SettingsError
from execution.tools.registry import ToolRegistry

RUN_TASK = "switchyard.run_task"
"""The task an older API published for every tool; workers still run it (rolling upgrades)."""

BATCH_TASK = "switchyard.batch"
"""One batch of a parallel job: `(task_id, batch_no)`; the rows hold the rest."""

TOOL_TASK_PREFIX = "switchyard.tool."
"""Each tool's tasks are published as `switchyard.tool.<tool_id>`, so Flower, `celery inspect`
and `celery events` show which tool a task runs; every one runs the same TaskExecutor."""

PRIORITY_LEVELS = 10

log = structlog.get_logger(__name__)

# A broker that stops answering (frozen, or a network black hole: the kernel still accepts the
# connection, nothing ever replies) must cost a caller seconds, never as long as the outage.
BROKER_CONNECT_TIMEOUT = 2.0
"""Seconds to open a TCP connection to Redis; a healthy one on a LAN takes milliseconds."""

BROKER_SOCKET_TIMEOUT = 2.0
"""Seconds any one Redis command may wait for its reply. Safe for workers: kombu sends BRPOP
with a 1 s server-side timeout and reads the reply only once the socket is readable, so an
idle consumer never waits on this; above 1 s so even a synchronous BRPOP read would fit."""

BROKER_ERRORS: tuple[type[BaseException], ...] = (OperationalError, KombuError, RedisError, OSError)
"""What a broker call raises when Redis is down, hung or refusing."""


def redis_priority(priority: int) -> int:
    """Switchyard's 9-is-highest onto Redis's 0-is-highest priority steps."""
    return PRIORITY_LEVELS - 1 - priority


def tool_task_name(tool_id: str) -> str:
    """The Celery task name a tool's tasks are published under."""
    return TOOL_TASK_PREFIX + tool_id


def task_argsrepr(task_id: str) -> str:
    """How a message's one argument, the Switchyard task_id, shows in Flower, events, logs."""
    return f"task_id={task_id}"


def queues_of(registry: ToolRegistry) -> list[str]:
    """Every queue some tool is routed to; a worker started without --queues consumes them all."""
    return sorted({spec.queue for spec in registry.values()})


def celery_kill_after(time_limit: int) -> int:
    """Celery's own hard limit for a task whose executor limit is `time_limit`."""
    return time_limit + CELERY_KILL_GRACE_SECONDS


def check_time_limits(settings: CelerySettings, registry: ToolRegistry) -> None:
    """Refuse a time limit Redis would cut short by redelivering a still-running task."""
    for spec in registry.values():
        for limit in (spec.time_limit, spec.soft_time_limit):
            visibility = settings.celery_visibility_timeout
            if limit is not None and celery_kill_after(limit) >= visibility:
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
            "socket_connect_timeout": BROKER_CONNECT_TIMEOUT,
            "socket_timeout": BROKER_SOCKET_TIMEOUT,
            # A timed-out write may have reached Redis: retrying it could push the message
            # twice, and would double the wait. The publisher decides about retries itself.
            "retry_on_timeout": False,
        },
        # kombu's bound on (re)connecting, total over its retries (Celery's default is 4 s).
        broker_connection_timeout=BROKER_CONNECT_TIMEOUT,
        # JSON only: a pickle payload from anyone who can write to Redis is code execution.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        # Task events so Flower (and `celery events`) can show workers and tasks.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_time_limit=celery_kill_after(settings.celery_task_time_limit),
        task_soft_time_limit=settings.celery_task_soft_time_limit,
        task_default_queue="default",
        task_default_priority=redis_priority(0),
        worker_concurrency=settings.celery_worker_concurrency,
        # Our logging config (structlog) stays in charge inside workers; what a tool prints goes
        # through it too, as INFO lines of `celery.redirected` (Celery's default is WARNING).
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=True,
        worker_redirect_stdouts_level="INFO",
    )
    app.steps["worker"].add(PersistenceCheck)
    app.steps["worker"].add(CancelledTimerSweep)
    return app


def celery_task_fields(
    _logger: object, _name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Give Celery's own per-task lines ("received", "succeeded", "raised expected") the
    Switchyard task_id and tool_id, read from the context Celery attaches to those records."""
    record = event_dict.get("_record")
    data = getattr(record, "data", None)
    if not isinstance(data, dict):
        return event_dict
    name = data.get("name")
    if not isinstance(name, str) or not (name == RUN_TASK or name.startswith(TOOL_TASK_PREFIX)):
        return event_dict
    task_id = _task_id_of(data.get("args"))
    if task_id is not None:
        event_dict.setdefault("task_id", task_id)
    if name.startswith(TOOL_TASK_PREFIX):
        event_dict.setdefault("tool_id", name.removeprefix(TOOL_TASK_PREFIX))
    event_dict.setdefault("backend", "celery")
    if data.get("id"):
        event_dict.setdefault("celery_task_id", data["id"])
    return event_dict


def _task_id_of(argsrepr: object) -> str | None:
    """The task_id in a message's args as Celery shows them: ours (`task_id=<id>`), or the
    plain repr an older API's messages carry (`('<id>',)`)."""
    if not isinstance(argsrepr, str):
        return None
    if argsrepr.startswith("task_id="):
        return argsrepr.removeprefix("task_id=")
    try:
        args = ast.literal_eval(argsrepr)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(args, (tuple, list)) and len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return None


def redirect_stdouts(app: Celery) -> None:
    """What `worker_redirect_stdouts` asks for, which Celery skips when a `setup_logging`
    receiver (ours) configures logging: print() in a tool, and the worker's banner, become log
    lines of `celery.redirected` through our renderer instead of raw text between them."""
    if app.conf.worker_redirect_stdouts:
        app.log.redirect_stdouts(app.conf.worker_redirect_stdouts_level)


def redis_persists(client: Any) -> bool | None:
    """Whether Redis keeps its data across a restart (AOF or RDB snapshots); None if it will
    not say (CONFIG is often disabled on managed Redis)."""
    try:
        appendonly = client.config_get("appendonly").get("appendonly")
        save = client.config_get("save").get("save")
    except BROKER_ERRORS:
        return None
    if appendonly is None or save is None:
        return None
    return _text(appendonly) != "no" or bool(_text(save).strip())


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def warn_if_no_persistence(app: Celery, *, process: str) -> None:
    """Log one WARNING if the broker forgets queued messages on a restart; at startup, once.

    Never raises: a broker that is down or hung now is reported by health checks, not here.
    """
    broker = redact_url(str(app.conf.broker_url))
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0)
            channel: Any = conn.default_channel  # kombu's Redis channel holds a redis-py client
            persists = redis_persists(channel.client)
    except BROKER_ERRORS as exc:
        log.debug("broker.persistence_unknown", broker=broker, error=redact_text(str(exc)))
        return
    if persists is None:
        log.debug("broker.persistence_unknown", broker=broker, error="CONFIG GET refused")
    elif not persists:
        log.warning(
            "broker.no_persistence",
            broker=broker,
            process=process,
            detail=(
                "Redis has no persistence (appendonly no, save ''): the messages of tasks "
                "waiting in Redis are lost on a Redis restart, and those tasks wait until the "
                "recovery sweep publishes them again (CELERY_REPUBLISH_SECONDS); see README "
                "'Delivery guarantee'"
            ),
        )


class PersistenceCheck(bootsteps.StartStopStep):
    """Runs `warn_if_no_persistence` when a worker starts (the API runs it in its backend)."""

    def start(self, parent: Any) -> None:
        """Check once; the worker keeps starting whatever the answer."""
        warn_if_no_persistence(parent.app, process="worker")
