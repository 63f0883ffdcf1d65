"""Celery backend: publishes the task_id to Redis for a worker process to run.

A hung broker must not hang the API: every broker call is bounded by the socket timeouts set in
`make_celery_app`, a publish that times out is not retried, and after a failed publish a circuit
breaker refuses further publishes at once for a short cool-down, so request threads are not used
up waiting on Redis and reads and /health keep answering.
"""

from __future__ import annotations

import functools
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from celery import Celery
from redis.exceptions import TimeoutError as RedisTimeoutError

from backends.base import BackendHealth, BackendUnavailable, TaskBackend
from backends.celery_app import (
    BATCH_TASK,
    BROKER_ERRORS,
    BROKER_SOCKET_TIMEOUT,
    celery_kill_after,
    queues_of,
    redis_priority,
    task_argsrepr,
    tool_task_name,
    warn_if_no_persistence,
)
from execution.batch_records import BatchRecord
from execution.records import TaskRecord
from execution.redaction import redact_text, redact_url
from execution.tools.registry import ToolRegistry

log = structlog.get_logger(__name__)

HEALTH_CACHE_SECONDS = 2.0
"""How long one probe's answer serves every /health request."""

HEALTH_STALE_SECONDS = 5.0
"""Past the cache, a probe's answer still serves while the next probe runs, for this long
after it was given: requests never wait for a routine refresh (a ping takes about a second),
and a broker that hangs shows as down once its last answer is this old."""

PROBE_WAIT_SECONDS = 2.0
"""How long a /health request waits for the probe in flight before answering "not ok": a broker
that has not answered a PING in this long is not one to send work to."""

WORKER_PING_SECONDS = 0.5
"""How long a probe collects the workers' answers to a ping. A worker's main process answers
even while its children run long tasks, on a loaded machine in milliseconds."""

PUBLISH_BUDGET_SECONDS = 3.0
"""A publish retries (a refused or reset connection) only while one more attempt, bounded by
the socket timeout, would still end within this many seconds of its start."""

PUBLISH_SLOT_WAIT_SECONDS = 1.0
"""How long a publish waits for one of the `broker_pool_limit` pooled connections. kombu itself
waits for one without a bound, so while every connection is stuck on a hung broker, the next
publishes would queue behind them and each then wait its own socket timeout."""

BREAKER_COOLDOWN_SECONDS = 3.0
"""After a failed publish (or probe), publishes are refused at once for this long; then one trial
publish goes through, and its outcome closes or reopens the breaker."""

TIMEOUTS: tuple[type[BaseException], ...] = (RedisTimeoutError, socket.timeout, TimeoutError)


class PublishAborted(Exception):
    """kombu's retry loop was stopped: the broker timed out, or the budget is spent."""


PUBLISH_ERRORS: tuple[type[BaseException], ...] = (PublishAborted, *BROKER_ERRORS)


