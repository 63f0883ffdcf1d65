"""Leases: a running attempt stays claimed only while its process keeps saying so.

One keeper thread per process renews the lease of every attempt running there, whether or not
the tool calls `progress` (a heartbeat), and watches what a tool cannot be trusted to watch
itself: its soft and hard time limits, and a cancel requested by a caller. An attempt the
keeper ends (hard limit, cancel) or finds taken over (its lease was lost) is *abandoned*: its
later writes are fenced off by the store, and whoever runs it (a thread pool) is told, so it
can replace the stuck thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from execution.batch_records import BatchRecord
from execution.hooks import ExecutorHook, Run
from execution.records import TaskRecord
from execution.store import TaskStore

log = structlog.get_logger(__name__)

Abandoned = Callable[[int], None]
"""Told the `threading.get_ident()` of a thread whose attempt was abandoned."""


class TaskNoLongerRunning(Exception):
    """The attempt is no longer the task's running one; the tool should stop."""


class TaskCancelled(Exception):
    """Raised in the tool's progress call once a caller asked the task to stop."""


@dataclass(slots=True)
class _Active:
    run: Run
    thread: int
    soft_deadline: float | None
    hard_deadline: float | None
    next_renewal: float
    ended: bool = False

    def next_moment(self) -> float:
        """When the keeper must look at this attempt next: its renewal, its hard limit, or its
        soft limit while the tool has not been told yet."""
        moments = [self.next_renewal]
        if self.hard_deadline is not None:
            moments.append(self.hard_deadline)
        if self.soft_deadline is not None and not self.run.stop.is_set():
            moments.append(self.soft_deadline)
        return min(moments)


class LeaseKeeper(ExecutorHook):
    """Renews leases and enforces limits and cancels for the attempts running in this process."""

    def __init__(
        self,
        store: TaskStore,
        *,
        lease_seconds: float,
        heartbeat_seconds: float,
        on_time_limit: Callable[[Run], None],
        on_cancel: Callable[[Run], None],
    ) -> None:
        self._store = store
        self.lease_seconds = lease_seconds
        self._heartbeat = heartbeat_seconds
        self._on_time_limit = on_time_limit
        self._on_cancel = on_cancel
        self._active: dict[tuple[str, int, int], _Active] = {}
        self._listeners: list[Abandoned] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._wake_at = 0.0
        """When the keeper thread wakes next on its own (monotonic)."""
        self._stopping = False

    def subscribe(self, listener: Abandoned) -> None:
        """Be told when an attempt running on some thread is abandoned."""
        self._listeners.append(listener)

    def running(self) -> int:
        """Attempts this process runs and still holds."""
        with self._lock:
            return sum(not active.ended for active in self._active.values())

    # -- hook ----------------------------------------------------------------------------------

    def after_claim(self, run: Run) -> None:
        now = time.monotonic()
        active = _Active(
            run=run,
            thread=threading.get_ident(),
            soft_deadline=run.started + run.soft_time_limit if run.soft_time_limit else None,
            hard_deadline=run.started + run.time_limit if run.time_limit else None,
            next_renewal=now + self._heartbeat,
        )
        with self._lock:
            self._active[run.key] = active
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._keep, name="switchyard-leases", daemon=True
                )
                self._thread.start()
            # Woken only when this run needs it sooner than planned: on the hot path of short
            # tasks, waking it per claim would cost more than the tasks.
            if active.next_moment() < self._wake_at:
                self._wake.notify()

    def on_progress(self, run: Run, percent: int, message: str | None) -> None:
        with self._lock:
            active = self._active.get(run.key)
            ended = active is not None and active.ended
        if ended:
            raise TaskNoLongerRunning(run.task.task_id)

    def on_finish(self, run: Run) -> None:
        with self._lock:
            self._active.pop(run.key, None)

    # -- shutdown ------------------------------------------------------------------------------

    def release_all(self) -> int:
        """Give up every attempt still running here (the process is stopping): their leases
        expire now, so recovery re-runs them without waiting. Returns how many."""
        with self._lock:
            left = [active for active in self._active.values() if not active.ended]
            for active in left:
                active.ended = True
                active.run.stop.set()
        released = 0
        for active in left:
            run, task = active.run, active.run.task
            expired: TaskRecord | BatchRecord | None
            if run.batch is not None:
                expired = self._store.batches.renew(
                    task.task_id, run.batch.batch_no, attempt=run.attempt, lease_seconds=-1
                )
            else:
                expired = self._store.expire_lease(task.task_id, attempt=run.attempt)
            if expired is not None:
                released += 1
                log.warning(
                    "task.released",
                    task_id=task.task_id,
                    tool_id=task.tool_id,
                    batch_no=run.batch.batch_no if run.batch else None,
                    attempt=run.attempt,
                )
        return released

    def stop(self, timeout: float = 5.0) -> None:
        """End the keeper thread (the process is stopping); attempts still running keep their
        leases until those run out. A later claim starts a new thread."""
        with self._lock:
            thread, self._stopping = self._thread, True
            self._wake.notify()
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            self._stopping, self._thread = False, None

    # -- the keeper thread ---------------------------------------------------------------------

    def _keep(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                now = time.monotonic()
                due = [a for a in self._active.values() if not a.ended and a.next_moment() <= now]
                if not due:
                    wait = self._next_wait()
                    self._wake_at = time.monotonic() + wait
                    self._wake.wait(timeout=wait)
                    self._wake_at = 0.0
                    continue
            for active in due:
                try:
                    self._check(active)
                except Exception as exc:  # a database blip: the next tick tries again
                    log.warning(
                        "lease.check_failed", task_id=active.run.task.task_id, error=str(exc)
                    )
                    active.next_renewal = time.monotonic() + min(1.0, self._heartbeat)

    def _next_wait(self) -> float:
        now = time.monotonic()
        moments = [a.next_moment() for a in self._active.values() if not a.ended]
        return max(0.01, min([now + self._heartbeat, *moments]) - now)

    def _check(self, active: _Active) -> None:
        run, now = active.run, time.monotonic()
        # The row is written first, then the tool told: whatever it does next is fenced off.
        if active.hard_deadline is not None and now >= active.hard_deadline:
            self._on_time_limit(run)
            self._abandon(active, "time_limit")
            return
        if active.soft_deadline is not None and now >= active.soft_deadline:
            run.stop.set()  # the tool is told; its next progress call raises
        if now < active.next_renewal:
            return
        record: TaskRecord | BatchRecord | None
        if run.batch is not None:
            record = self._store.batches.renew(
                run.task.task_id,
                run.batch.batch_no,
                attempt=run.attempt,
                lease_seconds=self.lease_seconds,
            )
        else:
            record = self._store.renew_lease(
                run.task.task_id, attempt=run.attempt, lease_seconds=self.lease_seconds
            )
        active.next_renewal = time.monotonic() + self._heartbeat
        if record is None:
            self._abandon(active, "lease_lost")
        elif record.cancel_requested_at is not None:
            self._on_cancel(run)
            self._abandon(active, "cancelled")

    def _abandon(self, active: _Active, why: str) -> None:
        with self._lock:
            active.ended = True
        active.run.stop.set()
        task = active.run.task
        log.warning(
            "task.abandoned",
            task_id=task.task_id,
            tool_id=task.tool_id,
            backend=task.backend,
            batch_no=active.run.batch.batch_no if active.run.batch else None,
            attempt=active.run.attempt,
            reason=why,
        )
        for listener in self._listeners:
            listener(active.thread)
