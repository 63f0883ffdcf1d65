"""Retention: finished tasks and their history are deleted once they are old enough.

`prune` deletes in bounded batches, each its own short transaction, so the API's writes get
their turn between two. `RetentionJob` runs it periodically in every process that starts one;
the `retention` job lease makes it run once per deployment and interval, whichever process
wins it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from execution.job_leases import JobLeases
from execution.metrics import Metrics
from execution.models import utcnow
from execution.store import Pruned, TaskStore

log = structlog.get_logger(__name__)

JOB = "retention"
"""The job lease's name."""

LEASE_SECONDS = 300.0
"""How long the lease outlives a process that died while pruning; renewed as batches go."""

CHECK_SECONDS = 60.0
"""How often each process asks whether a prune is due (at most; RETENTION_SWEEP_SECONDS if
shorter): a cheap conditional UPDATE."""


def prune(
    store: TaskStore,
    *,
    before: datetime,
    batch: int,
    dry_run: bool = False,
    keep_going: Callable[[], bool] = lambda: True,
) -> Pruned:
    """Delete the finished tasks last changed before `before`, and their events, `batch` tasks
    per transaction until none is left (or `keep_going` says stop); with `dry_run`, count what
    would be deleted and delete nothing."""
    if dry_run:
        return store.count_finished(before=before)
    total = Pruned()
    while True:
        deleted = store.delete_finished(before=before, limit=batch)
        total += deleted
        if deleted.tasks < batch or not keep_going():
            return total


class RetentionJob:
    """Prunes tasks older than `keep` every `every` seconds, deployment-wide."""

    def __init__(
        self,
        *,
        store: TaskStore,
        leases: JobLeases,
        keep: timedelta,
        every: float,
        batch: int,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._leases = leases
        self._keep = keep
        self._every = every
        self._batch = batch
        self._metrics = metrics
        self._clock = clock
        # One per job: two runtimes of one process (tests) are two contenders.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def run_due(self) -> Pruned | None:
        """Prune now if a prune is due and this process won the lease; None if not."""
        if not self._leases.take_due(
            JOB, owner=self.owner, every=self._every, lease_seconds=LEASE_SECONDS
        ):
            return None
        try:
            pruned = prune(
                self._store,
                before=self._clock() - self._keep,
                batch=self._batch,
                keep_going=self._keep_lease(),
            )
        except BaseException:
            self._leases.finish(JOB, owner=self.owner, ran=False)  # the next check tries again
            raise
        self._leases.finish(JOB, owner=self.owner, ran=True)
        if pruned.tasks:
            if self._metrics is not None:
                self._metrics.pruned.inc(pruned.tasks)
            log.info(
                "retention.pruned",
                tasks=pruned.tasks,
                events=pruned.events,
                older_than_days=self._keep / timedelta(days=1),
            )
        return pruned

    def start(self) -> None:
        """Check now, then every CHECK_SECONDS (or `every`, if shorter), in a background thread."""
        if self._thread is not None:
            return
        self._stopped.clear()
        self._thread = threading.Thread(target=self._loop, name="switchyard-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop checking; a prune under way stops after its current batch."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _keep_lease(self) -> Callable[[], bool]:
        """Between batches: go on unless stopping, renewing the lease every third of it."""
        renewed = time.monotonic()

        def keep_going() -> bool:
            nonlocal renewed
            if self._stopped.is_set():
                return False
            if time.monotonic() - renewed < LEASE_SECONDS / 3:
                return True
            renewed = time.monotonic()
            return self._leases.renew(JOB, owner=self.owner, lease_seconds=LEASE_SECONDS)

        return keep_going

    def _loop(self) -> None:
        check = min(CHECK_SECONDS, self._every)
        while True:
            try:
                self.run_due()
            except Exception as exc:  # a database blip: the next check tries again
                log.warning("retention.failed", error=f"{type(exc).__name__}: {exc}")
            if self._stopped.wait(check):
                return