class CircuitBreaker:
    """Closed: every call goes through. Open: calls are refused until the cool-down ends; then
    one trial call goes through (half-open) while the others are still refused."""

    def __init__(self, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until: float | None = None
        self._trial = False

    def admit(self) -> tuple[bool, float]:
        """(is this call the half-open trial, seconds to wait); a positive wait means refused."""
        with self._lock:
            if self._open_until is None:
                return False, 0.0
            remaining = self._open_until - self._clock()
            if remaining > 0:
                return False, remaining
            if self._trial:  # the trial is still out: wait for its verdict
                return False, self._cooldown
            self._trial = True
            return True, 0.0

    def succeeded(self) -> bool:
        """The broker took a call: close. True if this closed an open breaker."""
        with self._lock:
            was_open = self._open_until is not None
            self._open_until = None
            self._trial = False
            return was_open

    def failed(self) -> bool:
        """The broker failed a call: open (again) for a full cool-down. True if it was closed."""
        with self._lock:
            was_closed = self._open_until is None
            self._open_until = self._clock() + self._cooldown
            self._trial = False
            return was_closed

    def cooling_down(self) -> float:
        """Seconds before an open breaker lets a trial call through; 0 if one would go now."""
        with self._lock:
            if self._open_until is None:
                return 0.0
            return max(0.0, self._open_until - self._clock())

    def abandoned(self, trial: bool) -> None:
        """The call failed for a reason of its own, which says nothing about the broker."""
        if trial:
            with self._lock:
                self._trial = False


class CeleryBackend(TaskBackend):
    """Publishes `switchyard.tool.<tool_id>(task_id)` to the tool's queue with its priority."""

    name = "celery"

    def __init__(
        self,
        *,
        app: Celery,
        registry: ToolRegistry,
        publish_retries: int,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._app = app
        self._registry = registry
        self._publish_retries = publish_retries
        self._breaker = breaker or CircuitBreaker(BREAKER_COOLDOWN_SECONDS)
        pool_limit = app.conf.broker_pool_limit  # None or 0: kombu does not limit the pool
        self._slots = threading.BoundedSemaphore(pool_limit) if pool_limit else None
        self._health: tuple[float, BackendHealth] | None = None
        self._worker_seen = time.monotonic()  # counted from startup: no worker yet is no alarm
        self._probing: tuple[float, threading.Event] | None = None
        self._health_lock = threading.Lock()  # guards the two fields above; never held on I/O

    def external_id(self, task_id: str) -> str | None:
        return str(uuid.uuid4())

    def start(self) -> None:
        """Say at startup if Redis would lose queued tasks on a restart."""
        warn_if_no_persistence(self._app, process="api")

    def enqueue(self, task: TaskRecord) -> None:
        self._with_slot(lambda: self._publish(task))

    def enqueue_batches(self, job: TaskRecord, batches: Sequence[BatchRecord]) -> None:
        """One Celery task per batch, on the job's queue at its priority: prefork children
        run them side by side."""
        for batch in batches:
            self._with_slot(functools.partial(self._publish, job, batch_no=batch.batch_no))

    def _with_slot(self, publish: Callable[[], None]) -> None:
        if self._slots is None:
            publish()
            return
        if not self._slots.acquire(timeout=PUBLISH_SLOT_WAIT_SECONDS):
            reason = (
                f"celery broker at {self._broker()} is not taking messages: every pooled "
                f"connection has been busy for {PUBLISH_SLOT_WAIT_SECONDS:g} s"
            )
            self._failed(reason)
            raise BackendUnavailable(reason, retry_after=math.ceil(BREAKER_COOLDOWN_SECONDS))
        try:
            publish()
        finally:
            self._slots.release()

    def check_open(self) -> None:
        """Refuse at once while the breaker is open: a publish failed moments ago."""
        wait = self._breaker.cooling_down()
        if wait > 0:
            raise self._cooling_down(wait)

    def _publish(self, task: TaskRecord, *, batch_no: int | None = None) -> None:
        """Publish the task, or with `batch_no` that batch of the job `task`."""
        # Asked only now, holding a slot: a publish that waited for one while the others
        # timed out finds the breaker open and does not wait a socket timeout of its own.
        trial, wait = self._breaker.admit()
        if wait > 0:
            raise self._cooling_down(wait)
        spec = self._registry[task.tool_id]
        whole = batch_no is None
        try:
            self._app.send_task(
                tool_task_name(task.tool_id) if whole else BATCH_TASK,
                args=(task.task_id,) if whole else (task.task_id, batch_no),
                argsrepr=task_argsrepr(task.task_id) + ("" if whole else f", batch_no={batch_no}"),
                task_id=task.celery_task_id if whole else None,
                queue=spec.queue,
                priority=redis_priority(task.priority),
                time_limit=celery_kill_after(spec.time_limit) if spec.time_limit else None,
                soft_time_limit=spec.soft_time_limit,
                headers={"switchyard_tool_id": task.tool_id},
                retry=True,
                retry_policy=self._retry_policy(),
            )
        except PUBLISH_ERRORS as exc:
            reason = f"celery broker unreachable at {self._broker()}: {redact_text(str(exc))}"
            self._failed(reason)
            raise BackendUnavailable(
                reason, retry_after=math.ceil(BREAKER_COOLDOWN_SECONDS)
            ) from exc
        except BaseException:
            self._breaker.abandoned(trial)
            raise
        if self._breaker.succeeded():
            log.info("celery.publishing_resumed", broker=self._broker())

    def _cooling_down(self, wait: float) -> BackendUnavailable:
        return BackendUnavailable(
            f"celery broker unreachable at {self._broker()}: it failed moments ago; "
            f"publishing resumes in {wait:.1f} s",
            retry_after=max(1, math.ceil(wait)),
        )

    def interrupt(self, task: TaskRecord) -> None:
        """Raise SoftTimeLimitExceeded inside the running tool (Celery's revoke with SIGUSR1):
        the executor finds the cancel request and ends the task CANCELLED at once. Best effort:
        the attempt's heartbeat stops it anyway."""
        if task.celery_task_id is None:
            return
        try:
            self._app.control.revoke(task.celery_task_id, terminate=True, signal="SIGUSR1")
        except PUBLISH_ERRORS as exc:
            log.warning(
                "celery.interrupt_failed", task_id=task.task_id, error=redact_text(str(exc))
            )

    def _failed(self, reason: str) -> None:
        """Open the breaker; say so once per outage, not once per refused task."""
        if self._breaker.failed():
            log.warning(
                "celery.publishing_paused",
                reason=reason,
                cooldown_seconds=BREAKER_COOLDOWN_SECONDS,
            )

    def health(self) -> BackendHealth:
        """The last probe's answer while fresh; else start the next probe (one at a time) and
        answer the last one while it is not stale, or wait briefly for the new one, so requests
        never queue behind a hung broker."""
        with self._health_lock:
            last = self._health
            age = time.monotonic() - last[0] if last else math.inf
            if last and age < HEALTH_CACHE_SECONDS:
                return last[1]
            if self._probing is None:
                self._probing = (time.monotonic(), threading.Event())
                threading.Thread(
                    target=self._run_probe,
                    args=(self._probing[1],),
                    name="celery-health-probe",
                    daemon=True,
                ).start()
            started, done = self._probing
            if last and age < HEALTH_STALE_SECONDS:
                return last[1]
        done.wait(max(0.0, PROBE_WAIT_SECONDS - (time.monotonic() - started)))
        with self._health_lock:
            if self._health and self._health[0] >= started:
                return self._health[1]
        return BackendHealth(
            ok=False,
            state="broker_down",
            counts=self._worker_counts(0),
            detail={
                "broker": self._broker(),
                "error": f"no answer within {PROBE_WAIT_SECONDS:g} s",
            },
        )

    def shutdown(self, timeout: float) -> None:
        self._app.close()

    def _retry_policy(self) -> dict[str, Any]:
        """kombu's retry policy for one publish: refused or reset connections are retried
        within the budget (a Redis restart leaves stale pooled connections); a timeout is not,
        since a broker that did not answer in BROKER_SOCKET_TIMEOUT will not answer a retry."""
        deadline = time.monotonic() + PUBLISH_BUDGET_SECONDS

        def give_up_on_timeout(exc: BaseException, interval: float) -> None:
            if isinstance(exc, TIMEOUTS):
                raise PublishAborted(f"no answer in {BROKER_SOCKET_TIMEOUT:g} s: {exc}") from exc
            if time.monotonic() + interval + BROKER_SOCKET_TIMEOUT > deadline:
                raise PublishAborted(f"gave up after {PUBLISH_BUDGET_SECONDS:g} s: {exc}") from exc

        return {
            "max_retries": self._publish_retries,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
            "errback": give_up_on_timeout,
        }

    def _run_probe(self, done: threading.Event) -> None:
        report = self._probe()
        with self._health_lock:
            self._health = (time.monotonic(), report)
            self._probing = None
        done.set()
        if not report.ok:  # spare the next publishes the wait this probe just had
            self._failed(f"health probe failed: {report.detail.get('error')}")

    def _probe(self) -> BackendHealth:
        """Connect, count each queue's messages, and ping the workers."""
        try:
            with self._app.connection_for_write() as conn:
                # No retry: one connect and PING, each bounded by the broker timeouts.
                conn.ensure_connection(max_retries=0)
                channel: Any = conn.default_channel
                # A non-passive declare on Redis creates nothing; it answers the length
                # summed over the queue's priority sub-queues.
                queues = {
                    name: int(channel.queue_declare(queue=name).message_count)
                    for name in queues_of(self._registry)
                }
                answers = self._app.control.ping(timeout=WORKER_PING_SECONDS, connection=conn)
        except Exception as exc:  # a probe reports every failure; it runs on its own thread
            return BackendHealth(
                ok=False,
                state="broker_down",
                counts=self._worker_counts(0),
                detail={"broker": self._broker(), "error": redact_text(str(exc))},
            )
        workers = sorted(name for answer in answers or () for name in answer)
        if workers:
            self._worker_seen = time.monotonic()
        return BackendHealth(
            ok=True,
            state="ok" if workers else "no_workers",
            counts={**self._worker_counts(len(workers)), "queues": queues},
            detail={"broker": self._broker(), "workers": workers},
        )

    def _worker_counts(self, answered: int) -> dict[str, object]:
        absent = 0.0 if answered else time.monotonic() - self._worker_seen
        return {"workers": answered, "workers_absent_seconds": round(absent, 1)}

    def _broker(self) -> str:
        return redact_url(str(self._app.conf.broker_url))
