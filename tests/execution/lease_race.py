"""Processes racing for a job lease, as separate engines (separate connections) in threads."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from execution.job_leases import JobLeases

EVERY = 3600.0
LEASE = 300.0


def race(leases: Sequence[JobLeases], *, job: str = "race") -> list[str]:
    """Every contender asks for `job` at the same moment; the owners that won, and each winner
    runs the job and says so, as RetentionJob does."""
    start = threading.Barrier(len(leases))
    won: list[str] = []
    lock = threading.Lock()

    def contend(index: int, lease: JobLeases) -> None:
        owner = f"process-{index}"
        start.wait()
        if lease.take_due(job, owner=owner, every=EVERY, lease_seconds=LEASE):
            with lock:
                won.append(owner)
            lease.finish(job, owner=owner, ran=True)

    threads = [
        threading.Thread(target=contend, args=(index, lease)) for index, lease in enumerate(leases)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return won
